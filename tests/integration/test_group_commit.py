"""Group commit (PostgreSQL): appends arriving together share one statement and one
sequencing step, and each still succeeds or fails on its own."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from sqlalchemy import text

from infra.bench.plain import pg_conninfo
from infra.bootstrap import System
from infra.db import Database
from infra.eventstore.group import Pending
from infra.eventstore.store import SqlEventStore
from infra.eventstore.verify import verify_stream
from services.errors import ConcurrencyError
from services.ports import NO_STREAM, AppendResult, NewEvent

pytestmark = pytest.mark.postgres

#: The sequencer's own advisory lock (migration 0001).
SEQUENCER_LOCK = 0x434F_4E43_4F52


@pytest.fixture
def pg(pg_system: System) -> System:
    """SQLite has one writer: its appends are never grouped."""
    return pg_system


def hold_first_group(system: System, until: Callable[[], bool]) -> list[int]:
    """Make the first leader wait, before it takes its group, until ``until()`` (so others
    queue behind it); returns the size of every group written."""
    groups = system.store._groups
    lead, write = groups._lead, groups._write
    sizes: list[int] = []
    first = threading.Event()

    def held_lead(me: Pending) -> None:
        if not first.is_set():
            first.set()
            deadline = time.monotonic() + 10
            while not until() and time.monotonic() < deadline:
                time.sleep(0.01)
        lead(me)

    def counted_write(group: list[Pending]) -> Callable[[], None] | None:
        sizes.append(len(group))
        return write(group)

    groups._lead = held_lead  # type: ignore[method-assign]
    groups._write = counted_write  # type: ignore[method-assign]
    return sizes


def queued(system: System) -> int:
    groups = system.store._groups
    with groups._lock:
        return len(groups._queue)


def run_all(jobs: list[Callable[[], Any]]) -> list[Any]:
    """Each job in its own thread, started in order; each one's result or exception."""
    results: list[Any] = [None] * len(jobs)

    def run(i: int) -> None:
        try:
            results[i] = jobs[i]()
        except Exception as exc:  # each job's own answer
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
        time.sleep(0.005)
    for thread in threads:
        thread.join(30)
    return results


def test_appends_arriving_together_are_written_together_each_with_its_own_answer(
    pg: System,
) -> None:
    store = pg.store
    stale = uuid4()
    store.append(stale, "consultation", NO_STREAM, [NewEvent("consultation.planned", {"n": 0})])
    streams = [uuid4() for _ in range(12)]
    sizes = hold_first_group(pg, until=lambda: queued(pg) >= 14)

    def append(stream_id: UUID, expected: int, n: int) -> Callable[[], AppendResult]:
        def go() -> AppendResult:
            events = [
                NewEvent("consultation.planned", {"n": n}),
                NewEvent(
                    "consultation.participant_registered",
                    {"n": n, "name": {"$personal": {"subject": str(uuid4()), "value": f"P{n}"}}},
                ),
            ]
            return store.append(stream_id, "consultation", expected, events)

        return go

    jobs = [append(uuid4(), NO_STREAM, -1)]  # the leader, held until the rest queue
    jobs += [append(s, NO_STREAM, n) for n, s in enumerate(streams)]
    jobs.append(append(stale, 5, 99))  # a stale expected version, in the same group
    results = run_all(jobs)

    assert sizes == [14], sizes
    refused = results[-1]
    assert isinstance(refused, ConcurrencyError), refused
    assert refused.actual == 1
    written = results[:-1]
    assert all(isinstance(r, AppendResult) for r in written), written
    positions = [e.position for r in written for e in r.events]
    assert None not in positions
    assert len(set(positions)) == len(positions)
    for r in written:
        assert [e.version for e in r.events] == [1, 2]
        assert r.events[0].position < r.events[1].position  # in version order
        assert r.events[1].data["name"]["$personal"]["value"].startswith("P")  # in clear
    # The log: contiguous positions, every chain intact, nothing of the stale append.
    with pg.db.read() as conn:
        numbered = conn.execute(text("SELECT position FROM events ORDER BY position")).scalars()
        assert list(numbered) == list(range(1, 2 + 2 * len(written)))
    for r in written:
        assert verify_stream(pg.db, r.stream_id).ok
        assert [e.position for e in store.read_stream(r.stream_id)] == [
            e.position for e in r.events
        ]
        opened = store.read_stream(r.stream_id)[1].data["name"]["$personal"]
        assert opened["value"].startswith("P"), "sealed and opened again"
    with pg.db.read() as conn:
        stored = conn.execute(
            text("SELECT data FROM events WHERE event_type = 'consultation.participant_registered'")
        ).scalars()
        assert all("ct" in d["name"]["$personal"] for d in stored), "sealed in the log"
    assert store.stream_version(stale) == 1


