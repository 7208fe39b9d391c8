"""All configuration comes from the environment, with safe embedded defaults."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Settings read from environment variables (see API.md, "Operations")."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True)

    data_dir: Path = Field(default=Path("var"), alias="CONCORD_DATA_DIR")
    database_url_env: str | None = Field(default=None, alias="DATABASE_URL")
    redis_url: str | None = Field(default=None, alias="REDIS_URL")
    smtp_url: str | None = Field(default=None, alias="SMTP_URL")
    public_url_env: str | None = Field(default=None, alias="CONCORD_PUBLIC_URL")
    host: str = Field(default="127.0.0.1", alias="HOST")
    port: int = Field(default=8000, alias="PORT")
    webhook_allow_hosts: str = Field(default="", alias="CONCORD_WEBHOOK_ALLOW_HOSTS")
    #: Seconds a webhook attempt may take to connect, and to wait for each read of the answer.
    webhook_timeout_s: float = Field(default=10.0, alias="CONCORD_WEBHOOK_TIMEOUT")
    #: Seconds a rotated-out webhook secret still signs deliveries (next to the new one).
    webhook_rotation_grace_s: float = Field(
        default=86_400.0, alias="CONCORD_WEBHOOK_ROTATION_GRACE"
    )
    #: Seconds an endpoint may keep failing, without one success, before it is disabled.
    webhook_disable_after_s: float = Field(
        default=5 * 86_400.0, alias="CONCORD_WEBHOOK_DISABLE_AFTER"
    )
    #: PostgreSQL connections a process keeps open once it has needed them, and how many
    #: more it may open for a burst (closed again when returned). Opening one costs the
    #: server a new backend (a fork, authentication, cold catalog caches), so the kept number
    #: covers an API process's peak: up to its 40 worker threads plus the event loop's reads.
    #: Size PostgreSQL's ``max_connections`` for (size + overflow) x processes.
    db_pool_size: int = Field(default=30, ge=1, alias="CONCORD_DB_POOL_SIZE")
    db_max_overflow: int = Field(default=10, ge=0, alias="CONCORD_DB_MAX_OVERFLOW")
    #: How long a writer waits for its events to receive global positions.
    sequence_timeout_s: float = Field(default=10.0, alias="CONCORD_SEQUENCE_TIMEOUT")
    #: Largest request body the API accepts, in bytes.
    max_body_bytes: int = Field(default=1_000_000, alias="CONCORD_MAX_BODY_BYTES")
    #: The Celery queue this deployment's workers consume (one Redis can serve several).
    queue: str = Field(default="concord", alias="CONCORD_QUEUE")
    #: Sender of every e-mail (a display name is fine: ``Concord <noreply@example.org>``).
    mail_from: str = Field(default="Concord <concord@localhost>", alias="CONCORD_MAIL_FROM")
    #: Seconds an SMTP conversation may take before it is abandoned (and retried later).
    smtp_timeout_s: float = Field(default=30.0, alias="CONCORD_SMTP_TIMEOUT")
    #: Seconds a worker holds a message it is sending; after that another may take it over.
    mail_lease_s: float = Field(default=300.0, alias="CONCORD_MAIL_LEASE")
    #: Seconds an unfinished ``Idempotency-Key`` claim survives without being renewed (a
    #: running request renews it); after that its process is taken for dead and a retry may
    #: run the request (it finds what the dead attempt committed: nothing happens twice).
    idempotency_lease_s: float = Field(default=15.0, alias="CONCORD_IDEMPOTENCY_LEASE")
    #: Failed sends are retried with back-off this many times before a message is given up.
    mail_max_attempts: int = Field(default=12, alias="CONCORD_MAIL_MAX_ATTEMPTS")
    #: How often the scheduler looks for due reminders, in seconds.
    scheduler_tick_s: float = Field(default=60.0, alias="CONCORD_SCHEDULER_TICK")
    #: Notices older than this (seconds) when they fall due are not sent (e.g. after importing
    #: an old log, nobody wants 2018's registration confirmations).
    notice_max_age_s: float = Field(default=86_400.0, alias="CONCORD_NOTICE_MAX_AGE")
    #: Live event stream (SSE): seconds between keep-alive comments (also how often a stream
    #: renews its connection slot and re-checks its key) …
    sse_heartbeat_s: float = Field(default=15.0, gt=0, alias="CONCORD_SSE_HEARTBEAT")
    #: … how often it looks for new events, in seconds …
    sse_poll_s: float = Field(default=0.5, gt=0, alias="CONCORD_SSE_POLL")
    #: … how many streams one API key may hold open at once (across API processes with Redis) …
    sse_max_per_key: int = Field(default=5, ge=1, alias="CONCORD_SSE_MAX_PER_KEY")
    #: … and after how many seconds a stream ends cleanly (clients resume with Last-Event-ID).
    sse_max_seconds: float = Field(default=3600.0, gt=0, alias="CONCORD_SSE_MAX_SECONDS")
    #: Rate limits (``N/second``, ``N/minute``, ``N/hour``, ``N per 5 minutes``; ``off`` lifts
    #: one): per API key for reads (GET, HEAD, OPTIONS) and for writes (everything else), and
    #: per client address for requests without a valid key (none, or a bad one). Shared by the
    #: API processes through Redis; per process in embedded mode.
    rate_limit_enabled: bool = Field(default=True, alias="CONCORD_RATE_LIMIT_ENABLED")
    #: How often, in seconds, an API process checks whether any key was revoked; between
    #: checks it trusts the active keys it has looked up (0: look a key up on every request).
    #: A key revoked through another process stops working within this time.
    key_cache_s: float = Field(default=5.0, ge=0, le=300, alias="CONCORD_KEY_CACHE_S")
    #: Events a process keeps folded in memory, over all the streams it keeps (the stream
    #: used last is kept however long): the bound on what long statements cost in memory.
    fold_cache_events: int = Field(default=40_000, ge=1, alias="CONCORD_FOLD_CACHE_EVENTS")
    #: PostgreSQL: decide a stream API processes keep racing for under a session advisory
    #: lock (infra/streamlocks.py). Off behind a pooler in transaction mode (PgBouncer), where
    #: a session lock does not stay with its session.
    stream_locks: bool = Field(default=True, alias="CONCORD_STREAM_LOCKS")
    #: Days a settled record of sending is kept: webhook deliveries delivered or given up
    #: (with their attempts) and e-mails sent, skipped, dropped or given up (infra/retention.py;
    #: the log keeps what happened). 0 keeps them forever.
    retention_days: float = Field(default=30.0, ge=0, alias="CONCORD_RETENTION_DAYS")
    rate_limit_read: str = Field(default="1200/minute", alias="CONCORD_RATE_LIMIT_READ")
    rate_limit_write: str = Field(default="300/minute", alias="CONCORD_RATE_LIMIT_WRITE")
    rate_limit_anonymous: str = Field(default="300/minute", alias="CONCORD_RATE_LIMIT_ANONYMOUS")
    #: Seconds between writes of the per-key usage counts (and at shutdown) to the database.
    key_usage_flush_s: float = Field(default=5.0, gt=0, alias="CONCORD_KEY_USAGE_FLUSH")
    log_format: str = Field(default="json", alias="CONCORD_LOG_FORMAT")
    log_level: str = Field(default="INFO", alias="CONCORD_LOG_LEVEL")
    #: ``GET /metrics`` without a key: only where that port is not reachable from outside.
    metrics_public: bool = Field(default=False, alias="CONCORD_METRICS_PUBLIC")
    #: A bearer token that may read ``GET /metrics`` and nothing else (for the scraper).
    metrics_token: SecretStr | None = Field(default=None, alias="CONCORD_METRICS_TOKEN")
    #: prometheus_client's multiprocess directory: set it when the API runs several processes.
    metrics_multiproc_dir: Path | None = Field(default=None, alias="PROMETHEUS_MULTIPROC_DIR")
    #: Signs invitation links and the sign-on form (at least 32 characters; the same value in
    #: every process). Unset in embedded mode: generated once into ``<data dir>/secret.key``.
    secret_key: SecretStr | None = Field(default=None, alias="CONCORD_SECRET_KEY")
    #: The public sign-on pages (``/s/…/sign/<token>``): requests per client address and per
    #: link (same syntax as the other rate limits).
    signon_rate_per_client: str = Field(default="60/minute", alias="CONCORD_SIGNON_RATE_CLIENT")
    signon_rate_per_link: str = Field(default="20/minute", alias="CONCORD_SIGNON_RATE_LINK")
    #: Live signatory lists (``/s/{id}/live``) one client address may hold open at once.
    public_sse_max_per_client: int = Field(
        default=10, ge=1, alias="CONCORD_PUBLIC_SSE_MAX_PER_CLIENT"
    )

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        """``warning`` and ``WARNING`` alike; an unknown level fails at start-up."""
        level = value.strip().upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @field_validator("rate_limit_read", "rate_limit_write", "rate_limit_anonymous")
    @classmethod
    def _rate(cls, value: str) -> str:
        """A typo in a rate fails at start-up, not on the first request."""
        from infra.ratelimit import parse_rate

        parse_rate(value)
        return value

    @cached_property
    def database_url(self) -> str:
        """``DATABASE_URL``, or an SQLite file under the data dir (embedded mode)."""
        if self.database_url_env:
            return normalise_database_url(self.database_url_env)
        return f"sqlite:///{(self.data_dir / 'concord.sqlite3').resolve()}"

    @property
    def embedded(self) -> bool:
        """True when no broker is configured: the API process runs the workers too."""
        return not self.redis_url

    @property
    def public_url(self) -> str:
        return (self.public_url_env or f"http://{self.host}:{self.port}").rstrip("/")


def normalise_database_url(url: str) -> str:
    """Accept ``postgres://`` and ``postgresql://`` and use the psycopg 3 driver for them."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def get_settings() -> Settings:
    return Settings()
