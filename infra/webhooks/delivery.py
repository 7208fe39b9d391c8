"""Sending webhook deliveries: claim the head of a subscription's queue, sign, POST, record.

In position order per subscription: only the lowest undelivered position of a subscription is
ever sent, so its next event waits until the one before is delivered or given up (about 27.6
hours of retries). That is head-of-line blocking on purpose — integrators mirror state and
order matters to them — and it is bounded: a failing endpoint holds up only its own queue, and
is disabled after days of failure (``CONCORD_WEBHOOK_DISABLE_AFTER``).

Crash safety. Due times and claims live in the delivery table, never in the broker:

* a claim (``sending`` with ``claimed_until``) is taken by a compare-and-set, so two workers
  never send the same delivery at once while the claim holds;
* the head and up to :data:`BATCH` due deliveries behind it are claimed together (one token,
  twice the lease) and sent in order. On PostgreSQL successes are recorded in groups: at most
  :data:`RECORD_EVERY` of them, and the group is recorded before the next send once its
  oldest is :data:`RECORD_WITHIN_S` old, or at once when anything else happens (a failure, the
  end of the batch, too little lease left). So of a dead worker's batch, only the first
  :data:`RECORD_EVERY` it still holds can have been sent (the successes of the group not yet
  recorded, and the one in flight); the rest are taken over without an attempt. A stop (a
  failure, a lost claim, too little lease left) gives the unsent ones back as they were;
* the outcome is recorded only by the claim's holder (its token), together with the attempt;
* a worker killed mid-batch leaves its claims to expire; the scheduler's scan then finds the
  deliveries due again and another run sends those that may have gone out once more (same
  ``webhook-id``: at-least-once), logging each lost attempt as interrupted.

Giving up a delivery and disabling an endpoint are recorded in the log first (idempotently,
keyed by delivery, round and attempt), then in the tables: a crash in between repeats the
decision without repeating the fact.
"""

from __future__ import annotations

import random as _random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

import httpx
import orjson
import structlog
from sqlalchemy import (
    Connection,
    Integer,
    and_,
    bindparam,
    func,
    or_,
    select,
    tuple_,
    update,
)

from infra.db import Database
from infra.eventstore.store import SqlEventStore, driver_cursor
from infra.integration.contract import cloudevent
from infra.personal import has_marker
from infra.schema import api_keys
from infra.settings import Settings
from infra.webhooks import signing
from infra.webhooks.guard import AllowList, Resolve, system_resolve
from infra.webhooks.relay import DELIVER, NAME
from infra.webhooks.sender import Answer, post
from infra.webhooks.tables import (
    IS_WAITING,
    webhook_attempts,
    webhook_deliveries,
    webhook_subscriptions,
)
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
#: Events read at once for a run's next deliveries.
EVENTS_PER_READ = 100
#: Deliveries of one subscription claimed at once (one transaction for the lot).
BATCH = 100
#: Successes recorded in one statement at most: a worker killed mid-batch may have sent this
#: many unrecorded (the group and the one in flight), which the next worker sends again.
RECORD_EVERY = 20
#: A group of successes is recorded before the next send once its oldest is this old, so a
#: slow endpoint's successes are recorded one by one, as they come.
RECORD_WITHIN_S = 0.25


