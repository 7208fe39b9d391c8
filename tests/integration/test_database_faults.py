"""PostgreSQL connections killed under the API (``pg_terminate_backend`` from a connection of
our own): the client gets a 503 problem with ``Retry-After``, the log holds no part of what was
cut off, a retry with the same ``Idempotency-Key`` settles what was cut after its commit, and
the pool recovers by itself."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from uuid import UUID

import psycopg
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from infra.bootstrap import System
from tests.e2e.conftest import Keys

pytestmark = pytest.mark.postgres

HRWG = {"name": "Human Rights Working Group", "kind": "ngo", "country": "ID"}
#: The sequencer's advisory lock (migrations/versions/0001_event_store.py).
SEQUENCER_LOCK = 0x434F_4E43_4F52


@contextmanager
def admin(system: System) -> Iterator[psycopg.Connection]:
    """A connection of the test's own to the API's database, outside the API's pool."""
    url = system.db.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url, autocommit=True) as conn:
        yield conn


def backend_waiting(
    conn: psycopg.Connection, query: str, timeout_s: float = 20, since: datetime | None = None
) -> int:
    """The pid of the API's backend running a statement that contains ``query``; with
    ``since``, the one that ran it last since then, even if it is between two runs (a writer
    polling for its positions is active for a fraction of a millisecond at a time)."""
    deadline = time.monotonic() + timeout_s
    state = "query_start >= %s" if since is not None else "state = 'active'"
    extra = (since,) if since is not None else ()
    while True:
        conn.execute("SELECT pg_stat_clear_snapshot()")  # inside a transaction it is kept
        row = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            f"AND pid <> pg_backend_pid() AND {state} AND query LIKE %s",
            (*extra, f"%{query}%"),
        ).fetchone()
        if row is not None:
            return int(row[0])
        assert time.monotonic() < deadline, f"no backend ran {query!r}"
        time.sleep(0.02)


def now(conn: psycopg.Connection) -> datetime:
    row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    return row[0]


def kill(conn: psycopg.Connection, pid: int) -> None:
    assert conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)


def assert_unavailable(response: object) -> None:
    status = getattr(response, "status_code", None)
    assert status == 503, getattr(response, "text", response)
    headers = response.headers  # type: ignore[attr-defined]
    assert headers["content-type"] == "application/problem+json"
    assert headers["retry-after"] == "1"
    assert response.json()["type"].endswith("/database-unavailable")  # type: ignore[attr-defined]


def test_a_connection_killed_mid_append_is_a_503_leaves_no_event_and_the_pool_recovers(
    pg_system: System,
) -> None:
    system = pg_system
    with TestClient(create_app(system), raise_server_exceptions=False) as client:
        organiser = Keys(system).organiser
        oid = client.post("/v1/organisations", json=HRWG, headers=organiser).json()["id"]
        revise = {"json": {"acronym": "HRWG"}, "headers": organiser}
        # Writers wait on our lock; the one that waits is killed in the middle of its append.
        with admin(system) as conn, ThreadPoolExecutor(1) as pool, conn.transaction():
            conn.execute("LOCK TABLE events IN SHARE MODE")
            pending = pool.submit(client.patch, f"/v1/organisations/{oid}", **revise)
            kill(conn, backend_waiting(conn, "INSERT INTO events"))
            answer = pending.result(timeout=30)
        assert_unavailable(answer)
        assert [e.type for e in system.store.read_stream(UUID(oid))] == [
            "organisation.registered"
        ], "no part of the killed append is in the log"

        again = client.patch(f"/v1/organisations/{oid}", **revise)
        assert again.status_code == 200, again.text
        assert again.json()["acronym"] == "HRWG"


def test_a_connection_killed_after_its_commit_is_settled_by_a_retry_with_the_same_key(
    pg_system: System,
) -> None:
    """The append committed, then the connection died while it waited for its position: the
    client cannot know. Its retry finds the event instead of registering a second one."""
    system = pg_system
    with TestClient(create_app(system), raise_server_exceptions=False) as client:
        headers = {**Keys(system).organiser, "Idempotency-Key": "hrwg-once"}
        with admin(system) as conn, ThreadPoolExecutor(1) as pool:
            conn.execute("SELECT pg_advisory_lock(%s)", (SEQUENCER_LOCK,))
            since = now(conn)
            pending = pool.submit(client.post, "/v1/organisations", json=HRWG, headers=headers)
            kill(conn, backend_waiting(conn, "concord_sequence_ids", since=since))
            answer = pending.result(timeout=30)
            conn.execute("SELECT pg_advisory_unlock(%s)", (SEQUENCER_LOCK,))
        assert_unavailable(answer)
        system.store.sequence_pending()
        [committed] = system.store.read_all(0, 10)
        assert committed.type == "organisation.registered"

        retry = client.post("/v1/organisations", json=HRWG, headers=headers)
        assert retry.status_code == 201, retry.text
        assert retry.json()["id"] == str(committed.stream_id)
        assert retry.headers["x-event-position"] == str(committed.position)
        assert len(system.store.read_all(0, 10)) == 1, "registered once"


def test_every_pooled_connection_killed_costs_a_read_nothing_and_a_write_one_503(
    pg_system: System,
) -> None:
    """As after a database restart: reads are retried once on a fresh connection; a write
    answers 503 once, and the pool has replaced its dead connections by the next request."""
    system = pg_system
    with TestClient(create_app(system), raise_server_exceptions=False) as client:
        organiser = Keys(system).organiser

        def kill_all() -> int:
            with admin(system) as conn:
                row = conn.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                ).fetchone()
            return int(row[0]) if row else 0

        for _ in range(3):
            assert client.post("/v1/organisations", json=HRWG, headers=organiser).is_success
        assert kill_all() >= 1
        read = client.get("/v1/organisations", headers=organiser)
        assert read.status_code == 200, read.text
        assert read.json()["total"] == 3

        assert kill_all() >= 1
        headers = {**organiser, "Idempotency-Key": "after-restart"}
        write = client.post("/v1/organisations", json=HRWG, headers=headers)
        assert_unavailable(write)
        again = client.post("/v1/organisations", json=HRWG, headers=headers)
        assert again.status_code == 201, again.text
        assert len(system.store.read_all(0, 100)) == 4
