"""The stream catalog: one row per stream with its type, version and last position."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import BigInteger, Column, Connection, Index, Integer, String, Table, Uuid

from infra.db import upsert
from infra.projections.base import Tables
from infra.schema import UtcDateTime, metadata
from services.ports import RecordedEvent

stream_catalog = Table(
    "stream_catalog",
    metadata,
    Column("stream_id", Uuid, primary_key=True),
    Column("stream_type", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("first_position", BigInteger, nullable=False),
    Column("last_position", BigInteger, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    Index("ix_stream_catalog_stream_type_last_position", "stream_type", "last_position"),
)


class StreamCatalog:
    """Projection ``stream_catalog``."""

    name = "stream_catalog"
    tables = (stream_catalog,)
    #: Off the command path: ``GET /v1/streams/{id}`` catches it up before reading.
    inline = False
    #: Where and when streams changed: no event's data is needed.
    payload = False

    def apply(self, conn: Connection, tables: Tables, events: Sequence[RecordedEvent]) -> None:
        table = tables["stream_catalog"]
        latest: dict[Any, dict[str, Any]] = {}
        for e in events:
            row = latest.get(e.stream_id)
            if row is None:
                latest[e.stream_id] = {
                    "stream_id": e.stream_id,
                    "stream_type": e.stream_type,
                    "version": e.version,
                    "first_position": e.position,
                    "last_position": e.position,
                    "created_at": e.recorded_at,
                    "updated_at": e.recorded_at,
                }
            else:
                row.update(version=e.version, last_position=e.position, updated_at=e.recorded_at)
        if not latest:
            return
        stmt = upsert(conn, table, "stream_id", ("version", "last_position", "updated_at"))
        conn.execute(stmt, list(latest.values()))
