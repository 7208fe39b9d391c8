"""Validated field types shared by request schemas: text, countries, time zones."""

from __future__ import annotations

import unicodedata
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import pycountry
from pydantic import AfterValidator, StringConstraints


def _clean(value: str) -> str:
    if any(unicodedata.category(c) == "Cc" and c not in "\n\t" for c in value):
        raise ValueError("control characters are not allowed")
    return unicodedata.normalize("NFC", value)


def _country(value: str) -> str:
    code = value.upper()
    if len(code) != 2 or pycountry.countries.get(alpha_2=code) is None:
        raise ValueError(f"{value!r} is not an ISO 3166-1 alpha-2 country code")
    return code


_ZONES = available_timezones()


def _timezone(value: str) -> str:
    if value not in _ZONES:
        raise ValueError(f"{value!r} is not an IANA time zone (e.g. Asia/Jakarta)")
    try:
        ZoneInfo(value)
    except ZoneInfoNotFoundError as exc:  # pragma: no cover - listed but not loadable
        raise ValueError(f"{value!r} is not an IANA time zone") from exc
    return value


def Text(max_length: int, min_length: int = 1) -> type[str]:
    """A trimmed, NFC-normalised string without control characters."""
    return Annotated[  # type: ignore[return-value]
        str,
        StringConstraints(strip_whitespace=True, min_length=min_length, max_length=max_length),
        AfterValidator(_clean),
    ]


Country = Annotated[
    str,
    StringConstraints(min_length=2, max_length=2),
    AfterValidator(_country),
]
TimeZone = Annotated[str, StringConstraints(max_length=64), AfterValidator(_timezone)]
