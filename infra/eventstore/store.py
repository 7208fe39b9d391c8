"""The SQL event store: one ``events`` table on PostgreSQL or SQLite.

Appending
    One statement, one round trip, in autocommit: the rows are inserted only if the stream is
    at the expected version, and the unique key (stream_id, version) turns a concurrent writer
    that raced us into a :class:`ConcurrencyError`. All events of an append or none.

Positions (PostgreSQL)
    An identity taken at INSERT time is not in commit order, so it cannot be the feed order:
    a reader that has passed id 7 would skip id 5 committing later. Instead, after each commit
    the writer runs the *sequencer* (``concord_sequence_events()``, created by the first
    migration): holding a brief advisory lock it numbers, in one UPDATE, every unnumbered event
    whose transaction is below the horizon ``pg_snapshot_xmin(pg_current_snapshot())`` — i.e.
    every event no older transaction can still precede — in (tx_id, id) order, continuing from
    the highest position. Readers only see numbered events, so they never skip a late commit,
    and positions are contiguous because only committed rows are numbered. A background loop
    runs the same step as a fallback for writers that died between commit and sequencing.

Positions (SQLite)
    One writer at a time, so commit order is insert order: the position is assigned in the
    insert transaction.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson
from sqlalchemy import Connection, text
from sqlalchemy.exc import IntegrityError

from infra.db import Database
from services.errors import ConcurrencyError
from services.messages import EventRegistry
from services.ports import AppendResult, Metadata, NewEvent, RecordedEvent

COLUMNS = (
    "position, event_id, stream_id, stream_type, version, event_type, schema_version, "
    "data, metadata, recorded_at"
)

_PG_APPEND = text(
    """
    INSERT INTO events (event_id, stream_id, stream_type, version, event_type, schema_version,
                        data, metadata, recorded_at)
    SELECT v.event_id, :stream_id, :stream_type, cur.version + v.ord, v.event_type,
           v.schema_version, v.data, CAST(:metadata AS jsonb), :recorded_at
    FROM unnest(CAST(:event_ids AS uuid[]), CAST(:types AS text[]),
                CAST(:schema_versions AS smallint[]), CAST(:datas AS jsonb[]))
         WITH ORDINALITY AS v(event_id, event_type, schema_version, data, ord)
    CROSS JOIN (SELECT COALESCE(max(version), 0) AS version
                FROM events WHERE stream_id = :stream_id) AS cur
    WHERE CAST(:expected AS integer) IS NULL OR cur.version = CAST(:expected AS integer)
    RETURNING id, version
    """
)
_PG_SEQUENCE = text("SELECT concord_sequence_events(CAST(:ids AS bigint[]))")
_STREAM_VERSION = text("SELECT COALESCE(max(version), 0) FROM events WHERE stream_id = :stream_id")
_HEAD = text("SELECT COALESCE(max(position), 0) FROM events WHERE position IS NOT NULL")


class SqlEventStore:
    """The :class:`services.ports.EventStore` on PostgreSQL or SQLite."""

    def __init__(
        self,
        db: Database,
        registry: EventRegistry | None = None,
        *,
        sequence_timeout_s: float = 10.0,
    ) -> None:
        self.db = db
        self.registry = registry
        self.sequence_timeout_s = sequence_timeout_s

    # -- writing ---------------------------------------------------------------------------

    def append(
        self,
        stream_id: UUID,
        stream_type: str,
        expected_version: int | None,
        events: Sequence[NewEvent],
        metadata: Metadata | None = None,
    ) -> AppendResult:
        """Append atomically; a stream not at ``expected_version`` raises ConcurrencyError."""
        if not events:
            raise ValueError("append needs at least one event")
        meta = (metadata or Metadata()).as_dict()
        recorded_at = datetime.now(UTC)
        positions: Sequence[int | None]
        if self.db.is_postgres:
            ids, versions = self._append_postgres(
                stream_id, stream_type, expected_version, events, meta, recorded_at
            )
            positions = self._sequence(ids)
        else:
            versions, positions = self._append_sqlite(
                stream_id, stream_type, expected_version, events, meta, recorded_at
            )
        recorded = tuple(
            RecordedEvent(
                id=e.id,
                stream_id=stream_id,
                stream_type=stream_type,
                version=v,
                position=p,
                type=e.type,
                schema_version=e.schema_version,
                data=dict(e.data),
                metadata=meta,
                recorded_at=recorded_at,
            )
            for e, v, p in zip(events, versions, positions, strict=True)
        )
        return AppendResult(stream_id=stream_id, version=versions[-1], events=recorded)

    def _append_postgres(
        self,
        stream_id: UUID,
        stream_type: str,
        expected: int | None,
        events: Sequence[NewEvent],
        meta: dict[str, Any],
        recorded_at: datetime,
    ) -> tuple[list[int], list[int]]:
        with self.db.autocommit() as conn:
            return self.insert_postgres(
                conn, stream_id, stream_type, expected, events, meta, recorded_at
            )

    def insert_postgres(
        self,
        conn: Connection,
        stream_id: UUID,
        stream_type: str,
        expected: int | None,
        events: Sequence[NewEvent],
        meta: dict[str, Any],
        recorded_at: datetime,
    ) -> tuple[list[int], list[int]]:
        """The append statement on ``conn``; returns (insert ids, versions). No sequencing."""
        params = {
            "stream_id": stream_id,
            "stream_type": stream_type,
            "expected": expected,
            "metadata": orjson.dumps(meta).decode(),
            "recorded_at": recorded_at,
            "event_ids": [e.id for e in events],
            "types": [e.type for e in events],
            "schema_versions": [e.schema_version for e in events],
            "datas": [orjson.dumps(e.data).decode() for e in events],
        }
        try:
            rows = sorted(conn.execute(_PG_APPEND, params).all(), key=lambda r: r[1])
        except IntegrityError as exc:
            if _violates(exc, "uq_events_stream_id_version"):
                raise ConcurrencyError(stream_id, expected) from None
            raise
        if not rows:
            actual = conn.execute(_STREAM_VERSION, {"stream_id": stream_id}).scalar_one()
            raise ConcurrencyError(stream_id, expected, actual)
        return [r[0] for r in rows], [r[1] for r in rows]

    def _append_sqlite(
        self,
        stream_id: UUID,
        stream_type: str,
        expected: int | None,
        events: Sequence[NewEvent],
        meta: dict[str, Any],
        recorded_at: datetime,
    ) -> tuple[list[int], list[int]]:
        with self.db.write() as conn:  # BEGIN IMMEDIATE: we hold the only write lock
            current = conn.execute(_STREAM_VERSION, {"stream_id": stream_id.hex}).scalar_one()
            if expected is not None and current != expected:
                raise ConcurrencyError(stream_id, expected, current)
            head = conn.execute(_HEAD).scalar_one()
            meta_json = orjson.dumps(meta).decode()
            rows = [
                {
                    "position": head + i,
                    "event_id": e.id.hex,
                    "stream_id": stream_id.hex,
                    "stream_type": stream_type,
                    "version": current + i,
                    "event_type": e.type,
                    "schema_version": e.schema_version,
                    "data": orjson.dumps(e.data).decode(),
                    "metadata": meta_json,
                    "recorded_at": recorded_at.isoformat(sep=" "),
                }
                for i, e in enumerate(events, start=1)
            ]
            conn.exec_driver_sql(
                f"INSERT INTO events ({COLUMNS}) VALUES (:position, :event_id, :stream_id, "
                ":stream_type, :version, :event_type, :schema_version, :data, :metadata, "
                ":recorded_at)",
                rows,
            )
        return [r["version"] for r in rows], [r["position"] for r in rows]

    def _sequence(self, ids: list[int]) -> list[int | None]:
        """Number committed events; wait (bounded) until ``ids`` have positions."""
        deadline = time.monotonic() + self.sequence_timeout_s
        pause = 0.001
        while True:
            with self.db.autocommit() as conn:
                positions: list[int | None] = conn.execute(_PG_SEQUENCE, {"ids": ids}).scalar_one()
            if all(p is not None for p in positions) or time.monotonic() >= deadline:
                # Past the deadline an older transaction is still open: the events are
                # committed and will be numbered as soon as it ends (background sequencer).
                return positions
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def sequence_pending(self) -> int:
        """Run one sequencing step (the background fallback); returns the head position."""
        if not self.db.is_postgres:
            return self.head_position()
        with self.db.autocommit() as conn:
            conn.execute(_PG_SEQUENCE, {"ids": []})
            return int(conn.execute(_HEAD).scalar_one())

    # -- reading ---------------------------------------------------------------------------

    def read_stream(
        self,
        stream_id: UUID,
        *,
        after_version: int = 0,
        until_position: int | None = None,
        until_time: datetime | None = None,
    ) -> list[RecordedEvent]:
        """Every committed event of one stream, in version order, optionally as it stood."""
        sql = f"SELECT {COLUMNS} FROM events WHERE stream_id = :stream_id AND version > :after"
        params: dict[str, Any] = {"stream_id": self._key(stream_id), "after": after_version}
        if until_position is not None:
            sql += " AND position IS NOT NULL AND position <= :until_position"
            params["until_position"] = until_position
        if until_time is not None:
            sql += " AND recorded_at <= :until_time"
            params["until_time"] = until_time
        sql += " ORDER BY version"
        with self.db.read() as conn:
            return self._records(conn, text(sql), params)

    def read_all(
        self,
        after: int = 0,
        limit: int = 1000,
        *,
        types: Sequence[str] | None = None,
        stream_type: str | None = None,
        stream_id: UUID | None = None,
        conn: Connection | None = None,
    ) -> list[RecordedEvent]:
        """A page of numbered events with position > ``after`` in position order."""
        sql = f"SELECT {COLUMNS} FROM events WHERE position > :after"
        params: dict[str, Any] = {"after": after, "limit": limit}
        if types:
            names = [f"t{i}" for i in range(len(types))]
            sql += f" AND event_type IN ({', '.join(':' + n for n in names)})"
            params.update(zip(names, types, strict=True))
        if stream_type is not None:
            sql += " AND stream_type = :stream_type"
            params["stream_type"] = stream_type
        if stream_id is not None:
            sql += " AND stream_id = :stream_id"
            params["stream_id"] = self._key(stream_id)
        sql += " ORDER BY position LIMIT :limit"
        if conn is not None:
            return self._records(conn, text(sql), params)
        with self.db.read() as c:
            return self._records(c, text(sql), params)

    def iter_all(self, after: int = 0, batch_size: int = 5000) -> Iterator[RecordedEvent]:
        """Every numbered event after ``after``, streamed page by page in constant memory."""
        while True:
            page = self.read_all(after, batch_size)
            if not page:
                return
            yield from page
            after = page[-1].position or after
            if len(page) < batch_size:
                return

    def head_position(self) -> int:
        """The highest assigned position (0 for an empty log)."""
        with self.db.read() as conn:
            return int(conn.execute(_HEAD).scalar_one())

    def stream_version(self, stream_id: UUID) -> int:
        """The current version of a stream (0 if it has no events)."""
        with self.db.read() as conn:
            key = self._key(stream_id)
            return int(conn.execute(_STREAM_VERSION, {"stream_id": key}).scalar_one())

    def _key(self, value: UUID) -> UUID | str:
        """A UUID as the driver wants it (SQLite stores the 32-digit hex form)."""
        return value.hex if self.db.is_sqlite else value

    def _records(self, conn: Connection, stmt: Any, params: dict[str, Any]) -> list[RecordedEvent]:
        registry = self.registry
        sqlite = self.db.is_sqlite
        out: list[RecordedEvent] = []
        for pos, eid, sid, stype, ver, etype, sver, data, meta, at in conn.execute(stmt, params):
            if sqlite:
                data, meta = orjson.loads(data), orjson.loads(meta)
                eid, sid, at = UUID(eid), UUID(sid), _sqlite_time(at)
            if registry is not None:
                sver, data = registry.upcast(etype, sver, data)
            out.append(RecordedEvent(eid, sid, stype, ver, pos, etype, sver, data, meta, at))
        return out


def _sqlite_time(value: Any) -> datetime:
    when = datetime.fromisoformat(value) if isinstance(value, str) else value
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _violates(exc: IntegrityError, constraint: str) -> bool:
    diag = getattr(exc.orig, "diag", None)
    name = getattr(diag, "constraint_name", None)
    return name == constraint or constraint in str(exc.orig)
