"""The event catalogue, the AsyncAPI document and the feed's stable, cacheable pages."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import jsonschema_rs
import pytest
from fastapi.testclient import TestClient

from infra.bootstrap import System
from infra.integration import contract
from services.ports import NO_STREAM, NewEvent, RecordedEvent
from tests.e2e.conftest import Keys
from tests.e2e.test_authorization_matrix import ORGANISER, World, build_world

PROBLEM = "application/problem+json"
#: The official AsyncAPI 3.0.0 JSON Schema (npm package @asyncapi/specs 6.11.1,
#: ``schemas/3.0.0-without-$id.json``; Apache-2.0, licence beside it).
ASYNCAPI_SCHEMA = Path(__file__).parent / "data" / "asyncapi-3.0.0.schema.json"


def is_uuid(value: str) -> bool:
    try:
        UUID(value)
    except ValueError:
        return False
    return True


def validator(schema: dict[str, Any]) -> jsonschema_rs.Validator:
    """Draft-07 with formats checked (``uuid`` too, which draft-07 does not define)."""
    return jsonschema_rs.Draft7Validator(schema, validate_formats=True, formats={"uuid": is_uuid})


def read_feed(client: TestClient, headers: dict[str, str]) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    after = 0
    while True:
        page = client.get("/v1/events", params={"after": after, "limit": 200}, headers=headers)
        assert page.status_code == 200, page.text
        body = page.json()
        events += body["data"]
        if not body["has_more"]:
            return events
        after = body["next_after"]


def endorse(client: TestClient, world: World) -> None:
    """Finalise the world's statement and have organisation A endorse it (personal data)."""
    organiser = world.headers[ORGANISER]
    url = f"/v1/statements/{world.statement_id}"
    deadline = (datetime.now(UTC) + timedelta(days=7)).isoformat()
    finalised = client.post(
        f"{url}/finalise", json={"endorsement_deadline": deadline}, headers=organiser
    )
    assert finalised.status_code == 200, finalised.text
    endorsed = client.post(
        f"{url}/endorsements",
        json={
            "organisation_id": world.org_a,
            "signatory_name": "Hà Thị Minh Đức",
            "signatory_title": "Giám đốc",
        },
        headers=organiser,
    )
    assert endorsed.status_code == 201, endorsed.text


# -- the catalogue ------------------------------------------------------------------------------


