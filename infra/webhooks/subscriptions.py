"""Webhook subscriptions as their owners manage them: create, change, rotate, replay, inspect.

Plain configuration owned by an API key (not domain facts), so a table rather than the log.
The signing secret is kept (the worker signs with it) but only ever returned by
:meth:`Subscriptions.create` and :meth:`Subscriptions.rotate`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

from sqlalchemy import Connection, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from infra.db import Database
from infra.eventstore.store import SqlEventStore
from infra.integration.contract import for_internal, internal_types
from infra.webhooks.guard import AllowList, Resolve, UnsafeTarget, check_registration
from infra.webhooks.guard import system_resolve as _system_resolve
from infra.webhooks.relay import NAME, delivery_row, wanted_types, wants
from infra.webhooks.signing import new_secret
from infra.webhooks.tables import webhook_attempts, webhook_deliveries, webhook_subscriptions

if TYPE_CHECKING:
    from infra.bootstrap import System

#: Events re-scheduled by one replay call at most; the answer says where to continue.
REPLAY_LIMIT = 10_000
#: Attempts shown per delivery (the most recent).
ATTEMPTS_SHOWN = 20

Lock = Callable[[Connection], int]
UNSET: Any = object()


class SubscriptionError(ValueError):
    """A subscription cannot be created or changed as asked (a 422 for the API)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name


@dataclass(frozen=True)
class Subscription:
    id: UUID
    owner_key_id: UUID
    url: str
    event_types: tuple[str, ...] | None
    description: str | None
    #: Who is told by e-mail when the endpoint is disabled (None: nobody is mailed).
    contact_email: str | None
    status: str
    start_after: int
    failing_since: datetime | None
    disabled_at: datetime | None
    disabled_reason: str | None
    previous_secret_expires_at: datetime | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Attempt:
    number: int
    round: int
    started_at: datetime
    duration_ms: int
    status_code: int | None
    error: str | None
    response_body: str | None


@dataclass(frozen=True)
class Delivery:
    id: UUID
    subscription_id: UUID
    event_id: UUID
    position: int
    event_type: str
    status: str
    attempts: int
    round: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    attempt_log: tuple[Attempt, ...] = field(default=())


@dataclass(frozen=True)
class Replay:
    """What a replay scheduled: events after ``after`` up to ``until``."""

    after: int
    until: int
    scheduled: int
    complete: bool


def normalise_types(names: Sequence[str] | None) -> tuple[str, ...] | None:
    """The filter as stored (deduplicated, in order), or SubscriptionError naming unknown types."""
    if names is None:
        return None
    unique = tuple(dict.fromkeys(n.strip() for n in names))
    unknown = [
        n
        for n, internal in zip(unique, internal_types(unique), strict=True)
        if not _public(internal)
    ]
    if unknown or not unique:
        detail = ", ".join(repr(n) for n in unknown[:10]) if unknown else "an empty list"
        raise SubscriptionError(
            "event_types",
            f"not public event types: {detail} (see GET /v1/event-types; omit the field for all)",
        )
    return unique


def _public(internal: str) -> bool:
    return for_internal(internal) is not None


