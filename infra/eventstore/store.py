"""The SQL event store: one ``events`` table on PostgreSQL or SQLite.

Appending
    One statement, one round trip, in autocommit: the rows are inserted only if the stream is
    at the expected version, and the unique key (stream_id, version) turns a concurrent writer
    that raced us into a :class:`ConcurrencyError`. All events of an append or none. On
    PostgreSQL the appends of one process that arrive together are written together, several
    streams in one statement with one sequencing step (group commit:
    :mod:`infra.eventstore.group`); each still succeeds or fails on its own.

Positions (PostgreSQL)
    An identity taken at INSERT time is not in commit order, so it cannot be the feed order:
    a reader that has passed id 7 would skip id 5 committing later. Instead, after each commit
    the writer runs the *sequencer* (``concord_sequence_events()``, migrations 0001 and 0013,
    called through ``concord_sequence_ids()`` of migration 0016, which returns the positions):
    holding a brief advisory lock it numbers, in one UPDATE, every unnumbered event whose
    transaction is below the horizon — the oldest transaction still running that may insert
    events (each append takes a shared lock saying so before it writes), i.e. every event no
    older transaction can still precede — in (tx_id, id) order, continuing from the highest
    position. A long transaction that writes no events (a projection's page, a reminder tick)
    holds nobody's position back. Readers only see numbered events, so they never skip a late
    commit, and positions are contiguous because only committed rows are numbered. A background
    loop runs the same step as a fallback for writers that died between commit and sequencing.

Positions (SQLite)
    One writer at a time, so commit order is insert order: the position is assigned in the
    insert transaction.

Personal data and hashes
    With a :class:`~infra.personal.Keyring`, every ``$personal`` marker is sealed with its
    person's key before it is written and opened on read (erased people read as erased). Each
    event also stores its content hash and its link in the stream's hash chain
    (:mod:`infra.eventstore.chain`), computed over the sealed form.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson
import psycopg
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from infra.db import Database
from infra.eventstore.chain import GENESIS, chain, content_hash
from infra.eventstore.group import Groups, Pending
from infra.personal import Keyring, has_marker
from services.errors import ConcurrencyError
from services.messages import EventRegistry
from services.ports import AppendResult, Metadata, NewEvent, RecordedEvent

COLUMNS = (
    "position, event_id, stream_id, stream_type, version, event_type, schema_version, "
    "data, metadata, recorded_at, chain_hash"
)
#: The same columns without the payload (data and metadata read as empty objects): for
#: readers that only need where and when events happened, such as the stream catalog.
HEADER_COLUMNS = (
    "position, event_id, stream_id, stream_type, version, event_type, schema_version, "
    "NULL, NULL, recorded_at, chain_hash"
)
INSERT_COLUMNS = (
    "position, event_id, stream_id, stream_type, version, event_type, schema_version, "
    "data, metadata, recorded_at, content_hash, chain_hash"
)

# The append, as one statement sent straight to psycopg (no SQL compilation per call): the
# rows go in only if the stream is at the expected version; a racing writer hits the unique
# key (stream_id, version). The hash chain continues from the stream's actual last row.
# The events travel as ONE JSON array (orjson-encoded in C, parsed by the server in C):
# psycopg's per-element escaping of six text arrays cost more than the statement itself.
# Both CTEs are MATERIALIZED so the chain is computed once per append, not once per row.
# ``writer`` marks the transaction as one that writes events before its first row goes in
# (``concord_event_writer()``, migration 0013): the sequencer's horizon waits only for those.
_PG_APPEND = """
    WITH writer AS MATERIALIZED (
        SELECT concord_event_writer()
    ), last AS (
        SELECT version, chain_hash FROM events WHERE stream_id = %(stream_id)s
        ORDER BY version DESC LIMIT 1
    ), v AS MATERIALIZED (
        SELECT r.value AS e, r.ord
        FROM jsonb_array_elements(%(events)s::jsonb) WITH ORDINALITY AS r(value, ord)
    ), cur AS MATERIALIZED (
        SELECT COALESCE((SELECT version FROM last), 0) AS version,
               concord_chain(COALESCE((SELECT chain_hash FROM last), %(genesis)s),
                             ARRAY(SELECT v.e->>'h' FROM v ORDER BY v.ord)) AS hashes
    )
    INSERT INTO events (event_id, stream_id, stream_type, version, event_type, schema_version,
                        data, metadata, recorded_at, content_hash, chain_hash)
    SELECT (v.e->>'id')::uuid, %(stream_id)s, %(stream_type)s, cur.version + v.ord, v.e->>'t',
           (v.e->>'s')::smallint, v.e->'d', v.e->'m', %(recorded_at)s, v.e->>'h',
           cur.hashes[v.ord]
    FROM v CROSS JOIN cur CROSS JOIN writer
    WHERE %(expected)s::integer IS NULL OR cur.version = %(expected)s::integer
    RETURNING id, version, chain_hash
