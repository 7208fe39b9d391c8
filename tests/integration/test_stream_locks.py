"""Stream locks (PostgreSQL): a stream two processes keep racing for is decided by one of them
at a time; any other stream pays nothing, and a lock that cannot be had is done without."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from uuid import uuid4

import pytest
from sqlalchemy import text

from infra import streamlocks
from infra.bootstrap import System, bootstrap
from infra.db import Database
from infra.streamlocks import CONFLICTS, StreamLocks

pytestmark = pytest.mark.postgres


@pytest.fixture
def db(pg_system: System) -> Database:
    return pg_system.db


@pytest.fixture
def locks(db: Database) -> Iterator[StreamLocks]:
    made = StreamLocks(db, wait_s=0.3)
    yield made
    made.close()


def contend(locks: StreamLocks, stream: object) -> None:
    for _ in range(CONFLICTS):
        locks.conflicted(stream)  # type: ignore[arg-type]


def test_a_stream_nobody_contends_is_decided_without_a_lock_or_a_connection(
    locks: StreamLocks,
) -> None:
    stream = uuid4()
    for _ in range(CONFLICTS - 1):
        locks.conflicted(stream)
    with locks.held(stream) as held:
        assert held is False
    assert locks._open == 0, "no lock connection was opened"


def test_races_lost_far_apart_do_not_make_a_stream_contended(
    locks: StreamLocks, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streamlocks, "RECENT_S", 0.2)
    stream = uuid4()
    for _ in range(CONFLICTS - 1):
        locks.conflicted(stream)
    time.sleep(0.3)
    locks.conflicted(stream)
    assert not locks.contended(stream)
    for _ in range(CONFLICTS - 1):
        locks.conflicted(stream)
    assert locks.contended(stream), "this time within the window"


def test_a_contended_stream_is_held_by_one_process_at_a_time(
    db: Database, locks: StreamLocks
) -> None:
    """Two processes' locks on one stream: the second waits for the first to let go; a wait
    longer than ``wait_s`` goes without the lock (and counts as contention seen)."""
    other = StreamLocks(Database(str(db.url.render_as_string(hide_password=False))), wait_s=5)
    stream = uuid4()
    contend(locks, stream)
    contend(other, stream)
    entered = threading.Event()
    order: list[str] = []
    try:
        with locks.held(stream) as held:
            assert held is True
            impatient = StreamLocks(other.db, wait_s=0.2)
            contend(impatient, stream)
            started = time.monotonic()
            with impatient.held(stream) as also:
                assert also is False, "the holder was slower than wait_s: went without"
            assert time.monotonic() - started >= 0.15
            impatient.close()

            def second() -> None:
                with other.held(stream) as got:
                    order.append(f"other {got}")
                    entered.set()

            waiter = threading.Thread(target=second)
            waiter.start()
            assert not entered.wait(0.5), "the other process waits while this one holds it"
            order.append("first done")
        assert entered.wait(5)
        waiter.join(5)
        assert order == ["first done", "other True"]
    finally:
        other.close()
        other.db.dispose()


def test_a_broken_lock_connection_is_done_without_then_replaced(
    db: Database, locks: StreamLocks
) -> None:
    stream = uuid4()
    contend(locks, stream)
    with locks.held(stream) as held:
        assert held
    [conn] = locks._idle
    with db.engine.connect() as admin:
        admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": conn.info.backend_pid})
        admin.commit()
    time.sleep(0.1)
    with locks.held(stream) as held:
        assert held is False, "the connection died: this batch goes without the lock"
    assert locks._open == 0
    with locks.held(stream) as held:
        assert held is True, "a new connection takes over"


def test_every_lock_connection_in_use_means_going_without(db: Database) -> None:
    locks = StreamLocks(db, connections=1)
    first, second = uuid4(), uuid4()
    contend(locks, first)
    contend(locks, second)
    try:
        with locks.held(first) as one, locks.held(second) as two:
            assert (one, two) == (True, False)
        with locks.held(second) as two:
            assert two is True
    finally:
        locks.close()


def test_stream_locks_are_on_for_postgresql_unless_turned_off(pg_system: System) -> None:
    """On by default; ``CONCORD_STREAM_LOCKS=false`` (a pooler in transaction mode) leaves
    every stream to the expected version alone."""
    assert isinstance(pg_system.lanes.locks, StreamLocks)
    settings = type(pg_system.settings)(
        **{**pg_system.settings.model_dump(by_alias=True), "CONCORD_STREAM_LOCKS": "false"}
    )
    off = bootstrap(settings)
    try:
        assert off.lanes.locks is None
    finally:
        off.close()
