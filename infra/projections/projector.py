"""Runs projections in position order, each with its checkpoint in the same transaction.

Every step is: read the next page of the log after the projection's checkpoint, then, in one
transaction holding that projection's lock, re-check the checkpoint, apply the events that are
still new and move the checkpoint. Two projectors (the API inline and a worker catching up) can
run at once: the lock serialises them and the re-check makes an event already applied a no-op.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from sqlalchemy import Connection, text

from infra.db import Database
from infra.eventstore.store import SqlEventStore
from infra.projections.base import Projection, Tables, live_tables
from infra.schema import projection_checkpoints


class ProjectionTimeout(Exception):
    """A projection did not reach the wanted position in time."""


class Projector:
    """Applies the log to registered projections."""

    def __init__(
        self,
        db: Database,
        store: SqlEventStore,
        projections: Sequence[Projection],
        *,
        batch_size: int = 1000,
    ) -> None:
        self.db = db
        self.store = store
        self.projections = {p.name: p for p in projections}
        self.batch_size = batch_size

    # -- catching up -----------------------------------------------------------------------

    def catch_up(self, until: int | None = None, names: Sequence[str] | None = None) -> int:
        """Apply events to each projection until it reaches ``until`` (default: the head).

        Returns the number of events applied by this call.
        """
        applied = 0
        for name in names or list(self.projections):
            projection = self.projections[name]
            tables = live_tables(projection)
            while True:
                position, count = self.step(projection, tables)
                applied += count
                if count == 0 or (until is not None and position >= until):
                    break
        return applied

    def step(self, projection: Projection, tables: Tables) -> tuple[int, int]:
        """One transaction: apply the next page; return (checkpoint, events applied)."""
        start = self.checkpoint(projection.name)
        page = self.store.read_all(start, self.batch_size)
        if not page:
            return start, 0
        with self.db.write() as conn:
            current = self.lock(conn, projection.name)
            fresh = [e for e in page if (e.position or 0) > current]
            if not fresh:
                return current, 0
            projection.apply(conn, tables, fresh)
            last = fresh[-1].position or current
            self.save(conn, projection.name, last)
            return last, len(fresh)

    def wait_for(self, position: int, timeout_s: float, names: Sequence[str] | None = None) -> None:
        """Block until every projection has applied ``position`` (helping it along)."""
        deadline = time.monotonic() + timeout_s
        pause = 0.005
        while True:
            self.catch_up(until=position, names=names)
            if min(self.checkpoints(names).values(), default=position) >= position:
                return
            if time.monotonic() >= deadline:
                raise ProjectionTimeout(f"projections did not reach position {position}")
            time.sleep(pause)
            pause = min(pause * 2, 0.1)

    # -- checkpoints -----------------------------------------------------------------------

    def checkpoint(self, name: str, conn: Connection | None = None) -> int:
        sql = text("SELECT position FROM projection_checkpoints WHERE name = :name")
        if conn is not None:
            return int(conn.execute(sql, {"name": name}).scalar() or 0)
        with self.db.read() as c:
            return int(c.execute(sql, {"name": name}).scalar() or 0)

    def checkpoints(self, names: Sequence[str] | None = None) -> dict[str, int]:
        wanted = list(names or self.projections)
        with self.db.read() as conn:
            rows: dict[str, int] = dict(
                conn.execute(text("SELECT name, position FROM projection_checkpoints")).all()
            )
        return {n: int(rows.get(n, 0)) for n in wanted}

    def lock(self, conn: Connection, name: str) -> int:
        """Take the projection's lock for this transaction and return its checkpoint."""
        if self.db.is_postgres:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key(name)})
        return self.checkpoint(name, conn)

    def save(self, conn: Connection, name: str, position: int) -> None:
        table = projection_checkpoints
        now = datetime.now(UTC)
        updated = conn.execute(
            table.update().where(table.c.name == name).values(position=position, updated_at=now)
        )
        if updated.rowcount == 0:
            conn.execute(table.insert().values(name=name, position=position, updated_at=now))

    # -- running in the background ---------------------------------------------------------

    def run_forever(
        self,
        stop: threading.Event,
        *,
        idle_s: float = 0.1,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        """Catch-up loop for a worker: sequence stragglers, apply new events, repeat."""
        while not stop.is_set():
            try:
                self.store.sequence_pending()
                if self.catch_up() == 0:
                    stop.wait(idle_s)
            except Exception as exc:  # keep the loop alive; the error is reported
                if on_error is None:
                    raise
                on_error(exc)
                stop.wait(1.0)


def lock_key(name: str) -> int:
    """A stable advisory-lock key for a projection name."""
    return 0x434F_0000_0000 + zlib.crc32(name.encode())
