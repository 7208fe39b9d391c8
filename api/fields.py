"""Validated field types shared by request schemas: text, countries, time zones.

Each also documents what it accepts in the OpenAPI schema (a pattern or the list of values), so
a client, or a generator of requests, can tell a valid value from an invalid one.
"""

from __future__ import annotations

import unicodedata
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import pycountry
from pydantic import AfterValidator, BeforeValidator, Field, StringConstraints


def _refuse_controls(value: object) -> object:
    """Anywhere in the text, before white space is stripped (a trailing CR is refused too)."""
    if isinstance(value, str) and any(
        unicodedata.category(c) == "Cc" and c not in "\n\t" for c in value
    ):
        raise ValueError("control characters are not allowed")
    return value


def _trimmed(value: str) -> str:
    return unicodedata.normalize("NFC", value.strip())


def _not_blank(value: str) -> str:
    if not value:
        raise ValueError("must not be blank")
    return value


def _country(value: str) -> str:
    code = value.upper()
    # ASCII letters only: a dotless i or a long s (U+0131, U+017F) upper-cases to I or S.
    if not (value.isascii() and value.isalpha()) or pycountry.countries.get(alpha_2=code) is None:
        raise ValueError(f"{value!r} is not an ISO 3166-1 alpha-2 country code")
    return code


_ZONES = available_timezones()

#: Characters text may not hold: control characters (Unicode category Cc) but tab and newline.
_CONTROL = "\\u0000-\\u0008\\u000b-\\u001f\\u007f-\\u009f"
#: Text without them; and with something besides white space (which is stripped) if required.
_CLEAN = f"^[^{_CONTROL}]*$"
_NOT_BLANK = f"^[^\\S{_CONTROL}]*[^\\s{_CONTROL}][^{_CONTROL}]*$"
#: Every ISO 3166-1 alpha-2 code, in either case (``_country`` upper-cases it).
_COUNTRIES = "^({})$".format(
    "|".join(
        "".join(f"[{c}{c.lower()}]" for c in country.alpha_2)
        for country in sorted(pycountry.countries, key=lambda c: c.alpha_2)
    )
)


def _timezone(value: str) -> str:
    if value not in _ZONES:
        raise ValueError(f"{value!r} is not an IANA time zone (e.g. Asia/Jakarta)")
    try:
        ZoneInfo(value)
    except ZoneInfoNotFoundError as exc:  # pragma: no cover - listed but not loadable
        raise ValueError(f"{value!r} is not an IANA time zone") from exc
    return value


def Text(max_length: int, min_length: int = 1) -> type[str]:
    """Text without control characters, at most ``max_length`` characters as sent (as the
    schema's maxLength counts them), not blank unless ``min_length`` is 0; kept trimmed and
    NFC-normalised."""
    if min_length not in (0, 1):
        raise ValueError("text is required (1) or may be empty (0)")
    checks = [AfterValidator(_trimmed), *([AfterValidator(_not_blank)] if min_length else [])]
    return Annotated[  # type: ignore[return-value]
        str,
        StringConstraints(min_length=min_length, max_length=max_length),
        BeforeValidator(_refuse_controls),  # runs first (put before the constraints, it voids them)
        *checks,
        Field(json_schema_extra={"pattern": _NOT_BLANK if min_length else _CLEAN}),
    ]


Country = Annotated[
    str,
    StringConstraints(min_length=2, max_length=2),
    AfterValidator(_country),
    Field(json_schema_extra={"pattern": _COUNTRIES}),
]
TimeZone = Annotated[
    str,
    StringConstraints(max_length=64),
    AfterValidator(_timezone),
    Field(json_schema_extra={"enum": sorted(_ZONES)}),
]
