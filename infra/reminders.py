"""Sending reminders and notices exactly once: fan-out, claim, send, record.

The schedule of what is due is a projection (:mod:`infra.projections.reminders`). From there:

1. **Tick** (the scheduler, every minute, and the relay right after a notice-worthy event):
   each reminder that has fallen due is *fanned out* once — its recipients are worked out
   from the read side and one ``mail_outbox`` row per message key is inserted. The fan-out
   marker and the rows go in one transaction and both insert with ON CONFLICT DO NOTHING, so
   two schedulers ticking at once produce each row once. A message to an organisation the
   read side knows to have no contact address goes in already settled as ``skipped``. The
   tick returns the keys to send.
2. **Send** (worker tasks, a few keys each): a conditional UPDATE claims the row for a lease; only
   one worker wins. If the log already records the message (``reminder.sent`` in the key's
   own stream) nothing is sent. Otherwise the message is rendered, handed to the transport
   with a Message-ID derived from the key, and ``reminder.sent`` is appended with expected
   version "no stream" — a second recorder gets a conflict, never a second record.
3. A worker that dies mid-send leaves its claim to expire; the next tick hands the key out
   again. Failures back off exponentially, then the message is marked failed.

Only a crash between the transport's acceptance and the append can repeat a message; the
repeat carries the same Message-ID (mail clients fold duplicates), and the Maildir transport
writes each key once by name, so there nothing is ever sent twice.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy import Connection, Row, Select, and_, false, func, or_, select, update
from sqlalchemy.exc import DBAPIError

from infra.bootstrap import System
from infra.calendar import ics
from infra.db import insert_or_skip
from infra.mail.render import compose, render
from infra.mail.transport import Transport, transport
from infra.projections.consultations import consultations, registrations
from infra.projections.organisations import organisations
from infra.projections.reminders import fanned_out, reminder_statements, reminders
from infra.schema import mail_outbox, reminder_fanouts
from infra.tokens import SecretKeyMissing, link_token, secret_key
from infra.webhooks.tables import webhook_subscriptions
from services.errors import ConcurrencyError
from services.invitations.model import INVITATION, is_live
from services.ports import NO_STREAM, Metadata
from services.reminders.events import ReminderSent, message_stream
from services.reminders.rules import (
    ANCHORS,
    INCOMPLETE_SIGNUPS,
    INVITEE,
    NON_ENDORSERS,
    ORGANISATIONS,
    PARTICIPANTS,
    REGISTRATION,
    RULES,
    SUBSCRIPTION_OWNER,
    message_id,
    message_key,
)
from services.statements.model import (
    STATEMENT,
    Statement,
    active_endorsements,
    endorsement_open_at,
)

log = structlog.get_logger("concord.reminders")

#: Most keys one tick hands out (the next tick takes the rest).
TICK_LIMIT = 1000
ACTIVE = ("registered", "waitlisted")
REGISTRATION_KIND = "registration"
ORGANISATION_KIND = "organisation"
SUBSCRIPTION_KIND = "subscription"
INVITATION_KIND = "invitation"
#: Why a message to an organisation is not sent (at fan-out, or at send if it changed since).
NO_ADDRESS = "the organisation has no contact address"


@dataclass(frozen=True)
class SendResult:
    key: str
    status: str  # sent | already-sent | not-claimed | dropped | skipped | retry | failed
    detail: str | None = None


class Reminders:
    """The reminder pipeline of one process (the scheduler's tick and the worker's send)."""

    def __init__(self, system: System, mail: Transport | None = None) -> None:
        self.system = system
        self.db = system.db
        self.settings = system.settings
        self.mail = mail or transport(system.settings)
        host = urlsplit(system.settings.public_url).hostname or "concord.local"
        self.domain = host

    # -- tick ------------------------------------------------------------------------------

    def tick(self, now: datetime | None = None) -> list[str]:
        """Fan out what has fallen due; return the message keys that are ready to send."""
        now = now or datetime.now(UTC)
        self.system.projector.catch_up(names=["reminders"])
        due = self._due_unfanned(now)
        if due:
            try:
                self._fan_out(due, now)
            except DBAPIError:
                raise  # the database, not a reminder: the next tick tries them all again
            except Exception:
                # One reminder that cannot be fanned out must not hold back the others (nor
                # the messages already queued): it stays due, and is tried again next tick.
                log.warning("fanning out together failed; one reminder at a time", due=len(due))
                for reminder in due:
                    try:
                        self._fan_out([reminder], now)
                    except DBAPIError:
                        raise
                    except Exception:
                        log.exception("reminder not fanned out", reminder=reminder.key)
        self._clear_fanned(now)
        return self._ready(now)

    def _due_unfanned(self, now: datetime) -> list[Any]:
        """Reminders that fell due and were not fanned out, oldest first: read through the
        index of pending ones (not every reminder that ever fell due)."""
        with self.db.read() as conn:
            return list(
                conn.execute(
                    select(reminders)
                    .outerjoin(reminder_fanouts, reminder_fanouts.c.reminder_key == reminders.c.key)
                    .where(
                        reminders.c.pending,
                        reminders.c.due_at <= now,
                        reminder_fanouts.c.reminder_key.is_(None),
                    )
                    .order_by(reminders.c.due_at)
                    .limit(TICK_LIMIT)
                )
            )

    def _clear_fanned(self, now: datetime) -> None:
        """Clear the pending mark of every due reminder that is fanned out: what this tick
        fanned out, and any written pending again after its fan-out (by a rebuild racing the
        scheduler, or by an older process). Only pending ones are read, so this is cheap.
        Reminders another transaction holds (the projection rewriting them) are skipped: they
        stay marked until a later tick, and the tick never waits for, or deadlocks with, the
        projection."""
        held = (
            select(reminders.c.key)
            .where(reminders.c.pending, reminders.c.due_at <= now, fanned_out(reminders))
            .with_for_update(skip_locked=True)
        )
        with self.db.write() as conn:
            conn.execute(reminders.update().where(reminders.c.key.in_(held)).values(pending=False))

    def _fan_out(self, due: list[Any], now: datetime) -> None:
        """Mark reminders fanned out and queue their messages, all in one transaction (one
        commit per tick, not one per reminder: under a wave of sign-ups each registration
        brings a notice).

        Two schedulers ticking at once both try to mark the same reminders: each marks them in
        key order (so neither waits for the other in a cycle), a reminder the other marked
        first is skipped, and only the reminders this transaction marked get messages from it.
        Messages are queued in the order the reminders fell due (``due``'s order).
        """
        with self.db.write() as conn:
            facts = _Facts.read(conn, due)
            planned = {r.key: self._recipients(conn, r, now, facts) for r in due}
            organisation_ids = {
                i for wanted in planned.values() for kind, i in wanted if kind == ORGANISATION_KIND
            }
            unreachable = self._unreachable(conn, organisation_ids)
            marks = [
                {"reminder_key": r.key, "recipients": len(planned[r.key]), "done_at": now}
                for r in sorted(due, key=lambda r: r.key)
            ]
            mark = insert_or_skip(conn, reminder_fanouts).returning(reminder_fanouts.c.reminder_key)
            marked = set(conn.execute(mark, marks).scalars())
            rows = [
                {
                    "key": key,
                    "reminder_key": reminder.key,
                    "rule": reminder.rule,
                    "consultation_id": reminder.consultation_id,
                    "recipient_kind": kind,
                    "recipient_id": recipient,
                    "message_id": message_id(key, self.domain),
                    "status": "skipped" if skip else "pending",
                    "last_error": NO_ADDRESS if skip else None,
                    "attempts": 0,
                    "failures": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                }
                for reminder in due
                if reminder.key in marked
                for kind, recipient in planned[reminder.key]
                for key in [message_key(reminder.key, kind, recipient)]
                for skip in [kind == ORGANISATION_KIND and recipient in unreachable]
            ]
            if rows:
                conn.execute(insert_or_skip(conn, mail_outbox), rows)
        for reminder in due:
            if reminder.key in marked:
                log.info(
                    "reminder due", reminder=reminder.key, recipients=len(planned[reminder.key])
                )

    @staticmethod
    def _unreachable(conn: Connection, organisation_ids: set[UUID]) -> set[UUID]:
        """The organisations among these that have no contact address: their messages are
        settled as skipped at fan-out, with no send task (under a campaign's wave of
        endorsements, one per endorsement). An organisation the read side does not know yet
        is not among them: its message waits for the send, which looks again."""
        o = organisations.c
        silent = select(o.organisation_id).where(or_(o.email.is_(None), o.email == ""))
        rows = _among(conn, silent, o.organisation_id, organisation_ids)
        return {row.organisation_id for row in rows}

    def _recipients(
        self, conn: Connection, reminder: Any, now: datetime, facts: _Facts
    ) -> list[tuple[str, UUID]]:
        """Who gets this reminder, as (kind, id); nobody when it is stale or superseded."""
        if reminder.deadline is not None:
            if now >= reminder.deadline:
                return []  # the moment it reminds of has passed
            if self._superseded(conn, reminder, now):
                return []  # a closer reminder for the same deadline is due too
        elif now - reminder.due_at > timedelta(seconds=self.settings.notice_max_age_s):
            return []  # an old notice (e.g. an imported log) helps nobody now
        elif facts.moot(reminder, now):
            return []
        audience = reminder.audience
        kind = audience["kind"]
        if kind == REGISTRATION:
            return [(REGISTRATION_KIND, UUID(audience["registration_id"]))]
        if kind == ORGANISATIONS:
            return [(ORGANISATION_KIND, UUID(i)) for i in audience["organisation_ids"]]
        if kind == PARTICIPANTS:
            ids = conn.execute(
                select(registrations.c.registration_id).where(
                    registrations.c.consultation_id == reminder.consultation_id,
                    registrations.c.status.in_(ACTIVE),
                )
            ).scalars()
            return [(REGISTRATION_KIND, i) for i in ids]
        if kind == INCOMPLETE_SIGNUPS:
            return [(ORGANISATION_KIND, i) for i in self._incomplete(conn, reminder)]
        if kind == NON_ENDORSERS:
            return [(ORGANISATION_KIND, i) for i in self._non_endorsers(conn, reminder)]
        if kind == SUBSCRIPTION_OWNER:
            return [(SUBSCRIPTION_KIND, UUID(audience["subscription_id"]))]
        if kind == INVITEE:
            return [(INVITATION_KIND, UUID(audience["invitation_id"]))]
        raise ValueError(f"unknown audience {kind!r}")

    def _superseded(self, conn: Connection, reminder: Any, now: datetime) -> bool:
        closer = conn.execute(
            select(func.count())
            .select_from(reminders)
            .where(
                reminders.c.rule == reminder.rule,
                reminders.c.consultation_id == reminder.consultation_id,
                reminders.c.statement_id.is_(None)
                if reminder.statement_id is None
                else reminders.c.statement_id == reminder.statement_id,
                reminders.c.deadline == reminder.deadline,
                reminders.c.offset_s < reminder.offset_s,
                reminders.c.due_at <= now,
            )
        ).scalar_one()
        return bool(closer)

    def _incomplete(self, conn: Connection, reminder: Any) -> list[UUID]:
        """The organiser, and invited organisations (co-organisers, partners) or organisations
        with people on the waiting list that have nobody with a confirmed seat yet."""
        detail = self._detail(conn, reminder.consultation_id)
        if detail is None:
            return []
        rows = conn.execute(
            select(registrations.c.organisation_id, registrations.c.status).where(
                registrations.c.consultation_id == reminder.consultation_id,
                registrations.c.organisation_id.is_not(None),
                registrations.c.status.in_(ACTIVE),
            )
        ).all()
        confirmed = {r.organisation_id for r in rows if r.status == "registered"}
        started = {r.organisation_id for r in rows if r.status == "waitlisted"}
        invited = {UUID(i) for i in (*detail["co_organiser_ids"], *detail["partner_ids"])}
        organiser = UUID(detail["organiser_id"])
        pending = sorted((invited | started) - confirmed - {organiser}, key=str)
        return [organiser, *pending]

    def _non_endorsers(self, conn: Connection, reminder: Any) -> list[UUID]:
        """Organisations whose people took part (a confirmed seat) and that have not endorsed."""
        took_part = set(
            conn.execute(
                select(registrations.c.organisation_id).where(
                    registrations.c.consultation_id == reminder.consultation_id,
                    registrations.c.organisation_id.is_not(None),
                    registrations.c.status == "registered",
                )
            ).scalars()
        )
        state = self._statement(reminder.statement_id)
        endorsed = {e.organisation_id for e in active_endorsements(state)}
        return sorted(took_part - endorsed, key=str)

    def _ready(self, now: datetime) -> list[str]:
        """Hand out due messages: each key handed out is not handed out again for a lease,
        and a claim that outlived its lease (its worker died) goes back to pending."""
        lease = now + timedelta(seconds=self.settings.mail_lease_s)
        with self.db.write() as conn:
            conn.execute(
                update(mail_outbox)
                .where(mail_outbox.c.status == "sending", mail_outbox.c.claimed_until < now)
                .values(status="pending", claimed_until=None, claimed_by=None, next_attempt_at=now)
            )
            keys = list(
                conn.execute(
                    select(mail_outbox.c.key)
                    .where(mail_outbox.c.status == "pending", mail_outbox.c.next_attempt_at <= now)
                    .order_by(mail_outbox.c.next_attempt_at)
                    .limit(TICK_LIMIT)
                ).scalars()
            )
            if keys:
                conn.execute(
                    update(mail_outbox)
                    .where(mail_outbox.c.key.in_(keys))
                    .values(next_attempt_at=lease)
                )
            return keys

    # -- send ------------------------------------------------------------------------------

    def send(
        self, key: str, now: datetime | None = None, *, task_id: str | None = None
    ) -> SendResult:
        """Send message ``key`` unless it is already sent, taken, or no longer wanted.

        Only a pending message can be claimed; back-off is the tick's business (it hands a
        key out only once its ``next_attempt_at`` has come). A message claimed by the same
        ``task_id`` is taken over at once: that is Celery redelivering a task whose worker
        process died (``task_acks_late`` + ``task_reject_on_worker_lost``), and it cannot
        still be running elsewhere because a broker reconnect cancels running late-ack tasks
        (``worker_cancel_long_running_tasks_on_connection_loss``). Anyone else waits for the
        lease to run out.
        """
        now = now or datetime.now(UTC)
        row = self._claim(key, now, task_id)
        if row is None:
            return SendResult(key, "not-claimed")
        stream = message_stream(key)
        recorded = self.system.store.read_stream(stream)
        if recorded:
            self._finish(key, "sent", now, position=recorded[0].position)
            return SendResult(key, "already-sent")
        with self.db.read() as conn:
            reminder = conn.execute(
                select(reminders).where(reminders.c.key == row.reminder_key)
            ).first()
            if reminder is None:
                return self._give_up(row, "dropped", now, "the reminder no longer applies")
            if reminder.deadline is not None and now >= reminder.deadline:
                return self._give_up(row, "dropped", now, "its deadline passed before it was sent")
            try:
                context, address, calendar = self._context(conn, reminder, row, now)
            except _Skip as skip:
                return self._give_up(row, "skipped", now, str(skip))
            except SecretKeyMissing as exc:  # a worker set up without the API's secret
                return self._failed(row, now, exc)
        try:
            rendered = render(row.rule, context)
            message = compose(
                rendered,
                sender=self.settings.mail_from,
                to_name=context["recipient"]["name"],
                to_address=address,
                message_id=row.message_id,
                sent_at=now,
                calendar=calendar,
            )
            self.mail.send(message, key)
        except Exception as exc:
            return self._failed(row, now, exc)
        position = self._record(row, reminder)
        self._finish(key, "sent", now, position=position)
        log.info("message sent", key=key, rule=row.rule, transport=self.mail.name)
        return SendResult(key, "sent")

    def _give_up(self, row: Any, status: str, now: datetime, reason: str) -> SendResult:
        """Settle a message that is no longer wanted, saying so if it may have gone out already.

        Every claim counts an attempt and every failed send counts a failure, so more attempts
        than failures plus this one means an earlier attempt ended without an outcome: its
        worker died, possibly after the mail server had accepted the message and before the
        send was recorded. That message cannot be called back; the row says it may exist.
        """
        if row.attempts - 1 > row.failures:
            reason += "; an earlier attempt was cut off and may have reached the mail server"
            log.warning("message given up after a cut-off attempt", key=row.key, reason=reason)
        self._finish(row.key, status, now, error=reason)
        return SendResult(row.key, status, reason)

    def _claim(self, key: str, now: datetime, task_id: str | None = None) -> Any:
        lease = now + timedelta(seconds=self.settings.mail_lease_s)
        with self.db.write() as conn:
            claimed = conn.execute(
                update(mail_outbox)
                .where(
                    mail_outbox.c.key == key,
                    or_(
                        mail_outbox.c.status == "pending",
                        and_(
                            mail_outbox.c.status == "sending",
                            mail_outbox.c.claimed_by == task_id,
                        )
                        if task_id
                        else false(),
                    ),
                )
                .values(
                    status="sending",
                    claimed_until=lease,
                    claimed_by=task_id,
                    attempts=mail_outbox.c.attempts + 1,
                )
            )
            if claimed.rowcount != 1:
                return None
            return conn.execute(select(mail_outbox).where(mail_outbox.c.key == key)).one()

    def _record(self, row: Any, reminder: Any) -> int | None:
        event = ReminderSent(
            key=row.key,
            rule=row.rule,
            reminder_key=row.reminder_key,
            consultation_id=row.consultation_id,
            statement_id=reminder.statement_id,
            recipient_kind=row.recipient_kind,
            recipient_id=row.recipient_id,
            deadline=reminder.deadline,
            message_id=row.message_id,
            transport=self.mail.name,
        )
        try:
            result = self.system.store.append(
                message_stream(row.key),
                "reminder",
                NO_STREAM,
                [self.system.registry.to_new_event(event)],
                Metadata(actor="concord:reminders", causation_id=row.reminder_key),
            )
        except ConcurrencyError:
            recorded = self.system.store.read_stream(message_stream(row.key))
            return recorded[0].position if recorded else None
        return result.position

    def _finish(
        self,
        key: str,
        status: str,
        now: datetime,
        *,
        position: int | None = None,
        error: str | None = None,
    ) -> None:
        with self.db.write() as conn:
            conn.execute(
                update(mail_outbox)
                .where(mail_outbox.c.key == key)
                .values(
                    status=status,
                    claimed_until=None,
                    claimed_by=None,
                    sent_at=now if status == "sent" else None,
                    position=position,
                    last_error=error,
                )
            )

    def _failed(self, row: Any, now: datetime, exc: Exception) -> SendResult:
        attempts = row.attempts
        error = failure_text(exc)
        give_up = attempts >= self.settings.mail_max_attempts
        delay = min(30.0 * 2 ** (attempts - 1), 3600.0) * random.uniform(0.8, 1.2)
        with self.db.write() as conn:
            conn.execute(
                update(mail_outbox)
                .where(mail_outbox.c.key == row.key)
                .values(
                    status="failed" if give_up else "pending",
                    claimed_until=None,
                    claimed_by=None,
                    failures=mail_outbox.c.failures + 1,
                    next_attempt_at=now + timedelta(seconds=delay),
                    last_error=error,
                )
            )
        log.warning(
            "message not sent", key=row.key, attempts=attempts, error=error, give_up=give_up
        )
        return SendResult(row.key, "failed" if give_up else "retry", error)

    # -- what the message says -------------------------------------------------------------

    def _context(
        self, conn: Connection, reminder: Any, row: Any, now: datetime
    ) -> tuple[dict[str, Any], str, bytes | None]:
        if row.recipient_kind == SUBSCRIPTION_KIND:
            return self._subscription_context(conn, reminder, row)
        if row.recipient_kind == INVITATION_KIND:
            return self._invitation_context(conn, reminder, row, now)
        detail = self._detail(conn, reminder.consultation_id)
        if detail is None:
            raise _Skip("the consultation is unknown to the read side")
        zone = ZoneInfo(detail["timezone"])
        public = self.settings.public_url
        context: dict[str, Any] = {
            "language": "en",
            "link": f"{public}/v1/consultations/{detail['id']}",
            "consultation": _consultation(detail, zone),
            "counts": detail["counts"],
            "relative": _relative(reminder.deadline, now, zone),
            "reason": reminder.audience.get("reason"),
            "organiser": False,
            "closes_local": _local(detail["registration"]["closes_at"], zone)
            if detail["registration"]["closes_at"]
            else None,
        }
        if row.recipient_kind == REGISTRATION_KIND:
            person = conn.execute(
                select(registrations).where(registrations.c.registration_id == row.recipient_id)
            ).first()
            if person is None:
                raise _Skip("the registration is unknown to the read side")
            if person.status not in ACTIVE and row.rule not in ("consultation_cancelled",):
                raise _Skip("the registration was cancelled")
            if person.email is None:
                raise _Skip("the person was erased")
            context["recipient"] = {"name": person.name}
            context["registration"] = {
                "status": person.status,
                "waitlist_position": person.waitlist_position,
            }
            address = person.email
        else:
            org = conn.execute(
                select(organisations).where(organisations.c.organisation_id == row.recipient_id)
            ).first()
            if org is None or not org.email:
                raise _Skip(NO_ADDRESS)
            context["recipient"] = {"name": org.name}
            context["organisation"] = {"name": org.name}
            context["organiser"] = str(org.organisation_id) == detail["organiser_id"]
            address = org.email
        if reminder.statement_id is not None:
            state = self._statement(reminder.statement_id)
            context["link"] = f"{public}/v1/statements/{reminder.statement_id}"
            context["statement"] = {
                "title": state.title,
                "content_hash": state.content_hash,
                "deadline_local": _local(state.endorsement_deadline, zone)
                if state.endorsement_deadline
                else None,
            }
            signer = next(
                (
                    e
                    for e in reversed(state.endorsement_records)
                    if e.organisation_id == row.recipient_id
                ),
                None,
            )
            context["signatory"] = signer.signatory_name.value if signer else None
        rule = RULES[row.rule]
        calendar = ics(detail, public) if rule.attach_calendar else None
        return context, address, calendar

    def _invitation_context(
        self, conn: Connection, reminder: Any, row: Any, now: datetime
    ) -> tuple[dict[str, Any], str, None]:
        """An invitation to endorse, with its link: the token is derived here, from the
        secret and the link's generation, and exists nowhere else."""
        invitation, _, _ = self.system.bus.load(INVITATION, row.recipient_id)
        generation = reminder.audience["generation"]
        if not invitation.exists:
            raise _Skip("the invitation is unknown")
        if invitation.generation != generation:
            raise _Skip("a newer link was sent since; this one no longer works")
        if not is_live(invitation, now):
            raise _Skip(f"the invitation is {invitation.status} (or its link expired)")
        email = invitation.email
        if email is None or email.value is None:
            raise _Skip("the address was erased")
        assert invitation.statement_id is not None
        assert invitation.consultation_id is not None
        state = self._statement(invitation.statement_id)
        if not endorsement_open_at(state, now):
            raise _Skip("the statement is not open for endorsement any more")
        detail = self._detail(conn, invitation.consultation_id)
        if detail is None:
            raise _Skip("the consultation is unknown to the read side")
        zone = ZoneInfo(detail["timezone"])
        names = dict(
            conn.execute(
                select(organisations.c.organisation_id, organisations.c.name).where(
                    organisations.c.organisation_id.in_(
                        [invitation.organisation_id, UUID(detail["organiser_id"])]
                    )
                )
            ).all()
        )
        invited = names.get(invitation.organisation_id)
        if invited is None:
            raise _Skip("the organisation is unknown to the read side")
        token = link_token(secret_key(self.settings), row.recipient_id, generation)
        public = self.settings.public_url
        assert invitation.expires_at is not None
        context: dict[str, Any] = {
            "language": "en",
            "link": f"{public}/s/{state.statement_id}/sign/{token}",
            "public_page": f"{public}/s/{state.statement_id}",
            "recipient": {"name": invited},
            "organisation": {"name": invited},
            "organiser": names.get(UUID(detail["organiser_id"])) or "the organisers",
            "consultation": _consultation(detail, zone),
            "statement": {
                "title": state.title,
                "content_hash": state.content_hash,
                "deadline_local": _local(state.endorsement_deadline, zone),
            },
            "expires_local": _local(invitation.expires_at, zone),
            "timezone": detail["timezone"],
            "resent": row.rule == "invitation_resent",
        }
        return context, email.value, None

    def _subscription_context(
        self, conn: Connection, reminder: Any, row: Any
    ) -> tuple[dict[str, Any], str, None]:
        """A disabled endpoint, told to the contact the subscription names."""
        sub = conn.execute(
            select(webhook_subscriptions).where(webhook_subscriptions.c.id == row.recipient_id)
        ).first()
        if sub is None:
            raise _Skip("the subscription was deleted")
        if sub.status != "disabled":
            raise _Skip("the subscription was resumed before the notice went out")
        address = sub.contact_email
        if not address:
            raise _Skip("the subscription names no contact address")
        failing_since = sub.failing_since
        context: dict[str, Any] = {
            "language": "en",
            "link": f"{self.settings.public_url}/v1/subscriptions/{sub.id}/deliveries",
            "recipient": {"name": "webhook contact"},
            "consultation": None,
            "reason": reminder.audience.get("reason"),
            "subscription": {
                "id": str(sub.id),
                "url": sub.url,
                "host": urlsplit(sub.url).hostname or sub.url,
                "description": sub.description,
                "failing_since": failing_since.astimezone(UTC).strftime("%-d %B %Y, %H:%M UTC")
                if failing_since
                else "",
                "status_code": reminder.audience.get("status_code"),
            },
        }
        return context, address, None

    def _detail(self, conn: Connection, consultation_id: UUID) -> dict[str, Any] | None:
        detail = conn.execute(
            select(consultations.c.detail).where(consultations.c.consultation_id == consultation_id)
        ).scalar_one_or_none()
        return dict(detail) if detail is not None else None

    def _statement(self, statement_id: UUID) -> Statement:
        state, _, _ = self.system.bus.load(STATEMENT, statement_id)
        return state


