"""The feed never skips an event that commits late (PostgreSQL, real concurrency).

A number taken at INSERT time is not commit order. These tests hold transactions open while
others commit, tail the feed the whole time, and check the reader ends with every committed
event exactly once, in order, with contiguous positions — and that rolled-back appends leave
no trace.
"""

from __future__ import annotations

import random
import threading
import time
from datetime import UTC, datetime
from uuid import UUID, uuid4

import pytest
from sqlalchemy import text

from infra.bootstrap import System
from infra.eventstore.store import SqlEventStore
from services.ports import NO_STREAM, NewEvent

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg(pg_system: System) -> System:
    """SQLite has a single writer, so commit order is insert order there: nothing to test."""
    return pg_system


def slow_append(
    system: System, stream_id: UUID, events: list[NewEvent], hold_s: float, commit: bool = True
) -> None:
    """Append inside a transaction that stays open for ``hold_s`` before commit or rollback."""
    with system.db.engine.connect() as conn:
        trans = conn.begin()
        system.store.insert_postgres(
            conn, stream_id, "statement", NO_STREAM, events, {}, datetime.now(UTC)
        )
        conn.execute(text("SELECT pg_sleep(:s)"), {"s": hold_s})
        if commit:
            trans.commit()
        else:
            trans.rollback()
    system.store.sequence_pending()


def test_an_event_committed_behind_an_open_transaction_is_held_back_not_skipped(pg: System) -> None:
    early = NewEvent("slow.event", {"n": 1})
    opened = threading.Event()

    def hold() -> None:
        with pg.db.engine.connect() as conn:
            trans = conn.begin()
            pg.store.insert_postgres(
                conn, uuid4(), "statement", NO_STREAM, [early], {}, datetime.now(UTC)
            )
            opened.set()
            time.sleep(0.6)
            trans.commit()

    holder = threading.Thread(target=hold)
    holder.start()
    assert opened.wait(5)
    impatient = SqlEventStore(pg.db, sequence_timeout_s=0.2)
    late = impatient.append(uuid4(), "statement", NO_STREAM, [NewEvent("fast.event", {"n": 2})])
    # Committed, but an older transaction is still open: no position yet, and the feed
    # does not show it (a reader that saw it now would skip the older event later).
    assert late.position is None
    assert pg.store.read_all(0, 10) == []
    holder.join()
    pg.store.sequence_pending()
    feed = pg.store.read_all(0, 10)
    assert [(e.type, e.position) for e in feed] == [("slow.event", 1), ("fast.event", 2)]


