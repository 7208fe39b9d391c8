"""The consultation calendar's time zones: what icalendar would add, from a per-process cache."""

from __future__ import annotations

import re
from typing import Any

import pytest
from icalendar import Calendar

from infra.calendar import ics


def _doc(zone: str) -> dict[str, Any]:
    return {
        "id": "4f0c9f59-6a43-4d55-9a2b-3f4ec1b7b1a1",
        "title": "Regional consultation",
        "timezone": zone,
        "host_country": "ID",
        "venue": None,
        "city": "Jakarta",
        "cancelled": False,
        "starts_at": "2027-03-27T02:00:00+00:00",
        "ends_at": "2027-03-28T10:00:00+00:00",
        "sequence": 0,
        "theme": None,
        "agenda": [
            {
                "id": "9e3a3c02-77a0-4e5a-8a55-0f1a2e3b4c5d",
                "title": "Opening",
                "starts_at": "2027-03-27T03:00:00+00:00",
                "ends_at": "2027-03-27T04:00:00+00:00",
                "kind": "plenary",
                "speakers": [],
            }
        ],
    }


def _without_stamps(body: bytes) -> bytes:
    return re.sub(rb"DTSTAMP:[^\r]*\r\n", b"", body)


@pytest.mark.parametrize(
    ("zone", "vtimezones"),
    [
        ("Asia/Jakarta", ["Asia/Jakarta"]),
        ("Europe/Berlin", ["Europe/Berlin"]),
        ("Australia/Lord_Howe", ["Australia/Lord_Howe"]),
        ("UTC", []),  # times in UTC are written with Z: no zone to describe
    ],
)
def test_each_calendar_carries_the_vtimezone_icalendar_would_add(
    zone: str, vtimezones: list[str]
) -> None:
    first, second = ics(_doc(zone), "https://concord.example"), ics(_doc(zone), "https://x")
    for body in (first, second):  # the second comes from the cache
        cal = Calendar.from_ical(body)
        assert [tz.tz_name for tz in cal.timezones] == vtimezones
        assert cal.get_missing_tzids() == set()
        rebuilt = Calendar.from_ical(body)
        rebuilt.subcomponents = [c for c in rebuilt.subcomponents if c.name != "VTIMEZONE"]
        rebuilt.add_missing_timezones()
        assert _without_stamps(rebuilt.to_ical()) == _without_stamps(body)