"""
# The same for several streams at once (infra/eventstore/group.py): each stream's rows go in
# only if it is at its expected version, so one stale append fails alone; rows are inserted
# (and so numbered) in the order given, each stream's in version order.
_PG_APPEND_GROUP = """
    WITH writer AS MATERIALIZED (
        SELECT concord_event_writer()
    ), g AS MATERIALIZED (
        SELECT r.value AS g, r.ord AS gi
        FROM jsonb_array_elements(%(groups)s::jsonb) WITH ORDINALITY AS r(value, ord)
    ), cur AS MATERIALIZED (
        SELECT g.gi, (g.g->>'s')::uuid AS stream_id, g.g->>'y' AS stream_type,
               (g.g->>'r')::timestamptz AS recorded_at, g.g->'e' AS events,
               COALESCE(l.version, 0) AS version,
               concord_chain(COALESCE(l.chain_hash, %(genesis)s),
                             ARRAY(SELECT x.e->>'h'
                                   FROM jsonb_array_elements(g.g->'e') WITH ORDINALITY AS x(e, o)
                                   ORDER BY x.o)) AS hashes
        FROM g
        LEFT JOIN LATERAL (
            SELECT version, chain_hash FROM events WHERE stream_id = (g.g->>'s')::uuid
            ORDER BY version DESC LIMIT 1
        ) AS l ON true
        WHERE g.g->>'x' IS NULL OR COALESCE(l.version, 0) = (g.g->>'x')::integer
    )
    INSERT INTO events (event_id, stream_id, stream_type, version, event_type, schema_version,
                        data, metadata, recorded_at, content_hash, chain_hash)
    SELECT (v.e->>'id')::uuid, cur.stream_id, cur.stream_type, cur.version + v.ord, v.e->>'t',
           (v.e->>'s')::smallint, v.e->'d', v.e->'m', cur.recorded_at, v.e->>'h',
           cur.hashes[v.ord]
    FROM cur CROSS JOIN writer
    CROSS JOIN LATERAL jsonb_array_elements(cur.events) WITH ORDINALITY AS v(e, ord)
    ORDER BY cur.gi, v.ord
    RETURNING id, stream_id, version, chain_hash
