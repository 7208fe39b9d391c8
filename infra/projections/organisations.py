"""The organisation directory: current details of every organisation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Column, Connection, Index, Integer, String, Table, Uuid, select

from infra.projections.base import Tables
from infra.schema import UtcDateTime, metadata
from services.ports import RecordedEvent

organisations = Table(
    "organisations",
    metadata,
    Column("organisation_id", Uuid, primary_key=True),
    Column("name", String(300), nullable=False),
    Column("acronym", String(50), nullable=True),
    Column("kind", String(50), nullable=False),
    Column("country", String(2), nullable=False),
    Column("email", String(320), nullable=True),
    Column("website", String(2000), nullable=True),
    Column("registered_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    Column("version", Integer, nullable=False),
    Index("ix_organisations_country_name", "country", "name"),
)

DETAILS = ("name", "acronym", "kind", "country", "email", "website")


class OrganisationDirectory:
    """Projection ``organisations``."""

    name = "organisations"
    tables = (organisations,)
    streams = frozenset({"organisation"})

    def apply(self, conn: Connection, tables: Tables, events: Sequence[RecordedEvent]) -> None:
        table = tables["organisations"]
        for e in events:
            if e.type == "organisation.registered":
                row: dict[str, Any] = {k: e.data.get(k) for k in DETAILS}
                conn.execute(
                    table.insert().values(
                        organisation_id=e.stream_id,
                        registered_at=e.recorded_at,
                        updated_at=e.recorded_at,
                        version=e.version,
                        **row,
                    )
                )
            elif e.type == "organisation.revised":
                changes = {k: e.data[k] for k in DETAILS if e.data.get(k) is not None}
                exists = conn.execute(
                    select(table.c.organisation_id).where(table.c.organisation_id == e.stream_id)
                ).first()
                if exists:
                    conn.execute(
                        table.update()
                        .where(table.c.organisation_id == e.stream_id)
                        .values(updated_at=e.recorded_at, version=e.version, **changes)
                    )
