"""Webhook subscriptions, their deliveries and every attempt (operational state, not the log).

A subscription is configuration owned by an API key, so it is a plain table. Each event a
subscription wants gets one delivery row (unique per subscription and event) created by the
relay from the committed log; the row carries the schedule (due times live here, never in the
broker) and the claim a worker holds while sending. Giving a delivery up and disabling an
endpoint are also recorded in the log (``services.webhooks.events``).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Uuid,
    text,
)

from infra.schema import BigId, Json, UtcDateTime, metadata

#: Subscription states: ``active`` (delivering), ``paused`` (by its owner; deliveries queue
#: up), ``disabled`` (by us: 410 or days of failure; deliveries queue up until resumed).
STATUSES = ("active", "paused", "disabled")
#: Deliveries still to be sent (or being sent), as SQL with its constants written out: the
#: partial index below is used only by queries that spell the condition the same way.
WAITING = "status IN ('pending', 'sending')"

webhook_subscriptions = Table(
    "webhook_subscriptions",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("owner_key_id", Uuid, nullable=False),
    Column("url", String(2048), nullable=False),
    #: Event types (plain or versioned public names) or NULL for every public type.
    Column("event_types", Json, nullable=True),
    Column("description", String(500), nullable=True),
    #: Who is told by e-mail when the endpoint is disabled.
    Column("contact_email", String(320), nullable=True),
    Column("status", String(16), nullable=False),
    #: ``whsec_…``; kept (not hashed) because the worker signs with it.
    Column("secret", String(128), nullable=False),
    #: The secret before the last rotation, still signed with until it expires.
    Column("previous_secret", String(128), nullable=True),
    Column("previous_secret_expires_at", UtcDateTime(), nullable=True),
    #: Events at or below this position are not delivered unless replayed.
    Column("start_after", BigInteger, nullable=False),
    #: The first failure since the last success (cleared by a success or a resume).
    Column("failing_since", UtcDateTime(), nullable=True),
    Column("disabled_at", UtcDateTime(), nullable=True),
    Column("disabled_reason", String(200), nullable=True),
    #: The scheduler enqueued a delivery task until then; it does not enqueue another.
    Column("nudged_until", UtcDateTime(), nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    Column("created_by", String(200), nullable=True),
    Index("ix_webhook_subscriptions_owner_key_id", "owner_key_id"),
)

#: Delivery states: ``pending`` (due at ``next_attempt_at``), ``sending`` (claimed until
#: ``claimed_until``), ``delivered`` (a 2xx), ``failed`` (given up after the schedule).
DELIVERY_STATUSES = ("pending", "sending", "delivered", "failed")

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column(
        "subscription_id",
        Uuid,
        ForeignKey("webhook_subscriptions.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("event_id", Uuid, nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("event_type", String(128), nullable=False),
    Column("status", String(16), nullable=False),
    #: Attempts in the current round (a replay starts a new round; the schedule restarts).
    Column("attempts", Integer, nullable=False),
    Column("round", Integer, nullable=False),
    Column("next_attempt_at", UtcDateTime(), nullable=True),
    Column("claim_token", Uuid, nullable=True),
    Column("claimed_until", UtcDateTime(), nullable=True),
    Column("last_status_code", Integer, nullable=True),
    Column("last_error", String(500), nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    Column("delivered_at", UtcDateTime(), nullable=True),
    Index(
        "uq_webhook_deliveries_subscription_id_event_id", "subscription_id", "event_id", unique=True
    ),
    Index("ix_webhook_deliveries_subscription_id_position", "subscription_id", "position"),
    # The head of each subscription's queue in one index step, however many deliveries it
    # has behind it (the full index walks every delivered row first).
    Index(
        "ix_webhook_deliveries_waiting",
        "subscription_id",
        "position",
        postgresql_where=text(WAITING),
        sqlite_where=text(WAITING),
    ),
)

#: ``WAITING`` as a condition on ``webhook_deliveries`` for queries (the index's spelling).
IS_WAITING = text(f"webhook_deliveries.{WAITING}")

#: Every HTTP attempt, with what the endpoint answered (the first bytes of its body only).
webhook_attempts = Table(
    "webhook_attempts",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column(
        "delivery_id",
        Uuid,
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("number", Integer, nullable=False),
    Column("round", Integer, nullable=False),
    Column("started_at", UtcDateTime(), nullable=False),
    Column("duration_ms", Integer, nullable=False),
    Column("status_code", Integer, nullable=True),
    Column("error", String(500), nullable=True),
    Column("response_body", String(2000), nullable=True),
    Index("ix_webhook_attempts_delivery_id", "delivery_id"),
)
