"""Domain events: JSON round trips, personal-data markers and upcasting — no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID, uuid4

import pytest

from services.errors import UnknownEventType
from services.messages import (
    DomainEvent,
    EventRegistry,
    Personal,
    from_json,
    iter_personal,
    to_json,
)
from services.ports import RecordedEvent


def make_registry() -> EventRegistry:
    return EventRegistry()


@dataclass(frozen=True)
class Speaker:
    name: Personal[str]
    organisation_id: UUID | None


def test_round_trip_keeps_types_and_diacritics() -> None:
    registry = make_registry()

    @registry.register
    @dataclass(frozen=True)
    class SessionScheduled(DomainEvent):
        type = "session.scheduled"
        session_id: UUID
        title: str
        starts_at: datetime
        speakers: tuple[Speaker, ...]

    person = uuid4()
    event = SessionScheduled(
        session_id=uuid4(),
        title="Phát triển và Hội nhập",
        starts_at=datetime(2019, 12, 18, 1, 30, tzinfo=UTC),
        speakers=(Speaker(Personal(person, "Hà Thị Minh Đức"), None),),
    )
    new = registry.to_new_event(event)
    assert new.type == "session.scheduled"
    assert new.data["speakers"][0]["name"] == {
        "$personal": {"subject": str(person), "value": "Hà Thị Minh Đức"}
    }
    record = RecordedEvent(
        id=new.id,
        stream_id=uuid4(),
        stream_type="consultation",
        version=1,
        position=1,
        type=new.type,
        schema_version=1,
        data=dict(new.data),
        metadata={},
        recorded_at=datetime.now(UTC),
    )
    assert registry.decode(record) == event


def test_personal_markers_are_found_wherever_they_sit() -> None:
    a, b = uuid4(), uuid4()
    data = to_json(
        {
            "people": [Personal(a, {"name": "Đức", "email": "d@example.org"})],
            "nested": {"x": Personal(b, "ภาษาไทย")},
            "plain": "public",
        }
    )
    subjects = sorted(m["subject"] for m in iter_personal(data))
    assert subjects == sorted([str(a), str(b)])


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        to_json(datetime(2018, 2, 20, 9, 0))


def test_old_schema_versions_are_upcast_on_decode() -> None:
    registry = make_registry()

    @registry.register
    @dataclass(frozen=True)
    class OrganisationRegistered(DomainEvent):
        type = "organisation.registered"
        schema_version = 3
        name: str
        country: str
        kind: str

    @registry.upcaster("organisation.registered", 1)
    def _v1(data: dict) -> dict:  # v1 had no country
        return {**data, "country": "ID"}

    @registry.upcaster("organisation.registered", 2)
    def _v2(data: dict) -> dict:  # v2 called the kind "category"
        data = dict(data)
        data["kind"] = data.pop("category")
        return data

    version, data = registry.upcast(
        "organisation.registered", 1, {"name": "SBMI", "category": "ngo"}
    )
    assert version == 3
    assert data == {"name": "SBMI", "country": "ID", "kind": "ngo"}
    record = RecordedEvent(
        id=uuid4(),
        stream_id=uuid4(),
        stream_type="organisation",
        version=1,
        position=1,
        type="organisation.registered",
        schema_version=2,
        data={"name": "SBMI", "country": "ID", "category": "union"},
        metadata={},
        recorded_at=datetime.now(UTC),
    )
    assert registry.decode(record) == OrganisationRegistered(
        name="SBMI", country="ID", kind="union"
    )


def test_a_missing_upcaster_is_a_clear_error() -> None:
    registry = make_registry()

    @registry.register
    @dataclass(frozen=True)
    class Thing(DomainEvent):
        type = "thing.happened"
        schema_version = 2
        x: int

    with pytest.raises(UnknownEventType, match=r"no upcaster for thing\.happened v1"):
        registry.upcast("thing.happened", 1, {"x": 1})


def test_unknown_types_pass_through_upcasting_untouched() -> None:
    assert make_registry().upcast("other.type", 1, {"a": 1}) == (1, {"a": 1})


def test_registering_two_classes_under_one_type_is_refused() -> None:
    registry = make_registry()

    @registry.register
    @dataclass(frozen=True)
    class A(DomainEvent):
        type = "dup"

    @dataclass(frozen=True)
    class B(DomainEvent):
        type = "dup"

    with pytest.raises(ValueError, match="registered twice"):
        registry.register(B)


def test_from_json_handles_optionals_and_collections() -> None:
    assert from_json(tuple[int, ...], [1, 2]) == (1, 2)
    assert from_json(frozenset[str], ["a", "b"]) == frozenset({"a", "b"})
    assert from_json(UUID | None, None) is None
    u = uuid4()
    assert from_json(UUID | None, str(u)) == u
