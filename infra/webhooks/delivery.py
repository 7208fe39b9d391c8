"""Sending webhook deliveries: claim the head of a subscription's queue, sign, POST, record.

In position order per subscription: only the lowest undelivered position of a subscription is
ever sent, so its next event waits until the one before is delivered or given up (about 27.6
hours of retries). That is head-of-line blocking on purpose — integrators mirror state and
order matters to them — and it is bounded: a failing endpoint holds up only its own queue, and
is disabled after days of failure (``CONCORD_WEBHOOK_DISABLE_AFTER``).

Crash safety. Due times and claims live in the delivery table, never in the broker:

* a claim (``sending`` with ``claimed_until``) is taken by a compare-and-set, so two workers
  never send the same delivery at once while the claim holds;
* the outcome is recorded only by the claim's holder (its token), together with the attempt;
* a worker killed mid-attempt leaves its claim to expire; the scheduler's scan then finds the
  delivery due again and another run sends it once more (same ``webhook-id``: at-least-once),
  logging the lost attempt as interrupted.

Giving up a delivery and disabling an endpoint are recorded in the log first (idempotently,
keyed by delivery, round and attempt), then in the tables: a crash in between repeats the
decision without repeating the fact.
"""

from __future__ import annotations

import random as _random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

import httpx
import orjson
import structlog
from sqlalchemy import Connection, and_, func, or_, select, update

from infra.db import Database
from infra.eventstore.store import SqlEventStore
from infra.integration.contract import cloudevent
from infra.schema import api_keys
from infra.settings import Settings
from infra.webhooks import signing
from infra.webhooks.guard import AllowList, Resolve, system_resolve
from infra.webhooks.relay import NAME
from infra.webhooks.sender import Answer, post
from infra.webhooks.tables import webhook_attempts, webhook_deliveries, webhook_subscriptions
from services.bus import CommandBus
from services.ports import Metadata, RecordedEvent
from services.webhooks import policy
from services.webhooks.commands import DisableEndpoint, RecordDeliveryFailure
from services.webhooks.model import SUBSCRIPTION

if TYPE_CHECKING:
    from infra.bootstrap import System

log = structlog.get_logger("concord.webhooks")
WORKER = Metadata(actor="worker: webhooks.deliver")
CONTENT_TYPE = "application/cloudevents+json"
#: How long after enqueueing a run the scan leaves a subscription alone.
NUDGE = timedelta(seconds=60)
#: Characters of an endpoint's answer kept per attempt.
KEPT_BODY = 2000


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Claim:
    """A delivery this worker holds, with what it needs to send it."""

    delivery_id: UUID
    token: UUID
    subscription_id: UUID
    owner_key_id: UUID
    url: str
    secrets: tuple[str, ...]
    event_id: UUID
    position: int
    attempt: int
    round: int
    failing_since: datetime | None