# The hot path's statements, built once (building and keying a statement per call cost more
# than running it); each call only binds values.
_D, _S = webhook_deliveries, webhook_subscriptions
_SUBSCRIPTION = (
    select(_S, api_keys.c.revoked_at)
    .outerjoin(api_keys, api_keys.c.id == _S.c.owner_key_id)
    .where(_S.c.id == bindparam("b_sub"))
)
_HEADS = (
    select(_D)
    .where(_D.c.subscription_id == bindparam("b_sub"), IS_WAITING)
    .order_by(_D.c.position)
    .limit(BATCH)
)
# A compare-and-set per row: each is taken only if still as it was read (status, attempts and
# round); RETURNING says which were.
_TAKE = (
    update(_D)
    .where(
        tuple_(_D.c.id, _D.c.status, _D.c.attempts, _D.c.round).in_(
            bindparam("b_rows", expanding=True)
        )
    )
    .values(
        status="sending",
        claim_token=bindparam("b_token", type_=_D.c.claim_token.type),
        claimed_until=bindparam("b_until", type_=_D.c.claimed_until.type),
        attempts=_D.c.attempts + bindparam("b_add", type_=Integer),
        updated_at=bindparam("b_now", type_=_D.c.updated_at.type),
    )
    .returning(_D.c.id)
)
# Claimed but never sent: back to how they were before the claim.
_RELEASE = (
    update(_D)
    .where(
        _D.c.id.in_(bindparam("b_ids", expanding=True)), _D.c.claim_token == bindparam("b_token")
    )
    .values(
        status="pending",
        claim_token=None,
        claimed_until=None,
        attempts=_D.c.attempts - 1,
    )
)
_ATTEMPT = webhook_attempts.insert()
# PostgreSQL: a group of successes recorded in one statement (one round trip, its own
# transaction): each delivery whose claim still holds, and its attempt; the ids of those
# recorded come back. Its commit does not wait for the WAL flush (``synchronous_commit`` off
# for this transaction alone, set in the statement): a success lost with a crash of the
# database server itself — not of the worker, whose commits the server already has — only
# means that delivery is sent again, which webhooks allow (at least once; receivers
# deduplicate by ``webhook-id``). The flush was a third of a delivery; one statement per
# success was a third of the worker's CPU per delivery.
_DELIVERED = """
    WITH lazy_commit AS (
        SELECT set_config('synchronous_commit', 'off', true) AS setting
    ), done AS (
        SELECT * FROM unnest(%(id)s::uuid[], %(token)s::uuid[], %(status_code)s::integer[],
                             %(now)s::timestamptz[], %(number)s::integer[], %(round)s::integer[],
                             %(started_at)s::timestamptz[], %(duration_ms)s::integer[],
                             %(error)s::text[], %(response_body)s::text[])
            AS t(id, token, status_code, now, number, round, started_at, duration_ms, error,
                 response_body)
    ), delivered AS (
        UPDATE webhook_deliveries AS d
           SET status = 'delivered', claim_token = NULL, claimed_until = NULL,
               next_attempt_at = NULL, last_status_code = done.status_code, last_error = NULL,
               updated_at = done.now, delivered_at = done.now
          FROM done
         WHERE d.id = done.id AND d.claim_token = done.token
        RETURNING d.id
    )
    INSERT INTO webhook_attempts (delivery_id, number, round, started_at, duration_ms,
                                  status_code, error, response_body)
    SELECT done.id, done.number, done.round, done.started_at, done.duration_ms,
           done.status_code, done.error, done.response_body
      FROM done
      JOIN delivered ON delivered.id = done.id
      JOIN lazy_commit ON lazy_commit.setting = 'off'  -- joined, so it runs
    RETURNING delivery_id
"""


@cache
def _outcome(columns: frozenset[str]) -> Any:
    """UPDATE of a held delivery (id and claim token) setting ``columns``."""
    return (
        update(_D)
        .where(_D.c.id == bindparam("b_id"), _D.c.claim_token == bindparam("b_token"))
        .values({c: bindparam(f"v_{c}", type_=_D.c[c].type) for c in sorted(columns)})
    )


#: What an attempt a worker never recorded is logged as.
_INTERRUPTED = Answer(
    None, {}, b"", "interrupted: the worker stopped before recording it (it may have been sent)", 0
)


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
    #: When the claim runs out (every claim of one batch shares it, and its token).
    until: datetime


