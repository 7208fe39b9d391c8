"""How each API key is used: counted in memory per request, written in batches.

The API records every answer given to a key (:meth:`KeyUsage.record`: a dictionary update under
a lock, no I/O). Every ``CONCORD_KEY_USAGE_FLUSH`` seconds, and when the process stops, the
counts are *added* to ``api_key_usage`` (one row per key and hour) and ``api_keys.last_used_at``
moves forward — one short transaction for all keys, so several API processes add up correctly
and a request never waits on a write. A process killed with SIGKILL loses at most one interval
of counts; a failed write keeps them for the next one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal
from uuid import UUID

import structlog
from sqlalchemy import Connection, and_, bindparam, case, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite

from infra.db import Database
from infra.schema import api_key_usage, api_keys

log = structlog.get_logger("concord.key_usage")

Kind = Literal["read", "write", "denied", "rate_limited"]
COLUMNS: dict[str, str] = {
    "read": "reads",
    "write": "writes",
    "denied": "denied",
    "rate_limited": "rate_limited",
}


@dataclass
class _Counts:
    reads: int = 0
    writes: int = 0
    denied: int = 0
    rate_limited: int = 0
    last_used_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    last_client: str = ""

    def add(self, other: _Counts) -> None:
        self.reads += other.reads
        self.writes += other.writes
        self.denied += other.denied
        self.rate_limited += other.rate_limited
        if other.last_used_at >= self.last_used_at:
            self.last_used_at, self.last_client = other.last_used_at, other.last_client


def hour_of(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


class KeyUsage:
    """Per-key, per-hour counts of this process, flushed to the database in batches."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._pending: dict[tuple[UUID, datetime], _Counts] = {}
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def record(self, key_id: UUID, kind: Kind, client: str, at: datetime) -> None:
        """Count one answer given to ``key_id`` (no I/O)."""
        with self._lock:
            counts = self._pending.get((key_id, hour_of(at)))
            if counts is None:
                counts = self._pending[(key_id, hour_of(at))] = _Counts(last_used_at=at)
            setattr(counts, COLUMNS[kind], getattr(counts, COLUMNS[kind]) + 1)
            if at >= counts.last_used_at:
                counts.last_used_at, counts.last_client = at, client[:64]

    def flush(self) -> int:
        """Add what was counted since the last flush to the database; the rows written."""
        with self._flushing:
            with self._lock:
                pending, self._pending = self._pending, {}
            if not pending:
                return 0
            try:
                with self.db.write() as conn:
                    _add(conn, pending)
            except Exception:
                with self._lock:  # keep the counts for the next flush
                    for slot, counts in pending.items():
                        current = self._pending.get(slot)
                        if current is None:
                            self._pending[slot] = counts
                        else:
                            current.add(counts)
                raise
            return len(pending)

    def start(self, interval_s: float) -> None:
        """Flush every ``interval_s`` seconds in a daemon thread (until :meth:`stop`)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, args=(interval_s,), name="concord-key-usage", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop flushing in the background, then flush what is left."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        try:
            self.flush()
        except Exception as exc:
            log.warning("key usage not written at shutdown", error=repr(exc))

    def _run(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.flush()
            except Exception as exc:  # the database is down: the counts wait for the next try
                log.warning("key usage not written; retrying", error=repr(exc))


def _add(conn: Connection, pending: dict[tuple[UUID, datetime], _Counts]) -> None:
    rows = [
        {
            "key_id": key_id,
            "hour": hour,
            "reads": c.reads,
            "writes": c.writes,
            "denied": c.denied,
            "rate_limited": c.rate_limited,
            "last_used_at": c.last_used_at,
            "last_client": c.last_client,
        }
        for (key_id, hour), c in sorted(
            pending.items(), key=lambda item: (str(item[0][0]), item[0][1])
        )
    ]
    t = api_key_usage
    insert = (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(t)
    later = insert.excluded.last_used_at > t.c.last_used_at
    conn.execute(
        insert.on_conflict_do_update(
            index_elements=[t.c.key_id, t.c.hour],
            set_={
                "reads": t.c.reads + insert.excluded.reads,
                "writes": t.c.writes + insert.excluded.writes,
                "denied": t.c.denied + insert.excluded.denied,
                "rate_limited": t.c.rate_limited + insert.excluded.rate_limited,
                "last_used_at": case((later, insert.excluded.last_used_at), else_=t.c.last_used_at),
                "last_client": case((later, insert.excluded.last_client), else_=t.c.last_client),
            },
        ),
        rows,
    )
    latest: dict[UUID, datetime] = {}
    for (key_id, _), c in pending.items():
        if key_id not in latest or c.last_used_at > latest[key_id]:
            latest[key_id] = c.last_used_at
    conn.execute(
        api_keys.update()
        .where(
            api_keys.c.id == bindparam("key"),
            or_(
                api_keys.c.last_used_at.is_(None),
                api_keys.c.last_used_at < bindparam("at"),
            ),
        )
        .values(last_used_at=bindparam("at")),
        [
            {"key": key_id, "at": at}
            for key_id, at in sorted(latest.items(), key=lambda i: str(i[0]))
        ],
    )


# -- reading -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class UsageHour:
    hour: datetime
    reads: int
    writes: int
    denied: int
    rate_limited: int
    last_used_at: datetime
    last_client: str


@dataclass(frozen=True)
class UsageTotals:
    reads: int = 0
    writes: int = 0
    denied: int = 0
    rate_limited: int = 0
    last_used_at: datetime | None = None
    last_client: str | None = None


def hours(db: Database, key_id: UUID, since: datetime) -> list[UsageHour]:
    """The key's hourly rows from ``since`` (rounded down to its hour), oldest first."""
    t = api_key_usage
    with db.read() as conn:
        rows = conn.execute(
            select(t).where(t.c.key_id == key_id, t.c.hour >= hour_of(since)).order_by(t.c.hour)
        ).all()
    return [
        UsageHour(
            r.hour, r.reads, r.writes, r.denied, r.rate_limited, r.last_used_at, r.last_client
        )
        for r in rows
    ]