#: An e-mail address inside an error's text (an SMTP server's refusal names the recipient).
_ADDRESS = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")


@dataclass(frozen=True)
class _Facts:
    """What the notices of one tick are judged by, read for all of them at once (under a wave
    of endorsements a tick fans out hundreds of notices: one query each was most of its time):
    the endorsement deadline of each statement and the end of each consultation."""

    deadlines: dict[UUID, datetime | None]
    ends: dict[UUID, datetime]

    @classmethod
    def read(cls, conn: Connection, due: list[Any]) -> _Facts:
        """The facts :meth:`moot` asks about the notices (no deadline) among ``due``."""
        notices = [r for r in due if r.deadline is None and r.consultation_id is not None]
        endorsed = {
            r.statement_id
            for r in notices
            if r.statement_id is not None and r.rule == "endorsement_recorded"
        }
        signed_up = {r.consultation_id for r in notices if r.statement_id is None}
        s, c = reminder_statements.c, consultations.c
        deadlines = _among(conn, select(s.statement_id, s.deadline), s.statement_id, endorsed)
        ends = _among(conn, select(c.consultation_id, c.ends_at), c.consultation_id, signed_up)
        return cls(
            {r.statement_id: r.deadline for r in deadlines},
            {r.consultation_id: r.ends_at for r in ends},
        )

    def moot(self, reminder: Any, now: datetime) -> bool:
        """A notice about something already over: a sign-up for a consultation that has
        ended, an endorsement after endorsing closed (e.g. history loaded by ``concord demo``
        or a migration, whose events are recorded today)."""
        if reminder.consultation_id is None:
            return False  # not about a consultation: only its age counts
        if reminder.statement_id is not None:
            if reminder.rule != "endorsement_recorded":
                return False
            deadline = self.deadlines.get(reminder.statement_id)
            return deadline is None or deadline <= now
        ends_at = self.ends.get(reminder.consultation_id)
        return ends_at is None or ends_at <= now


