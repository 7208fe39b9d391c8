"""The shared field types accept exactly what their OpenAPI schemas say they accept.

A client, and Schemathesis (tests/e2e/test_fuzz_*.py), reads the pattern or the list of values
to tell a valid value from an invalid one: text the pattern admits must be accepted, text it
refuses must be refused.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from api.fields import Country, Text, TimeZone


def _accepts(adapter: TypeAdapter[Any], value: str) -> bool:
    try:
        adapter.validate_python(value)
    except ValidationError:
        return False
    return True


def _documented(adapter: TypeAdapter[Any]) -> re.Pattern[str]:
    return re.compile(adapter.json_schema()["pattern"])


TITLE = TypeAdapter(Text(10))
OPTIONAL_NOTE = TypeAdapter(Text(10, min_length=0))
COUNTRY = TypeAdapter(Country)


@settings(max_examples=500)
@given(st.text(max_size=14))
@example("Consultation\r")
@example("\x0bConsultation")
@example(" \t\n ")
@example("Line one\nline two\twith a tab")
@example("\u0085")
@example("Hà Thị Đức")
@example("\n  \tĐức Minh")  # 12 characters as sent, 8 once trimmed
def test_text_is_accepted_exactly_when_its_schema_says(value: str) -> None:
    for adapter in (TITLE, OPTIONAL_NOTE):
        schema = adapter.json_schema()
        documented = (
            re.fullmatch(schema["pattern"], value) is not None
            and schema.get("minLength", 0) <= len(value) <= schema["maxLength"]
        )
        assert _accepts(adapter, value) == documented, (schema, value)


@settings(max_examples=300)
@given(st.text(min_size=2, max_size=2) | st.from_regex(r"[A-Za-z]{2}", fullmatch=True))
@example("\u0131d")  # a dotless i upper-cases to I
@example("\u017fg")  # a long s upper-cases to S
@example("id")
@example("ZZ")
def test_a_country_is_accepted_exactly_when_its_pattern_matches(value: str) -> None:
    matches = _documented(COUNTRY).fullmatch(value) is not None
    assert _accepts(COUNTRY, value) == matches, value


@pytest.mark.parametrize("value", ["Asia/Jakarta", "UTC", "Asia/Jakart", "asia/jakarta", ""])
def test_a_time_zone_is_accepted_exactly_when_it_is_listed(value: str) -> None:
    adapter = TypeAdapter(TimeZone)
    assert _accepts(adapter, value) == (value in adapter.json_schema()["enum"])
