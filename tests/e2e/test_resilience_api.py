"""What a client sees when the system is slow or half-failing: never a lie, never twice."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from api.main import create_app
from infra.bootstrap import System
from tests.e2e.conftest import Keys

HRWG = {"name": "Human Rights Working Group", "kind": "ngo", "country": "ID"}


def test_a_read_side_failure_after_commit_is_a_202_and_a_retry_does_not_repeat_it(
    client: TestClient, keys: Keys, system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object, **__: object) -> int:
        raise RuntimeError("projection down")

    monkeypatch.setattr(system.projector, "catch_up", broken)
    headers = {**keys.organiser, "Idempotency-Key": "once-only"}
    first = client.post("/v1/organisations", json=HRWG, headers=headers)
    assert first.status_code == 202
    assert first.json()["status"] == "accepted"
    assert first.headers["etag"] == '"1"'
    again = client.post("/v1/organisations", json=HRWG, headers=headers)
    assert again.status_code == 202
    assert again.headers["idempotent-replayed"] == "true"
    registered = system.store.read_all(0, 100, types=["organisation.registered"])
    assert len(registered) == 1, "the retry did not register a second organisation"


def test_key_secrets_are_not_kept_for_replay(
    client: TestClient, keys: Keys, system: System
) -> None:
    headers = {**keys.admin, "Idempotency-Key": "new-key-1"}
    body = {"name": "newsletter", "role": "integrator"}
    first = client.post("/v1/api-keys", json=body, headers=headers)
    assert first.status_code == 201
    secret = first.json()["key"]
    replay = client.post("/v1/api-keys", json=body, headers=headers)
    assert replay.json()["key"] is None
    assert replay.json()["id"] == first.json()["id"]
    with system.db.read() as conn:
        stored = conn.execute(text("SELECT body FROM idempotency_keys")).scalars().all()
    assert all(secret.encode() not in bytes(b) for b in stored)


def test_a_revoked_key_gets_no_stored_response(
    client: TestClient, keys: Keys, system: System
) -> None:
    key, secret = system.keys.create("organiser", "soon revoked")
    headers = {"Authorization": f"Bearer {secret}", "Idempotency-Key": "k-1"}
    assert client.post("/v1/organisations", json=HRWG, headers=headers).status_code == 201
    system.keys.revoke(key.id)
    assert client.post("/v1/organisations", json=HRWG, headers=headers).status_code == 401


def test_absurd_numbers_are_client_errors(client: TestClient, keys: Keys) -> None:
    admin = keys.admin
    assert client.get("/v1/events", params={"after": 10**20}, headers=admin).status_code == 422
    assert (
        client.get(
            "/v1/consultations/00000000-0000-0000-0000-000000000001", params={"as_of": "²"}
        ).status_code
        == 422
    )
    started = time.monotonic()
    far = client.get("/v1/consultations", headers={"X-Min-Position": str(10**18)})
    assert far.status_code == 503
    assert time.monotonic() - started < 2, "a position never issued is refused at once"


def test_a_command_whose_position_is_held_back_answers_202(pg_system: System) -> None:
    """An older transaction still open in this database holds the horizon: the command is
    committed, but its position is not known yet. The API says so instead of guessing."""
    pg_system.store.sequence_timeout_s = 0.3
    _, secret = pg_system.keys.create("organiser", "slow")
    with TestClient(create_app(pg_system)) as client, pg_system.db.engine.connect() as other:
        holder = other.begin()
        other.execute(text("SELECT pg_current_xact_id()"))
        response = client.post(
            "/v1/organisations", json=HRWG, headers={"Authorization": f"Bearer {secret}"}
        )
        holder.rollback()
    assert response.status_code == 202
    assert "x-event-position" not in response.headers
    pg_system.store.sequence_pending()
    assert [e.type for e in pg_system.store.read_all()] == ["organisation.registered"]
