"""How each API key is used, as an operator sees it: ``GET /v1/api-keys/{id}/usage`` and
``concord keys list``; counted per request in memory, written in batches (never per request),
and kept when the process stops."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, select
from structlog.testing import capture_logs
from typer.testing import CliRunner

from api.main import create_app
from infra.bootstrap import System
from infra.cli import app as cli
from infra.schema import api_key_usage, api_keys
from tests.e2e.conftest import Keys


@contextmanager
def serving(system: System, **settings: Any) -> Iterator[TestClient]:
    tuned = dataclasses.replace(system, settings=system.settings.model_copy(update=settings))
    with TestClient(create_app(tuned), raise_server_exceptions=False) as client:
        yield client


def key_id(system: System, headers: dict[str, str]) -> UUID:
    prefix = headers["Authorization"].split("_")[1]
    return next(k.id for k in system.keys.list() if k.prefix == prefix)


def stored(system: System, key: UUID) -> list[Any]:
    with system.db.read() as conn:
        return list(conn.execute(select(api_key_usage).where(api_key_usage.c.key_id == key)))


@pytest.mark.usefixtures("whole_minute_ahead")
def test_an_admin_sees_reads_writes_refusals_and_the_last_use(system: System, keys: Keys) -> None:
    integrator, admin = keys.integrator, keys.admin
    with serving(system, rate_limit_read="4/minute") as client:
        for _ in range(6):  # 4 reads, then 2 refused by the read budget
            client.get("/v1/events", headers=integrator)
        made = client.post(
            "/v1/subscriptions", json={"url": "https://hooks.example.org/x"}, headers=integrator
        )
        assert made.status_code == 201, made.text
        forbidden = client.post(
            "/v1/organisations",
            json={"name": "Nope", "kind": "ngo", "country": "ID"},
            headers=integrator,
        )
        assert forbidden.status_code == 403
        started = datetime.now(UTC)
        usage = client.get(f"/v1/api-keys/{key_id(system, integrator)}/usage", headers=admin)
    assert usage.status_code == 200, usage.text
    body = usage.json()
    assert body["totals"] == {"reads": 4, "writes": 1, "denied": 1, "rate_limited": 2}
    assert body["last_client"] == "testclient"
    assert body["key"]["prefix"] == integrator["Authorization"].split("_")[1]
    last_used = datetime.fromisoformat(body["last_used_at"])
    assert (started - last_used).total_seconds() < 5
    [hour] = body["data"]
    assert hour["reads"] == 4 and hour["writes"] == 1
    assert datetime.fromisoformat(hour["hour"]) <= last_used
    listed = {k["prefix"]: k for k in client_keys(system, admin)}
    assert listed[body["key"]["prefix"]]["last_used_at"] is not None


def client_keys(system: System, admin: dict[str, str]) -> list[dict[str, Any]]:
    with serving(system) as client:
        response = client.get("/v1/api-keys", headers=admin)
        assert response.status_code == 200
        result: list[dict[str, Any]] = response.json()
        return result


def test_counts_are_written_in_batches_and_at_shutdown(system: System, keys: Keys) -> None:
    key = keys.organiser
    writes: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith(("INSERT", "UPDATE")):
            writes.append(statement)

    event.listen(system.db.engine, "before_cursor_execute", seen)
    try:
        with serving(system, key_usage_flush_s=3600) as client:
            for _ in range(20):
                assert client.get("/v1/consultations", headers=key).status_code == 200
            assert writes == [], "no database write per request"
            assert stored(system, key_id(system, key)) == []
        # leaving the app (its shutdown) writes what was counted: one batch
    finally:
        event.remove(system.db.engine, "before_cursor_execute", seen)
    assert [s for s in writes if "api_key_usage" in s], writes
    assert len(writes) == 2, writes  # the usage rows, then api_keys.last_used_at
    [row] = stored(system, key_id(system, key))
    assert (row.reads, row.writes, row.denied, row.rate_limited) == (20, 0, 0, 0)


def test_counts_reach_the_database_every_few_seconds(system: System, keys: Keys) -> None:
    import time

    key = keys.organiser
    with serving(system, key_usage_flush_s=0.2) as client:
        client.get("/v1/consultations", headers=key)
        deadline = time.monotonic() + 5
        while not stored(system, key_id(system, key)):
            assert time.monotonic() < deadline, "the usage was not written in the background"
            time.sleep(0.05)
        with system.db.read() as conn:
            last = conn.execute(
                select(api_keys.c.last_used_at).where(api_keys.c.id == key_id(system, key))
            ).scalar_one()
        assert last is not None


def test_a_revoked_key_in_use_shows_as_denied(system: System, keys: Keys) -> None:
    key, secret = system.keys.create("integrator", "leaked")
    system.keys.revoke(key.id)
    with serving(system) as client:
        for _ in range(3):
            response = client.get("/v1/events", headers={"Authorization": f"Bearer {secret}"})
            assert response.status_code == 401
        usage = client.get(f"/v1/api-keys/{key.id}/usage", headers=keys.admin).json()
    assert usage["totals"]["denied"] == 3
    assert usage["key"]["revoked_at"] is not None


def test_an_organisation_sees_only_its_own_keys(system: System, keys: Keys, admin: Any) -> None:
    with serving(system) as client:
        orgs = [
            client.post(
                "/v1/organisations",
                json={"name": f"Org {n}", "kind": "ngo", "country": "TH"},
                headers=admin,
            ).json()["id"]
            for n in (1, 2)
        ]
        own, other = keys.make("organisation", orgs[0]), keys.make("organisation", orgs[1])
        second_own = keys.make("organisation", orgs[0])
        client.get("/v1/consultations", headers=second_own)
        mine = client.get(f"/v1/api-keys/{key_id(system, second_own)}/usage", headers=own)
        assert mine.status_code == 200, mine.text
        assert mine.json()["totals"]["reads"] == 1
        for caller in (other, keys.organiser, keys.integrator):
            refused = client.get(f"/v1/api-keys/{key_id(system, second_own)}/usage", headers=caller)
            assert refused.status_code == 403, refused.text
        admins = client.get(f"/v1/api-keys/{key_id(system, admin)}/usage", headers=own)
        assert admins.status_code == 403
        unknown = "00000000-0000-0000-0000-000000000000"
        assert client.get(f"/v1/api-keys/{unknown}/usage", headers=admin).status_code == 404
        assert client.get(f"/v1/api-keys/{unknown}/usage", headers=own).status_code == 403
        assert client.get(f"/v1/api-keys/{unknown}/usage?days=91", headers=admin).status_code == 422


def test_creating_and_revoking_keys_is_audited(system: System, keys: Keys, admin: Any) -> None:
    with serving(system) as client, capture_logs() as logs:
        made = client.post(
            "/v1/api-keys", json={"name": "crm", "role": "integrator"}, headers=admin
        ).json()
        client.delete(f"/v1/api-keys/{made['id']}", headers=admin)
        client.delete(f"/v1/api-keys/{made['id']}", headers=admin)  # again: nothing to log
    audit = [e for e in logs if e["event"] in ("api key created", "api key revoked")]
    assert [(e["event"], e["api_key"], e["key_id"]) for e in audit] == [
        ("api key created", made["prefix"], made["id"]),
        ("api key revoked", made["prefix"], made["id"]),
    ]
    assert all("admin (key" in e["by"] for e in audit)
    assert audit[0]["role"] == "integrator"
    assert all(made["key"] not in str(e) for e in logs), "the secret is never logged"


def test_keys_list_shows_how_each_key_was_used(
    system: System, keys: Keys, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    key = keys.integrator
    with serving(system) as client:
        for _ in range(2):
            client.get("/v1/events", headers=key)
        client.post("/v1/organisations", json={}, headers=key)
    monkeypatch.setenv("DATABASE_URL", system.settings.database_url)
    monkeypatch.setenv("CONCORD_DATA_DIR", str(tmp_path / "cli"))
    monkeypatch.delenv("REDIS_URL", raising=False)
    listed = CliRunner().invoke(cli, ["keys", "list"])
    assert listed.exit_code == 0, listed.output
    row = next(
        line.split("\t")
        for line in listed.output.splitlines()
        if line.split("\t")[1] == key["Authorization"].split("_")[1]
    )
    _, _, role, org, state, name, last_used, client_address, *counts = row
    assert (role, org, state, name) == ("integrator", "-", "active", "test integrator")
    assert last_used != "never" and client_address == "testclient"
    assert counts == ["2", "0", "1", "0"]
