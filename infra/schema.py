"""Every table the service owns, in one MetaData. Alembic migrations are the only way they change.

Names follow one convention so migrations get stable names on PostgreSQL and SQLite.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    TypeDecorator,
    Uuid,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back with its offset (SQLite drops it)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetimes are not stored")
        return value.astimezone(UTC) if value is not None and dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


Json = JSON().with_variant(JSONB(), "postgresql")
# SQLite only auto-numbers a column declared exactly INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")

#: The append-only log. ``id`` is the insert order; ``position`` is the public feed order,
#: assigned after commit (PostgreSQL: by the sequencer, below the transaction horizon;
#: SQLite: at insert, since its single writer commits in insert order). PostgreSQL also has a
#: ``tx_id xid8`` column (the writing transaction), created by the migration only.
events = Table(
    "events",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("position", BigInteger, nullable=True),
    Column("event_id", Uuid, nullable=False),
    Column("stream_id", Uuid, nullable=False),
    Column("stream_type", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("event_type", String(128), nullable=False),
    Column("schema_version", SmallInteger, nullable=False),
    Column("data", Json, nullable=False),
    Column("metadata", Json, nullable=False),
    Column("recorded_at", UtcDateTime(), nullable=False),
    #: SHA-256 of the event's canonical content (as stored: personal data sealed), hex.
    Column("content_hash", String(64), nullable=False),
    #: SHA-256 of the previous event's chain hash (zeros for the first) + this content hash.
    Column("chain_hash", String(64), nullable=False),
    Index("uq_events_stream_id_version", "stream_id", "version", unique=True),
    Index(
        "uq_events_position",
        "position",
        unique=True,
        postgresql_where="position IS NOT NULL",
    ),
)

#: How far each projection has applied the log; written in the same transaction as its rows.
projection_checkpoints = Table(
    "projection_checkpoints",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("position", BigInteger, nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    # Where and when its rows last changed: only for an event of a stream it reads, or a
    # rebuild (a checkpoint moves past every event). What kept documents are checked against.
    Column("changed_position", BigInteger, nullable=False, server_default="0"),
    Column("changed_at", UtcDateTime(), nullable=True),
)

#: One key per person for their data in the log (see :mod:`infra.personal`); deleting the row
#: erases the person. Never copied into events, and kept out of log backups by design.
person_keys = Table(
    "person_keys",
    metadata,
    Column("person_id", Uuid, primary_key=True),
    #: Names the key inside each ciphertext, so data sealed under an older key reads as erased.
    Column("kid", String(16), nullable=False),
    Column("key", LargeBinary(32), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
)

#: One row counting erasures (keys deleted), bumped in the deleting transaction: caches of
#: folded streams drop what they hold when it moves (infra/lanes.py).
keyring_epoch = Table(
    "keyring_epoch",
    metadata,
    Column("id", SmallInteger, primary_key=True),
    Column("epoch", BigInteger, nullable=False),
)

#: API keys: only a hash of each key is stored; the prefix makes a leaked key recognisable.
api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("role", String(32), nullable=False),
    Column("organisation_id", Uuid, nullable=True),
    Column("prefix", String(32), nullable=False),
    Column("key_hash", String(64), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("created_by", String(200), nullable=True),
    Column("revoked_at", UtcDateTime(), nullable=True),
    Column("last_used_at", UtcDateTime(), nullable=True),
    Index("uq_api_keys_key_hash", "key_hash", unique=True),
)

#: How each API key is used, per hour (UTC): counted in each API process and added here every
#: few seconds (infra/key_usage.py), never written per request.
api_key_usage = Table(
    "api_key_usage",
    metadata,
    Column("key_id", Uuid, primary_key=True),
    Column("hour", UtcDateTime(), primary_key=True),
    Column("reads", BigInteger, nullable=False),
    Column("writes", BigInteger, nullable=False),
    #: Refused for the key itself: 401 (revoked) or 403 (its role may not).
    Column("denied", BigInteger, nullable=False),
    Column("rate_limited", BigInteger, nullable=False),
    Column("last_used_at", UtcDateTime(), nullable=False),
    #: The client address of the last use in that hour (an IPv6 client: its /64).
    Column("last_client", String(64), nullable=False),
)

#: Idempotency keys: the first response to (API key, Idempotency-Key), replayed on retries.
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("scope", String(64), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("status_code", Integer, nullable=True),
    Column("headers", Json, nullable=True),
    Column("body", LargeBinary, nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("completed_at", UtcDateTime(), nullable=True),
    Index("ix_idempotency_keys_created_at", "created_at"),
)

#: One row per e-mail the service decided to send (a reminder or notice for one recipient).
#: Operational state, not a projection: the ``reminder.sent`` event in the log is the record
#: that a message went out; this table holds the claim, attempts and back-off around sending.
#: Recipients are ids (a registration or an organisation); addresses are looked up at send
#: time, so the table holds no personal data.
mail_outbox = Table(
    "mail_outbox",
    metadata,
    Column("key", String(400), primary_key=True),
    Column("reminder_key", String(300), nullable=False),
    Column("rule", String(64), nullable=False),
    #: NULL for messages that are not about a consultation (e.g. a disabled webhook endpoint).
    Column("consultation_id", Uuid, nullable=True),
    Column("recipient_kind", String(20), nullable=False),
    Column("recipient_id", Uuid, nullable=False),
    Column("message_id", String(200), nullable=False),
    #: pending → sending → sent | failed | dropped | skipped
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("failures", Integer, nullable=False),
    Column("next_attempt_at", UtcDateTime(), nullable=False),
    Column("claimed_until", UtcDateTime(), nullable=True),
    #: The Celery task that holds the claim: its own redelivery may take over at once.
    Column("claimed_by", String(64), nullable=True),
    Column("last_error", String(1000), nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("sent_at", UtcDateTime(), nullable=True),
    Column("position", BigInteger, nullable=True),
    Index("ix_mail_outbox_status_next_attempt_at", "status", "next_attempt_at"),
    Index("ix_mail_outbox_reminder_key", "reminder_key"),
)

#: Reminders whose recipients have been worked out (once, when the reminder fell due).
reminder_fanouts = Table(
    "reminder_fanouts",
    metadata,
    Column("reminder_key", String(300), primary_key=True),
    Column("recipients", Integer, nullable=False),
    Column("done_at", UtcDateTime(), nullable=False),
)
