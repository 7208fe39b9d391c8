"""What is due: the reminder schedule, derived from the log (see ``services.reminders``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Connection,
    Index,
    Integer,
    String,
    Table,
    Uuid,
    select,
)
from sqlalchemy.dialects.postgresql import JSONB

from infra.projections.base import Tables
from infra.schema import UtcDateTime, metadata
from services.ports import RecordedEvent
from services.reminders.rules import (
    CONSULTATION_STARTS,
    ENDORSEMENT_DEADLINE,
    NOTICES,
    ORGANISATIONS,
    REGISTRATION,
    REGISTRATION_CLOSES,
    Anchor,
    due_at,
    notice_key,
    reminder_key,
)

Json = JSON().with_variant(JSONB(), "postgresql")

#: The projection's memory of each consultation: what its reminders hang on.
reminder_consultations = Table(
    "reminder_consultations",
    metadata,
    Column("consultation_id", Uuid, primary_key=True),
    Column("timezone", String(64), nullable=False),
    Column("state", Json, nullable=False),
)

#: The projection's memory of each statement: its consultation and endorsement deadline.
reminder_statements = Table(
    "reminder_statements",
    metadata,
    Column("statement_id", Uuid, primary_key=True),
    Column("consultation_id", Uuid, nullable=False),
    Column("deadline", UtcDateTime(), nullable=True),
)

#: Every reminder and notice that is (or will be) due. A reminder that no longer applies
#: (rescheduled, cancelled, reopened) is deleted; the key names its deadline, so a moved date
#: is a new reminder.
reminders = Table(
    "reminders",
    metadata,
    Column("key", String(300), primary_key=True),
    Column("rule", String(64), nullable=False),
    Column("consultation_id", Uuid, nullable=False),
    Column("statement_id", Uuid, nullable=True),
    Column("deadline", UtcDateTime(), nullable=True),
    Column("offset_s", Integer, nullable=True),
    Column("due_at", UtcDateTime(), nullable=False),
    Column("audience", Json, nullable=False),
    Column("position", BigInteger, nullable=False),
    Index("ix_reminders_due_at", "due_at"),
    Index("ix_reminders_consultation_id", "consultation_id"),
)


class ReminderSchedule:
    """Keeps ``reminders`` equal to what the log says is (or will be) due.

    A change to what a reminder hangs on (rescheduled, registration opened or closed,
    cancelled or completed, offsets configured, a statement finalised, reopened or closed)
    recomputes that subject's reminders: the old rows go and the new ones come, so a moved
    date moves the reminder and a cancellation drops it. Notices are one row per event.
    """

    name = "reminders"
    tables = (reminder_consultations, reminder_statements, reminders)

    def apply(self, conn: Connection, tables: Tables, events: Sequence[RecordedEvent]) -> None:
        for event in events:
            if event.stream_type == "consultation":
                self._consultation(conn, tables, event)
            elif event.stream_type == "statement":
                self._statement(conn, tables, event)

    # -- consultations ---------------------------------------------------------------------

    def _consultation(self, conn: Connection, tables: Tables, e: RecordedEvent) -> None:
        table = tables["reminder_consultations"]
        data = e.data
        if e.type == "consultation.planned":
            state: dict[str, Any] = {
                "starts_at": data["starts_at"],
                "closes_at": None,
                "status": "active",
                "offsets": {},
                "organiser_id": data["organiser_id"],
            }
            conn.execute(
                table.insert().values(
                    consultation_id=e.stream_id, timezone=data["timezone"], state=state
                )
            )
            self._schedule_consultation(conn, tables, e, data["timezone"], state)
            return
        row = conn.execute(select(table).where(table.c.consultation_id == e.stream_id)).first()
        if row is None:
            return
        timezone, state = row.timezone, dict(row.state)
        changed = True
        match e.type:
            case "consultation.revised":
                timezone = data.get("timezone") or timezone
                state["organiser_id"] = data.get("organiser_id") or state["organiser_id"]
            case "consultation.rescheduled":
                state["starts_at"] = data["starts_at"]
            case "consultation.registration_opened":
                state["closes_at"] = data["closes_at"]
            case "consultation.registration_closed":
                state["closes_at"] = None
            case "consultation.cancelled":
                state["status"] = "cancelled"
            case "consultation.completed":
                state["status"] = "completed"
            case "consultation.reminders_configured":
                state["offsets"] = {**state["offsets"], **data["offsets"]}
            case _:
                changed = False
        if changed:
            conn.execute(
                table.update()
                .where(table.c.consultation_id == e.stream_id)
                .values(timezone=timezone, state=state)
            )
            self._schedule_consultation(conn, tables, e, timezone, state)
            if e.type == "consultation.reminders_configured":
                self._reschedule_statements(conn, tables, e, timezone, state)
        self._notice(conn, tables, e, e.stream_id, None)

    def _schedule_consultation(
        self,
        conn: Connection,
        tables: Tables,
        e: RecordedEvent,
        timezone: str,
        state: Mapping[str, Any],
    ) -> None:
        rows = tables["reminders"]
        conn.execute(
            rows.delete().where(
                rows.c.consultation_id == e.stream_id,
                rows.c.statement_id.is_(None),
                rows.c.rule.in_([REGISTRATION_CLOSES.name, CONSULTATION_STARTS.name]),
            )
        )
        if state["status"] != "active":
            return
        for anchor, deadline in (
            (REGISTRATION_CLOSES, state["closes_at"]),
            (CONSULTATION_STARTS, state["starts_at"]),
        ):
            if deadline is not None:
                self._insert_reminders(
                    conn, tables, e, anchor, e.stream_id, None, _time(deadline), timezone, state
                )

    # -- statements ------------------------------------------------------------------------

    def _statement(self, conn: Connection, tables: Tables, e: RecordedEvent) -> None:
        table = tables["reminder_statements"]
        if e.type == "statement.drafting_started":
            conn.execute(
                table.insert().values(
                    statement_id=e.stream_id,
                    consultation_id=UUID(e.data["consultation_id"]),
                    deadline=None,
                )
            )
            return
        row = conn.execute(select(table).where(table.c.statement_id == e.stream_id)).first()
        if row is None:
            return
        if e.type in ("statement.finalised", "statement.reopened", "statement.endorsements_closed"):
            deadline = (
                _time(e.data["endorsement_deadline"]) if e.type == "statement.finalised" else None
            )
            conn.execute(
                table.update().where(table.c.statement_id == e.stream_id).values(deadline=deadline)
            )
            consultation = self._consultation_state(conn, tables, row.consultation_id)
            if consultation is not None:
                timezone, state = consultation
                self._schedule_statement(
                    conn, tables, e, e.stream_id, row.consultation_id, deadline, timezone, state
                )
        self._notice(conn, tables, e, row.consultation_id, e.stream_id)

    def _reschedule_statements(
        self,
        conn: Connection,
        tables: Tables,
        e: RecordedEvent,
        timezone: str,
        state: Mapping[str, Any],
    ) -> None:
        table = tables["reminder_statements"]
        for row in conn.execute(select(table).where(table.c.consultation_id == e.stream_id)):
            self._schedule_statement(
                conn, tables, e, row.statement_id, e.stream_id, row.deadline, timezone, state
            )

    def _schedule_statement(
        self,
        conn: Connection,
        tables: Tables,
        e: RecordedEvent,
        statement_id: UUID,
        consultation_id: UUID,
        deadline: datetime | None,
        timezone: str,
        state: Mapping[str, Any],
    ) -> None:
        rows = tables["reminders"]
        conn.execute(rows.delete().where(rows.c.statement_id == statement_id))
        if deadline is not None:
            self._insert_reminders(
                conn,
                tables,
                e,
                ENDORSEMENT_DEADLINE,
                consultation_id,
                statement_id,
                deadline,
                timezone,
                state,
            )

    # -- rows ------------------------------------------------------------------------------

    def _consultation_state(
        self, conn: Connection, tables: Tables, consultation_id: UUID
    ) -> tuple[str, dict[str, Any]] | None:
        table = tables["reminder_consultations"]
        row = conn.execute(select(table).where(table.c.consultation_id == consultation_id)).first()
        return (row.timezone, dict(row.state)) if row is not None else None

    def _insert_reminders(
        self,
        conn: Connection,
        tables: Tables,
        e: RecordedEvent,
        anchor: Anchor,
        consultation_id: UUID,
        statement_id: UUID | None,
        deadline: datetime,
        timezone: str,
        state: Mapping[str, Any],
    ) -> None:
        chosen = state["offsets"].get(anchor.name)
        offsets = (
            tuple(timedelta(seconds=s) for s in chosen)
            if chosen is not None
            else anchor.default_offsets
        )
        subject = statement_id or consultation_id
        values = [
            {
                "key": reminder_key(anchor.name, subject, deadline, offset),
                "rule": anchor.name,
                "consultation_id": consultation_id,
                "statement_id": statement_id,
                "deadline": deadline,
                "offset_s": int(offset.total_seconds()),
                "due_at": due_at(deadline, offset, timezone),
                "audience": {"kind": anchor.audience},
                "position": e.position or 0,
            }
            for offset in offsets
        ]
        if values:
            conn.execute(tables["reminders"].insert(), values)

    def _notice(
        self,
        conn: Connection,
        tables: Tables,
        e: RecordedEvent,
        consultation_id: UUID,
        statement_id: UUID | None,
    ) -> None:
        notice = NOTICES.get(e.type)
        if notice is None:
            return
        audience: dict[str, Any] = {"kind": notice.audience}
        if e.data.get("reason"):
            audience["reason"] = e.data["reason"]
        if notice.audience == REGISTRATION:
            audience["registration_id"] = e.data["registration_id"]
        elif notice.audience == ORGANISATIONS:
            voided = e.type == "statement.reopened"
            ids = e.data["voided"] if voided else [e.data["organisation_id"]]
            if not ids:
                return
            audience["organisation_ids"] = list(ids)
        conn.execute(
            tables["reminders"]
            .insert()
            .values(
                key=notice_key(notice.name, e.id),
                rule=notice.name,
                consultation_id=consultation_id,
                statement_id=statement_id,
                deadline=None,
                offset_s=None,
                due_at=e.recorded_at,
                audience=audience,
                position=e.position or 0,
            )
        )


def _time(value: str | datetime) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)
