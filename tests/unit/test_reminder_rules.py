"""Reminder rules: due times in the local zone, keys, offsets, and configuring them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4
from zoneinfo import ZoneInfo

import pytest

from services.consultations.commands import ConfigureReminders
from services.consultations.errors import ConsultationIsCancelled, InvalidValue
from services.consultations.events import ConsultationCancelled, RemindersConfigured
from services.registry import EVENTS
from services.reminders.rules import (
    ANCHORS,
    NOTICES,
    check_offsets,
    due_at,
    message_id,
    message_key,
    reminder_key,
)
from tests.unit.test_consultations import given, planned, when


def test_one_day_before_is_one_day_before_on_the_local_clock() -> None:
    start = datetime(2027, 3, 10, 9, 0, tzinfo=ZoneInfo("Asia/Manila"))
    assert due_at(start.astimezone(UTC), timedelta(days=1), "Asia/Manila") == datetime(
        2027, 3, 9, 1, 0, tzinfo=UTC
    )
    # Across a daylight-saving change the wall clock wins: 09:00 the day before, not 08:00.
    berlin = datetime(2027, 3, 28, 9, 0, tzinfo=ZoneInfo("Europe/Berlin"))  # CEST since 03:00
    due = due_at(berlin.astimezone(UTC), timedelta(days=1), "Europe/Berlin")
    assert due.astimezone(ZoneInfo("Europe/Berlin")).hour == 9
    assert berlin - due == timedelta(hours=23)


def test_keys_name_the_deadline_so_a_moved_date_is_a_new_reminder() -> None:
    cid = uuid4()
    first = datetime(2027, 3, 10, 2, 0, tzinfo=UTC)
    a = reminder_key("consultation_starts", cid, first, timedelta(days=1))
    b = reminder_key("consultation_starts", cid, first + timedelta(days=7), timedelta(days=1))
    assert a != b and a == reminder_key("consultation_starts", cid, first, timedelta(days=1))
    key = message_key(a, "registration", cid)
    assert message_id(key, "concord.example") == message_id(key, "concord.example")
    assert message_id(key, "concord.example").endswith("@concord.example>")
    assert message_id(key, "x") != message_id(message_key(b, "registration", cid), "x")


def test_offsets_are_checked() -> None:
    assert check_offsets("consultation_starts", (timedelta(days=1), timedelta(days=7))) == (
        timedelta(days=7),
        timedelta(days=1),
    )
    for bad in ((timedelta(minutes=5),), (timedelta(days=200),), (timedelta(hours=1),) * 0):
        if bad:
            with pytest.raises(ValueError):
                check_offsets("consultation_starts", bad)
    with pytest.raises(ValueError, match="unknown reminder anchor"):
        check_offsets("lunch", (timedelta(days=1),))
    with pytest.raises(ValueError, match="at most 5"):
        check_offsets("consultation_starts", tuple(timedelta(days=d) for d in range(1, 8)))


def test_every_notice_follows_a_registered_event() -> None:
    for event_type in NOTICES:
        assert EVENTS.event_class(event_type)
    assert set(ANCHORS) == {"registration_closes", "consultation_starts", "endorsement_deadline"}


def test_an_organiser_configures_reminders_and_unchanged_offsets_change_nothing() -> None:
    cid = uuid4()
    command = ConfigureReminders(cid, {"consultation_starts": (timedelta(days=3),)})
    events = when(given(planned(cid)), command)
    assert events == [RemindersConfigured(cid, {"consultation_starts": (259_200,)})]
    assert when(given(planned(cid), *events), command) == []
    off = when(given(planned(cid), *events), ConfigureReminders(cid, {"consultation_starts": ()}))
    assert off == [RemindersConfigured(cid, {"consultation_starts": ()})]


def test_bad_offsets_and_cancelled_consultations_are_refused() -> None:
    cid = uuid4()
    with pytest.raises(InvalidValue) as refused:
        when(given(planned(cid)), ConfigureReminders(cid, {"lunch": (timedelta(days=1),)}))
    assert refused.value.field == "offsets.lunch"
    with pytest.raises(InvalidValue):
        when(
            given(planned(cid)),
            ConfigureReminders(cid, {"consultation_starts": (timedelta(seconds=90),)}),
        )
    with pytest.raises(ConsultationIsCancelled):
        when(
            given(planned(cid), ConsultationCancelled(cid, "floods")),
            ConfigureReminders(cid, {"consultation_starts": ()}),
        )
