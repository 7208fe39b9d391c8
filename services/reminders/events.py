"""The record that a message went out: a second attempt for the same key sends nothing."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID, uuid5

from services.messages import DomainEvent
from services.registry import EVENTS

_MESSAGES = UUID("6f3f1f0e-6c55-4f43-9a3e-2b1f4a0d7c21")


def message_stream(key: str) -> UUID:
    """Each message key has its own stream; its first event is the only one it may have."""
    return uuid5(_MESSAGES, key)


@EVENTS.register
@dataclass(frozen=True)
class ReminderSent(DomainEvent):
    """Message ``key`` (rule, subject, deadline, recipient) was handed to the mail transport.

    Recipients are ids, never addresses: the log holds no e-mail for this.
    """

    type = "reminder.sent"
    key: str
    rule: str
    reminder_key: str
    #: None for a message that is not about a consultation (a disabled webhook endpoint).
    consultation_id: UUID | None
    statement_id: UUID | None
    recipient_kind: str
    recipient_id: UUID
    deadline: datetime | None
    message_id: str
    transport: str
