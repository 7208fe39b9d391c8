"""What is due: the reminder schedule, derived from the log (see ``services.reminders``)."""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Column, Index, Integer, String, Table, Uuid
from sqlalchemy.dialects.postgresql import JSONB

from infra.schema import UtcDateTime, metadata

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
