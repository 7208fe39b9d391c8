"""Consultations and their rosters, folded with the aggregate's own ``evolve``.

The read model is derived with the same code that decides commands: for each consultation a
batch touches, the projector takes the aggregate's state (from a small cache, or folded from
the stream) and evolves it through the batch, then writes the summary row, the public detail
document and every registration the batch touched.

Erasure: names and e-mails are written only for people whose key still exists (checked per
batch, so a cached state from before an erasure cannot write a name back), and a
``person.erased`` event blanks the person's registrations and rewrites the detail documents
that name them as a speaker (``consultation_people`` remembers which).
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
    PrimaryKeyConstraint,
    String,
    Table,
    Uuid,
    bindparam,
    select,
)
from sqlalchemy.dialects.postgresql import JSONB

from infra.db import insert_or_skip, upsert
from infra.personal import Keyring
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
    #: NULL once the person is erased.
    Column("name", String(300), nullable=True),
    Column("email", String(320), nullable=True),
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


#: The people a consultation's detail document names (speakers): rewritten when one is erased.
consultation_people = Table(
    "consultation_people",
    metadata,
    Column("consultation_id", Uuid, nullable=False),
    Column("person_id", Uuid, nullable=False),
    PrimaryKeyConstraint("consultation_id", "person_id"),
    Index("ix_consultation_people_person_id", "person_id"),
)


def plain(value: Any, alive: frozenset[UUID] | None = None) -> Any:
    """Personal data as shown to those allowed to see it (None once the person is erased).

    ``alive``, when given, holds the people whose data may still be shown; anyone else's
    value is None even if the state in hand was folded before their erasure.
    """
    if not isinstance(value, Personal):
        return value
    if value.erased or (alive is not None and value.subject not in alive):
        return None
    return value.value


def document(
    state: Consultation, version: int, alive: frozenset[UUID] | None = None
) -> dict[str, Any]:
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
                        "person_id": str(sp.person_id),  # random, for erasure requests
                        "name": plain(sp.name, alive),
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


def _speakers(state: Consultation) -> set[UUID]:
    """The people the consultation's agenda names."""
    return {sp.name.subject for s in state.sessions_in_order for sp in s.speakers}


