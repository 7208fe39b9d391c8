"""Series of consultations: planned countries and the consultations that joined."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from sqlalchemy import JSON, Column, Connection, Integer, String, Table, Text, Uuid
from sqlalchemy.dialects.postgresql import JSONB

from infra.projections.base import Tables
from infra.schema import UtcDateTime, metadata
from services.ports import EventStore, RecordedEvent
from services.registry import EVENTS
from services.series.model import SERIES

Json = JSON().with_variant(JSONB(), "postgresql")

series = Table(
    "series",
    metadata,
    Column("series_id", Uuid, primary_key=True),
    Column("title", String(500), nullable=False),
    Column("description", Text, nullable=True),
    Column("planned_countries", Json, nullable=False),
    Column("consultations", Json, nullable=False),
    Column("version", Integer, nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
)


class SeriesViews:
    """Projection ``series``."""

    name = "series"
    tables = (series,)
    streams = frozenset({"series"})

    def __init__(self, store: EventStore) -> None:
        self.store = store

    def apply(self, conn: Connection, tables: Tables, events: Sequence[RecordedEvent]) -> None:
        table = tables["series"]
        last: dict[UUID, RecordedEvent] = {}
        for e in events:
            if e.stream_type == "series":
                last[e.stream_id] = e
        for stream_id, event in last.items():
            records = [r for r in self.store.read_stream(stream_id) if r.version <= event.version]
            state = SERIES.fold(EVENTS.decode_known(records))
            if state.series_id is None:
                continue
            row: dict[str, Any] = {
                "title": state.title,
                "description": state.description,
                "planned_countries": list(state.planned_countries),
                "consultations": {str(k): v for k, v in state.consultations.items()},
                "version": event.version,
                "updated_at": event.recorded_at,
            }
            updated = conn.execute(
                table.update().where(table.c.series_id == stream_id).values(**row)
            )
            if updated.rowcount == 0:
                conn.execute(table.insert().values(series_id=stream_id, **row))
