"""Runs projections in position order, each with its checkpoint in the same transaction.

Every step is: read the next page of the log after the projection's checkpoint, then, in one
transaction holding that projection's lock, re-check the checkpoint, apply the events that are
still new and move the checkpoint. Two projectors (the API inline and a worker catching up) can
run at once: the lock serialises them and the re-check makes an event already applied a no-op.
"""

from __future__ import annotations

import re
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime
from functools import lru_cache

import structlog
from sqlalchemy import Connection, bindparam, text

from infra.db import Database, upsert
from infra.eventstore.store import SqlEventStore, driver_cursor
from infra.projections.base import (
    Projection,
    Tables,
    live_tables,
    reads_payload,
    reads_personal,
)
from infra.schema import projection_checkpoints
from services.ports import RecordedEvent

log = structlog.get_logger("concord.projections")


#: Events applied per transaction when catching up. The checkpoint moves once per page, so a
#: page is also how far a busy worker's projections fall behind while it applies one: with 1,000
#: the bench's projection lag p99 was 1.3-5.6 s, with 250 about 1 s (100: more commits, no
#: better). Rebuilds page on their own (``concord projections rebuild --batch-size``).
PAGE = 250


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
        batch_size: int = PAGE,
    ) -> None:
        self.db = db
        self.store = store
        self.projections = {p.name: p for p in projections}
        self.batch_size = batch_size
        #: The projections a command brings up to date before it answers (read-your-writes).
        #: The others (``inline = False``) are caught up by the worker's loop and by the
        #: readers that need them, so no command waits for them.
        self.inline = [p.name for p in projections if getattr(p, "inline", True)]
        self._inline_for: dict[str, list[str]] = {}
        #: How far this process has seen the log: events up to here reached ``observe``
        #: or ``apply``. A page read from here shows the projections what other processes
        #: applied meanwhile, so what they keep in memory stays warm.
        self._seen = 0
        #: The checkpoint each projection is known to have reached (checkpoints only move
        #: forward), and one lock per projection for this process's threads.
        self._known: dict[str, int] = {}
        self._together = threading.Lock()

    # -- catching up -----------------------------------------------------------------------

    def catch_up(
        self,
        until: int | None = None,
        names: Sequence[str] | None = None,
        *,
        hold_after: int | None = None,
    ) -> int:
        """Apply events to each projection until it reaches ``until`` (default: the head).

        Returns the number of events applied by this call. The projections move together:
        one read of the log's next page and one transaction (one commit) apply it to every
        projection behind, instead of a read and a commit per projection. Threads of one
        process take turns, and one that finds every projection already past ``until``
        (another thread applied a page holding its events too) returns without a query:
        under many concurrent commands, one catch-up serves them all. Should the shared
        transaction fail, the projections are tried one at a time, so one broken projection
        cannot hold the others back.

        With ``hold_after``, an inline projection stops short of the first event after that
        position that it reads (the command that appended it applies it; see
        :meth:`run_forever`); a call that moves no checkpoint returns.
        """
        wanted = self._behind(names, until)
        if not wanted:
            return 0
        with self._together:
            wanted = self._behind(names, until)
            if not wanted:
                return 0
            try:
                return self._catch_up_together(wanted, until, hold_after)
            except Exception:
                if len(wanted) == 1:
                    raise
                log.warning("projections failed together; catching up one at a time")
            return sum(self._catch_up_alone(name, until) for name in wanted)

    def inline_for(self, stream_type: str) -> list[str]:
        """The inline projections that read events of ``stream_type``: what a command on
        such a stream must wait for (a projection that ignores them already shows them)."""
        names = self._inline_for.get(stream_type)
        if names is None:
            names = [
                name
                for name in self.inline
                if (streams := getattr(self.projections[name], "streams", None)) is None
                or stream_type in streams
            ]
            self._inline_for[stream_type] = names
        return names

    def _behind(self, names: Sequence[str] | None, until: int | None) -> list[str]:
        candidates = list(names or self.projections)
        if until is None:
            return candidates
        return [n for n in candidates if self._known.get(n, 0) < until]

    def _catch_up_together(
        self, names: list[str], until: int | None, hold_after: int | None = None
    ) -> int:
        applied = 0
        tables = {name: live_tables(self.projections[name]) for name in names}
        while True:
            checkpoints = self.checkpoints(names)
            start = min(checkpoints.values())
            if until is not None and start >= until:
                self._saw(checkpoints)
                return applied
            if 0 < start - self._seen <= self.batch_size // 2:
                start = self._seen  # also read what others applied since this process looked
            # What the page must carry: what the projections that may apply events of their own
            # streams from it read. An inline one at or past ``hold_after`` may not (those are
            # held for the commands); it only steps over the events of streams it does not
            # read, for which it needs nothing. (Under a wave of sign-ups the worker's pages
            # were decrypted for the consultations the API applies itself.)
            taking = [
                self.projections[n]
                for n in names
                if hold_after is None or n not in self.inline or checkpoints[n] < hold_after
            ]
            payload = any(reads_payload(p) for p in taking)
            personal = any(reads_personal(p) for p in taking)
            page = self.store.read_all(start, self.batch_size, payload=payload, personal=personal)
            if not page:
                self._saw(checkpoints)
                return applied
            due = names
            if hold_after is not None:  # lock only what has events to apply
                due = [n for n in names if self._fresh(n, page, checkpoints[n], hold_after)]
                if not due:
                    self._saw(checkpoints)
                    return applied  # what is left is held for the commands
            reached: dict[str, int] = {}
            changed: set[str] = set()
            with self.db.write() as conn:
                current = self._lock_all(conn, due)
                for name in due:
                    projection = self.projections[name]
                    if (personal or not reads_personal(projection)) and (
                        payload or not reads_payload(projection)
                    ):  # never show a projection events without what it reads
                        self._observe(name, page, current[name])
                    fresh = self._fresh(name, page, current[name], hold_after)
                    reached[name] = current[name]
                    if fresh:
                        self.projections[name].apply(conn, tables[name], fresh)
                        reached[name] = fresh[-1].position or current[name]
                        applied += len(fresh)
                        if changes(self.projections[name], fresh):
                            changed.add(name)
                moved = {n: p for n, p in reached.items() if p > current[n]}
                self._save_all(conn, moved, changed)
            self._saw(reached)
            self._seen = max(self._seen, page[-1].position or 0)
            if until is not None and min({**checkpoints, **reached}.values()) >= until:
                return applied
            if hold_after is not None and reached == current:
                return applied  # what is left is held for the commands

    def _fresh(
        self, name: str, page: list[RecordedEvent], checkpoint: int, hold_after: int | None
    ) -> list[RecordedEvent]:
        """The events of ``page`` that ``name`` has still to apply; with ``hold_after``, those
        of an inline projection stop short of the first event after it that it reads."""
        fresh = [e for e in page if (e.position or 0) > checkpoint]
        if hold_after is None or name not in self.inline:
            return fresh
        streams = getattr(self.projections[name], "streams", None)
        for i, e in enumerate(fresh):
            if (e.position or 0) > hold_after and (streams is None or e.stream_type in streams):
                return fresh[:i]
        return fresh

    def _catch_up_alone(self, name: str, until: int | None) -> int:
        applied = 0
        projection = self.projections[name]
        tables = live_tables(projection)
        while True:
            position, count = self.step(projection, tables)
            self._saw({name: position})
            applied += count
            if count == 0 or (until is not None and position >= until):
                return applied

    def _observe(self, name: str, page: Sequence[RecordedEvent], checkpoint: int) -> None:
        """Show a projection the events of ``page`` it has already applied (elsewhere)."""
        observe = getattr(self.projections[name], "observe", None)
        if observe is None:
            return
        known = [e for e in page if self._seen < (e.position or 0) <= checkpoint]
        if known:
            observe(known)

    def _saw(self, checkpoints: dict[str, int]) -> None:
        for name, position in checkpoints.items():
            self._known[name] = max(self._known.get(name, 0), position)

    def _save_all(
        self, conn: Connection, positions: dict[str, int], changed: Collection[str] = ()
    ) -> None:
        """Move several checkpoints (an upsert: a new projection's row too); those ``changed``
        also say their rows changed there (``changed_position``, ``changed_at``)."""
        now = datetime.now(UTC)
        rows: dict[tuple[str, ...], list[dict[str, object]]] = {_MOVED: [], _CHANGED: []}
        for name, position in positions.items():
            row: dict[str, object] = {"name": name, "position": position, "updated_at": now}
            if name in changed:
                row |= {"changed_position": position, "changed_at": now}
            rows[_CHANGED if name in changed else _MOVED].append(row)
        for columns, group in rows.items():
            if group:  # one statement per set of columns
                conn.execute(upsert(conn, projection_checkpoints, "name", columns), group)

    def _lock_all(self, conn: Connection, names: list[str]) -> dict[str, int]:
        """Take every named projection's lock (in one fixed order: no deadlock) and return
        their checkpoints, in this transaction.

        On PostgreSQL both go in one round trip (:func:`_lock_and_read`): the lock is held by
        the one process applying a page, so every round trip it makes while holding it
        delays every command waiting for these projections."""
        if self.db.is_postgres:
            with driver_cursor(conn) as cur:
                cur.execute(_lock_and_read(tuple(sorted(names))))
                cur.nextset()
                rows: dict[str, int] = dict(cur.fetchall())
        else:
            rows = dict(conn.execute(_CHECKPOINTS_OF, {"names": names}).all())
        return {name: int(rows.get(name, 0)) for name in names}

    def step(self, projection: Projection, tables: Tables) -> tuple[int, int]:
        """One transaction: apply the next page; return (checkpoint, events applied)."""
        start = self.checkpoint(projection.name)
        page = self.store.read_all(
            start,
            self.batch_size,
            payload=reads_payload(projection),
            personal=reads_personal(projection),
        )
        if not page:
            return start, 0
        with self.db.write() as conn:
            current = self.lock(conn, projection.name)
            fresh = [e for e in page if (e.position or 0) > current]
            if not fresh:
                return current, 0
            projection.apply(conn, tables, fresh)
            last = fresh[-1].position or current
            self.save(conn, projection.name, last, changed=changes(projection, fresh))
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

    def checkpoint(self, name: str) -> int:
        return self.checkpoints([name])[name]

    def checkpoints(self, names: Sequence[str] | None = None) -> dict[str, int]:
        wanted = list(names or self.projections)
        with self.db.read() as conn:
            rows: dict[str, int] = dict(conn.execute(_CHECKPOINTS).all())
        return {n: int(rows.get(n, 0)) for n in wanted}

    def lock(self, conn: Connection, name: str) -> int:
        """Take the projection's lock for this transaction and return its checkpoint."""
        return self._lock_all(conn, [name])[name]

    def save(self, conn: Connection, name: str, position: int, *, changed: bool = True) -> None:
        """Move ``name``'s checkpoint; ``changed``: its rows changed too (a rebuild's did)."""
        self._save_all(conn, {name: position}, {name} if changed else ())

    # -- running in the background ---------------------------------------------------------

    def run_forever(
        self,
        stop: threading.Event,
        *,
        idle_s: float = 0.1,
        leave_inline_s: float = 0.0,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        """Catch-up loop for a worker: sequence stragglers, apply new events, repeat.

        With ``leave_inline_s``, the inline projections are left to the commands that wait
        for them: the loop applies an event to them only once it has been in the log that
        long (its command failed after the commit, or it was appended outside the API).
        Applying them sooner only races those commands for the projections' locks, and the
        commands then wait for the loop's page instead of their own events."""
        heads: deque[tuple[float, int]] = deque()
        settled = 0
        while not stop.is_set():
            try:
                head = self.store.sequence_pending()
                hold_after = None
                if leave_inline_s > 0:
                    now = time.monotonic()
                    heads.append((now, head))
                    while heads and now - heads[0][0] >= leave_inline_s:
                        settled = heads.popleft()[1]
                    hold_after = settled
                applied = self.catch_up(hold_after=hold_after)
                if applied == 0:
                    stop.wait(idle_s)
            except Exception as exc:  # keep the loop alive; the error is reported
                if on_error is None:
                    raise
                on_error(exc)
                stop.wait(1.0)


def changes(projection: Projection, events: Sequence[RecordedEvent]) -> bool:
    """Whether applying ``events`` may change the projection's rows: some are of a stream type
    it reads (any event may, for one that does not say which it reads)."""
    streams = getattr(projection, "streams", None)
    return streams is None or any(e.stream_type in streams for e in events)


_MOVED = ("position", "updated_at")
_CHANGED = (*_MOVED, "changed_position", "changed_at")
_CHECKPOINTS = text("SELECT name, position FROM projection_checkpoints")
_CHECKPOINTS_OF = text(
    "SELECT name, position FROM projection_checkpoints WHERE name IN :names"
).bindparams(bindparam("names", expanding=True))


#: What a projection may be called (its name is written into :func:`_lock_and_read`'s SQL).
_NAME = re.compile(r"[a-z][a-z0-9_]*")


@lru_cache(maxsize=64)
def _lock_and_read(names: tuple[str, ...]) -> str:
    """Take the projections' advisory locks (in key order), then read their checkpoints: two
    statements in one query string, so one round trip. It has no parameters (the names are
    checked and written in), so psycopg sends it as a simple query; under READ COMMITTED its
    second statement takes its snapshot once the locks are held, so it sees the checkpoints
    the previous holder committed."""
    for name in names:
        if not _NAME.fullmatch(name):
            raise ValueError(f"projection name {name!r} is not a plain identifier")
    locks = ", ".join(f"pg_advisory_xact_lock({k})" for k in sorted(map(lock_key, names)))
    listed = ", ".join(f"'{name}'" for name in names)
    return (
        f"SELECT {locks}; "
        f"SELECT name, position FROM projection_checkpoints WHERE name IN ({listed})"
    )


def lock_key(name: str) -> int:
    """A stable advisory-lock key for a projection name."""
    return 0x434F_0000_0000 + zlib.crc32(name.encode())