def test_the_catalogue_lists_every_public_type_with_its_schema(
    client: TestClient, keys: Keys
) -> None:
    response = client.get("/v1/event-types", headers=keys.integrator)
    assert response.status_code == 200, response.text
    listed = response.json()["data"]
    assert [t["type"] for t in listed] == [p.type for p in contract.PUBLIC]
    endorsed = next(t for t in listed if t["type"] == "org.concord.statement.endorsed.v1")
    assert endorsed["name"] == "statement.endorsed" and endorsed["version"] == 1
    assert endorsed["description"]
    assert endorsed["schema"]["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert endorsed["schema"]["properties"]["signatory_name"]["x-personal"] is True
    assert "org.concord.statement.publication_requested.v1" not in {t["type"] for t in listed}
    org_key = keys.make("organisation", uuid4())
    assert client.get("/v1/event-types", headers=org_key).status_code in (403, 401)
    assert client.get("/v1/event-types").status_code == 401


def test_every_schema_validates_the_events_the_api_produces(client: TestClient, keys: Keys) -> None:
    world = build_world(client, keys)
    endorse(client, world)
    admin = keys.admin
    schemas = {
        t["type"]: validator(t["schema"])
        for t in client.get("/v1/event-types", headers=admin).json()["data"]
    }
    response_text = client.get("/v1/events", params={"limit": 1000}, headers=admin).text
    assert "$personal" not in response_text, "personal data is rendered as plain values"
    checked: set[str] = set()
    for event in read_feed(client, admin):
        if event["public_type"] is None:
            continue
        errors = [str(e) for e in schemas[event["public_type"]].iter_errors(event["data"])]
        assert not errors, (event["public_type"], errors, event["data"])
        checked.add(event["public_type"])
    # The world exercises most of the contract, personal data included.
    assert {
        "org.concord.statement.endorsed.v1",
        "org.concord.consultation.participant_registered.v1",
        "org.concord.consultation.session_scheduled.v1",
        "org.concord.consultation.planned.v1",
        "org.concord.organisation.registered.v1",
        "org.concord.series.launched.v1",
    } <= checked
    assert len(checked) >= 12, sorted(checked)
    endorsement = next(e for e in read_feed(client, admin) if e["type"] == "statement.endorsed")
    assert endorsement["data"]["signatory_name"] == "Hà Thị Minh Đức"
    assert endorsement["data"]["signatory_title"] == "Giám đốc"


# -- the AsyncAPI document ----------------------------------------------------------------------


def resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        assert isinstance(node, dict) and part in node, f"{ref} does not resolve"
        node = node[part]
    return node


def inline(document: dict[str, Any], node: Any) -> Any:
    """A schema with its ``$ref``s into the document replaced, to validate against."""
    if isinstance(node, dict):
        if "$ref" in node:
            return inline(document, resolve(document, node["$ref"]))
        return {k: inline(document, v) for k, v in node.items()}
    if isinstance(node, list):
        return [inline(document, v) for v in node]
    return node


def test_the_asyncapi_document_is_valid_and_complete(client: TestClient, keys: Keys) -> None:
    response = client.get("/v1/asyncapi.json")  # public, like /openapi.json
    assert response.status_code == 200, response.text
    document = response.json()
    assert document["asyncapi"] == "3.0.0"
    official = jsonschema_rs.validator_for(json.loads(ASYNCAPI_SCHEMA.read_text()))
    errors = [f"{e.instance_path}: {e}"[:300] for e in official.iter_errors(document)]
    assert not errors, errors
    broken = {**document, "channels": {"x": {"address": 5}}}
    assert not official.is_valid(broken), "the official schema must be able to fail"

    public = {p.type for p in contract.PUBLIC}
    channels = document["channels"]
    assert channels["eventStream"]["address"] == "/v1/events/stream"
    for name, channel in channels.items():
        carried = set()
        for ref in channel["messages"].values():
            message = resolve(document, ref["$ref"])
            assert ref["$ref"].startswith("#/components/messages/"), (name, ref)
            data = message["payload"]["properties"]["data"]
            assert data["$ref"].startswith("#/components/schemas/")
            resolve(document, data["$ref"])
            carried.add(message["name"])
        assert carried == public, name
    for operation in document["operations"].values():
        channel_ref = operation["channel"]["$ref"]
        resolve(document, channel_ref)
        for ref in operation["messages"]:
            assert ref["$ref"].startswith(channel_ref + "/messages/"), ref
            resolve(document, ref["$ref"])
    webhook = resolve(document, "#/components/messages/webhook.statement.endorsed.v1")
    assert webhook["contentType"] == "application/cloudevents+json"
    assert {"webhook-id", "webhook-timestamp", "webhook-signature"} <= set(
        webhook["headers"]["required"]
    )


def test_the_asyncapi_messages_describe_what_is_sent(
    client: TestClient, keys: Keys, system: System
) -> None:
    """Real events, as a webhook body (CloudEvents) and as the stream's data, fit the document."""
    world = build_world(client, keys)
    endorse(client, world)
    document = client.get("/v1/asyncapi.json").json()
    records: list[RecordedEvent] = system.store.read_all(0, 1000)
    feed = {e["id"]: e for e in read_feed(client, keys.admin)}
    checked = 0
    for record in records:
        entry = contract.for_internal(record.type)
        if entry is None:
            continue
        key = entry.type.removeprefix("org.concord.")
        webhook = inline(document, document["components"]["messages"][f"webhook.{key}"])
        sse = inline(document, document["components"]["messages"][f"sse.{key}"])
        body = contract.cloudevent(record, system.settings.public_url)
        assert not list(validator(webhook["payload"]).iter_errors(body)), body
        shown = feed[str(record.id)]
        assert shown == contract.public_event(record), "the stream sends what the feed shows"
        assert not list(validator(sse["payload"]).iter_errors(shown)), shown
        checked += 1
    assert checked >= 15
    first = next(r for r in records if contract.for_internal(r.type) is not None)
    entry = contract.for_internal(first.type)
    assert entry is not None
    wrong = {**contract.cloudevent(first, "https://x.example"), "type": "org.concord.x.v1"}
    key = f"webhook.{entry.type.removeprefix('org.concord.')}"
    webhook = inline(document, document["components"]["messages"][key])
    assert not validator(webhook["payload"]).is_valid(wrong)


# -- stable pages -------------------------------------------------------------------------------


def seed(system: System, count: int) -> UUID:
    stream = uuid4()
    system.store.append(
        stream,
        "test_stream",
        NO_STREAM,
        [NewEvent("test.happened", {"n": n}) for n in range(count)],
    )
    return stream


def test_a_full_page_is_immutable_and_the_head_page_revalidates(
    client: TestClient, system: System, admin: dict[str, str]
) -> None:
    seed(system, 5)
    full = client.get("/v1/events", params={"limit": 2}, headers=admin)
    assert full.status_code == 200
    assert full.headers["cache-control"] == "private, max-age=31536000, immutable"
    assert full.headers["vary"] == "Authorization"
    etag = full.headers["etag"]
    assert etag.startswith('W/"')
    head = client.get("/v1/events", params={"after": 4, "limit": 2}, headers=admin)
    assert head.headers["cache-control"] == "private, no-cache"
    head_etag = head.headers["etag"]
    assert head_etag.startswith('"') and head_etag != etag
    for url, params, tag in (
        ("/v1/events", {"limit": 2}, etag),
        ("/v1/events", {"after": 4, "limit": 2}, head_etag),
    ):
        same = client.get(url, params=params, headers={**admin, "If-None-Match": tag})
        assert same.status_code == 304, same.text
        assert same.content == b"" and same.headers["etag"] == tag
        listed = client.get(url, params=params, headers={**admin, "If-None-Match": f'"x", {tag}'})
        assert listed.status_code == 304

    seed(system, 3)  # the log grows
    again = client.get("/v1/events", params={"limit": 2}, headers={**admin, "If-None-Match": etag})
    assert again.status_code == 304, "a full page never changes"
    fresh = client.get("/v1/events", params={"limit": 2}, headers=admin)
    assert fresh.json()["data"] == full.json()["data"]
    assert fresh.json()["head_position"] == 8 and fresh.headers["etag"] == etag
    grown = client.get(
        "/v1/events", params={"after": 4, "limit": 2}, headers={**admin, "If-None-Match": head_etag}
    )
    assert grown.status_code == 200, "the head page changed"
    assert [e["position"] for e in grown.json()["data"]] == [5, 6]
    assert grown.headers["cache-control"] == "private, max-age=31536000, immutable"
    assert grown.headers["etag"] != head_etag


def test_the_feed_filters_by_stream_and_by_versioned_public_type(
    client: TestClient, system: System, keys: Keys
) -> None:
    world = build_world(client, keys)
    admin = keys.admin
    one = client.get("/v1/events", params={"stream_id": world.org_a}, headers=admin).json()
    assert {e["stream_id"] for e in one["data"]} == {world.org_a}
    assert [e["type"] for e in one["data"]] == ["organisation.registered"]
    by_public = client.get(
        "/v1/events",
        params={"types": "org.concord.consultation.session_scheduled.v1"},
        headers=admin,
    ).json()
    by_name = client.get(
        "/v1/events", params={"types": "consultation.session_scheduled"}, headers=admin
    ).json()
    assert by_public["data"] == by_name["data"] and len(by_name["data"]) == 1
    assert by_name["data"][0]["public_type"] == "org.concord.consultation.session_scheduled.v1"
    bad = client.get("/v1/events", params={"stream_id": "nope"}, headers=admin)
    assert bad.status_code == 422 and bad.headers["content-type"] == PROBLEM


@pytest.mark.parametrize("header", ['"nope"', 'W/"nope"', "*"])
def test_if_none_match_only_matches_the_pages_own_etag(
    client: TestClient, system: System, admin: dict[str, str], header: str
) -> None:
    seed(system, 2)
    response = client.get("/v1/events", headers={**admin, "If-None-Match": header})
    assert response.status_code == (304 if header == "*" else 200)