"""
_PG_SEQUENCE_IDS = "SELECT concord_sequence_ids(%(ids)s::bigint[])"
_PG_SEQUENCE = (
    "SELECT concord_sequence_events(%(stream_id)s::uuid, %(first)s::integer, %(last)s::integer)"
)
_PG_STREAM_VERSION = "SELECT COALESCE(max(version), 0) FROM events WHERE stream_id = %(stream_id)s"
_STREAM_VERSION = text("SELECT COALESCE(max(version), 0) FROM events WHERE stream_id = :stream_id")
_SQLITE_LAST = (
    "SELECT version, chain_hash FROM events WHERE stream_id = :stream_id "
    "ORDER BY version DESC LIMIT 1"
)
HEAD_SQL = "SELECT COALESCE(max(position), 0) FROM events WHERE position IS NOT NULL"
#: How long a group waits for its positions while it holds the lead (seconds).
LEAD_WAIT_S = 0.05
_HEAD = text(HEAD_SQL)


class SqlEventStore:
    """The :class:`services.ports.EventStore` on PostgreSQL or SQLite."""

    def __init__(
        self,
        db: Database,
        registry: EventRegistry | None = None,
        *,
        sequence_timeout_s: float = 10.0,
        keyring: Keyring | None = None,
    ) -> None:
        self.db = db
        self.registry = registry
        self.sequence_timeout_s = sequence_timeout_s
        self.keyring = keyring
        self._groups = Groups(self._write_group)

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
        return self.append_batch(stream_id, stream_type, expected_version, [(events, metadata)])

    def append_batch(
        self,
        stream_id: UUID,
        stream_type: str,
        expected_version: int | None,
        commands: Sequence[tuple[Sequence[NewEvent], Metadata | None]],
    ) -> AppendResult:
        """Append the events of several commands, each with its own metadata, atomically in
        one statement (the per-stream batching of :mod:`infra.lanes`)."""
        events = [e for batch, _ in commands for e in batch]
        if not events:
            raise ValueError("append needs at least one event")
        metas = [(m or Metadata()).as_dict() for batch, m in commands for _ in batch]
        recorded_at = datetime.now(UTC)
        positions: Sequence[int | None]
        if self.db.is_postgres:
            versions, positions, hashes = self._groups.append(
                Pending(stream_id, stream_type, expected_version, events, metas, recorded_at)
            )
        else:
            stored = self.keyring.seal(events) if self.keyring is not None else events
            versions, positions, hashes = self._append_sqlite(
                stream_id, stream_type, expected_version, stored, metas, recorded_at
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
                hash=h,
            )
            for e, meta, v, p, h in zip(events, metas, versions, positions, hashes, strict=True)
        )
        return AppendResult(stream_id=stream_id, version=versions[-1], events=recorded)

    def _write_group(self, group: list[Pending]) -> Callable[[], None] | None:
        """Write a group of appends (:mod:`infra.eventstore.group`): their personal data
        sealed together, then one statement and one commit. Should the statement fail as a
        whole (a racing writer took a version one of them wanted), each is written again on
        its own; one that fails gets its own error. Then the sequencing step, on the same
        connection, while this group still holds the lead: for at most :data:`LEAD_WAIT_S`,
        which a healthy sequencer needs a fraction of (so the appends queueing meanwhile make
        the next group). If the positions take longer (an old transaction holding the horizon,
        a stuck sequencer), what waits for them is returned, to run once the lead has passed
        on: a slow sequencing step holds back no other append."""
        started = time.monotonic()
        everything = [e for pending in group for e in pending.events]
        sealed = self.keyring.seal(everything) if self.keyring is not None else everything
        stored: list[Sequence[NewEvent]] = []
        at = 0
        for pending in group:
            stored.append(sealed[at : at + len(pending.events)])
            at += len(pending.events)
        with self.db.autocommit() as conn:
            written = self._insert_group(conn, group, stored) if len(group) > 1 else None
            if written is None:
                written = []
                for pending, events in zip(group, stored, strict=True):
                    try:
                        ids, versions, hashes = self.insert_postgres(
                            conn,
                            pending.stream_id,
                            pending.stream_type,
                            pending.expected,
                            events,
                            pending.metas,
                            pending.recorded_at,
                        )
                    except Exception as failure:
                        pending.result = failure
                    else:
                        written.append((pending, list(zip(versions, ids, hashes, strict=True))))
            ids = [insert_id for _, rows in written for _, insert_id, _ in rows]
            if not ids:
                return None
            positions = self._sequence_ids(conn, ids, time.monotonic() + LEAD_WAIT_S)
        if None not in positions:
            _settle(written, positions)
            return None
        deadline = started + self.sequence_timeout_s

        def wait_for_positions() -> None:
            with self.db.autocommit() as conn:
                _settle(written, self._sequence_ids(conn, ids, deadline))

        return wait_for_positions

    def _insert_group(
        self, conn: Connection, group: list[Pending], stored: list[Sequence[NewEvent]]
    ) -> list[tuple[Pending, list[tuple[int, int, str]]]] | None:
        """Several streams' appends in one statement, each only if its stream is at its
        expected version (one that is not gets its error); the rows written, as (version,
        insert id, chain hash) per append. None (and nothing written) if the statement failed
        as a whole: a racing writer took a version one of them wanted (or deadlocked with
        it)."""
        payload = []
        # Rows go in by stream id whatever order the appends came in: every group of every
        # process then takes the unique key's entries in one order, so two groups racing for
        # the same streams wait for each other instead of deadlocking (PostgreSQL resolves a
        # deadlock only after deadlock_timeout, a second, by failing one of them).
        ordered = sorted(zip(group, stored, strict=True), key=lambda pair: pair[0].stream_id)
        for pending, events in ordered:
            hashes = _content_hashes(
                pending.stream_id, pending.stream_type, events, pending.metas, pending.recorded_at
            )
            payload.append(
                {
                    "s": str(pending.stream_id),
                    "y": pending.stream_type,
                    "x": pending.expected,
                    "r": pending.recorded_at.isoformat(),
                    "e": _event_rows(events, pending.metas, hashes),
                }
            )
        with driver_cursor(conn) as cur:
            try:
                cur.execute(
                    _PG_APPEND_GROUP, {"genesis": GENESIS, "groups": orjson.dumps(payload).decode()}
                )
            except (psycopg.IntegrityError, psycopg.errors.DeadlockDetected):
                return None  # a racing writer (or a deadlock with one): one at a time
            by_stream: dict[UUID, list[tuple[int, int, str]]] = {}
            for insert_id, stream_id, version, chain_hash in cur.fetchall():
                by_stream.setdefault(stream_id, []).append((version, insert_id, chain_hash))
            written = []
            for pending in group:
                rows = sorted(by_stream.get(pending.stream_id, ()))
                if not rows:  # not at its expected version: only this append fails
                    actual = self._version(cur, pending.stream_id)
                    pending.result = ConcurrencyError(pending.stream_id, pending.expected, actual)
                    continue
                written.append((pending, rows))
        return written

    def insert_postgres(
        self,
        conn: Connection,
        stream_id: UUID,
        stream_type: str,
        expected: int | None,
        events: Sequence[NewEvent],
        meta: dict[str, Any] | Sequence[dict[str, Any]],
        recorded_at: datetime,
    ) -> tuple[list[int], list[int], list[str]]:
        """The append statement on ``conn``; returns (insert ids, versions, chain hashes).
        No sequencing. ``events`` are stored as given (sealed already, if they need it);
        ``meta`` is one metadata for all of them or one per event."""
        metas = [meta] * len(events) if isinstance(meta, dict) else list(meta)
        with driver_cursor(conn) as cur:
            try:
                self._execute_append(
                    cur, stream_id, stream_type, expected, events, metas, recorded_at
                )
            except psycopg.errors.UniqueViolation as exc:
                self._conflict(exc, stream_id, expected)
                raise
            rows = sorted(cur.fetchall(), key=lambda r: r[1])
            if not rows:
                raise ConcurrencyError(stream_id, expected, self._version(cur, stream_id))
        return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]

    @staticmethod
    def _execute_append(
        cur: Any,
        stream_id: UUID,
        stream_type: str,
        expected: int | None,
        events: Sequence[NewEvent],
        metas: Sequence[dict[str, Any]],
        recorded_at: datetime,
    ) -> None:
        hashes = _content_hashes(stream_id, stream_type, events, metas, recorded_at)
        cur.execute(
            _PG_APPEND,
            {
                "genesis": GENESIS,
                "events": orjson.dumps(_event_rows(events, metas, hashes)).decode(),
                "stream_id": stream_id,
                "stream_type": stream_type,
                "expected": expected,
                "recorded_at": recorded_at,
            },
        )

    @staticmethod
    def _conflict(
        exc: psycopg.errors.UniqueViolation, stream_id: UUID, expected: int | None
    ) -> None:
        """A racing writer took the version first: that is a concurrency conflict."""
        if exc.diag.constraint_name == "uq_events_stream_id_version":
            raise ConcurrencyError(stream_id, expected) from None

    @staticmethod
    def _version(cur: Any, stream_id: UUID) -> int | None:
        cur.execute(_PG_STREAM_VERSION, {"stream_id": stream_id})
        row = cur.fetchone()
        return int(row[0]) if row else None

    def _append_sqlite(
        self,
        stream_id: UUID,
        stream_type: str,
        expected: int | None,
        events: Sequence[NewEvent],
        metas: Sequence[dict[str, Any]],
        recorded_at: datetime,
    ) -> tuple[list[int], list[int], list[str]]:
        contents = _content_hashes(stream_id, stream_type, events, metas, recorded_at)
        with self.db.write() as conn:  # BEGIN IMMEDIATE: we hold the only write lock
            last = conn.exec_driver_sql(_SQLITE_LAST, {"stream_id": stream_id.hex}).first()
            current, previous = (last[0], last[1]) if last else (0, GENESIS)
            if expected is not None and current != expected:
                raise ConcurrencyError(stream_id, expected, current)
            head = conn.execute(_HEAD).scalar_one()
            hashes = chain(previous, contents)
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
                    "metadata": orjson.dumps(metas[i - 1]).decode(),
                    "recorded_at": _sqlite_param(recorded_at),
                    "content_hash": contents[i - 1],
                    "chain_hash": hashes[i - 1],
                }
                for i, e in enumerate(events, start=1)
            ]
            conn.exec_driver_sql(
                f"INSERT INTO events ({INSERT_COLUMNS}) VALUES (:position, :event_id, "
                ":stream_id, :stream_type, :version, :event_type, :schema_version, :data, "
                ":metadata, :recorded_at, :content_hash, :chain_hash)",
                rows,
            )
        return [r["version"] for r in rows], [r["position"] for r in rows], hashes

    def _sequence_ids(self, conn: Connection, ids: list[int], until: float) -> list[int | None]:
        """Number committed events; wait until the events with these insert ids have
        positions, or the monotonic clock reaches ``until``."""
        pause = 0.0002
        with driver_cursor(conn) as cur:
            while True:
                cur.execute(_PG_SEQUENCE_IDS, {"ids": ids})
                row = cur.fetchone()
                positions: list[int | None] = row[0] if row else [None] * len(ids)
                if all(p is not None for p in positions) or time.monotonic() >= until:
                    # Past the deadline an older transaction is still open: the events are
                    # committed and will be numbered as soon as it ends (background sequencer).
                    return positions
                time.sleep(pause)
                pause = min(pause * 1.5, 0.01)

    def sequence_pending(self) -> int:
        """Run one sequencing step (the background fallback); returns the head position."""
        if not self.db.is_postgres:
            return self.head_position()
        with self.db.autocommit() as conn, driver_cursor(conn) as cur:
            cur.execute(_PG_SEQUENCE, {"stream_id": None, "first": None, "last": None})
            cur.execute(HEAD_SQL)
            row = cur.fetchone()
            return int(row[0]) if row else 0

    # -- reading ---------------------------------------------------------------------------

    def read_stream(
        self,
        stream_id: UUID,
        *,
        after_version: int = 0,
        until_position: int | None = None,
        until_time: datetime | None = None,
        limit: int | None = None,
    ) -> list[RecordedEvent]:
        """Every committed event of one stream, in version order, optionally as it stood
        (at most ``limit`` of them)."""
        p = self._placeholder
        sql = (
            f"SELECT {COLUMNS} FROM events "
            f"WHERE stream_id = {p('stream_id')} AND version > {p('after')}"
        )
        params: dict[str, Any] = {"stream_id": self._key(stream_id), "after": after_version}
        if until_position is not None:
            sql += f" AND position IS NOT NULL AND position <= {p('until_position')}"
            params["until_position"] = until_position
        if until_time is not None:
            sql += f" AND recorded_at <= {p('until_time')}"
            params["until_time"] = until_time if self.db.is_postgres else _sqlite_param(until_time)
        sql += " ORDER BY version"
        if limit is not None:
            sql += f" LIMIT {p('limit')}"
            params["limit"] = limit
        with self.db.read() as conn:
            return self._records(conn, sql, params)

    def read_all(
        self,
        after: int = 0,
        limit: int = 1000,
        *,
        types: Sequence[str] | None = None,
        stream_type: str | None = None,
        stream_id: UUID | None = None,
        conn: Connection | None = None,
        payload: bool = True,
        personal: bool = True,
    ) -> list[RecordedEvent]:
        """A page of numbered events with position > ``after`` in position order.

        With ``payload=False`` only the events' headers are read: ``data`` and ``metadata``
        are empty (no JSON to parse, nothing to open or upcast). With ``personal=False`` the
        personal data in ``data`` stays sealed (no key lookup, nothing decrypted)."""
        p = self._placeholder
        columns = COLUMNS if payload else HEADER_COLUMNS
        sql = f"SELECT {columns} FROM events WHERE position > {p('after')}"
        params: dict[str, Any] = {"after": after, "limit": limit}
        if types:
            names = [f"t{i}" for i in range(len(types))]
            sql += f" AND event_type IN ({', '.join(p(n) for n in names)})"
            params.update(zip(names, types, strict=True))
        if stream_type is not None:
            sql += f" AND stream_type = {p('stream_type')}"
            params["stream_type"] = stream_type
        if stream_id is not None:
            sql += f" AND stream_id = {p('stream_id')}"
            params["stream_id"] = self._key(stream_id)
        sql += f" ORDER BY position LIMIT {p('limit')}"
        if conn is not None:
            return self._records(conn, sql, params, payload, personal)
        with self.db.read() as c:
            return self._records(c, sql, params, payload, personal)

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

    # -- personal data ---------------------------------------------------------------------

    def knows(self, person_id: UUID) -> bool:
        """True while the person's data can be read (their key exists)."""
        return self.keyring is not None and self.keyring.known(person_id)

    def forget(self, person_id: UUID) -> bool:
        """Erase a person: delete their key (True if there was one). Nothing in the log
        changes; their sealed data can never be opened again."""
        return self.keyring is not None and self.keyring.forget(person_id)

    def _key(self, value: UUID) -> UUID | str:
        """A UUID as the driver wants it (SQLite stores the 32-digit hex form)."""
        return value.hex if self.db.is_sqlite else value

    def _placeholder(self, name: str) -> str:
        """A named parameter in the driver's own style (reads go straight to the driver)."""
        return f"%({name})s" if self.db.is_postgres else f":{name}"

    def _records(
        self,
        conn: Connection,
        sql: str,
        params: dict[str, Any],
        payload: bool = True,
        personal: bool = True,
    ) -> list[RecordedEvent]:
        """Run a read on the driver's cursor and build records (upcast to current schemas)."""
        with driver_cursor(conn) as cur:
            cur.execute(sql, params)
            rows = cur.fetchall()
        if not payload:
            sqlite = self.db.is_sqlite
            return [
                RecordedEvent(
                    UUID(eid) if sqlite else eid,
                    UUID(sid) if sqlite else sid,
                    stype,
                    ver,
                    pos,
                    etype,
                    sver,
                    {},
                    {},
                    _sqlite_time(at) if sqlite else at,
                    h,
                )
                for pos, eid, sid, stype, ver, etype, sver, _, _, at, h in rows
            ]
        upcast = self.registry.upcast if self.registry is not None else None
        out: list[RecordedEvent] = []
        append = out.append
        if self.db.is_sqlite:
            loads = orjson.loads
            rows = [
                (pos, UUID(eid), UUID(sid), st, v, et, sv, loads(d), loads(m), _sqlite_time(at), h)
                for pos, eid, sid, st, v, et, sv, d, m, at, h in rows
            ]
        if self.keyring is not None and personal:
            rows = self._open(conn, rows)
        for pos, eid, sid, stype, ver, etype, sver, data, meta, at, h in rows:
            if upcast is not None:
                sver, data = upcast(etype, sver, data)
            append(RecordedEvent(eid, sid, stype, ver, pos, etype, sver, data, meta, at, h))
        return out

    def _open(self, conn: Connection, rows: list[Any]) -> list[Any]:
        """Rows with their personal data opened (one key lookup for the whole page)."""
        assert self.keyring is not None
        personal = [i for i, row in enumerate(rows) if has_marker(row[7])]
        if not personal:
            return rows
        opened = self.keyring.open(conn, [(rows[i][1], rows[i][7]) for i in personal])
        rows = list(rows)
        for i, data in zip(personal, opened, strict=True):
            row = rows[i]
            rows[i] = (*row[:7], data, *row[8:])
        return rows


