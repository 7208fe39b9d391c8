"""Reminder rules are data: what anchors a reminder, who gets it, and how long before.

Two kinds of message:

* **Reminders** hang on a deadline (an *anchor*): registration closing, the consultation
  starting, the endorsement deadline. Each anchor has offsets ("7 days before"); the defaults
  below apply unless the consultation configures its own. "One day before" is one day before
  *in the consultation's time zone* (wall-clock arithmetic), per DOMAIN.md.
* **Notices** follow one event at once: registration confirmed, waitlisted, promoted,
  consultation rescheduled or cancelled, endorsement recorded or voided by a reopening, and
  (not about any consultation) a webhook endpoint disabled, to the subscription's contact, and
  an invitation to endorse a statement (issued or resent), to the address it names, with the
  link — derived when the message is rendered, so neither the outbox nor the log holds it.

Every message has a key built from (rule, subject, deadline, recipient); the same key never
produces a second message.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID
from zoneinfo import ZoneInfo

#: Who a message goes to, resolved from the read side when it falls due.
PARTICIPANTS = "participants"  # registered and waitlisted people of the consultation
REGISTRATION = "registration"  # the one person a notice is about
INCOMPLETE_SIGNUPS = "incomplete_signups"  # organiser + organisations not yet signed up
NON_ENDORSERS = "non_endorsers"  # organisations that took part and have not endorsed
ORGANISATIONS = "organisations"  # the organisations a notice names
SUBSCRIPTION_OWNER = "subscription_owner"  # whoever answers for a webhook subscription
INVITEE = "invitee"  # the address an invitation to endorse was sent to


@dataclass(frozen=True)
class Anchor:
    """A deadline that reminders count back from."""

    name: str
    audience: str
    default_offsets: tuple[timedelta, ...]
    attach_calendar: bool = False


@dataclass(frozen=True)
class Notice:
    """A message sent as soon as an event happens."""

    name: str
    event_type: str
    audience: str
    attach_calendar: bool = False


REGISTRATION_CLOSES = Anchor("registration_closes", INCOMPLETE_SIGNUPS, (timedelta(hours=48),))
CONSULTATION_STARTS = Anchor(
    "consultation_starts",
    PARTICIPANTS,
    (timedelta(days=7), timedelta(days=1)),
    attach_calendar=True,
)
ENDORSEMENT_DEADLINE = Anchor(
    "endorsement_deadline", NON_ENDORSERS, (timedelta(hours=72), timedelta(hours=24))
)
ANCHORS: dict[str, Anchor] = {
    a.name: a for a in (REGISTRATION_CLOSES, CONSULTATION_STARTS, ENDORSEMENT_DEADLINE)
}

NOTICES: dict[str, Notice] = {
    n.event_type: n
    for n in (
        Notice("registration_confirmed", "consultation.participant_registered", REGISTRATION, True),
        Notice("registration_waitlisted", "consultation.participant_waitlisted", REGISTRATION),
        Notice("registration_promoted", "consultation.participant_promoted", REGISTRATION, True),
        Notice("consultation_rescheduled", "consultation.rescheduled", PARTICIPANTS, True),
        Notice("consultation_cancelled", "consultation.cancelled", PARTICIPANTS, True),
        Notice("endorsement_recorded", "statement.endorsed", ORGANISATIONS),
        Notice("endorsements_voided", "statement.reopened", ORGANISATIONS),
        Notice("webhook_endpoint_disabled", "webhook.endpoint_disabled", SUBSCRIPTION_OWNER),
        Notice("invitation_sent", "invitation.issued", INVITEE),
        Notice("invitation_resent", "invitation.resent", INVITEE),
    )
}
RULES: dict[str, Anchor | Notice] = {**ANCHORS, **{n.name: n for n in NOTICES.values()}}

#: Bounds on configured offsets: at least an hour, at most 120 days, five per anchor.
MIN_OFFSET = timedelta(hours=1)
MAX_OFFSET = timedelta(days=120)
MAX_OFFSETS = 5


def due_at(deadline: datetime, offset: timedelta, timezone: str) -> datetime:
    """When a reminder ``offset`` before ``deadline`` is due, counted in the local zone.

    Python subtracts a timedelta from an aware datetime on the wall clock, so "one day before
    09:00 local" is 09:00 local the day before, whatever the UTC offset did in between.
    """
    local = deadline.astimezone(ZoneInfo(timezone))
    return (local - offset).astimezone(UTC)


def reminder_key(anchor: str, subject_id: UUID, deadline: datetime, offset: timedelta) -> str:
    """One reminder: a moved deadline is a new reminder."""
    stamp = deadline.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{anchor}/{subject_id}/{stamp}/{int(offset.total_seconds())}"


def notice_key(notice: str, event_id: UUID) -> str:
    return f"{notice}/{event_id}"


def message_key(reminder: str, recipient_kind: str, recipient_id: UUID) -> str:
    """One message to one recipient: the unit of "never twice"."""
    return f"{reminder}/{recipient_kind}:{recipient_id}"


def message_id(key: str, domain: str) -> str:
    """A stable RFC 5322 Message-ID for a message key (a retry carries the same id)."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:40]
    return f"<{digest}@{domain}>"


def check_offsets(anchor: str, offsets: tuple[timedelta, ...]) -> tuple[timedelta, ...]:
    """Distinct offsets within bounds, longest first; raises ValueError naming the problem."""
    if anchor not in ANCHORS:
        raise ValueError(f"unknown reminder anchor {anchor!r}; known: {', '.join(ANCHORS)}")
    if len(offsets) > MAX_OFFSETS:
        raise ValueError(f"at most {MAX_OFFSETS} offsets per anchor")
    for offset in offsets:
        if not MIN_OFFSET <= offset <= MAX_OFFSET:
            raise ValueError("each offset must be between 1 hour and 120 days")
        if offset.total_seconds() != int(offset.total_seconds()):
            raise ValueError("offsets are whole seconds")
    return tuple(sorted(set(offsets), reverse=True))