class Subscriptions:
    """The subscriptions table and the deliveries under it, for the API."""

    def __init__(
        self,
        db: Database,
        store: SqlEventStore,
        allow: AllowList,
        *,
        relay_lock: Lock,
        rotation_grace: timedelta,
        resolve: Resolve = _system_resolve,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.db = db
        self.store = store
        self.allow = allow
        self.relay_lock = relay_lock
        self.rotation_grace = rotation_grace
        self.resolve = resolve
        self.clock = clock

    def check_url(self, url: str) -> str:
        try:
            check_registration(url, self.allow, self.resolve)
        except UnsafeTarget as exc:
            raise SubscriptionError("url", str(exc)) from None
        return url

    # -- owners' operations ------------------------------------------------------------------

    def create(
        self,
        owner_key_id: UUID,
        url: str,
        event_types: Sequence[str] | None = None,
        description: str | None = None,
        created_by: str | None = None,
        contact_email: str | None = None,
    ) -> tuple[Subscription, str]:
        """A new active subscription for events after the current head, and its secret."""
        types = normalise_types(event_types)
        self.check_url(url)
        secret = new_secret()
        now = self.clock()
        sid = uuid4()
        with self.db.write() as conn:
            conn.execute(
                webhook_subscriptions.insert().values(
                    id=sid,
                    owner_key_id=owner_key_id,
                    url=url,
                    event_types=list(types) if types is not None else None,
                    description=description,
                    contact_email=contact_email,
                    status="active",
                    secret=secret,
                    start_after=self.store.head_position(),
                    created_at=now,
                    updated_at=now,
                    created_by=created_by,
                )
            )
        created = self.get(sid)
        assert created is not None
        return created, secret

    def get(self, subscription_id: UUID) -> Subscription | None:
        with self.db.read() as conn:
            row = conn.execute(
                select(webhook_subscriptions).where(webhook_subscriptions.c.id == subscription_id)
            ).first()
        return _subscription(row) if row else None

    def all(self, owner_key_id: UUID | None = None) -> list[Subscription]:
        """Every subscription, or those of one key, oldest first."""
        query = select(webhook_subscriptions).order_by(
            webhook_subscriptions.c.created_at, webhook_subscriptions.c.id
        )
        if owner_key_id is not None:
            query = query.where(webhook_subscriptions.c.owner_key_id == owner_key_id)
        with self.db.read() as conn:
            return [_subscription(r) for r in conn.execute(query).all()]

    def update(
        self,
        subscription_id: UUID,
        *,
        url: str = UNSET,
        event_types: Sequence[str] | None = UNSET,
        description: str | None = UNSET,
        contact_email: str | None = UNSET,
        status: str | None = None,
    ) -> Subscription | None:
        """Change what is given. ``status``: ``paused`` or ``active`` (which also re-enables a
        disabled subscription and restarts the retry schedule of what is waiting)."""
        values: dict[str, Any] = {}
        if url is not UNSET:
            values["url"] = self.check_url(url)
        if event_types is not UNSET:
            types = normalise_types(event_types)
            values["event_types"] = list(types) if types is not None else None
        if description is not UNSET:
            values["description"] = description
        if contact_email is not UNSET:
            values["contact_email"] = contact_email
        now = self.clock()
        table = webhook_subscriptions
        with self.db.write() as conn:
            current = conn.execute(select(table.c.status).where(table.c.id == subscription_id))
            before = current.scalar()
            if before is None:
                return None
            if status == "paused":
                values["status"] = "paused"
            elif status == "active" and before != "active":
                values.update(
                    status="active",
                    failing_since=None,
                    disabled_at=None,
                    disabled_reason=None,
                    nudged_until=None,
                )
                # A fresh start: what waits is due now, with the whole schedule ahead of it.
                conn.execute(
                    update(webhook_deliveries)
                    .where(
                        webhook_deliveries.c.subscription_id == subscription_id,
                        webhook_deliveries.c.status == "pending",
                    )
                    .values(
                        attempts=0,
                        round=webhook_deliveries.c.round + 1,
                        next_attempt_at=now,
                        updated_at=now,
                    )
                )
            if values:
                conn.execute(
                    update(table)
                    .where(table.c.id == subscription_id)
                    .values(**values, updated_at=now)
                )
        return self.get(subscription_id)

    def delete(self, subscription_id: UUID) -> bool:
        """Remove a subscription with its deliveries and their log."""
        with self.db.write() as conn:
            deliveries = select(webhook_deliveries.c.id).where(
                webhook_deliveries.c.subscription_id == subscription_id
            )
            conn.execute(
                delete(webhook_attempts).where(webhook_attempts.c.delivery_id.in_(deliveries))
            )
            conn.execute(
                delete(webhook_deliveries).where(
                    webhook_deliveries.c.subscription_id == subscription_id
                )
            )
            gone = conn.execute(
                delete(webhook_subscriptions).where(webhook_subscriptions.c.id == subscription_id)
            )
        return bool(gone.rowcount)

    def rotate(self, subscription_id: UUID) -> tuple[Subscription, str] | None:
        """A new secret; the old one keeps signing too until the grace period ends."""
        secret = new_secret()
        now = self.clock()
        table = webhook_subscriptions
        with self.db.write() as conn:
            changed = conn.execute(
                update(table)
                .where(table.c.id == subscription_id)
                .values(
                    previous_secret=table.c.secret,
                    previous_secret_expires_at=now + self.rotation_grace,
                    secret=secret,
                    updated_at=now,
                )
            )
        if not changed.rowcount:
            return None
        rotated = self.get(subscription_id)
        assert rotated is not None
        return rotated, secret

    # -- deliveries --------------------------------------------------------------------------

    def deliveries(
        self,
        subscription_id: UUID,
        *,
        after: int = 0,
        limit: int = 50,
        status: str | None = None,
    ) -> list[Delivery]:
        """A page of deliveries in position order, each with its most recent attempts."""
        d = webhook_deliveries
        query = (
            select(d)
            .where(d.c.subscription_id == subscription_id, d.c.position > after)
            .order_by(d.c.position)
            .limit(limit)
        )
        if status is not None:
            query = query.where(d.c.status == status)
        with self.db.read() as conn:
            rows = conn.execute(query).all()
            attempts: dict[UUID, list[Attempt]] = {}
            if rows:
                a = webhook_attempts
                log = conn.execute(
                    select(a)
                    .where(a.c.delivery_id.in_([r.id for r in rows]))
                    .order_by(a.c.delivery_id, a.c.id.desc())
                ).all()
                for entry in log:
                    mine = attempts.setdefault(entry.delivery_id, [])
                    if len(mine) < ATTEMPTS_SHOWN:
                        mine.append(
                            Attempt(
                                number=entry.number,
                                round=entry.round,
                                started_at=entry.started_at,
                                duration_ms=entry.duration_ms,
                                status_code=entry.status_code,
                                error=entry.error,
                                response_body=entry.response_body,
                            )
                        )
        return [
            Delivery(
                id=r.id,
                subscription_id=r.subscription_id,
                event_id=r.event_id,
                position=r.position,
                event_type=r.event_type,
                status=r.status,
                attempts=r.attempts,
                round=r.round,
                next_attempt_at=r.next_attempt_at if r.status in ("pending", "sending") else None,
                last_status_code=r.last_status_code,
                last_error=r.last_error,
                created_at=r.created_at,
                delivered_at=r.delivered_at,
                attempt_log=tuple(reversed(attempts.get(r.id, []))),
            )
            for r in rows
        ]

    def replay(
        self, subscription_id: UUID, after: int, *, limit: int = REPLAY_LIMIT
    ) -> Replay | None:
        """Send again every wanted event after position ``after``, in order, as new deliveries
        or a new round of existing ones (same ``webhook-id``). At most ``limit`` events per
        call: when ``complete`` is false, call again with ``after=until``."""
        now = self.clock()
        with self.db.write() as conn:
            # The relay's lock: it cannot add rows while we work out which ones it will add.
            relayed = self.relay_lock(conn)
            sub = conn.execute(
                select(webhook_subscriptions).where(webhook_subscriptions.c.id == subscription_id)
            ).first()
            if sub is None:
                return None
            types = wanted_types(sub.event_types)
            scheduled = 0
            position = after
            complete = True
            while complete:
                names = sorted(types) if types is not None else None
                page = [
                    e
                    for e in self.store.read_all(position, 1000, types=names)
                    if (e.position or 0) <= relayed
                ]
                if not page:
                    break
                for event in page:
                    if wants(types, event.type):
                        if scheduled == limit:
                            complete = False
                            break
                        _schedule_again(conn, subscription_id, event, now)
                        scheduled += 1
                    position = event.position or position
            until = position if not complete else max(relayed, after)
            if complete and sub.start_after > until:
                # Events between the relay's checkpoint and the old start would be skipped
                # by the relay: let it deliver everything after ``until`` instead.
                conn.execute(
                    update(webhook_subscriptions)
                    .where(webhook_subscriptions.c.id == subscription_id)
                    .values(start_after=until, updated_at=now)
                )
            conn.execute(
                update(webhook_subscriptions)
                .where(webhook_subscriptions.c.id == subscription_id)
                .values(nudged_until=None)
            )
        return Replay(after=after, until=until, scheduled=scheduled, complete=complete)


def _schedule_again(conn: Connection, subscription_id: UUID, event: Any, now: datetime) -> None:
    d = webhook_deliveries
    insert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(d)
    row = delivery_row(subscription_id, event, now)
    conn.execute(
        insert.values(**row).on_conflict_do_update(
            index_elements=["subscription_id", "event_id"],
            set_={
                "status": "pending",
                "attempts": 0,
                "round": d.c.round + 1,
                "next_attempt_at": now,
                "claim_token": None,
                "claimed_until": None,
                "updated_at": now,
            },
        )
    )


def _subscription(row: Any) -> Subscription:
    return Subscription(
        id=row.id,
        owner_key_id=row.owner_key_id,
        url=row.url,
        event_types=tuple(row.event_types) if row.event_types is not None else None,
        description=row.description,
        contact_email=row.contact_email,
        status=row.status,
        start_after=row.start_after,
        failing_since=row.failing_since,
        disabled_at=row.disabled_at,
        disabled_reason=row.disabled_reason,
        previous_secret_expires_at=row.previous_secret_expires_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


__all__ = ["UNSET", "Delivery", "Replay", "Subscription", "SubscriptionError", "Subscriptions"]


def subscriptions(system: System, **overrides: Any) -> Subscriptions:
    """The subscriptions of a bootstrapped system."""
    settings = system.settings
    return Subscriptions(
        system.db,
        system.store,
        AllowList.parse(settings.webhook_allow_hosts),
        relay_lock=lambda conn: system.dispatcher.lock(conn, NAME),
        rotation_grace=timedelta(seconds=settings.webhook_rotation_grace_s),
        **overrides,
    )