def _content_hashes(
    stream_id: UUID,
    stream_type: str,
    events: Sequence[NewEvent],
    metas: Sequence[dict[str, Any]],
    recorded_at: datetime,
) -> list[str]:
    """Each event's content hash, over what is stored (personal data already sealed)."""
    return [
        content_hash(
            e.id, stream_id, stream_type, e.type, e.schema_version, e.data, meta, recorded_at
        )
        for e, meta in zip(events, metas, strict=True)
    ]


def _settle(
    written: list[tuple[Pending, list[tuple[int, int, str]]]], positions: list[int | None]
) -> None:
    """Each written append's result: its versions, positions and chain hashes."""
    numbered = iter(positions)
    for pending, rows in written:
        pending.result = (
            [version for version, _, _ in rows],
            [next(numbered) for _ in rows],
            [chain_hash for _, _, chain_hash in rows],
        )


def _event_rows(
    events: Sequence[NewEvent], metas: Sequence[dict[str, Any]], hashes: Sequence[str]
) -> list[dict[str, Any]]:
    """The events as the append statements take them (one JSON array; see _PG_APPEND)."""
    return [
        {"id": e.id, "t": e.type, "s": e.schema_version, "d": e.data, "m": m, "h": h}
        for e, m, h in zip(events, metas, hashes, strict=True)
    ]


