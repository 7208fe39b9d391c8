"""iCalendar (RFC 5545) for a consultation and its agenda, built with ``icalendar``."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from icalendar import Calendar, Event, Timezone


def ics(doc: dict[str, Any], public_url: str) -> bytes:
    """The calendar: one VEVENT for the consultation and one per session, in its zone."""
    zone = ZoneInfo(doc["timezone"])
    cal = Calendar()
    cal.add("prodid", "-//Concord//Consultations//EN")
    cal.add("version", "2.0")
    cal.add("calscale", "GREGORIAN")
    cal.add("method", "PUBLISH")
    cal.add("x-wr-calname", doc["title"])
    cal.add("x-wr-timezone", doc["timezone"])
    stamp = datetime.now(UTC)
    url = f"{public_url}/v1/consultations/{doc['id']}"
    where = ", ".join(p for p in (doc.get("venue"), doc.get("city"), doc["host_country"]) if p)
    cancelled = doc["cancelled"]

    main = Event()
    main.add("uid", f"consultation-{doc['id']}@concord")
    main.add("summary", doc["title"])
    main.add("dtstart", _local(doc["starts_at"], zone))
    main.add("dtend", _local(doc["ends_at"], zone))
    main.add("dtstamp", stamp)
    main.add("sequence", doc["sequence"])
    main.add("status", "CANCELLED" if cancelled else "CONFIRMED")
    main.add("url", url)
    if where:
        main.add("location", where)
    if doc.get("theme"):
        main.add("description", doc["theme"])
    cal.add_component(main)

    for session in doc["agenda"]:
        event = Event()
        event.add("uid", f"session-{session['id']}@concord")
        event.add("summary", session["title"])
        event.add("dtstart", _local(session["starts_at"], zone))
        event.add("dtend", _local(session["ends_at"], zone))
        event.add("dtstamp", stamp)
        event.add("sequence", doc["sequence"] + session.get("sequence", 0))
        event.add("status", "CANCELLED" if cancelled else "CONFIRMED")
        event.add("url", url)
        event.add("related-to", f"consultation-{doc['id']}@concord")
        speakers = ", ".join(s["name"] for s in session["speakers"])
        details = [session["kind"].replace("_", " ")]
        if session.get("thematic_area"):
            details.append(session["thematic_area"])
        if speakers:
            details.append(f"Speakers: {speakers}")
        event.add("description", "\n".join(details))
        if where:
            event.add("location", where)
        cal.add_component(event)
    # What ``cal.add_missing_timezones()`` adds, from a cache.
    cal.subcomponents[0:0] = [
        vtz for tzid in sorted(cal.get_missing_tzids()) if (vtz := _vtimezone(tzid)) is not None
    ]
    body: bytes = cal.to_ical()
    return body


@lru_cache(maxsize=128)
def _vtimezone(tzid: str) -> Timezone | None:
    """The VTIMEZONE of ``tzid`` (None for a zone icalendar does not know), worked out once per
    process: its transitions from 1970 to 2038 took a third of the worker's CPU under a wave of
    sign-ups, each confirmation carrying the calendar. Only ever serialised, never changed."""
    try:
        return Timezone.from_tzid(tzid)
    except ValueError:
        return None


def _local(value: str, zone: ZoneInfo) -> datetime:
    return datetime.fromisoformat(value).astimezone(zone)