class ConsultationViews:
    """Projection ``consultations``: summaries, detail documents and rosters."""

    name = "consultations"
    tables = (consultations, registrations, consultation_people)
    streams = frozenset({"consultation", "person"})
    CACHE = 256

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self._cache: OrderedDict[UUID, tuple[int, Consultation]] = OrderedDict()

    def state_before(self, stream_id: UUID, version: int) -> Consultation:
        """The aggregate's state just before ``version`` (cached, else folded)."""
        cached = self._cache.get(stream_id)
        if cached is not None and cached[0] == version - 1:
            return cached[1]
        if version <= 1:
            return CONSULTATION.initial()
        # Behind (another process applied the events in between): read only those, not the
        # whole stream again (a busy consultation's stream is long).
        after, state = cached if cached is not None and cached[0] < version - 1 else (0, None)
        records = self.store.read_stream(stream_id, after_version=after, limit=version - 1 - after)
        return CONSULTATION.fold(EVENTS.decode_known(records), state)

    def observe(self, events: Sequence[RecordedEvent]) -> None:
        """Follow, in the cache, events another process applied (no reading the log again)."""
        for e in events:
            cached = self._cache.get(e.stream_id) if e.stream_type == "consultation" else None
            if cached is not None and cached[0] == e.version - 1:
                state = CONSULTATION.fold(EVENTS.decode_known([e]), cached[1])
                self._cache[e.stream_id] = (e.version, state)

    def apply(self, conn: Connection, tables: Tables, events: Sequence[RecordedEvent]) -> None:
        summary, roster = tables["consultations"], tables["registrations"]
        by_stream: dict[UUID, list[RecordedEvent]] = {}
        erased: list[UUID] = []
        for e in events:
            if e.stream_type == "consultation":
                by_stream.setdefault(e.stream_id, []).append(e)
            elif e.type == "person.erased":
                erased.append(UUID(e.data["person_id"]))
        folded = []
        for stream_id, batch in by_stream.items():
            state = self.state_before(stream_id, batch[0].version)
            # Each registration touched: when first and last in this batch (a row's times must
            # not depend on how the log was cut into batches: a rebuild reads bigger ones).
            touched: dict[UUID, tuple[datetime, RecordedEvent]] = {}
            for e in batch:
                for event in EVENTS.decode_known([e]):
                    state = CONSULTATION.evolve(state, event)
                if rid := e.data.get("registration_id"):
                    first = touched[UUID(rid)][0] if UUID(rid) in touched else e.recorded_at
                    touched[UUID(rid)] = (first, e)
            self._cache[stream_id] = (batch[-1].version, state)
            self._cache.move_to_end(stream_id)
            while len(self._cache) > self.CACHE:
                self._cache.popitem(last=False)
            if state.exists:
                folded.append((state, batch, touched))
        # Whose data may be written: one key lookup for the whole batch.
        people: set[UUID] = set()
        for state, _, touched in folded:
            people |= _speakers(state)
            people |= {r.person_id for rid in touched if (r := state.registrations.get(rid))}
        alive = self._alive(conn, people)
        # One statement per kind of write for the whole batch (a rebuild's pages are large).
        summaries, rows, renumbered = [], [], []
        for state, batch, touched in folded:
            summaries.append(_summary_row(state, batch[-1], alive))
            if any(e.type.startswith("consultation.session_") for e in batch):
                self._remember_speakers(conn, tables["consultation_people"], state)
            for rid, (first_seen, last_seen) in touched.items():
                registration = state.registrations.get(rid)
                if registration is not None:
                    rows.append(
                        _registration_row(state, registration, first_seen, last_seen, alive)
                    )
            if any(
                e.type
                in ("consultation.participant_promoted", "consultation.registration_cancelled")
                for e in batch
            ):
                renumbered += [
                    {
                        "b_id": r.registration_id,
                        "b_position": state.waitlist_position(r.registration_id),
                    }
                    for r in state.waitlist
                ]
        _upsert(conn, summary, "consultation_id", summaries)
        _upsert(conn, roster, "registration_id", rows, keep=("registered_at",))
        if renumbered:
            conn.execute(
                roster.update()
                .where(roster.c.registration_id == bindparam("b_id"))
                .values(waitlist_position=bindparam("b_position")),
                renumbered,
            )
        if erased:
            self._erase(conn, tables, erased)

    def _alive(self, conn: Connection, people: set[UUID]) -> frozenset[UUID] | None:
        """Of ``people``, those whose data may be shown (their key exists); None: no keyring."""
        keyring: Keyring | None = getattr(self.store, "keyring", None)
        if keyring is None or not people:
            return None
        return keyring.alive(conn, people)

    @staticmethod
    def _remember_speakers(conn: Connection, table: Table, state: Consultation) -> None:
        speakers = _speakers(state)
        if speakers:
            conn.execute(
                insert_or_skip(conn, table),
                [{"consultation_id": state.consultation_id, "person_id": p} for p in speakers],
            )

    def _erase(self, conn: Connection, tables: Tables, people: list[UUID]) -> None:
        """Blank erased people's registrations; rewrite the documents naming them."""
        summary, roster, named = (
            tables["consultations"],
            tables["registrations"],
            tables["consultation_people"],
        )
        conn.execute(
            roster.update().where(roster.c.person_id.in_(people)).values(name=None, email=None)
        )
        affected = set(
            conn.execute(
                select(named.c.consultation_id).where(named.c.person_id.in_(people))
            ).scalars()
        )
        for consultation_id in sorted(affected, key=str):
            self._cache.pop(consultation_id, None)  # it may hold the erased values
            version = conn.execute(
                select(summary.c.version).where(summary.c.consultation_id == consultation_id)
            ).scalar_one_or_none()
            if version is None:
                continue
            state = self.state_before(consultation_id, version + 1)
            alive = self._alive(conn, _speakers(state)) or frozenset()
            conn.execute(
                summary.update()
                .where(summary.c.consultation_id == consultation_id)
                .values(detail=document(state, version, alive - set(people)))
            )


def _summary_row(
    state: Consultation, last: RecordedEvent, alive: frozenset[UUID] | None
) -> dict[str, Any]:
    return {
        "consultation_id": state.consultation_id,
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
        "detail": document(state, last.version, alive),
    }


def _registration_row(
    state: Consultation,
    r: Registration,
    first_seen: datetime,
    last: RecordedEvent,
    alive: frozenset[UUID] | None,
) -> dict[str, Any]:
    return {
        "registration_id": r.registration_id,
        "consultation_id": state.consultation_id,
        "person_id": r.person_id,
        "name": plain(r.name, alive),
        "email": plain(r.email, alive),
        "organisation_id": r.organisation_id,
        "role": r.role,
        "country": r.country,
        "status": r.status,
        "waitlist_position": state.waitlist_position(r.registration_id),
        "checked_in": r.checked_in,
        "working_group_id": r.working_group_id,
        "registered_at": first_seen,
        "updated_at": last.recorded_at,
    }


def _upsert(
    conn: Connection, table: Table, key: str, rows: list[dict[str, Any]], keep: Sequence[str] = ()
) -> None:
    """Insert ``rows``, or update every column but the key and ``keep`` where the key exists;
    one statement for the lot (each key at most once)."""
    if not rows:
        return
    stmt = upsert(conn, table, key, [c for c in rows[0] if c != key and c not in keep])
    for start in range(0, len(rows), 1000):
        conn.execute(stmt, rows[start : start + 1000])
