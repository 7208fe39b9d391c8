"""Consultations and their rosters, folded with the aggregate's own ``evolve``.

The read model is derived with the same code that decides commands: for each consultation a
batch touches, the projector takes the aggregate's state (from a small cache, or folded from
the stream) and evolves it through the batch, then writes the summary row, the public detail
document and every registration the batch touched.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Connection,
    Index,
    Integer,
    String,
    Table,
    Uuid,
)
from sqlalchemy.dialects.postgresql import JSONB

from infra.projections.base import Tables
from infra.schema import UtcDateTime, metadata
from services.consultations.model import CONSULTATION, Consultation, Registration
from services.messages import Personal
from services.ports import EventStore, RecordedEvent
from services.registry import EVENTS

Json = JSON().with_variant(JSONB(), "postgresql")

consultations = Table(
    "consultations",
    metadata,
    Column("consultation_id", Uuid, primary_key=True),
    Column("title", String(500), nullable=False),
    Column("scope", String(20), nullable=False),
    Column("host_country", String(2), nullable=False),
    Column("city", String(200), nullable=True),
    Column("mode", String(20), nullable=False),
    Column("timezone", String(64), nullable=False),
    Column("starts_at", UtcDateTime(), nullable=False),
    Column("ends_at", UtcDateTime(), nullable=False),
    Column("organiser_id", Uuid, nullable=False),
    Column("series_id", Uuid, nullable=True),
    Column("capacity", Integer, nullable=True),
    Column("registration_opened", Boolean, nullable=False),
    Column("registration_closes_at", UtcDateTime(), nullable=True),
    Column("registration_closed", Boolean, nullable=False),
    Column("cancelled", Boolean, nullable=False),
    Column("completed", Boolean, nullable=False),
    Column("registered_count", Integer, nullable=False),
    Column("waitlisted_count", Integer, nullable=False),
    Column("version", Integer, nullable=False),
    Column("sequence", Integer, nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    Column("detail", Json, nullable=False),
    Index("ix_consultations_starts_at", "starts_at"),
    Index("ix_consultations_host_country_starts_at", "host_country", "starts_at"),
    Index("ix_consultations_series_id", "series_id"),
)

registrations = Table(
    "registrations",
    metadata,
    Column("registration_id", Uuid, primary_key=True),
    Column("consultation_id", Uuid, nullable=False),
    Column("person_id", Uuid, nullable=False),
    Column("name", String(300), nullable=False),
    Column("email", String(320), nullable=False),
    Column("organisation_id", Uuid, nullable=True),
    Column("role", String(30), nullable=False),
    Column("country", String(2), nullable=True),
    Column("status", String(20), nullable=False),
    Column("waitlist_position", Integer, nullable=True),
    Column("checked_in", Boolean, nullable=False),
    Column("working_group_id", Uuid, nullable=True),
    Column("registered_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    Index("ix_registrations_consultation_id_status", "consultation_id", "status"),
    Index("ix_registrations_organisation_id", "organisation_id"),
)


def plain(value: Any) -> Any:
    """Personal data as shown to those allowed to see it."""
    return value.value if isinstance(value, Personal) else value


def document(state: Consultation, version: int) -> dict[str, Any]:
    """The public detail of a consultation (no participants' personal data)."""
    return {
        "id": str(state.consultation_id),
        "version": version,
        "title": state.title,
        "theme": state.theme,
        "scope": state.scope,
        "host_country": state.host_country,
        "city": state.city,
        "venue": state.venue,
        "mode": state.mode,
        "virtual_url": state.virtual_url,
        "timezone": state.timezone,
        "starts_at": state.starts_at.isoformat(),
        "ends_at": state.ends_at.isoformat(),
        "organiser_id": str(state.organiser_id),
        "co_organiser_ids": [str(i) for i in state.co_organiser_ids],
        "partner_ids": [str(i) for i in state.partner_ids],
        "capacity": state.capacity,
        "thematic_areas": list(state.thematic_areas),
        "objectives": list(state.objectives),
        "series_id": str(state.series_id) if state.series_id else None,
        "sequence": state.sequence,
        "registration": {
            "opened": state.registration_opened,
            "closes_at": state.registration_closes_at.isoformat()
            if state.registration_closes_at
            else None,
            "closed": state.registration_closed,
        },
        "cancelled": state.cancelled,
        "cancellation_reason": state.cancellation_reason,
        "completed": state.completed,
        "counts": {
            "registered": state.registered_count,
            "waitlisted": len(state.waitlist),
            "checked_in": state.checked_in_count,
            "seats_left": state.seats_left,
            "by_role": state.counts_by_role,
            "by_country": {k or "unknown": v for k, v in state.counts_by_country.items()},
        },
        "agenda": [
            {
                "id": str(s.session_id),
                "title": s.title,
                "kind": s.kind,
                "starts_at": s.starts_at.isoformat(),
                "ends_at": s.ends_at.isoformat(),
                "thematic_area": s.thematic_area,
                "speakers": [
                    {
                        "name": plain(sp.name),
                        "organisation_id": str(sp.organisation_id) if sp.organisation_id else None,
                    }
                    for sp in s.speakers
                ],
                "sequence": s.sequence,
            }
            for s in state.sessions_in_order
        ],
        "working_groups": [
            {
                "id": str(g.working_group_id),
                "thematic_area": g.thematic_area,
                "facilitator_registration_id": str(g.facilitator_registration_id)
                if g.facilitator_registration_id
                else None,
            }
            for g in state.working_groups.values()
        ],
    }


class ConsultationViews:
    """Projection ``consultations``: summaries, detail documents and rosters."""

    name = "consultations"
    tables = (consultations, registrations)
    CACHE = 256

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self._cache: OrderedDict[UUID, tuple[int, Consultation]] = OrderedDict()

    def state_before(self, stream_id: UUID, version: int) -> Consultation:
        """The aggregate's state just before ``version`` (cached, else folded)."""
        cached = self._cache.get(stream_id)
        if cached is not None and cached[0] == version - 1:
            return cached[1]
        records = [r for r in self.store.read_stream(stream_id) if r.version < version]
        return CONSULTATION.fold(EVENTS.decode_known(records))

    def apply(self, conn: Connection, tables: Tables, events: Sequence[RecordedEvent]) -> None:
        summary, roster = tables["consultations"], tables["registrations"]
        by_stream: dict[UUID, list[RecordedEvent]] = {}
        for e in events:
            if e.stream_type == "consultation":
                by_stream.setdefault(e.stream_id, []).append(e)
        for stream_id, batch in by_stream.items():
            state = self.state_before(stream_id, batch[0].version)
            touched: dict[UUID, datetime] = {}
            for e in batch:
                for event in EVENTS.decode_known([e]):
                    state = CONSULTATION.evolve(state, event)
                rid = e.data.get("registration_id")
                if rid:
                    touched.setdefault(UUID(rid), e.recorded_at)
            last = batch[-1]
            self._cache[stream_id] = (last.version, state)
            self._cache.move_to_end(stream_id)
            while len(self._cache) > self.CACHE:
                self._cache.popitem(last=False)
            if not state.exists:
                continue
            self._write_summary(conn, summary, state, last)
            for rid, first_seen in touched.items():
                registration = state.registrations.get(rid)
                if registration is not None:
                    self._write_registration(conn, roster, state, registration, first_seen, last)
            if any(
                e.type
                in ("consultation.participant_promoted", "consultation.registration_cancelled")
                for e in batch
            ):
                self._renumber_waitlist(conn, roster, state)

    @staticmethod
    def _write_summary(
        conn: Connection, table: Table, state: Consultation, last: RecordedEvent
    ) -> None:
        row = {
            "title": state.title,
            "scope": state.scope,
            "host_country": state.host_country,
            "city": state.city,
            "mode": state.mode,
            "timezone": state.timezone,
            "starts_at": state.starts_at,
            "ends_at": state.ends_at,
            "organiser_id": state.organiser_id,
            "series_id": state.series_id,
            "capacity": state.capacity,
            "registration_opened": state.registration_opened,
            "registration_closes_at": state.registration_closes_at,
            "registration_closed": state.registration_closed,
            "cancelled": state.cancelled,
            "completed": state.completed,
            "registered_count": state.registered_count,
            "waitlisted_count": len(state.waitlist),
            "version": last.version,
            "sequence": state.sequence,
            "updated_at": last.recorded_at,
            "detail": document(state, last.version),
        }
        updated = conn.execute(
            table.update().where(table.c.consultation_id == state.consultation_id).values(**row)
        )
        if updated.rowcount == 0:
            conn.execute(table.insert().values(consultation_id=state.consultation_id, **row))

    @staticmethod
    def _write_registration(
        conn: Connection,
        table: Table,
        state: Consultation,
        r: Registration,
        first_seen: datetime,
        last: RecordedEvent,
    ) -> None:
        row = {
            "consultation_id": state.consultation_id,
            "person_id": r.person_id,
            "name": plain(r.name),
            "email": plain(r.email),
            "organisation_id": r.organisation_id,
            "role": r.role,
            "country": r.country,
            "status": r.status,
            "waitlist_position": state.waitlist_position(r.registration_id),
            "checked_in": r.checked_in,
            "working_group_id": r.working_group_id,
            "updated_at": last.recorded_at,
        }
        updated = conn.execute(
            table.update().where(table.c.registration_id == r.registration_id).values(**row)
        )
        if updated.rowcount == 0:
            conn.execute(
                table.insert().values(
                    registration_id=r.registration_id, registered_at=first_seen, **row
                )
            )

    @staticmethod
    def _renumber_waitlist(conn: Connection, table: Table, state: Consultation) -> None:
        for r in state.waitlist:
            conn.execute(
                table.update()
                .where(table.c.registration_id == r.registration_id)
                .values(waitlist_position=state.waitlist_position(r.registration_id))
            )
