"""What is due: the reminder schedule, derived from the log (see ``services.reminders``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
    Executable,
    Exists,
    Index,
    Integer,
    Result,
    String,
    Table,
    Uuid,
    select,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB

from infra.projections.base import Tables
from infra.schema import UtcDateTime, metadata, reminder_fanouts
from services.invitations.model import STREAM_TYPE as INVITATION_STREAM
from services.ports import RecordedEvent
from services.reminders.rules import (
    CONSULTATION_STARTS,
    ENDORSEMENT_DEADLINE,
    INVITEE,
    NOTICES,
    ORGANISATIONS,
    REGISTRATION,
    REGISTRATION_CLOSES,
    SUBSCRIPTION_OWNER,
    Anchor,
    due_at,
    notice_key,
    reminder_key,
)
from services.webhooks.model import STREAM_TYPE as SUBSCRIPTION_STREAM

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
    #: NULL for a notice that is not about a consultation (a disabled webhook endpoint).
    Column("consultation_id", Uuid, nullable=True),
    Column("statement_id", Uuid, nullable=True),
    Column("deadline", UtcDateTime(), nullable=True),
    Column("offset_s", Integer, nullable=True),
    Column("due_at", UtcDateTime(), nullable=False),
    Column("audience", Json, nullable=False),
    Column("position", BigInteger, nullable=False),
    #: Not fanned out yet: every reminder is written pending, and the scheduler clears it once
    #: the reminder is in ``reminder_fanouts`` (infra/reminders.py), as does a rebuild before
    #: it swaps the rows in (``before_swap``): pending = not fanned out, kept by the scheduler.
    #: So the tick's search for what fell due reads only these, not every reminder that ever
    #: fell due (a campaign leaves one notice per endorsement behind).
    Column("pending", Boolean, nullable=False, server_default=true()),
    Index("ix_reminders_due_at", "due_at"),
    Index("ix_reminders_consultation_id", "consultation_id"),
    Index(
        "ix_reminders_pending_due_at",
        "due_at",
        postgresql_where=text("pending"),
        sqlite_where=text("pending"),
    ),
)


def fanned_out(rows: Table) -> Exists:
    """The condition that a reminder of ``rows`` is in ``reminder_fanouts`` (the scheduler's
    record of what it fanned out): what the ``pending`` mark is kept in step with."""
    return (
        select(reminder_fanouts.c.reminder_key)
        .where(reminder_fanouts.c.reminder_key == rows.c.key)
        .exists()
    )


#: The consultation events that move what its reminders hang on (see ``_consultation``).
_RESCHEDULING = frozenset(
    {
        "consultation.revised",
        "consultation.rescheduled",
        "consultation.registration_opened",
        "consultation.registration_closed",
        "consultation.cancelled",
        "consultation.completed",
        "consultation.reminders_configured",
    }
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
    #: Off the command path: the scheduler's tick and the schedule's readers catch it up.
    inline = False
    #: Ids, times and reasons only: names and addresses are looked up when a message is sent,
    #: so the worker's pages need no key lookup and nothing decrypted for it.
    personal = False

    @staticmethod
    def before_swap(conn: Connection, tables: Tables) -> None:
        """A rebuilt schedule marks pending only what the scheduler has not fanned out."""
        rows = tables["reminders"]
        conn.execute(rows.update().where(rows.c.pending, fanned_out(rows)).values(pending=False))

    def apply(self, conn: Connection, tables: Tables, events: Sequence[RecordedEvent]) -> None:
        run = _Run(conn, tables)
        for event in events:
            if event.stream_type == "consultation":
                self._consultation(run, event)
            elif event.stream_type == "statement":
                self._statement(run, event)
            elif event.stream_type == SUBSCRIPTION_STREAM:
                self._notice(run, event, None, None)
            elif event.stream_type == INVITATION_STREAM:
                # Neither the consultation (long held by now) nor the statement (whose
                # finalising or reopening reschedules its own reminders) owns these rows.
                self._notice(run, event, None, None)
        run.flush()

    # -- consultations ---------------------------------------------------------------------

    def _consultation(self, run: _Run, e: RecordedEvent) -> None:
        table = run.tables["reminder_consultations"]
        data = e.data
        if e.type == "consultation.planned":
            state: dict[str, Any] = {
                "starts_at": data["starts_at"],
                "closes_at": None,
                "status": "active",
                "offsets": {},
                "organiser_id": data["organiser_id"],
            }
            run.execute(
                table.insert().values(
                    consultation_id=e.stream_id, timezone=data["timezone"], state=state
                )
            )
            run.consultations[e.stream_id] = (data["timezone"], state)
            self._schedule_consultation(run, e, data["timezone"], state)
            return
        if e.type not in _RESCHEDULING:
            # A registration, a check-in, a session: nothing reminders hang on moves (and the
            # consultation's row exists: its first event made it), so no row is read.
            self._notice(run, e, e.stream_id, None)
            return
        known = self._consultation_state(run, e.stream_id)
        if known is None:
            return
        timezone, state = known
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
        run.execute(
            table.update()
            .where(table.c.consultation_id == e.stream_id)
            .values(timezone=timezone, state=state)
        )
        run.consultations[e.stream_id] = (timezone, state)
        self._schedule_consultation(run, e, timezone, state)
        if e.type == "consultation.reminders_configured":
            self._reschedule_statements(run, e, timezone, state)
        self._notice(run, e, e.stream_id, None)

    def _schedule_consultation(
        self,
        run: _Run,
        e: RecordedEvent,
        timezone: str,
        state: Mapping[str, Any],
    ) -> None:
        rows = run.tables["reminders"]
        run.execute(
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
                    run, e, anchor, e.stream_id, None, _time(deadline), timezone, state
                )

    # -- statements ------------------------------------------------------------------------

    def _statement(self, run: _Run, e: RecordedEvent) -> None:
        table = run.tables["reminder_statements"]
        if e.type == "statement.drafting_started":
            held_by = UUID(e.data["consultation_id"])
            run.execute(
                table.insert().values(
                    statement_id=e.stream_id, consultation_id=held_by, deadline=None
                )
            )
            run.statements[e.stream_id] = held_by
            return
        if e.stream_id not in run.statements:
            run.statements[e.stream_id] = run.execute(
                select(table.c.consultation_id).where(table.c.statement_id == e.stream_id)
            ).scalar()
        consultation_id = run.statements[e.stream_id]
        if consultation_id is None:
            return
        if e.type in ("statement.finalised", "statement.reopened", "statement.endorsements_closed"):
            deadline = (
                _time(e.data["endorsement_deadline"]) if e.type == "statement.finalised" else None
            )
            run.execute(
                table.update().where(table.c.statement_id == e.stream_id).values(deadline=deadline)
            )
            consultation = self._consultation_state(run, consultation_id)
            if consultation is not None:
                timezone, state = consultation
                self._schedule_statement(
                    run, e, e.stream_id, consultation_id, deadline, timezone, state
                )
        self._notice(run, e, consultation_id, e.stream_id)

    def _reschedule_statements(
        self,
        run: _Run,
        e: RecordedEvent,
        timezone: str,
        state: Mapping[str, Any],
    ) -> None:
        table = run.tables["reminder_statements"]
        for row in run.execute(select(table).where(table.c.consultation_id == e.stream_id)):
            self._schedule_statement(
                run, e, row.statement_id, e.stream_id, row.deadline, timezone, state
            )

    def _schedule_statement(
        self,
        run: _Run,
        e: RecordedEvent,
        statement_id: UUID,
        consultation_id: UUID,
        deadline: datetime | None,
        timezone: str,
        state: Mapping[str, Any],
    ) -> None:
        rows = run.tables["reminders"]
        run.execute(rows.delete().where(rows.c.statement_id == statement_id))
        if deadline is not None:
            self._insert_reminders(
                run,
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
        self, run: _Run, consultation_id: UUID
    ) -> tuple[str, dict[str, Any]] | None:
        """What a consultation's reminders hang on (read once per batch of events)."""
        if consultation_id in run.consultations:
            known = run.consultations[consultation_id]
            return (known[0], dict(known[1])) if known is not None else None
        table = run.tables["reminder_consultations"]
        row = run.execute(select(table).where(table.c.consultation_id == consultation_id)).first()
        run.consultations[consultation_id] = (row.timezone, row.state) if row is not None else None
        return (row.timezone, dict(row.state)) if row is not None else None

    def _insert_reminders(
        self,
        run: _Run,
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
            run.execute(run.tables["reminders"].insert(), values)

    def _notice(
        self,
        run: _Run,
        e: RecordedEvent,
        consultation_id: UUID | None,
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
        elif notice.audience == SUBSCRIPTION_OWNER:
            audience["subscription_id"] = e.data["subscription_id"]
            audience["status_code"] = e.data.get("status_code")
        elif notice.audience == INVITEE:
            audience["invitation_id"] = e.data["invitation_id"]
            audience["statement_id"] = e.data["statement_id"]
            audience["generation"] = e.data["generation"]
        run.notices.append(
            {
                "key": notice_key(notice.name, e.id),
                "rule": notice.name,
                "consultation_id": consultation_id,
                "statement_id": statement_id,
                "deadline": None,
                "offset_s": None,
                "due_at": e.recorded_at,
                "audience": audience,
                "position": e.position or 0,
            }
        )


@dataclass
class _Run:
    """One :meth:`ReminderSchedule.apply`: its connection, the subjects it has read (a
    hot statement's endorsements or a consultation's registrations read their row once), and
    the notices it has yet to write — one insert for a run of them, written before any other
    statement (a reschedule deletes a statement's rows, notices included) and at the end."""

    conn: Connection
    tables: Tables
    consultations: dict[UUID, tuple[str, dict[str, Any]] | None] = field(default_factory=dict)
    statements: dict[UUID, UUID | None] = field(default_factory=dict)
    notices: list[dict[str, Any]] = field(default_factory=list)

    def execute(self, statement: Executable, parameters: Any = None) -> Result[Any]:
        self.flush()
        return self.conn.execute(statement, parameters)

    def flush(self) -> None:
        if self.notices:
            self.conn.execute(self.tables["reminders"].insert(), self.notices)
            self.notices = []


def _time(value: str | datetime) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)
