"""The command bus against an in-memory store: retries, If-Match and no-op commands."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from uuid import UUID, uuid4

import pytest

from services.bus import CommandBus, PreconditionFailed
from services.errors import ConcurrencyError
from services.organisations.commands import RegisterOrganisation, ReviseOrganisation
from services.organisations.model import ORGANISATION
from services.ports import AppendResult, Metadata, NewEvent, RecordedEvent
from services.registry import EVENTS


class Clock:
    def now(self) -> datetime:
        return datetime(2018, 2, 20, tzinfo=UTC)


class MemoryStore:
    """Just enough of an event store; ``race`` appends a rival event before the next append."""

    def __init__(self) -> None:
        self.events: list[RecordedEvent] = []
        self.race: list[NewEvent] = []

    def read_stream(self, stream_id: UUID, **_: object) -> list[RecordedEvent]:
        return [e for e in self.events if e.stream_id == stream_id]

    def append(
        self,
        stream_id: UUID,
        stream_type: str,
        expected_version: int | None,
        events: Sequence[NewEvent],
        metadata: Metadata | None = None,
    ) -> AppendResult:
        if self.race:
            rival, self.race = self.race, []
            self._write(stream_id, stream_type, rival)
        current = len(self.read_stream(stream_id))
        if expected_version is not None and expected_version != current:
            raise ConcurrencyError(stream_id, expected_version, current)
        written = self._write(stream_id, stream_type, events)
        return AppendResult(stream_id, written[-1].version, tuple(written))

    def _write(
        self, stream_id: UUID, stream_type: str, events: Sequence[NewEvent]
    ) -> list[RecordedEvent]:
        out = []
        for e in events:
            record = RecordedEvent(
                e.id,
                stream_id,
                stream_type,
                len(self.read_stream(stream_id)) + 1,
                len(self.events) + 1,
                e.type,
                e.schema_version,
                dict(e.data),
                {},
                datetime.now(UTC),
            )
            self.events.append(record)
            out.append(record)
        return out


@pytest.fixture
def bus() -> tuple[CommandBus, MemoryStore]:
    store = MemoryStore()
    return CommandBus(store, EVENTS, Clock()), store  # type: ignore[arg-type]


def register(bus: CommandBus, oid: UUID) -> None:
    bus.handle(ORGANISATION, oid, RegisterOrganisation(oid, "HRWG", "ngo", "ID"))


def test_a_lost_race_is_decided_again_on_the_fresh_state(
    bus: tuple[CommandBus, MemoryStore],
) -> None:
    b, store = bus
    oid = uuid4()
    register(b, oid)
    store.race = [
        EVENTS.to_new_event(
            ORGANISATION.decide(
                ORGANISATION.fold(EVENTS.decode(r) for r in store.events),
                ReviseOrganisation(oid, website="https://rival.example"),
                None,  # type: ignore[arg-type]
            )[0]
        )
    ]
    outcome = b.handle(ORGANISATION, oid, ReviseOrganisation(oid, acronym="HRWG"))
    assert outcome.version == 3, "the rival's event and ours are both kept"
    assert [e.type for e in store.events] == [
        "organisation.registered",
        "organisation.revised",
        "organisation.revised",
    ]


def test_if_match_that_loses_a_race_is_a_failed_precondition(
    bus: tuple[CommandBus, MemoryStore],
) -> None:
    b, store = bus
    oid = uuid4()
    register(b, oid)
    store.race = [NewEvent("organisation.revised", {"organisation_id": str(oid), "name": "X"})]
    with pytest.raises(PreconditionFailed) as caught:
        b.handle(ORGANISATION, oid, ReviseOrganisation(oid, acronym="HRWG"), if_match=1)
    assert caught.value.actual == 2
    assert len(store.events) == 2, "our event was not written"


def test_a_stale_if_match_is_refused_before_deciding(bus: tuple[CommandBus, MemoryStore]) -> None:
    b, _ = bus
    oid = uuid4()
    register(b, oid)
    with pytest.raises(PreconditionFailed):
        b.handle(ORGANISATION, oid, ReviseOrganisation(oid, acronym="HRWG"), if_match=7)


def test_a_command_that_changes_nothing_appends_nothing(
    bus: tuple[CommandBus, MemoryStore],
) -> None:
    b, store = bus
    oid = uuid4()
    register(b, oid)
    outcome = b.handle(ORGANISATION, oid, ReviseOrganisation(oid, name="HRWG"))
    assert not outcome.changed
    assert outcome.version == 1
    assert len(store.events) == 1
