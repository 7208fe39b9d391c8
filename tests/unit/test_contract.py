"""The public event contract: coverage of every event type, the JSON shapes and their schemas."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from uuid import UUID, uuid4

import jsonschema_rs
import orjson
import pytest
from cloudevents.core.bindings.http import HTTPMessage, from_http_event

from infra.integration import contract
from services.consultations.events import SessionScheduled, Speaker
from services.invitations.events import InvitationIssued
from services.messages import DomainEvent, Personal, to_json
from services.ports import RecordedEvent
from services.statements.events import StatementEndorsed


def recorded(
    event: DomainEvent, *, position: int = 7, metadata: dict | None = None
) -> RecordedEvent:
    return RecordedEvent(
        id=uuid4(),
        stream_id=uuid4(),
        stream_type=event.type.split(".")[0],
        version=3,
        position=position,
        type=event.type,
        schema_version=event.schema_version,
        data=to_json(event),
        metadata=metadata or {"actor": "admin", "api_key_id": "k", "causation_id": None},
        recorded_at=datetime(2027, 2, 20, 2, 0, 0, 123456, tzinfo=UTC),
    )


def endorsed(title: str | None = "Director") -> StatementEndorsed:
    person = uuid4()
    return StatementEndorsed(
        statement_id=uuid4(),
        organisation_id=uuid4(),
        signatory_name=Personal(person, "Hà Thị Minh Đức"),
        signatory_title=Personal(person, title) if title else None,
        content_hash="ab" * 32,
        organisation_name="HRWG",
        organisation_country="ID",
        organisation_kind="network",
    )


def test_every_registered_event_type_is_public_or_explicitly_internal() -> None:
    registered = set(contract._registry().types())
    public = {p.internal for p in contract.PUBLIC}
    internal = set(contract.INTERNAL)
    assert not public & internal, "a type cannot be both public and internal"
    unmapped = registered - public - internal
    assert not unmapped, f"map these in infra/integration/contract.py: {sorted(unmapped)}"
    assert not (public | internal) - registered, "the contract names types nobody registers"


def test_public_types_are_unique_reverse_dns_names_with_a_version() -> None:
    names = [p.type for p in contract.PUBLIC]
    assert len(names) == len(set(names))
    for name in names:
        assert re.fullmatch(r"org\.concord\.[a-z_]+\.[a-z_]+\.v[1-9][0-9]*", name), name
    assert contract.for_internal("statement.endorsed") == contract.by_type(
        "org.concord.statement.endorsed.v1"
    )
    assert all(p.description for p in contract.PUBLIC)


def test_filters_accept_versioned_public_types_and_plain_names() -> None:
    assert contract.internal_types(
        ["org.concord.statement.endorsed.v1", "statement.endorsed", "consultation.planned"]
    ) == ["statement.endorsed", "consultation.planned"]
    assert contract.internal_types(["org.concord.nothing.v9"]) == ["org.concord.nothing.v9"]


def test_the_public_event_has_the_feed_fields_and_plain_personal_data() -> None:
    event = recorded(endorsed(), metadata={"actor": "org", "correlation_id": "req-1"})
    body = contract.public_event(event)
    assert body is not None
    assert body == {
        "id": str(event.id),
        "type": "statement.endorsed",
        "public_type": "org.concord.statement.endorsed.v1",
        "stream_id": str(event.stream_id),
        "stream_type": "statement",
        "version": 3,
        "position": 7,
        "schema_version": 1,
        "recorded_at": "2027-02-20T02:00:00.123456Z",
        "data": {**event.data, "signatory_name": "Hà Thị Minh Đức", "signatory_title": "Director"},
        "metadata": {
            "actor": "org",
            "api_key_id": None,
            "causation_id": None,
            "correlation_id": "req-1",
        },
    }
    # The stored payload keeps its markers: only the rendering reveals them.
    assert event.data["signatory_name"]["$personal"]["value"] == "Hà Thị Minh Đức"
    orjson.dumps(body)  # plain JSON, nothing left to encode


def test_personal_markers_inside_lists_are_revealed() -> None:
    duc = uuid4()
    session = SessionScheduled(
        consultation_id=uuid4(),
        session_id=uuid4(),
        title="Opening",
        kind="plenary",
        starts_at=datetime(2027, 2, 20, 2, tzinfo=UTC),
        ends_at=datetime(2027, 2, 20, 3, tzinfo=UTC),
        thematic_area=None,
        speakers=(Speaker(duc, Personal(duc, "Đức"), None),),
    )
    body = contract.public_event(recorded(session))
    assert body is not None
    assert body["data"]["speakers"] == [
        {"person_id": str(duc), "name": "Đức", "organisation_id": None}
    ]


def test_internal_and_unknown_types_are_not_public() -> None:
    base = recorded(endorsed())
    for name in ("statement.publication_requested", "reminder.sent", "test.planned"):
        event = RecordedEvent(base.id, base.stream_id, "x", 1, 1, name, 1, {}, {}, base.recorded_at)
        assert contract.public_event(event) is None
        with pytest.raises(ValueError, match="not public"):
            contract.cloudevent(event, "https://concord.example")
        # The raw feed still shows them, with no public type.
        assert contract.envelope(event)["public_type"] is None


def test_the_cloudevent_parses_with_the_cloudevents_sdk() -> None:
    event = recorded(endorsed(title=None), position=42)
    body = contract.cloudevent(event, "https://concord.example/")
    for name in body:
        if name not in {"specversion", "id", "source", "type", "time", "subject"} | {
            "datacontenttype",
            "data",
        }:
            assert re.fullmatch(r"[a-z0-9]{1,20}", name), f"bad extension name {name}"
    parsed = from_http_event(
        HTTPMessage(
            headers={"content-type": "application/cloudevents+json"}, body=orjson.dumps(body)
        )
    )
    assert parsed.get_id() == str(event.id)
    assert parsed.get_type() == "org.concord.statement.endorsed.v1"
    assert parsed.get_source() == f"https://concord.example/v1/streams/{event.stream_id}"
    assert parsed.get_subject() == str(event.stream_id)
    assert parsed.get_time() == event.recorded_at
    assert parsed.get_extension("position") == 42
    assert parsed.get_data() == {
        **event.data,
        "signatory_name": "Hà Thị Minh Đức",
        "signatory_title": None,
    }


def is_uuid(value: str) -> bool:
    try:
        UUID(value)
    except ValueError:
        return False
    return True


def validator(public_type: str) -> jsonschema_rs.Validator:
    """Draft-07 with formats checked; ``uuid`` (not a draft-07 format) checked too."""
    return jsonschema_rs.Draft7Validator(
        contract.data_schema(public_type), validate_formats=True, formats={"uuid": is_uuid}
    )


def test_schemas_mark_personal_fields_and_validate_real_payloads() -> None:
    schema = contract.data_schema("org.concord.statement.endorsed.v1")
    assert schema["properties"]["signatory_name"] == {
        "anyOf": [{"type": "string"}, {"type": "null"}],  # null once the person is erased
        "x-personal": True,
    }
    assert "$defs" not in str(schema) and "$ref" not in str(schema)
    check = validator("org.concord.statement.endorsed.v1")
    good = contract.public_event(recorded(endorsed()))
    assert good is not None
    check.validate(good["data"])
    # A marker instead of a plain value, a missing field or a bad UUID do not pass.
    raw = recorded(endorsed()).data
    assert not check.is_valid(raw)
    assert not check.is_valid({k: v for k, v in good["data"].items() if k != "content_hash"})
    assert not check.is_valid({**good["data"], "statement_id": "not-a-uuid"})
    # An erased person's data is null (the marker says erased, the store opened nothing).
    erased = {**raw, "signatory_name": {"$personal": {"subject": str(uuid4()), "erased": True}}}
    shown = contract.public_event(recorded(endorsed())._replace(data=erased))
    assert shown is not None and shown["data"]["signatory_name"] is None
    check.validate(shown["data"])
    # Additional fields are a compatible change: allowed.
    assert check.is_valid({**good["data"], "added_later": 1})


def test_every_public_type_has_a_schema_that_is_valid_json_schema() -> None:
    for entry in contract.PUBLIC:
        schema = contract.data_schema(entry.type)
        jsonschema_rs.meta.validate({"$schema": contract.SCHEMA_DIALECT, **schema})
        assert schema["type"] == "object" and schema["title"] == entry.type
    assert not jsonschema_rs.meta.is_valid({"$schema": contract.SCHEMA_DIALECT, "type": "thing"})
    with pytest.raises(KeyError):
        contract.data_schema("org.concord.statement.publication_requested.v1")


def test_an_invitation_is_public_without_its_token_hash_and_with_the_address_plain() -> None:
    email = "coordinator@yangon.example.org"
    person = uuid4()
    issued = InvitationIssued(
        invitation_id=uuid4(),
        statement_id=uuid4(),
        consultation_id=uuid4(),
        organisation_id=uuid4(),
        email=Personal(person, email),
        language="my",
        generation=1,
        token_hash="cd" * 32,
        expires_at=datetime(2027, 3, 15, 3, tzinfo=UTC),
    )
    event = recorded(issued)
    assert event.data["token_hash"] == "cd" * 32, "the log keeps the hash"
    for body in (
        contract.public_event(event),
        contract.envelope(event),
        contract.cloudevent(event, "https://concord.example"),
    ):
        assert body is not None
        assert "token_hash" not in body["data"]
        assert "cd" * 32 not in orjson.dumps(body).decode()
        assert body["data"]["email"] == email
    schema = contract.data_schema("org.concord.invitation.issued.v1")
    assert "token_hash" not in schema["properties"]
    assert "token_hash" not in schema["required"]
    assert schema["properties"]["email"] == {
        "anyOf": [{"type": "string"}, {"type": "null"}],
        "x-personal": True,
    }
    body = contract.public_event(event)
    assert body is not None
    validator("org.concord.invitation.issued.v1").validate(body["data"])
    resent = contract.data_schema("org.concord.invitation.resent.v1")
    assert "token_hash" not in resent["properties"]