#: Ids in one ``IN`` list at most (far below every back end's limit on parameters).
IN_CHUNK = 500


def _among(conn: Connection, query: Select[Any], column: Any, ids: set[UUID]) -> Iterator[Row[Any]]:
    """The rows of ``query`` whose ``column`` is one of ``ids``, :data:`IN_CHUNK` ids a query."""
    ordered = sorted(ids, key=str)
    for start in range(0, len(ordered), IN_CHUNK):
        yield from conn.execute(query.where(column.in_(ordered[start : start + IN_CHUNK])))


def failure_text(exc: Exception) -> str:
    """What the outbox row and the log keep of a failed send: the error, with every e-mail
    address in it replaced by ``[address]`` — the row outlives the person's key, and an
    erased person's address must not survive in it or in the logs."""
    return _ADDRESS.sub("[address]", f"{exc.__class__.__name__}: {exc}")[:1000]


class _Skip(Exception):
    """This message cannot or need not be sent (no address, registration cancelled...)."""


def _consultation(detail: dict[str, Any], zone: ZoneInfo) -> dict[str, Any]:
    """What a message says about a consultation: title, local dates, place."""
    return {
        "title": detail["title"],
        "timezone": detail["timezone"],
        "starts_local": _local(detail["starts_at"], zone),
        "when": f"{_local(detail['starts_at'], zone)} to {_local(detail['ends_at'], zone)}"
        f" ({detail['timezone']})",
        "where": ", ".join(
            p for p in (detail.get("venue"), detail.get("city"), detail["host_country"]) if p
        ),
    }