def totals(rows: Iterable[UsageHour]) -> UsageTotals:
    reads = writes = denied = limited = 0
    last: UsageHour | None = None
    for r in rows:
        reads, writes = reads + r.reads, writes + r.writes
        denied, limited = denied + r.denied, limited + r.rate_limited
        if last is None or r.last_used_at > last.last_used_at:
            last = r
    return UsageTotals(
        reads,
        writes,
        denied,
        limited,
        last.last_used_at if last else None,
        last.last_client if last else None,
    )


def summary(db: Database, since: datetime) -> dict[UUID, UsageTotals]:
    """Every key's totals from ``since``, and its latest use ever recorded (for ``keys list``)."""
    t = api_key_usage
    with db.read() as conn:
        sums = conn.execute(
            select(
                t.c.key_id,
                func.sum(t.c.reads),
                func.sum(t.c.writes),
                func.sum(t.c.denied),
                func.sum(t.c.rate_limited),
            )
            .where(t.c.hour >= hour_of(since))
            .group_by(t.c.key_id)
        ).all()
        newest = select(t.c.key_id, func.max(t.c.hour).label("hour")).group_by(t.c.key_id)
        newest_sq = newest.subquery()
        last = conn.execute(
            select(t.c.key_id, t.c.last_used_at, t.c.last_client).join(
                newest_sq, and_(t.c.key_id == newest_sq.c.key_id, t.c.hour == newest_sq.c.hour)
            )
        ).all()
    found = {k: (int(r or 0), int(w or 0), int(d or 0), int(x or 0)) for k, r, w, d, x in sums}
    result: dict[UUID, UsageTotals] = {}
    for key_id, used_at, client in last:
        counts = found.get(key_id, (0, 0, 0, 0))
        result[key_id] = UsageTotals(*counts, last_used_at=used_at, last_client=client)
    return result


def since_days(days: int, now: datetime | None = None) -> datetime:
    return hour_of((now or datetime.now(UTC)) - timedelta(days=days))