@contextmanager
def driver_cursor(conn: Connection) -> Iterator[Any]:
    """A psycopg cursor on ``conn``'s own connection: the hot path skips SQL compilation.

    A dropped connection is handled as SQLAlchemy's own execution path does it: every pooled
    connection as old as it is replaced on its next checkout (a server restart or
    ``pg_terminate_backend`` drops them all), and errors surface as SQLAlchemy's DBAPIError.
    """
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        yield cursor
    except sqlite3.Error as exc:
        raise DBAPIError.instance(None, None, exc, sqlite3.Error) from exc
    except psycopg.OperationalError as exc:
        dropped = bool(conn.connection.driver_connection.closed)  # type: ignore[union-attr]
        if dropped:
            conn.engine.pool._invalidate(conn.connection, exc, _checkin=False)
            conn.invalidate(exc)
        raise DBAPIError.instance(
            None, None, exc, psycopg.Error, connection_invalidated=dropped
        ) from exc
    finally:
        cursor.close()


def _sqlite_param(when: datetime) -> str:
    """A time as SQLite stores it (SQLAlchemy's DateTime text form, in UTC)."""
    return when.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ")


def _sqlite_time(value: Any) -> datetime:
    when = datetime.fromisoformat(value) if isinstance(value, str) else value
    return when if when.tzinfo else when.replace(tzinfo=UTC)