def _local(value: str | datetime | None, zone: ZoneInfo) -> str:
    if value is None:
        return ""
    when = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    local = when.astimezone(zone)
    return local.strftime("%A %-d %B %Y, %H:%M")


def _relative(deadline: datetime | None, now: datetime, zone: ZoneInfo) -> str:
    """How far off the deadline is, on the local calendar ("tomorrow", "in 7 days").

    Counted from when the message is sent, not from its offset: a reminder that goes out
    late (the consultation was planned at short notice) still tells the truth.
    """
    if deadline is None:
        return "now"
    days = (deadline.astimezone(zone).date() - now.astimezone(zone).date()).days
    if days <= 0:
        hours = max(1, round((deadline - now).total_seconds() / 3600))
        return f"in {hours} hour{'s' if hours != 1 else ''}"
    return "tomorrow" if days == 1 else f"in {days} days"


def schedule(system: System, consultation_id: UUID) -> list[dict[str, Any]]:
    """Every reminder of a consultation with what became of its messages."""
    system.projector.catch_up(names=["reminders"])  # off the command path: catch up here
    with system.db.read() as conn:
        rows = conn.execute(
            select(reminders, reminder_fanouts.c.recipients, reminder_fanouts.c.done_at)
            .outerjoin(reminder_fanouts, reminder_fanouts.c.reminder_key == reminders.c.key)
            .where(reminders.c.consultation_id == consultation_id)
            .order_by(reminders.c.due_at, reminders.c.key)
        ).all()
        counts: dict[str, dict[str, int]] = {}
        for key, status, n in conn.execute(
            select(mail_outbox.c.reminder_key, mail_outbox.c.status, func.count())
            .where(mail_outbox.c.consultation_id == consultation_id)
            .group_by(mail_outbox.c.reminder_key, mail_outbox.c.status)
        ):
            counts.setdefault(key, {})[status] = n
    return [
        {
            "key": r.key,
            "rule": r.rule,
            "kind": "reminder" if r.rule in ANCHORS else "notice",
            "statement_id": r.statement_id,
            "deadline": r.deadline,
            "offset_s": r.offset_s,
            "due_at": r.due_at,
            "fanned_out_at": r.done_at,
            "recipients": r.recipients,
            "messages": counts.get(r.key, {}),
        }
        for r in rows
    ]
