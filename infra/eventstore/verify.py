"""``concord verify``: check the whole log's hash chains and positions, in constant memory.

Every stream is walked in version order: each event's content hash is recomputed from what is
stored (personal data as sealed ciphertext, so erasures change nothing) and its chain hash from
its predecessor's. Versions must run 1, 2, 3… without a gap. Then the feed's positions must be
1…head, each once. The first broken link is reported with where it is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson
from sqlalchemy import text

from infra.db import Database
from infra.eventstore.chain import GENESIS, content_hash, link

PAGE = 5000


@dataclass(frozen=True)
class Break:
    """The first place where the log is not what its hashes say."""

    stream_id: UUID | None
    version: int | None
    position: int | None
    problem: str

    def describe(self) -> str:
        where = []
        if self.stream_id is not None:
            where.append(f"stream {self.stream_id}")
        if self.version is not None:
            where.append(f"version {self.version}")
        if self.position is not None:
            where.append(f"position {self.position}")
        return f"{', '.join(where) or 'log'}: {self.problem}"


@dataclass
class Report:
    events: int = 0
    streams: int = 0
    head: int = 0
    unnumbered: int = 0
    broken: Break | None = None
    checked_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def ok(self) -> bool:
        return self.broken is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "streams": self.streams,
            "head": self.head,
            "unnumbered": self.unnumbered,
            "broken": None
            if self.broken is None
            else {
                "stream_id": str(self.broken.stream_id) if self.broken.stream_id else None,
                "version": self.broken.version,
                "position": self.broken.position,
                "problem": self.broken.problem,
                "where": self.broken.describe(),
            },
            "checked_at": self.checked_at.isoformat(),
        }


def verify(db: Database, progress: Callable[[int], None] | None = None) -> Report:
    """Walk every stream's chain, then the positions; stop at the first broken link."""
    report = _walk(_rows(db), progress)
    if report.broken is None:
        report.broken = _positions(db, report)
    return report


def verify_stream(db: Database, stream_id: UUID) -> Report:
    """Check one stream's chain from its first event (what a receipt relies on)."""
    return _walk(_rows(db, stream_id), None)


def _walk(rows: Iterator[dict[str, Any]], progress: Callable[[int], None] | None) -> Report:
    report = Report()
    stream: Any = None
    previous, expected_version = GENESIS, 1
    for row in rows:
        report.events += 1
        if progress is not None and report.events % PAGE == 0:
            progress(report.events)
        if row["stream_id"] != stream:
            stream, previous, expected_version = row["stream_id"], GENESIS, 1
            report.streams += 1
        sid = UUID(str(stream))
        if row["version"] != expected_version:
            missing = f"version {expected_version} is missing" if row["version"] > 1 else ""
            report.broken = Break(
                sid, row["version"], row["position"], missing or "versions out of order"
            )
            return report
        content = content_hash(
            row["event_id"],
            sid,
            row["stream_type"],
            row["event_type"],
            row["schema_version"],
            row["data"],
            row["metadata"],
            row["recorded_at"],
        )
        if content != row["content_hash"]:
            report.broken = Break(
                sid, row["version"], row["position"], "its content does not match its hash"
            )
            return report
        if link(previous, content) != row["chain_hash"]:
            report.broken = Break(
                sid,
                row["version"],
                row["position"],
                "its chain hash does not follow from the event before it",
            )
            return report
        previous, expected_version = row["chain_hash"], expected_version + 1
    return report


def _rows(db: Database, stream_id: UUID | None = None) -> Iterator[dict[str, Any]]:
    """Every event (of one stream) in (stream, version) order, page by page."""
    sqlite = db.is_sqlite
    columns = (
        "stream_id, version, position, event_id, stream_type, event_type, schema_version, "
        "data, metadata, recorded_at, content_hash, chain_hash"
    )
    only = ""
    if stream_id is not None:
        only = "stream_id = :only AND "
    first = text(
        f"SELECT {columns} FROM events WHERE {only}1 = 1 ORDER BY stream_id, version LIMIT :n"
    )
    after = text(
        f"SELECT {columns} FROM events WHERE {only}(stream_id > :sid OR (stream_id = :sid AND "
        "version > :ver)) ORDER BY stream_id, version LIMIT :n"
    )
    scope: dict[str, Any] = {}
    if stream_id is not None:
        scope["only"] = stream_id.hex if sqlite else stream_id
    last: tuple[Any, int] | None = None
    while True:
        with db.read() as conn:
            if last is None:
                rows = conn.execute(first, {"n": PAGE, **scope}).mappings().all()
            else:
                params = {"sid": last[0], "ver": last[1], "n": PAGE, **scope}
                rows = conn.execute(after, params).mappings().all()
        if not rows:
            return
        for row in rows:
            out = dict(row)
            if sqlite:
                out["data"] = orjson.loads(out["data"])
                out["metadata"] = orjson.loads(out["metadata"])
            at = out["recorded_at"]
            at = datetime.fromisoformat(at) if isinstance(at, str) else at
            out["recorded_at"] = at if at.tzinfo else at.replace(tzinfo=UTC)
            out["event_id"] = UUID(str(out["event_id"]))
            yield out
        last = (rows[-1]["stream_id"], rows[-1]["version"])


def _positions(db: Database, report: Report) -> Break | None:
    """Numbered events hold positions 1…head, each once (no gap a reader could fall into)."""
    with db.read() as conn:
        count, head, distinct = conn.execute(
            text(
                "SELECT count(position), COALESCE(max(position), 0), count(DISTINCT position) "
                "FROM events"
            )
        ).one()
        report.head = int(head)
        report.unnumbered = report.events - int(count)
        if count == head == distinct:
            return None
        gap = conn.execute(
            text(
                "SELECT min(position) + 1 FROM events e WHERE position IS NOT NULL AND NOT EXISTS"
                " (SELECT 1 FROM events n WHERE n.position = e.position + 1)"
                " AND position < :head"
            ),
            {"head": head},
        ).scalar()
    if distinct != count:
        return Break(None, None, None, "a position is held by more than one event")
    return Break(None, None, int(gap) if gap is not None else None, "this position is missing")
