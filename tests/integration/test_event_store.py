"""The event store's rules, run against SQLite and PostgreSQL alike."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from infra.bootstrap import System
from infra.eventstore.store import SqlEventStore
from services.errors import ConcurrencyError
from services.messages import DomainEvent, EventRegistry
from services.ports import NO_STREAM, Metadata, NewEvent


def ev(kind: str = "thing.happened", **data: object) -> NewEvent:
    return NewEvent(type=kind, data=data or {"n": 1})


class TestAppend:
    def test_a_new_stream_starts_at_version_one_with_contiguous_positions(
        self, system: System
    ) -> None:
        sid = uuid4()
        result = system.store.append(sid, "consultation", NO_STREAM, [ev(n=1), ev(n=2), ev(n=3)])
        assert result.version == 3
        assert [e.version for e in result.events] == [1, 2, 3]
        assert [e.position for e in result.events] == [1, 2, 3]
        other = system.store.append(uuid4(), "organisation", NO_STREAM, [ev()])
        assert other.position == 4

    def test_a_stale_expected_version_is_a_conflict_and_writes_nothing(
        self, system: System
    ) -> None:
        sid = uuid4()
        system.store.append(sid, "consultation", NO_STREAM, [ev(), ev()])
        with pytest.raises(ConcurrencyError) as caught:
            system.store.append(sid, "consultation", 1, [ev(n=99), ev(n=100)])
        assert caught.value.expected == 1
        assert caught.value.actual == 2
        assert [e.version for e in system.store.read_stream(sid)] == [1, 2]
        assert system.store.head_position() == 2

    def test_an_expected_version_ahead_of_the_stream_is_a_conflict_not_a_gap(
        self, system: System
    ) -> None:
        sid = uuid4()
        system.store.append(sid, "consultation", NO_STREAM, [ev()])
        with pytest.raises(ConcurrencyError):
            system.store.append(sid, "consultation", 5, [ev()])
        with pytest.raises(ConcurrencyError):
            system.store.append(uuid4(), "consultation", 3, [ev()])
        assert system.store.head_position() == 1

    def test_creating_a_stream_twice_is_a_conflict(self, system: System) -> None:
        sid = uuid4()
        system.store.append(sid, "consultation", NO_STREAM, [ev()])
        with pytest.raises(ConcurrencyError):
            system.store.append(sid, "consultation", NO_STREAM, [ev()])

    def test_no_expected_version_appends_at_the_end(self, system: System) -> None:
        sid = uuid4()
        system.store.append(sid, "consultation", None, [ev()])
        result = system.store.append(sid, "consultation", None, [ev(), ev()])
        assert [e.version for e in result.events] == [2, 3]

    def test_an_empty_append_is_refused(self, system: System) -> None:
        with pytest.raises(ValueError, match="at least one event"):
            system.store.append(uuid4(), "consultation", NO_STREAM, [])

    def test_data_metadata_and_non_latin_text_round_trip(self, system: System) -> None:
        sid = uuid4()
        data = {
            "city": "Hà Nội",
            "name": "Hà Thị Minh Đức",
            "thai": "มหาวิทยาลัยมหิดล",
            "nested": {"list": [1, 2.5, None, True], "empty": {}},
        }
        meta = Metadata(
            actor="organiser:ngo-coalition",
            api_key_id="key_123",
            causation_id="c-1",
            correlation_id="req-9",
        )
        written = system.store.append(sid, "consultation", NO_STREAM, [ev("x.y", **data)], meta)
        (read,) = system.store.read_stream(sid)
        assert read.data == data
        assert read.metadata == meta.as_dict()
        assert read.id == written.events[0].id
        assert read.type == "x.y"
        assert read.stream_type == "consultation"
        assert abs(read.recorded_at - written.events[0].recorded_at) < timedelta(seconds=1)
        assert read.recorded_at.utcoffset() == timedelta(0)


class TestReading:
    @pytest.fixture
    def log(self, system: System) -> dict[str, object]:
        a, b = uuid4(), uuid4()
        system.store.append(
            a, "consultation", NO_STREAM, [ev("consultation.planned"), ev("consultation.revised")]
        )
        system.store.append(b, "organisation", NO_STREAM, [ev("organisation.registered")])
        system.store.append(a, "consultation", 2, [ev("consultation.cancelled")])
        return {"a": a, "b": b}

    def test_read_all_pages_in_position_order(self, system: System, log: dict) -> None:
        first = system.store.read_all(0, 2)
        rest = system.store.read_all(first[-1].position or 0, 10)
        assert [e.position for e in first + rest] == [1, 2, 3, 4]
        assert [e.type for e in first + rest] == [
            "consultation.planned",
            "consultation.revised",
            "organisation.registered",
            "consultation.cancelled",
        ]

    def test_read_all_filters_by_type_stream_type_and_stream(
        self, system: System, log: dict
    ) -> None:
        types = system.store.read_all(
            0, 10, types=["consultation.planned", "consultation.cancelled"]
        )
        assert [e.position for e in types] == [1, 4]
        orgs = system.store.read_all(0, 10, stream_type="organisation")
        assert [e.stream_id for e in orgs] == [log["b"]]
        one = system.store.read_all(1, 10, stream_id=log["a"])  # type: ignore[arg-type]
        assert [e.version for e in one] == [2, 3]

    def test_iter_all_streams_everything(self, system: System, log: dict) -> None:
        assert [e.position for e in system.store.iter_all(batch_size=1)] == [1, 2, 3, 4]
        assert [e.position for e in system.store.iter_all(after=2, batch_size=3)] == [3, 4]

    def test_a_stream_as_it_stood_at_a_position_or_a_time(self, system: System, log: dict) -> None:
        stream = system.store.read_stream(log["a"])  # type: ignore[arg-type]
        assert [e.version for e in stream] == [1, 2, 3]
        then = system.store.read_stream(log["a"], until_position=3)  # type: ignore[arg-type]
        assert [e.version for e in then] == [1, 2]
        assert [e.version for e in system.store.read_stream(log["a"], after_version=2)] == [3]  # type: ignore[arg-type]
        before = system.store.read_stream(  # type: ignore[arg-type]
            log["a"], until_time=datetime.now(UTC) - timedelta(days=1)
        )
        assert before == []

    def test_head_and_stream_version(self, system: System, log: dict) -> None:
        assert system.store.head_position() == 4
        assert system.store.stream_version(log["a"]) == 3  # type: ignore[arg-type]
        assert system.store.stream_version(uuid4()) == 0


class TestUpcastingOnRead:
    def test_old_events_are_upgraded_when_read(self, system: System) -> None:
        sid = uuid4()
        system.store.append(
            sid,
            "organisation",
            NO_STREAM,
            [NewEvent("organisation.registered", {"name": "SBMI"}, schema_version=1)],
        )
        registry = EventRegistry()

        @registry.register
        @dataclass(frozen=True)
        class OrganisationRegistered(DomainEvent):
            type = "organisation.registered"
            schema_version = 2
            name: str
            country: str

        @registry.upcaster("organisation.registered", 1)
        def _v1(data: dict) -> dict:
            return {**data, "country": "ID"}

        upgraded = SqlEventStore(system.db, registry)
        (record,) = upgraded.read_stream(sid)
        assert record.schema_version == 2
        assert record.data == {"name": "SBMI", "country": "ID"}
        assert upgraded.read_all()[0].data == {"name": "SBMI", "country": "ID"}
        assert registry.decode(record) == OrganisationRegistered(name="SBMI", country="ID")


class TestConcurrentWriters:
    def test_racing_writers_on_one_stream_never_lose_an_event(self, system: System) -> None:
        """Each writer re-reads and retries on conflict: every event lands exactly once."""
        sid = uuid4()
        system.store.append(sid, "statement", NO_STREAM, [ev(writer=-1, i=-1)])
        writers, per_writer = 4, 10
        conflicts = [0] * writers
        errors: list[BaseException] = []

        def write(w: int) -> None:
            try:
                for i in range(per_writer):
                    while True:
                        version = system.store.stream_version(sid)
                        try:
                            system.store.append(sid, "statement", version, [ev(writer=w, i=i)])
                            break
                        except ConcurrencyError:
                            conflicts[w] += 1
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        events = system.store.read_stream(sid)
        assert [e.version for e in events] == list(range(1, writers * per_writer + 2))
        written = sorted((e.data["writer"], e.data["i"]) for e in events[1:])
        assert written == sorted((w, i) for w in range(writers) for i in range(per_writer))
        assert sorted(e.position or 0 for e in events) == list(range(1, len(events) + 1))

    def test_writers_on_many_streams_get_contiguous_positions(self, system: System) -> None:
        writers, per_writer = 4, 15
        errors: list[BaseException] = []

        def write() -> None:
            try:
                for _ in range(per_writer):
                    system.store.append(uuid4(), "registration", NO_STREAM, [ev(), ev()])
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=write) for _ in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        positions = [e.position for e in system.store.iter_all()]
        assert positions == list(range(1, writers * per_writer * 2 + 1))
