"""Webhook subscriptions through the HTTP API, on SQLite and PostgreSQL.

Integrators manage their own subscriptions; another key's is a 404; admins manage all.
Deliveries go to a real receiver on 127.0.0.1 (allowed by ``CONCORD_WEBHOOK_ALLOW_HOSTS``).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from fastapi.testclient import TestClient

from infra.bootstrap import System
from infra.settings import Settings
from tests.e2e.conftest import Keys
from tests.integration.test_webhooks import Rig
from tests.webhook_receiver import Receiver, Reply

PROBLEM = "application/problem+json"


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        DATABASE_URL=database_url,
        CONCORD_DATA_DIR=tmp_path / "data",
        REDIS_URL=None,
        CONCORD_LOG_FORMAT="console",
        CONCORD_WEBHOOK_ALLOW_HOSTS="127.0.0.1",
        CONCORD_WEBHOOK_TIMEOUT=1,
    )


@pytest.fixture
def rig(system: System) -> Iterator[Rig]:
    with Receiver() as receiver:
        yield Rig(system, receiver)
        assert receiver.problems == [], receiver.problems


def create(client: TestClient, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    response = client.post(
        "/v1/subscriptions", json={"url": "https://hooks.example.org/in", **body}, headers=headers
    )
    assert response.status_code == 201, response.text
    return response.json()


def register_organisations(client: TestClient, keys: Keys, count: int) -> list[str]:
    organiser = keys.organiser
    ids = []
    for i in range(count):
        response = client.post(
            "/v1/organisations",
            json={"name": f"Coalition member {i}", "kind": "ngo", "country": "PH"},
            headers=organiser,
        )
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    return ids


def test_a_subscription_is_created_with_its_secret_shown_once(
    client: TestClient, keys: Keys
) -> None:
    integrator = keys.integrator
    headers = {**integrator, "Idempotency-Key": "subscribe-crm-1"}
    body = {
        "url": "https://hooks.example.org/concord",
        "event_types": ["statement.endorsed", "org.concord.organisation.registered.v1"],
        "description": "CRM mirror",
    }
    first = client.post("/v1/subscriptions", json=body, headers=headers)
    assert first.status_code == 201, first.text
    created = first.json()
    assert first.headers["location"] == f"/v1/subscriptions/{created['id']}"
    secret = created["secret"]
    assert secret.startswith("whsec_")
    assert 24 <= len(base64.b64decode(secret.removeprefix("whsec_"))) <= 64
    assert created["status"] == "active"
    assert created["event_types"] == body["event_types"]
    assert created["description"] == "CRM mirror"
    again = client.post("/v1/subscriptions", json=body, headers=headers)
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == created["id"]
    assert again.json()["secret"] is None, "the secret is not kept for replays"
    shown = client.get(f"/v1/subscriptions/{created['id']}", headers=integrator)
    assert shown.status_code == 200
    assert "secret" not in shown.json()
    assert secret not in shown.text
    listed = client.get("/v1/subscriptions", headers=integrator).json()["data"]
    assert [s["id"] for s in listed] == [created["id"]]
    assert secret not in client.get("/v1/subscriptions", headers=integrator).text


@pytest.mark.parametrize(
    "url",
    [
        "https://localhost/hook",
        "https://2130706434/hook",  # 127.0.0.2 (only 127.0.0.1 is allowed here)
        "https://0x7f.2/hook",
        "https://[::ffff:169.254.169.254]/latest/meta-data",
        "https://169.254.169.254/latest/meta-data",
        "https://metadata.google.internal/computeMetadata/v1/",
        "https://10.0.0.8/hook",
        "https://100.64.0.1/hook",
        "https://[fd00::1]/hook",
        "https://224.0.0.1/hook",
        "http://93.184.215.14/hook",  # plain http to the internet
        "ftp://93.184.215.14/hook",
        "https://user:secret@93.184.215.14/hook",
        "https://0177.0.0.1/hook",
    ],
)
def test_unsafe_urls_are_refused_with_a_problem(client: TestClient, keys: Keys, url: str) -> None:
    response = client.post("/v1/subscriptions", json={"url": url}, headers=keys.integrator)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["errors"][0]["field"] == "url"


def test_unknown_or_internal_event_types_are_refused(client: TestClient, keys: Keys) -> None:
    for types in (["statement.endorsed", "statement.signed"], ["statement.compiled"], []):
        response = client.post(
            "/v1/subscriptions",
            json={"url": "https://hooks.example.org/x", "event_types": types},
            headers=keys.integrator,
        )
        assert response.status_code == 422, (types, response.text)
        assert response.headers["content-type"] == PROBLEM


def test_keys_see_and_change_only_their_own_subscriptions(client: TestClient, keys: Keys) -> None:
    mine, theirs, admin = keys.integrator, keys.integrator, keys.admin
    sub = create(client, mine)
    other = create(client, theirs)
    url = f"/v1/subscriptions/{sub['id']}"
    for method, path, body in (
        ("GET", url, None),
        ("PATCH", url, {"description": "hijacked"}),
        ("DELETE", url, None),
        ("POST", url + "/rotate-secret", None),
        ("GET", url + "/deliveries", None),
        ("POST", url + "/replay", {"after": 0}),
    ):
        response = client.request(method, path, json=body, headers=theirs)
        assert response.status_code == 404, (method, path, response.text)
        assert response.headers["content-type"] == PROBLEM
        for caller in (keys.organiser, keys.make("organisation", _org(client, keys))):
            assert client.request(method, path, json=body, headers=caller).status_code == 403
        assert client.request(method, path, json=body).status_code == 401
    assert [s["id"] for s in client.get("/v1/subscriptions", headers=theirs).json()["data"]] == [
        other["id"]
    ]
    everything = client.get("/v1/subscriptions", headers=admin).json()["data"]
    assert {s["id"] for s in everything} == {sub["id"], other["id"]}
    assert client.get(url, headers=mine).json()["description"] is None, "untouched"
    changed = client.patch(url, json={"description": "by the admin"}, headers=admin)
    assert changed.status_code == 200 and changed.json()["description"] == "by the admin"


def _org(client: TestClient, keys: Keys) -> str:
    return register_organisations(client, keys, 1)[0]


def test_patch_pauses_resumes_and_changes_what_is_given(client: TestClient, keys: Keys) -> None:
    integrator = keys.integrator
    sub = create(client, integrator, event_types=["statement.endorsed"], description="first")
    url = f"/v1/subscriptions/{sub['id']}"
    paused = client.patch(url, json={"status": "paused"}, headers=integrator)
    assert paused.status_code == 200, paused.text
    assert paused.json()["status"] == "paused"
    assert paused.json()["description"] == "first", "only what is given changes"
    assert paused.json()["event_types"] == ["statement.endorsed"]
    everything = client.patch(url, json={"event_types": None}, headers=integrator)
    assert everything.json()["event_types"] is None
    moved = client.patch(url, json={"url": "https://hooks.example.org/v2"}, headers=integrator)
    assert moved.json()["url"] == "https://hooks.example.org/v2"
    for bad in ({"url": "https://10.1/"}, {"url": None}, {"status": "disabled"}, {"x": 1}):
        refused = client.patch(url, json=bad, headers=integrator)
        assert refused.status_code == 422, (bad, refused.text)
    resumed = client.patch(url, json={"status": "active"}, headers=integrator)
    assert resumed.json()["status"] == "active"
    assert resumed.json()["url"] == "https://hooks.example.org/v2"


def test_a_contact_address_is_kept_checked_changed_and_cleared(
    client: TestClient, keys: Keys
) -> None:
    integrator = keys.integrator
    sub = create(client, integrator, contact_email="ops@crm.example")
    assert sub["contact_email"] == "ops@crm.example"
    url = f"/v1/subscriptions/{sub['id']}"
    assert client.get(url, headers=integrator).json()["contact_email"] == "ops@crm.example"
    bad = client.post(
        "/v1/subscriptions",
        json={"url": "https://hooks.example.org/in", "contact_email": "not an address"},
        headers=integrator,
    )
    assert bad.status_code == 422 and bad.headers["content-type"] == PROBLEM
    assert client.patch(url, json={"contact_email": "x@"}, headers=integrator).status_code == 422
    moved = client.patch(url, json={"contact_email": "webhooks@crm.example"}, headers=integrator)
    assert moved.json()["contact_email"] == "webhooks@crm.example"
    paused = client.patch(url, json={"status": "paused"}, headers=integrator)
    assert paused.json()["contact_email"] == "webhooks@crm.example", "only what is given changes"
    cleared = client.patch(url, json={"contact_email": None}, headers=integrator)
    assert cleared.json()["contact_email"] is None


def test_rotating_the_secret_returns_a_new_one_and_the_grace_period(
    client: TestClient, keys: Keys
) -> None:
    integrator = keys.integrator
    sub = create(client, integrator)
    url = f"/v1/subscriptions/{sub['id']}/rotate-secret"
    headers = {**integrator, "Idempotency-Key": "rotate-1"}
    rotated = client.post(url, headers=headers)
    assert rotated.status_code == 200, rotated.text
    body = rotated.json()
    assert body["secret"].startswith("whsec_") and body["secret"] != sub["secret"]
    grace = datetime.fromisoformat(body["previous_secret_expires_at"])
    assert abs(grace - (datetime.now(UTC) + timedelta(hours=24))) < timedelta(minutes=1)
    replayed = client.post(url, headers=headers)
    assert replayed.json()["secret"] is None, "the secret is not kept for replays"


def test_delete_removes_the_subscription(client: TestClient, keys: Keys) -> None:
    integrator = keys.integrator
    sub = create(client, integrator)
    url = f"/v1/subscriptions/{sub['id']}"
    assert client.delete(url, headers=integrator).status_code == 204
    assert client.get(url, headers=integrator).status_code == 404
    assert client.delete(url, headers=integrator).status_code == 404
    assert client.get("/v1/subscriptions", headers=integrator).json()["data"] == []


def test_the_delivery_log_shows_attempts_codes_and_the_next_retry_and_replay_resends(
    client: TestClient, keys: Keys, rig: Rig
) -> None:
    integrator = keys.integrator
    sub = create(client, integrator, url=rig.receiver.url)
    rig.receiver.secrets.append(sub["secret"])
    orgs = register_organisations(client, keys, 3)
    events = rig.system.store.read_all(0, 100, types=["organisation.registered"])
    first = str(events[0].id)
    rig.receiver.script[first] = [Reply(500, body=b"database is down")]
    assert rig.deliverer.run(UUID(sub["id"])) == 0
    url = f"/v1/subscriptions/{sub['id']}/deliveries"
    page = client.get(url, headers=integrator)
    assert page.status_code == 200, page.text
    rows = page.json()["data"]
    assert [r["status"] for r in rows] == ["pending"] * 3
    head = rows[0]
    assert head["event_id"] == first
    assert head["public_type"] == "org.concord.organisation.registered.v1"
    assert head["attempts"] == 1 and head["last_status_code"] == 500
    due = datetime.fromisoformat(head["next_attempt_at"])
    assert timedelta(seconds=4) < due - datetime.now(UTC) <= timedelta(seconds=6)
    assert [(a["number"], a["status_code"], a["response_body"]) for a in head["attempt_log"]] == [
        (1, 500, "database is down")
    ]
    assert rows[1]["attempts"] == 0, "the next event waits for the first"
    rig.clock.advance(timedelta(seconds=6))
    assert rig.deliverer.run(UUID(sub["id"])) == 3
    delivered = client.get(url, params={"status": "delivered", "limit": 2}, headers=integrator)
    body = delivered.json()
    assert [r["status"] for r in body["data"]] == ["delivered"] * 2
    assert body["has_more"] is True
    rest = client.get(url, params={"after": body["next_after"]}, headers=integrator).json()
    assert len(rest["data"]) == 1 and rest["has_more"] is False
    assert [a["status_code"] for a in body["data"][0]["attempt_log"]] == [500, 204]
    replay = client.post(
        f"/v1/subscriptions/{sub['id']}/replay", json={"after": 0}, headers=integrator
    )
    assert replay.status_code == 202, replay.text
    assert replay.json()["scheduled"] == 3 and replay.json()["complete"] is True
    assert rig.deliverer.run(UUID(sub["id"])) == 3
    assert rig.receiver.unique_ids() == [str(e.id) for e in events]
    assert rig.receiver.ids()[-3:] == [str(e.id) for e in events]
    assert len(orgs) == 3
