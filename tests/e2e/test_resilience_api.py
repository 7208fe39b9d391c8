"""What a client sees when the system is slow or half-failing: never a lie, never twice."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from api.main import create_app
from infra.bootstrap import System
from tests.e2e.conftest import Keys
from tests.e2e.test_statements_api import draft

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
    """An older transaction that may write events, still open, holds the horizon: the command
    is committed, but its position is not known yet. The API says so instead of guessing."""
    pg_system.store.sequence_timeout_s = 0.3
    _, secret = pg_system.keys.create("organiser", "slow")
    with TestClient(create_app(pg_system)) as client, pg_system.db.engine.connect() as other:
        holder = other.begin()
        other.execute(text("SELECT concord_event_writer(), pg_current_xact_id()"))
        response = client.post(
            "/v1/organisations", json=HRWG, headers={"Authorization": f"Bearer {secret}"}
        )
        holder.rollback()
    assert response.status_code == 202
    assert "x-event-position" not in response.headers
    pg_system.store.sequence_pending()
    assert [e.type for e in pg_system.store.read_all()] == ["organisation.registered"]


def _lose_answer_of(monkeypatch: pytest.MonkeyPatch, system: System, stream_type: str) -> None:
    """The next append to a ``stream_type`` stream commits, then its connection 'drops'
    before the answer comes back: the request cannot know the command happened."""
    real = system.store.append_batch

    def append(stream_id: Any, kind: str, *args: Any, **kwargs: Any) -> Any:
        result = real(stream_id, kind, *args, **kwargs)
        if kind == stream_type:
            monkeypatch.setattr(system.store, "append_batch", real)
            raise OperationalError("COMMIT", None, Exception("server closed the connection"))
        return result

    monkeypatch.setattr(system.store, "append_batch", append)


def test_a_lost_answer_is_a_503_and_a_retry_with_the_same_key_settles_it(
    client: TestClient, keys: Keys, system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    headers = {**keys.organiser, "Idempotency-Key": "hrwg-1", "X-Request-ID": "hrwg-1"}
    _lose_answer_of(monkeypatch, system, "organisation")
    lost = client.post("/v1/organisations", json=HRWG, headers=headers)
    assert lost.status_code == 503
    assert lost.headers["content-type"] == "application/problem+json"
    assert lost.headers["retry-after"] == "1"
    assert lost.json()["type"].endswith("/database-unavailable")

    retry = client.post("/v1/organisations", json=HRWG, headers=headers)
    assert retry.status_code == 201, retry.text
    assert "idempotent-replayed" not in retry.headers, "the first attempt stored no answer"
    [registered] = system.store.read_all(0, 100, types=["organisation.registered"])
    assert retry.json()["id"] == str(registered.stream_id), "the retry found the first one"
    assert registered.metadata["correlation_id"] == "hrwg-1"
    assert retry.headers["x-event-position"] == str(registered.position)
    replay = client.post("/v1/organisations", json=HRWG, headers=headers)
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json() == retry.json()
    assert len(system.store.read_all(0, 100)) == 1


def test_a_request_of_two_commands_cut_after_the_first_is_finished_by_its_retry(
    client: TestClient, keys: Keys, system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    organiser = keys.organiser
    hrwg = client.post("/v1/organisations", json=HRWG, headers=organiser).json()["id"]
    series = client.post(
        "/v1/series", headers=organiser, json={"title": "ASEAN", "planned_countries": ["ID"]}
    ).json()["id"]
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=60)
    plan = {
        "title": "National consultation",
        "scope": "national",
        "host_country": "ID",
        "city": "Jakarta",
        "mode": "in_person",
        "timezone": "Asia/Jakarta",
        "starts_at": start.isoformat(),
        "ends_at": (start + timedelta(hours=8)).isoformat(),
        "organiser_id": hrwg,
        "series_id": series,
    }
    headers = {**organiser, "Idempotency-Key": "plan-1"}
    _lose_answer_of(monkeypatch, system, "series")  # the consultation is planned, the join lost
    assert client.post("/v1/consultations", json=plan, headers=headers).status_code == 503

    retry = client.post("/v1/consultations", json=plan, headers=headers)
    assert retry.status_code == 201, retry.text
    planned = system.store.read_all(0, 100, types=["consultation.planned"])
    joined = system.store.read_all(0, 100, types=["series.consultation_joined"])
    assert [str(e.stream_id) for e in planned] == [retry.json()["id"]], "planned once"
    assert len(joined) == 1, "joined the series once"
    assert client.get(f"/v1/series/{series}").json()["progress"]["scheduled"] == ["ID"]


def test_a_withdrawal_whose_answer_was_lost_is_settled_by_its_retry(
    client: TestClient, keys: Keys, system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DELETE takes an Idempotency-Key too: the retry gets the withdrawal's answer, not "there
    is no endorsement to withdraw"."""
    drafted = draft(client, keys)
    url, hrwg = f"/v1/statements/{drafted['sid']}", drafted["orgs"]["Human Rights Working Group"]
    deadline = (datetime.now(UTC) + timedelta(days=7)).isoformat()
    organiser = drafted["organiser"]
    client.post(f"{url}/finalise", headers=organiser, json={"endorsement_deadline": deadline})
    endorsed = client.post(
        f"{url}/endorsements",
        headers=organiser,
        json={"organisation_id": hrwg, "signatory_name": "Rafendi Djamin"},
    )
    assert endorsed.status_code == 201, endorsed.text
    headers = {**organiser, "Idempotency-Key": "withdraw-hrwg"}
    _lose_answer_of(monkeypatch, system, "statement")
    assert client.delete(f"{url}/endorsements/{hrwg}", headers=headers).status_code == 503

    retry = client.delete(f"{url}/endorsements/{hrwg}", headers=headers)
    assert retry.status_code == 200, retry.text
    withdrawn = system.store.read_all(0, 1000, types=["statement.endorsement_withdrawn"])
    assert len(withdrawn) == 1
    replay = client.delete(f"{url}/endorsements/{hrwg}", headers=headers)
    assert replay.headers["idempotent-replayed"] == "true"
    again = client.delete(f"{url}/endorsements/{hrwg}", headers=organiser)
    assert again.status_code == 409, "without the key it is a new request, and refused"


def test_a_running_request_keeps_its_claim_past_the_lease(
    client: TestClient, keys: Keys, system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim lapses only when nobody renews it (its process died): a slow request renews
    it, so a duplicate sent meanwhile is still told "in progress" and runs nothing."""
    short = system.settings.model_copy(update={"idempotency_lease_s": 1.0})
    monkeypatch.setattr(system, "settings", short)
    real = system.projector.catch_up

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(3.0)  # three leases
        return real(*args, **kwargs)

    monkeypatch.setattr(system.projector, "catch_up", slow)
    headers = {**keys.organiser, "Idempotency-Key": "slow-1"}
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, "/v1/organisations", json=HRWG, headers=headers)
        time.sleep(2.2)  # the claim would have lapsed twice by now
        duplicate = client.post("/v1/organisations", json=HRWG, headers=headers)
        assert first.result(timeout=30).status_code == 201
    assert duplicate.status_code == 409
    assert duplicate.json()["type"].endswith("/idempotency-key-in-progress")
    assert len(system.store.read_all(0, 10)) == 1