@dataclass(frozen=True)
class Success:
    """A delivery sent and answered with a 2xx, waiting to be recorded with others."""

    claim: Claim
    answer: Answer
    started: datetime
    now: datetime


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
        requeue: Callable[[UUID], object] | None = None,
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
        #: Asks for another run of a subscription (enqueues ``webhooks.deliver``).
        self.requeue = requeue
        self.allow = allow or AllowList.parse(settings.webhook_allow_hosts)
        self.timeout_s = settings.webhook_timeout_s
        #: A claim outlives any attempt: connect, send, read (bounded by the sender). A batch
        #: is claimed for twice that, and its next delivery is sent only while a whole lease
        #: is left.
        self.lease = timedelta(seconds=3 * settings.webhook_timeout_s + 10)
        self.disable_after = timedelta(seconds=settings.webhook_disable_after_s)
        self._events: dict[int, RecordedEvent] = {}

    # -- the scheduler's scan ----------------------------------------------------------------

    def due(self, limit: int = 1000) -> list[UUID]:
        """Active subscriptions whose next delivery is due (or whose claim expired), not
        nudged in the last minute; marks them nudged."""
        now = self.clock()
        d, s = webhook_deliveries, webhook_subscriptions
        heads = (
            select(d.c.subscription_id, func.min(d.c.position).label("position"))
            .where(IS_WAITING)
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
        is due or ``budget`` deliveries are done; returns how many were finished.

        The queue's head and up to :data:`BATCH` due deliveries behind it are claimed at once,
        then sent one by one, their successes recorded in groups (see the module's
        docstring); what a stop leaves unsent is released. A run that used its whole budget
        asks for the next run at once (``requeue``), behind the other subscriptions' runs
        already queued, instead of leaving the rest of a burst to the scheduler's scan.
        """
        self.catch_up()
        finished = 0
        again = False
        try:
            while finished < budget:
                batch = self.claims(subscription_id, min(BATCH, budget - finished))
                moved = self._send_batch(batch)
                finished += moved
                if moved < len(batch) or not batch:
                    break
            again = finished >= budget and self.requeue is not None
        finally:
            with self.db.write() as conn:
                conn.execute(
                    update(webhook_subscriptions)
                    .where(webhook_subscriptions.c.id == subscription_id)
                    .values(nudged_until=self.clock() + NUDGE if again else None)
                )
        if again:
            assert self.requeue is not None
            self.requeue(subscription_id)
        return finished

    def _send_batch(self, batch: list[Claim]) -> int:
        """Send a batch's claims in order, recording their outcomes; how many moved the queue
        on (all of them unless something stopped it: then the rest are released)."""
        group: list[Success] = []  # sent and answered 2xx, not recorded yet
        oldest = 0.0  # when the group's first went out (monotonic)
        moved = 0

        def record_group() -> bool:
            nonlocal moved
            held = self._record_successes(group)
            moved += held
            complete = held == len(group)
            group.clear()
            return complete

        for i, claim in enumerate(batch):
            # A group is recorded before the next send once its oldest went out RECORD_WITHIN_S
            # ago (a slow endpoint's: each before the next).
            due = bool(group) and time.monotonic() - oldest >= RECORD_WITHIN_S
            if due and not record_group():
                self._release(batch[i:])
                return moved
            if i and claim.until - self.clock() < self.lease:
                # Not enough of the claim left for another attempt: give the rest back (the
                # run claims them afresh).
                record_group()
                self._release(batch[i:])
                return moved
            started, sent = self.clock(), time.monotonic()
            answer = self._answer(claim)
            if self._groups(claim, answer):
                oldest = oldest if group else sent
                group.append(Success(claim, answer, started, self.clock()))
                if len(group) >= RECORD_EVERY and not record_group():
                    self._release(batch[i + 1 :])
                    return moved
                continue
            complete = record_group()  # in order: what came before is recorded first
            if not self._record(claim, answer, started, unsent=batch[i + 1 :]):
                return moved  # it gave back the rest
            moved += 1
            if not complete:
                self._release(batch[i + 1 :])
                return moved
        record_group()
        return moved

    def _groups(self, claim: Claim, answer: Answer) -> bool:
        """Whether this outcome is a success recorded with others: on PostgreSQL, unless the
        endpoint was failing (recording its success also clears that, in the same
        transaction)."""
        return (
            self.db.is_postgres
            and claim.failing_since is None
            and policy.verdict(answer.status_code) is policy.Verdict.DELIVERED
        )

    def _record_successes(self, group: list[Success]) -> int:
        """Record a group of successes in one statement; how many of their claims still held
        (the others' attempts are logged as a lost claim's are)."""
        if not group:
            return 0
        with self.db.autocommit() as conn:
            held = record_delivered(conn, group)
        for success in group:
            claim = success.claim
            if claim.delivery_id not in held:
                self._finish(
                    claim,
                    success.answer,
                    success.started,
                    success.now,
                    delivered=True,
                    lost=True,
                    unsent=[],
                )
            _log_delivered(claim, success.answer, recorded=claim.delivery_id in held)
        return len(held)

    def claim(self, subscription_id: UUID) -> Claim | None:
        """Take the subscription's head delivery if it is due and nobody holds it."""
        claims = self.claims(subscription_id, 1)
        return claims[0] if claims else None

    def claims(self, subscription_id: UUID, limit: int = BATCH) -> list[Claim]:
        """Take the subscription's head delivery and the due ones right behind it (up to
        ``limit``), in position order, if the head is due and nobody holds it."""
        with self.db.write() as conn:
            return self._claims(conn, subscription_id, limit)

    def _claims(self, conn: Connection, subscription_id: UUID, limit: int) -> list[Claim]:
        now = self.clock()
        sub = conn.execute(_SUBSCRIPTION, {"b_sub": subscription_id}).first()
        if sub is None or sub.status != "active":
            return []
        if sub.revoked_at is not None:
            return []  # a revoked key's subscriptions wait (an admin may delete them)
        rows = conn.execute(_HEADS, {"b_sub": subscription_id}).all()[:limit]
        # The due run from the head: pending and due, or held by a claim that expired.
        # ``added``: 1 for an attempt now, 0 for a delivery an expired batch claimed too far
        # behind the first it still holds to have been sent: its holder sends in order and
        # leaves at most RECORD_EVERY sent and unrecorded (the ones before are recorded).
        taking: list[tuple[Any, int]] = []
        held_by, held = None, 0  # the expired claim of the rows just before, and how many
        for row in rows:
            if row.status == "pending":
                if row.next_attempt_at is None or row.next_attempt_at > now:
                    break
                taking.append((row, 1))
                held_by, held = None, 0
                continue
            if row.claimed_until is not None and row.claimed_until > now:
                break
            if row.claim_token is None or row.claim_token != held_by:
                held_by, held = row.claim_token, 0
            held += 1
            taking.append((row, 1 if held <= RECORD_EVERY else 0))
        if not taking:
            return []
        token = uuid4()
        until = now + (self.lease if len(taking) == 1 else 2 * self.lease)
        taken: set[UUID] = set()
        for added in (1, 0):
            group = [(r.id, r.status, r.attempts, r.round) for r, a in taking if a == added]
            if group:
                params = {"b_rows": group, "b_token": token, "b_until": until, "b_add": added}
                result = conn.execute(_TAKE, {**params, "b_now": now})
                taken.update(row.id for row in result)
        ours = []
        for row, added in taking:
            if row.id not in taken:
                break  # changed since it was read (another claimer, a replay): stop there
            ours.append((row, added))
        for row, _ in taking[len(ours) :]:
            if row.id in taken:  # taken beyond a gap: put back as it was
                conn.execute(
                    update(_D)
                    .where(_D.c.id == row.id, _D.c.claim_token == token)
                    .values(
                        status=row.status,
                        claim_token=row.claim_token,
                        claimed_until=row.claimed_until,
                        attempts=row.attempts,
                        updated_at=row.updated_at,
                    )
                )
        secrets = [sub.secret]
        if (
            sub.previous_secret
            and sub.previous_secret_expires_at is not None
            and sub.previous_secret_expires_at > now
        ):
            secrets.append(sub.previous_secret)
        claims = []
        for row, added in ours:
            if row.status == "sending" and added:
                # The worker that held it stopped (killed, or lost its database) before it
                # recorded an outcome: it may have been sent, or been in flight.
                _log_attempt(conn, row.id, row.attempts, row.round, row.updated_at, _INTERRUPTED)
            claims.append(
                Claim(
                    delivery_id=row.id,
                    token=token,
                    subscription_id=subscription_id,
                    owner_key_id=sub.owner_key_id,
                    url=sub.url,
                    secrets=tuple(secrets),
                    event_id=row.event_id,
                    position=row.position,
                    attempt=row.attempts + added,
                    round=row.round,
                    failing_since=sub.failing_since,
                    until=until,
                )
            )
        return claims

    def _release(self, claims: list[Claim]) -> None:
        """Give back claims that were never sent."""
        with self.db.write() as conn:
            self._give_back(conn, claims)

    @staticmethod
    def _give_back(conn: Connection, claims: list[Claim]) -> None:
        if claims:
            ids = [c.delivery_id for c in claims]
            conn.execute(_RELEASE, {"b_ids": ids, "b_token": claims[0].token})

    def attempt(self, claim: Claim) -> bool:
        """Send one claimed delivery and record the outcome; True if the queue may move on
        (delivered, or given up), False if it must wait (a retry is scheduled, or the
        endpoint was disabled)."""
        return self._attempt(claim)

    def _attempt(self, claim: Claim) -> bool:
        started = self.clock()
        return self._record(claim, self._answer(claim), started)

    def _answer(self, claim: Claim) -> Answer:
        """Send the claimed delivery's event (or say why it cannot be sent)."""
        event = self._event(claim)
        if event is None:
            return Answer(None, {}, b"", f"event {claim.event_id} is not in the log", 0)
        return self.send(claim, event)

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
        return self._record(claim, answer, started)

    def _record(
        self, claim: Claim, answer: Answer, started: datetime, *, unsent: list[Claim] | None = None
    ) -> bool:
        now = self.clock()
        unsent = unsent or []
        verdict = policy.verdict(answer.status_code)
        if verdict is policy.Verdict.DELIVERED:
            held = self._finish(claim, answer, started, now, delivered=True, unsent=unsent)
            _log_delivered(claim, answer, recorded=held)
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
            self._finish(claim, answer, started, now, delivered=False, lost=True, unsent=unsent)
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
        moves = next_at is None and not disable
        held = self._finish(
            claim,
            answer,
            started,
            now,
            delivered=False,
            next_at=next_at,
            failing_since=failing_since,
            disabled=reason,
            unsent=[] if moves else unsent,
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
        if not held and moves:
            self._release(unsent)
        return held and moves

    # -- helpers -----------------------------------------------------------------------------

    def _event(self, claim: Claim) -> RecordedEvent | None:
        event = self._events.get(claim.position)
        if event is None:
            # The next events of the log in one read; kept for the rest of this run unless
            # they carry personal data (read afresh each time: an erasure shows at once).
            page = self.store.read_all(claim.position - 1, EVENTS_PER_READ)
            self._events = {
                e.position: e for e in page[1:] if e.position and not has_marker(e.data)
            }
            event = page[0] if page else None
        return event if event is not None and event.id == claim.event_id else None

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
        unsent: list[Claim],
    ) -> bool:
        """Log the attempt and, if the claim still holds, its outcome; False if it did not.
        ``unsent`` (the claims of its batch behind it) are released unless it was delivered
        (then the queue moves on to them)."""
        if delivered and not lost and claim.failing_since is None and self.db.is_postgres:
            with self.db.autocommit() as conn:
                if record_delivered(conn, [Success(claim, answer, started, now)]):
                    return True
            lost = True  # not ours any more: log the attempt below, if the delivery exists
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
            held = None
            if not lost:
                held = conn.execute(
                    _outcome(frozenset(values)),
                    {
                        "b_id": claim.delivery_id,
                        "b_token": claim.token,
                        **{f"v_{k}": v for k, v in values.items()},
                    },
                )
            if held is None or held.rowcount != 1:
                # Replayed, or taken over after our claim expired (theirs now), or deleted
                # with its subscription: the attempt is logged if the delivery still exists.
                exists = conn.execute(select(d.c.id).where(d.c.id == claim.delivery_id)).first()
                if exists is not None:
                    _log_attempt(
                        conn, claim.delivery_id, claim.attempt, claim.round, started, answer
                    )
                self._give_back(conn, unsent)
                return False
            _log_attempt(conn, claim.delivery_id, claim.attempt, claim.round, started, answer)
            if delivered:
                if claim.failing_since is not None:  # the claim saw the subscription's state
                    conn.execute(
                        update(s).where(s.c.id == claim.subscription_id).values(failing_since=None)
                    )
                return True
            self._give_back(conn, unsent)
            changes: dict[str, Any] = {"failing_since": failing_since}
            if disabled is not None:
                changes.update(status="disabled", disabled_at=now, disabled_reason=disabled)
            conn.execute(
                update(s)
                .where(s.c.id == claim.subscription_id, s.c.status != "disabled")
                .values(**changes, updated_at=now)
            )
        return True


def record_delivered(conn: Connection, successes: Sequence[Success]) -> set[UUID]:
    """Record successes in one statement on ``conn`` (PostgreSQL); the ids of the deliveries
    whose claims still held (the others are left as they are)."""
    columns: dict[str, list[Any]] = {name: [] for name in _SUCCESS_COLUMNS}
    for s in successes:
        claim = s.claim
        values = _attempt_values(claim.delivery_id, claim.attempt, claim.round, s.started, s.answer)
        values |= {"id": claim.delivery_id, "token": claim.token, "now": s.now}
        for name, column in columns.items():
            column.append(values[name])
    with driver_cursor(conn) as cur:
        cur.execute(_DELIVERED, columns)
        return {row[0] for row in cur.fetchall()}


_SUCCESS_COLUMNS = (
    "id", "token", "status_code", "now", "number", "round", "started_at", "duration_ms", "error",
    "response_body",
)  # fmt: skip


def _attempt_values(
    delivery_id: UUID, number: int, round_: int, started: datetime, answer: Answer
) -> dict[str, Any]:
    return {
        "delivery_id": delivery_id,
        "number": number,
        "round": round_,
        "started_at": started,
        "duration_ms": answer.duration_ms,
        "status_code": answer.status_code,
        "error": _clip(answer.error, 500),
        "response_body": _clip(answer.body.decode("utf-8", "replace"), KEPT_BODY)
        if answer.body
        else None,
    }


def _log_attempt(
    conn: Connection,
    delivery_id: UUID,
    number: int,
    round_: int,
    started: datetime,
    answer: Answer,
) -> None:
    conn.execute(_ATTEMPT, _attempt_values(delivery_id, number, round_, started, answer))


def _log_delivered(claim: Claim, answer: Answer, *, recorded: bool) -> None:
    log.info(
        "webhook delivered",
        subscription_id=str(claim.subscription_id),
        position=claim.position,
        status=answer.status_code,
        recorded=recorded,
    )


def _header(headers: Mapping[str, str], name: str) -> str | None:
    return next((v for k, v in headers.items() if k.lower() == name), None)


def _clip(text: str | None, length: int) -> str | None:
    return None if text is None else text[:length]


def deliverer(system: System, **overrides: Any) -> Deliverer:
    """The deliverer of a bootstrapped system (``overrides``: clock, random, transport …)."""
    relay = system.dispatcher.projections.get(NAME)
    send = getattr(relay, "send", None)
    if send is not None and "requeue" not in overrides:
        overrides["requeue"] = lambda sid: send(DELIVER, {"subscription_id": str(sid)})
    return Deliverer(
        system.db,
        system.store,
        system.bus,
        system.settings,
        catch_up=lambda: system.dispatcher.catch_up(names=[NAME]),
        **overrides,
    )