def test_a_tailing_reader_sees_every_committed_event_once_in_order(pg: System) -> None:
    rng = random.Random(20180220)
    committed: set[UUID] = set()
    rolled_back: set[UUID] = set()
    lock = threading.Lock()
    errors: list[BaseException] = []
    writers_done = threading.Event()

    def writer(seed: int) -> None:
        local = random.Random(seed)
        try:
            for _ in range(12):
                events = [
                    NewEvent("endorsed", {"i": local.random()}) for _ in range(local.randint(1, 3))
                ]
                roll = local.random()
                if roll < 0.25:
                    slow_append(pg, uuid4(), events, hold_s=local.uniform(0.05, 0.3))
                    with lock:
                        committed.update(e.id for e in events)
                elif roll < 0.35:
                    slow_append(pg, uuid4(), events, hold_s=local.uniform(0.01, 0.1), commit=False)
                    with lock:
                        rolled_back.update(e.id for e in events)
                else:
                    pg.store.append(uuid4(), "statement", NO_STREAM, events)
                    with lock:
                        committed.update(e.id for e in events)
        except BaseException as exc:
            errors.append(exc)

    seen: list[tuple[int, UUID]] = []

    def reader() -> None:
        cursor = 0
        try:
            while True:
                finished = writers_done.is_set()
                page = pg.store.read_all(cursor, 7)
                for e in page:
                    assert e.position is not None
                    seen.append((e.position, e.id))
                    cursor = e.position
                if not page:
                    if finished:
                        return
                    time.sleep(0.005)
        except BaseException as exc:
            errors.append(exc)

    tail = threading.Thread(target=reader)
    tail.start()
    writers = [threading.Thread(target=writer, args=(rng.randint(0, 10**9),)) for _ in range(6)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    pg.store.sequence_pending()
    writers_done.set()
    tail.join(timeout=60)
    assert not tail.is_alive()
    assert errors == []

    positions = [p for p, _ in seen]
    ids = [i for _, i in seen]
    assert positions == list(range(1, len(seen) + 1)), "positions are contiguous, in order"
    assert len(ids) == len(set(ids)), "no event is seen twice"
    assert set(ids) == committed, "every committed event is seen"
    assert not (set(ids) & rolled_back), "rolled-back appends leave no trace"
    assert rolled_back, "the scenario exercised rollbacks"
    with pg.db.read() as conn:
        total = conn.execute(text("SELECT count(*) FROM events")).scalar_one()
        unsequenced = conn.execute(
            text("SELECT count(*) FROM events WHERE position IS NULL")
        ).scalar_one()
    assert total == len(committed)
    assert unsequenced == 0


def test_a_failed_multi_event_append_writes_nothing(pg: System) -> None:
    sid = uuid4()
    bad = [NewEvent("ok", {"n": 1}), NewEvent("bad", {"text": "nul \u0000 byte"})]
    with pytest.raises(Exception, match=r"unsupported Unicode escape|\\u0000"):
        pg.store.append(sid, "statement", NO_STREAM, bad)
    assert pg.store.read_stream(sid) == []
    pg.store.append(sid, "statement", NO_STREAM, [NewEvent("ok", {"n": 1})])
    assert [e.position for e in pg.store.read_all()] == [1]


def test_the_background_sequencer_numbers_events_of_a_writer_that_died(pg: System) -> None:
    """A writer that commits but never runs the sequencer (crash) loses nothing."""
    with pg.db.autocommit() as conn:
        pg.store.insert_postgres(
            conn, uuid4(), "statement", NO_STREAM, [NewEvent("orphan", {})], {}, datetime.now(UTC)
        )
    assert pg.store.read_all() == []
    stop = threading.Event()
    loop = threading.Thread(target=pg.projector.run_forever, args=(stop,), kwargs={"idle_s": 0.01})
    loop.start()
    try:
        deadline = time.monotonic() + 5
        while not pg.store.read_all() and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        loop.join()
    assert [e.type for e in pg.store.read_all()] == ["orphan"]


def test_a_transaction_open_in_another_database_does_not_hold_positions_back(pg: System) -> None:
    """Other databases on the server can never write our log, so they are not waited for."""
    import psycopg

    from tests import backends

    other = (backends.postgres_url() or "").replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(other) as foreign:
        foreign.execute("SELECT pg_current_xact_id()")  # holds an xid, stays open
        impatient = SqlEventStore(pg.db, sequence_timeout_s=0.5)
        result = impatient.append(uuid4(), "statement", NO_STREAM, [NewEvent("x", {})])
        assert result.position == 1
        foreign.rollback()


def test_a_long_transaction_that_writes_no_events_holds_no_position_back(pg: System) -> None:
    """A projection's page or a reminder tick writes for a while, but never an event: the
    horizon waits only for transactions that may insert events (migration 0013)."""
    with pg.db.engine.connect() as busy:
        trans = busy.begin()
        busy.execute(text("SELECT pg_current_xact_id()"))  # has an id, writes elsewhere
        busy.execute(text("INSERT INTO projection_checkpoints VALUES ('busy', 0, now())"))
        impatient = SqlEventStore(pg.db, sequence_timeout_s=0.5)
        result = impatient.append(uuid4(), "statement", NO_STREAM, [NewEvent("x", {})])
        assert result.position == 1
        trans.rollback()


def test_events_cannot_follow_another_write_unless_the_transaction_said_so_first(
    pg: System,
) -> None:
    """A transaction that got its id unseen could insert events below a horizon the sequencer
    has passed: the append refuses it. One that declares itself a writer first may write
    other things before its events, and holds positions back until it ends."""
    event = [NewEvent("late", {})]
    with pg.db.engine.connect() as conn:
        trans = conn.begin()
        conn.execute(text("INSERT INTO projection_checkpoints VALUES ('first', 0, now())"))
        with pytest.raises(Exception, match="events must be the first thing"):
            pg.store.insert_postgres(
                conn, uuid4(), "statement", NO_STREAM, event, {}, datetime.now(UTC)
            )
        trans.rollback()
    with pg.db.engine.connect() as conn:
        trans = conn.begin()
        conn.execute(text("SELECT concord_event_writer()"))
        conn.execute(text("INSERT INTO projection_checkpoints VALUES ('first', 0, now())"))
        pg.store.insert_postgres(
            conn, uuid4(), "statement", NO_STREAM, event, {}, datetime.now(UTC)
        )
        impatient = SqlEventStore(pg.db, sequence_timeout_s=0.3)
        behind = impatient.append(uuid4(), "statement", NO_STREAM, [NewEvent("after", {})])
        assert behind.position is None, "held back by the open writer"
        trans.commit()
    pg.store.sequence_pending()
    assert [(e.type, e.position) for e in pg.store.read_all()] == [("late", 1), ("after", 2)]
