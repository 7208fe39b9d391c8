"""Our event store as a contender, instrumented to show where its time goes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event, text

from infra.bench.contenders import Writer
from infra.bench.workload import METADATA, STREAM_TYPE, BenchEvent, Fold
from infra.db import Database
from infra.eventstore.store import SqlEventStore
from infra.projections.catalog import StreamCatalog
from infra.projections.rebuild import rebuild
from services.messages import EventRegistry
from services.ports import Metadata, NewEvent

_META = Metadata(actor=METADATA["actor"])


class StatementClock:
    """Counts statements and driver time by kind, and pool checkouts, via engine events.

    Driver time is from ``cursor.execute`` to its return: the round trip plus the server's
    work (including the WAL flush of an autocommit statement). Everything else in a call is
    spent in Python: SQLAlchemy, the pool, building parameters and records.
    """

    def __init__(self, db: Database) -> None:
        self._lock = threading.Lock()
        self.reset()
        event.listen(db.engine, "before_cursor_execute", self._before)
        event.listen(db.engine, "after_cursor_execute", self._after)
        event.listen(db.engine, "checkout", self._checkout)

    def reset(self) -> None:
        with self._lock:
            self.statements: dict[str, list[float]] = {}
            self.checkouts = 0

    def _before(self, conn: Any, _cursor: Any, _stmt: str, *_args: Any) -> None:
        conn.info["bench_t0"] = time.perf_counter()

    def _after(self, conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        elapsed = time.perf_counter() - conn.info.pop("bench_t0", time.perf_counter())
        kind = _kind(statement)
        with self._lock:
            calls_seconds = self.statements.setdefault(kind, [0, 0.0])
            calls_seconds[0] += 1
            calls_seconds[1] += elapsed

    def _checkout(self, *_args: Any) -> None:
        with self._lock:
            self.checkouts += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "statements": {
                    k: {"calls": int(v[0]), "seconds": round(v[1], 4)}
                    for k, v in sorted(self.statements.items())
                },
                "pool_checkouts": self.checkouts,
            }


def _kind(statement: str) -> str:
    s = " ".join(statement.split()[:4]).lower()
    if s.startswith("insert into events"):
        return "insert events"
    if "concord_sequence_events" in statement:
        return "sequencer"
    if s.startswith("select position, event_id"):
        return "read events"
    if s.startswith("select coalesce(max(position)"):
        return "head position"
    if s.startswith("select coalesce(max(version)"):
        return "stream version"
    if s.startswith(("begin", "commit", "rollback")):
        return s.split()[0]
    return "other"


class Ours:
    """``SqlEventStore`` exactly as the service wires it (``infra.bootstrap``)."""

    name = "ours"

    def __init__(self, url: str) -> None:
        self.db = Database(url)
        self.store = SqlEventStore(self.db, EventRegistry())
        self.clock = StatementClock(self.db)

    @contextmanager
    def writer(self) -> Iterator[Writer]:
        yield _OurWriter(self.store)

    def read(self, fold: Fold) -> None:
        for e in self.store.iter_all():
            fold.add(e.type, e.data)

    def rebuild(self) -> int | None:
        return rebuild(self.db, self.store, StreamCatalog())

    def before_reads(self) -> None:
        self.store.sequence_pending()
        if self.db.is_postgres:
            with self.db.autocommit() as conn:
                conn.execute(text("VACUUM (ANALYZE) events"))

    def phases(self) -> dict[str, Any] | None:
        snap = self.clock.snapshot()
        self.clock.reset()
        return snap

    def close(self) -> None:
        self.db.dispose()


class _OurWriter:
    def __init__(self, store: SqlEventStore) -> None:
        self.store = store

    def append(self, events: Sequence[BenchEvent]) -> None:
        first = events[0]
        self.store.append(
            first.stream_id,
            STREAM_TYPE,
            first.version - 1,
            [NewEvent(e.type, e.data, 1, e.event_id) for e in events],
            _META,
        )