def test_a_racing_writer_makes_a_group_write_its_appends_one_at_a_time(pg: System) -> None:
    """Another process takes a version one append of the group wanted while the group's
    statement runs: the statement fails as a whole; each append is then written on its own,
    and only the one that lost the race hears of it."""
    store = pg.store
    contested = uuid4()
    store.append(contested, "statement", NO_STREAM, [NewEvent("statement.started", {"n": 0})])
    racing = threading.Event()
    release = threading.Event()

    def other_process() -> None:
        with pg.db.engine.connect() as conn:
            trans = conn.begin()
            store.insert_postgres(
                conn,
                contested,
                "statement",
                1,
                [NewEvent("statement.retitled", {"by": "the other process"})],
                {},
                datetime.now(UTC),
            )
            racing.set()
            release.wait(10)
            trans.commit()

    other = threading.Thread(target=other_process)
    other.start()
    assert racing.wait(5)
    sizes = hold_first_group(pg, until=lambda: queued(pg) >= 2)
    # The group's statement waits on the other process's row; let it commit then.
    threading.Timer(1.0, release.set).start()
    fresh = uuid4()
    singles: list[UUID] = []
    insert = store.insert_postgres

    def single(conn: Any, stream_id: UUID, *args: Any) -> Any:
        singles.append(stream_id)
        return insert(conn, stream_id, *args)

    store.insert_postgres = single  # type: ignore[method-assign]
    results = run_all(
        [
            lambda: store.append(
                contested, "statement", 1, [NewEvent("statement.retitled", {"by": "us"})]
            ),
            lambda: store.append(
                fresh, "statement", NO_STREAM, [NewEvent("statement.started", {})]
            ),
        ]
    )
    other.join(10)
    assert sizes == [2], sizes
    assert singles == [contested, fresh], "the statement failed as a whole: one at a time"
    assert isinstance(results[0], ConcurrencyError), results
    assert results[0].actual == 2
    assert isinstance(results[1], AppendResult), results
    assert results[1].events[0].position is not None
    store.sequence_pending()
    assert [e.data.get("by") for e in store.read_stream(contested)] == [None, "the other process"]
    assert verify_stream(pg.db, contested).ok
    assert store.stream_version(fresh) == 1


def test_appends_to_one_stream_are_never_in_one_group(pg: System) -> None:
    """The second is checked against the stream as the first left it."""
    store = pg.store
    stream = uuid4()
    sizes = hold_first_group(pg, until=lambda: queued(pg) >= 4)
    results = run_all(
        [
            lambda: store.append(
                uuid4(), "statement", NO_STREAM, [NewEvent("statement.started", {})]
            ),
            lambda: store.append(
                stream, "statement", NO_STREAM, [NewEvent("statement.started", {})]
            ),
            lambda: store.append(stream, "statement", 1, [NewEvent("statement.retitled", {})]),
            lambda: store.append(
                uuid4(), "statement", NO_STREAM, [NewEvent("statement.started", {})]
            ),
        ]
    )
    assert all(isinstance(r, AppendResult) for r in results), results
    assert [e.version for e in store.read_stream(stream)] == [1, 2]
    assert sizes == [3, 1], sizes


