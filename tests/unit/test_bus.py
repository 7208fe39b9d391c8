"""The command bus against an in-memory store: retries, If-Match and no-op commands."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
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
        self.reads: list[int] = []

    def read_stream(
        self, stream_id: UUID, *, after_version: int = 0, limit: int | None = None, **_: object
    ) -> list[RecordedEvent]:
        found = [e for e in self.events if e.stream_id == stream_id and e.version > after_version]
        found = found[:limit] if limit is not None else found
        self.reads.append(len(found))
        return found

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
            self._write(stream_id, stream_type, rival, {})
        current = len(self.read_stream(stream_id))
        if expected_version is not None and expected_version != current:
            raise ConcurrencyError(stream_id, expected_version, current)
        meta = metadata.as_dict() if metadata is not None else {}
        written = self._write(stream_id, stream_type, events, meta)
        return AppendResult(stream_id, written[-1].version, tuple(written))

    def append_batch(
        self,
        stream_id: UUID,
        stream_type: str,
        expected_version: int | None,
        commands: Sequence[tuple[Sequence[NewEvent], Metadata | None]],
    ) -> AppendResult:
        if self.race:
            rival, self.race = self.race, []
            self._write(stream_id, stream_type, rival, {})
        current = len(self.read_stream(stream_id))
        if expected_version is not None and expected_version != current:
            raise ConcurrencyError(stream_id, expected_version, current)
        written = [
            record
            for events, metadata in commands
            for record in self._write(
                stream_id, stream_type, events, metadata.as_dict() if metadata else {}
            )
        ]
        return AppendResult(stream_id, written[-1].version, tuple(written))

    def _write(
        self, stream_id: UUID, stream_type: str, events: Sequence[NewEvent], meta: dict[str, Any]
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
                meta,
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


def test_a_long_stream_is_read_and_folded_a_page_at_a_time(
    bus: tuple[CommandBus, MemoryStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    b, store = bus
    oid = uuid4()
    register(b, oid)
    for n in range(6):
        b.handle(ORGANISATION, oid, ReviseOrganisation(oid, website=f"https://{n}.example"))
    monkeypatch.setattr("services.bus.CATCH_UP_PAGE", 3)
    store.reads.clear()
    snap = b.catch_up(ORGANISATION, oid)
    assert store.reads == [3, 3, 1], "7 events in pages of at most 3"
    assert snap.version == 7
    assert snap.state == ORGANISATION.fold(EVENTS.decode(r) for r in store.events)
    assert snap.state.website == "https://5.example"


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


def test_a_command_retried_under_its_idempotency_key_returns_what_it_did_before(
    bus: tuple[CommandBus, MemoryStore],
) -> None:
    """Given a command whose client never heard the answer, when it is sent again under the
    same key, then nothing is decided or appended again: the earlier outcome comes back."""
    b, store = bus
    oid = uuid4()
    register(b, oid)
    meta = Metadata(api_key_id="k1", idempotency_key="revise-1", step=0)
    first = b.handle(ORGANISATION, oid, ReviseOrganisation(oid, acronym="HRWG"), metadata=meta)
    again = b.handle(
        ORGANISATION, oid, ReviseOrganisation(oid, acronym="HRWG"), metadata=meta, if_match=1
    )
    assert len(store.events) == 2, "not appended twice (and the stale If-Match is moot)"
    assert (again.version, again.position, again.events) == (
        first.version,
        first.position,
        first.events,
    )
    assert again.recorded == (store.events[1],)


@pytest.mark.parametrize(
    "other",
    [
        Metadata(api_key_id="k1", idempotency_key="revise-2", step=0),  # another request
        Metadata(api_key_id="k1", idempotency_key="revise-1", step=1),  # its next command
        Metadata(api_key_id="k2", idempotency_key="revise-1", step=0),  # another caller's key
        Metadata(api_key_id="k1"),  # no key at all
    ],
)
def test_only_the_same_key_step_and_caller_count_as_the_same_command(
    bus: tuple[CommandBus, MemoryStore], other: Metadata
) -> None:
    b, store = bus
    oid = uuid4()
    register(b, oid)
    meta = Metadata(api_key_id="k1", idempotency_key="revise-1", step=0)
    b.handle(ORGANISATION, oid, ReviseOrganisation(oid, acronym="HRWG"), metadata=meta)
    b.handle(ORGANISATION, oid, ReviseOrganisation(oid, acronym="KONTRAS"), metadata=other)
    assert len(store.events) == 3, "a different command is decided and appended"