class Deliverer:
    """Runs deliveries for one subscription at a time; every dependency can be replaced."""

    def __init__(
        self,
        db: Database,
        store: SqlEventStore,
        bus: CommandBus,
        settings: Settings,
        *,
        catch_up: Callable[[], object] = lambda: None,
        clock: Callable[[], datetime] = utcnow,
        random: Callable[[], float] = _random.random,
        resolve: Resolve = system_resolve,
        transport: httpx.BaseTransport | None = None,
        allow: AllowList | None = None,
    ) -> None:
        self.db = db
        self.store = store
        self.bus = bus
        self.settings = settings
        self.catch_up = catch_up
        self.clock = clock
        self.random = random
        self.resolve = resolve
        self.transport = transport
        self.allow = allow or AllowList.parse(settings.webhook_allow_hosts)
        self.timeout_s = settings.webhook_timeout_s
        #: A claim outlives any attempt: connect, send, read (bounded by the sender).
        self.lease = timedelta(seconds=3 * settings.webhook_timeout_s + 10)
        self.disable_after = timedelta(seconds=settings.webhook_disable_after_s)

    # -- the scheduler's scan ----------------------------------------------------------------

    def due(self, limit: int = 1000) -> list[UUID]:
        """Active subscriptions whose next delivery is due (or whose claim expired), not
        nudged in the last minute; marks them nudged."""
        now = self.clock()
        d, s = webhook_deliveries, webhook_subscriptions
        waiting = d.c.status.in_(("pending", "sending"))
        heads = (
            select(d.c.subscription_id, func.min(d.c.position).label("position"))
            .where(waiting)
            .group_by(d.c.subscription_id)
            .subquery()
        )
        query = (
            select(s.c.id)
            .select_from(heads)
            .join(
                d,
                and_(
                    d.c.subscription_id == heads.c.subscription_id,
                    d.c.position == heads.c.position,
                ),
            )
            .join(s, s.c.id == d.c.subscription_id)
            .join(api_keys, api_keys.c.id == s.c.owner_key_id)
            .where(
                s.c.status == "active",
                api_keys.c.revoked_at.is_(None),
                or_(s.c.nudged_until.is_(None), s.c.nudged_until <= now),
                or_(
                    and_(d.c.status == "pending", d.c.next_attempt_at <= now),
                    and_(d.c.status == "sending", d.c.claimed_until <= now),
                ),
            )
            .limit(limit)
        )
        with self.db.write() as conn:
            ids = [row.id for row in conn.execute(query).all()]
            if ids:
                conn.execute(update(s).where(s.c.id.in_(ids)).values(nudged_until=now + NUDGE))
        return ids

    # -- one subscription's run --------------------------------------------------------------

    def run(self, subscription_id: UUID, *, budget: int = 100) -> int:
        """Send what is due for one subscription, in order, until something fails, nothing
        is due or ``budget`` deliveries are done; returns how many were finished."""
        self.catch_up()
        finished = 0
        try:
            while finished < budget:
                claim = self.claim(subscription_id)
                if claim is None or not self.attempt(claim):
                    break
                finished += 1
        finally:
            with self.db.write() as conn:
                conn.execute(
                    update(webhook_subscriptions)
                    .where(webhook_subscriptions.c.id == subscription_id)
                    .values(nudged_until=None)
                )
        return finished

    def claim(self, subscription_id: UUID) -> Claim | None:
        """Take the subscription's head delivery if it is due and nobody holds it."""
        now = self.clock()
        d, s = webhook_deliveries, webhook_subscriptions
        with self.db.write() as conn:
            sub = conn.execute(select(s).where(s.c.id == subscription_id)).first()
            if sub is None or sub.status != "active":
                return None
            revoked = conn.execute(
                select(api_keys.c.revoked_at).where(api_keys.c.id == sub.owner_key_id)
            ).scalar()
            if revoked is not None:
                return None  # a revoked key's subscriptions wait (an admin may delete them)
            head = conn.execute(
                select(d)
                .where(
                    d.c.subscription_id == subscription_id, d.c.status.in_(("pending", "sending"))
                )
                .order_by(d.c.position)
                .limit(1)
            ).first()
            if head is None:
                return None
            due = head.next_attempt_at is not None and head.next_attempt_at <= now
            expired = head.status == "sending" and (
                head.claimed_until is None or head.claimed_until <= now
            )
            if not (due if head.status == "pending" else expired):
                return None
            token = uuid4()
            taken = conn.execute(
                update(d)
                .where(
                    d.c.id == head.id,
                    d.c.status == head.status,
                    d.c.attempts == head.attempts,
                    d.c.round == head.round,
                )
                .values(
                    status="sending",
                    claim_token=token,
                    claimed_until=now + self.lease,
                    attempts=head.attempts + 1,
                    updated_at=now,
                )
            )
            if taken.rowcount != 1:
                return None
            if expired:
                # The worker that held it stopped mid-attempt (killed, or lost its database).
                _log_attempt(
                    conn,
                    head.id,
                    head.attempts,
                    head.round,
                    head.updated_at,
                    Answer(None, {}, b"", "interrupted: the worker stopped mid-attempt", 0),
                )
            secrets = [sub.secret]
            if (
                sub.previous_secret
                and sub.previous_secret_expires_at is not None
                and sub.previous_secret_expires_at > now
            ):
                secrets.append(sub.previous_secret)
        return Claim(
            delivery_id=head.id,
            token=token,
            subscription_id=subscription_id,
            owner_key_id=sub.owner_key_id,
            url=sub.url,
            secrets=tuple(secrets),
            event_id=head.event_id,
            position=head.position,
            attempt=head.attempts + 1,
            round=head.round,
            failing_since=sub.failing_since,
        )

    def attempt(self, claim: Claim) -> bool:
        """Send one claimed delivery and record the outcome; True if the queue may move on
        (delivered, or given up), False if it must wait (a retry is scheduled, or the
        endpoint was disabled)."""
        started = self.clock()
        event = self._event(claim)
        if event is None:
            answer = Answer(None, {}, b"", f"event {claim.event_id} is not in the log", 0)
        else:
            answer = self.send(claim, event)
        return self.record(claim, answer, started)

    def send(self, claim: Claim, event: RecordedEvent) -> Answer:
        """One signed POST of the event as a CloudEvent (structured mode)."""
        try:
            body = orjson.dumps(cloudevent(event, self.settings.public_url))
        except ValueError as exc:  # the contract no longer makes this type public
            return Answer(None, {}, b"", f"not deliverable: {exc}", 0)
        # The attempt's own time, from the wall clock: receivers check it against theirs.
        headers = signing.headers(claim.secrets, str(claim.event_id), int(time.time()), body)
        headers["Content-Type"] = CONTENT_TYPE
        return post(
            claim.url,
            body,
            headers,
            allow=self.allow,
            timeout_s=self.timeout_s,
            resolve=self.resolve,
            transport=self.transport,
        )

    def record(self, claim: Claim, answer: Answer, started: datetime) -> bool:
        now = self.clock()
        verdict = policy.verdict(answer.status_code)
        if verdict is policy.Verdict.DELIVERED:
            held = self._finish(claim, answer, started, now, delivered=True)
            log.info(
                "webhook delivered",
                subscription_id=str(claim.subscription_id),
                position=claim.position,
                status=answer.status_code,
                recorded=held,
            )
            return held
        retry_after = (
            policy.parse_retry_after(_header(answer.headers, "retry-after"), now)
            if answer.status_code in policy.SLOW_DOWN
            else None
        )
        next_at = policy.next_attempt_at(
            claim.attempt, now, retry_after=retry_after, random=self.random
        )
        failing_since = claim.failing_since or started
        gone = verdict is policy.Verdict.GONE
        disable = gone or policy.should_disable(failing_since, now, self.disable_after)
        episode = f"{claim.delivery_id}/{claim.round}/{claim.attempt}"
        if not self._holds(claim):
            self._finish(claim, answer, started, now, delivered=False, lost=True)
            return False
        if next_at is None:
            self.bus.handle(
                SUBSCRIPTION,
                claim.subscription_id,
                RecordDeliveryFailure(
                    subscription_id=claim.subscription_id,
                    delivery_id=claim.delivery_id,
                    event_id=claim.event_id,
                    position=claim.position,
                    attempts=claim.attempt,
                    status_code=answer.status_code,
                    error=_clip(answer.error, 500),
                    episode=episode,
                ),
                metadata=WORKER,
            )
        reason = None
        if disable:
            reason = "gone (410)" if gone else "failing since " + failing_since.isoformat()
            self.bus.handle(
                SUBSCRIPTION,
                claim.subscription_id,
                DisableEndpoint(
                    subscription_id=claim.subscription_id,
                    owner_key_id=claim.owner_key_id,
                    reason="gone" if gone else "failing",
                    failing_since=failing_since,
                    status_code=answer.status_code,
                    episode=episode,
                ),
                metadata=WORKER,
            )
        held = self._finish(
            claim,
            answer,
            started,
            now,
            delivered=False,
            next_at=next_at,
            failing_since=failing_since,
            disabled=reason,
        )
        log.warning(
            "webhook attempt failed",
            subscription_id=str(claim.subscription_id),
            position=claim.position,
            attempt=claim.attempt,
            status=answer.status_code,
            error=answer.error,
            next_attempt_at=next_at.isoformat() if next_at else None,
            disabled=reason,
        )
        return held and next_at is None and not disable

    # -- helpers -----------------------------------------------------------------------------

    def _event(self, claim: Claim) -> RecordedEvent | None:
        page = self.store.read_all(claim.position - 1, 1)
        if page and page[0].id == claim.event_id:
            return page[0]
        return None

    def _holds(self, claim: Claim) -> bool:
        with self.db.read() as conn:
            token = conn.execute(
                select(webhook_deliveries.c.claim_token).where(
                    webhook_deliveries.c.id == claim.delivery_id
                )
            ).scalar()
        return token == claim.token

    def _finish(
        self,
        claim: Claim,
        answer: Answer,
        started: datetime,
        now: datetime,
        *,
        delivered: bool,
        lost: bool = False,
        next_at: datetime | None = None,
        failing_since: datetime | None = None,
        disabled: str | None = None,
    ) -> bool:
        """Log the attempt and, if the claim still holds, its outcome; False if it did not."""
        d, s = webhook_deliveries, webhook_subscriptions
        common: dict[str, Any] = {
            "claim_token": None,
            "claimed_until": None,
            "last_status_code": answer.status_code,
            "last_error": _clip(answer.error, 500),
            "updated_at": now,
        }
        if delivered:
            values = {**common, "status": "delivered", "delivered_at": now, "next_attempt_at": None}
        elif next_at is None:
            values = {**common, "status": "failed", "next_attempt_at": None}
        else:
            values = {**common, "status": "pending", "next_attempt_at": next_at}
        with self.db.write() as conn:
            exists = conn.execute(select(d.c.id).where(d.c.id == claim.delivery_id)).first()
            if exists is None:
                return False  # the subscription was deleted meanwhile
            _log_attempt(conn, claim.delivery_id, claim.attempt, claim.round, started, answer)
            if lost:
                return False
            held = conn.execute(
                update(d)
                .where(d.c.id == claim.delivery_id, d.c.claim_token == claim.token)
                .values(**values)
            )
            if held.rowcount != 1:
                return False  # replayed, or taken over after our claim expired: theirs now
            if delivered:
                conn.execute(
                    update(s).where(s.c.id == claim.subscription_id).values(failing_since=None)
                )
                return True
            changes: dict[str, Any] = {"failing_since": failing_since}
            if disabled is not None:
                changes.update(status="disabled", disabled_at=now, disabled_reason=disabled)
            conn.execute(
                update(s)
                .where(s.c.id == claim.subscription_id, s.c.status != "disabled")
                .values(**changes, updated_at=now)
            )
        return True


def _log_attempt(
    conn: Connection,
    delivery_id: UUID,
    number: int,
    round_: int,
    started: datetime,
    answer: Answer,
) -> None:
    conn.execute(
        webhook_attempts.insert().values(
            delivery_id=delivery_id,
            number=number,
            round=round_,
            started_at=started,
            duration_ms=answer.duration_ms,
            status_code=answer.status_code,
            error=_clip(answer.error, 500),
            response_body=_clip(answer.body.decode("utf-8", "replace"), KEPT_BODY)
            if answer.body
            else None,
        )
    )


def _header(headers: Mapping[str, str], name: str) -> str | None:
    return next((v for k, v in headers.items() if k.lower() == name), None)


def _clip(text: str | None, length: int) -> str | None:
    return None if text is None else text[:length]


def deliverer(system: System, **overrides: Any) -> Deliverer:
    """The deliverer of a bootstrapped system (``overrides``: clock, random, transport …)."""
    return Deliverer(
        system.db,
        system.store,
        system.bus,
        system.settings,
        catch_up=lambda: system.dispatcher.catch_up(names=[NAME]),
        **overrides,
    )