def test_two_processes_of_writers_racing_on_a_few_streams_lose_and_double_nothing(
    pg: System,
) -> None:
    """Eight threads in each of two stores (two processes' worth of group commit) append to
    four shared streams, each retrying on a conflict: every acknowledged append is in the log
    once, each stream's versions run 1..n with positions rising with them, and the log's
    positions are contiguous."""
    other = SqlEventStore(Database(pg.settings.database_url), pg.store.registry)
    stores = [pg.store, other]
    sizes = hold_first_group(pg, until=lambda: True)  # counts the groups, holds nobody
    streams = [uuid4() for _ in range(4)]
    acknowledged: list[UUID] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        store = stores[n % 2]
        try:
            for i in range(15):
                stream = streams[(n + i) % len(streams)]
                event = NewEvent("statement.retitled", {"by": n, "i": i})
                for _ in range(200):
                    try:
                        store.append(stream, "statement", store.stream_version(stream), [event])
                    except ConcurrencyError:
                        continue
                    with lock:
                        acknowledged.append(event.id)
                    break
                else:
                    raise AssertionError("never got its append in")
        except BaseException as exc:
            errors.append(exc)

    try:
        threads = [threading.Thread(target=writer, args=(n,)) for n in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    finally:
        other.db.dispose()
    assert errors == []
    assert len(acknowledged) == 16 * 15
    assert max(sizes) > 1, "appends shared statements"
    pg.store.sequence_pending()
    log = pg.store.read_all(0, 10_000)
    assert sorted(e.id for e in log) == sorted(acknowledged), "each once, none lost"
    assert [e.position for e in log] == list(range(1, len(log) + 1))
    for stream in streams:
        mine = [e for e in log if e.stream_id == stream]
        assert [e.version for e in mine] == list(range(1, len(mine) + 1))
        assert verify_stream(pg.db, stream).ok


def started_append(store: SqlEventStore, stream: UUID, never: str) -> threading.Thread:
    """An append to a new ``stream`` in a thread of its own, once its event is committed
    (``never``: what to say if it is not within 5 s)."""
    thread = threading.Thread(
        target=store.append,
        args=(stream, "statement", NO_STREAM, [NewEvent("statement.started", {})]),
    )
    thread.start()
    deadline = time.monotonic() + 5
    while store.stream_version(stream) == 0:
        assert time.monotonic() < deadline, never
        time.sleep(0.01)
    return thread


def test_a_group_waiting_for_its_positions_holds_back_no_other_append(pg: System) -> None:
    """Positions wait for the sequencer (here: its lock held, as a crashed or slow run
    would). A group waits for them only after it has passed the lead on, so the process's
    next appends are still written meanwhile."""
    store = pg.store
    first, second = uuid4(), uuid4()
    with psycopg.connect(pg_conninfo(pg.settings.database_url), autocommit=True) as admin:
        admin.execute("SELECT pg_advisory_lock(%s)", (SEQUENCER_LOCK,))
        waiting = started_append(store, first, "the first append never committed")
        followed = started_append(
            store, second, "the second append waited for the first's positions"
        )
        assert waiting.is_alive(), "the first still waits for its position"
        admin.execute("SELECT pg_advisory_unlock(%s)", (SEQUENCER_LOCK,))
    waiting.join(15)
    followed.join(15)
    assert [e.stream_id for e in store.read_all(0, 10)] == [first, second]


def pending_append(stream: UUID, n: int) -> Pending:
    return Pending(
        stream,
        "statement",
        NO_STREAM,
        [NewEvent("statement.retitled", {"n": n})],
        [{}],
        datetime.now(UTC),
    )


def test_a_group_writes_its_streams_in_one_order_whatever_order_they_came_in(
    pg: System,
) -> None:
    """Every group takes the unique key's entries in stream-id order, so two processes' groups
    over the same streams wait for each other rather than deadlock."""
    streams = sorted(uuid4() for _ in range(5))
    group = [pending_append(s, n) for n, s in enumerate(reversed(streams))]
    with pg.db.autocommit() as conn:
        written = pg.store._insert_group(conn, group, [p.events for p in group])
    assert written is not None
    insert_ids = {p.stream_id: rows[0][1] for p, rows in written}
    assert sorted(insert_ids, key=insert_ids.__getitem__) == streams
    assert [p.stream_id for p, _ in written] == [p.stream_id for p in group], "answers in order"


def waiting_for_a_lock(system: System, but: int) -> None:
    """Return once a session other than ``but`` waits for a lock (within 10 s)."""
    deadline = time.monotonic() + 10
    with system.db.engine.connect() as admin:
        while True:
            waiting = admin.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND datname = current_database() AND pid <> :but"
                ),
                {"but": but},
            ).scalar_one()
            if waiting:
                return
            assert time.monotonic() < deadline, "nobody came to wait for the lock"
            time.sleep(0.01)


def test_a_group_that_deadlocks_with_another_writer_is_written_one_append_at_a_time(
    pg: System,
) -> None:
    """Should a group still deadlock with another writer (PostgreSQL fails one of them after
    deadlock_timeout), its statement counts as failed as a whole, like a racing writer's, and
    its appends are written one at a time instead of failing with the database's error."""
    first, second = sorted(uuid4() for _ in range(2))
    group = [pending_append(first, 1), pending_append(second, 2)]
    other = psycopg.connect(pg_conninfo(pg.settings.database_url))
    outcome: list[Any] = []
    try:
        other.execute("SET deadlock_timeout = '20s'")  # the group is the one PostgreSQL fails
        other.execute(
            "INSERT INTO events (event_id, stream_id, stream_type, version, event_type,"
            " schema_version, data, metadata, recorded_at, content_hash, chain_hash)"
            " SELECT gen_random_uuid(), %s, 'statement', 1, 'statement.retitled', 1, '{}',"
            " '{}', now(), 'x', 'x'",
            (second,),
        )

        def write_group() -> None:
            with pg.db.autocommit() as conn:
                outcome.append(pg.store._insert_group(conn, group, [p.events for p in group]))

        writer = threading.Thread(target=write_group)
        writer.start()
        waiting_for_a_lock(pg, other.info.backend_pid)  # holds ``first``, waits for ``second``
        # ``other`` now waits for ``first``: a deadlock, which PostgreSQL breaks by failing
        # the group's statement (``other``'s wait is the longer); ``other`` then goes on.
        other.execute(
            "INSERT INTO events (event_id, stream_id, stream_type, version, event_type,"
            " schema_version, data, metadata, recorded_at, content_hash, chain_hash)"
            " SELECT gen_random_uuid(), %s, 'statement', 1, 'statement.retitled', 1,"
            " '{}', '{}', now(), 'x', 'x'",
            (first,),
        )
        writer.join(10)
    finally:
        other.rollback()
        other.close()
    assert outcome == [None], "failed as a whole, so written one at a time"
    assert pg.store.stream_version(first) == 0 and pg.store.stream_version(second) == 0
