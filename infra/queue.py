"""The Celery application's configuration, shared by the worker and by whoever enqueues.

Redis when ``REDIS_URL`` is set, else an embedded SQLite broker under the data dir.
"""

from __future__ import annotations

from collections.abc import Sequence

from celery import Celery

from infra.settings import Settings, get_settings


def broker_urls(settings: Settings) -> tuple[str, str]:
    """(broker, result backend) for this environment."""
    if settings.redis_url:
        return settings.redis_url, settings.redis_url
    data = settings.data_dir.resolve()
    data.mkdir(parents=True, exist_ok=True)
    return f"sqla+sqlite:///{data / 'broker.sqlite3'}", f"db+sqlite:///{data / 'results.sqlite3'}"


def make_app(settings: Settings | None = None, include: Sequence[str] = ()) -> Celery:
    """A Celery app configured for this environment (tasks are registered by the worker)."""
    settings = settings or get_settings()
    broker, backend = broker_urls(settings)
    celery = Celery("concord", broker=broker, backend=backend, include=list(include))
    celery.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        broker_connection_retry_on_startup=True,
        task_default_queue=settings.queue,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=24 * 3600,
        timezone="UTC",
        enable_utc=True,
        worker_hijack_root_logger=False,
        beat_schedule={
            # Fallback for writers that died between commit and sequencing.
            "events.sequence": {"task": "events.sequence", "schedule": 5.0},
            # Jobs a crashed worker left behind (their message would return only after the
            # broker's visibility timeout).
            "statements.sweep": {"task": "statements.sweep", "schedule": 60.0},
            # Reminders fall due by the clock: due times live in the database (never in an
            # ETA past the broker's visibility timeout); each tick fans out what is due.
            "reminders.tick": {"task": "reminders.tick", "schedule": settings.scheduler_tick_s},
            # Webhook deliveries that are due (retries, stranded claims); the relay nudges
            # new ones at once, this scan is what makes every retry happen.
            "webhooks.scan": {"task": "webhooks.scan", "schedule": 5.0},
            # Invitation links whose time is up are recorded as expired (a link past its
            # time shows as expired at once; the sweep puts the fact in the log).
            "invitations.expire": {"task": "invitations.expire", "schedule": 60.0},
            # Stored answers to Idempotency-Keys are kept 24 h for retries, then deleted
            # (they may hold personal data of people erased since).
            "idempotency.purge": {"task": "idempotency.purge", "schedule": 3600.0},
            # Settled records of sending (webhook deliveries and their attempts, e-mails)
            # older than CONCORD_RETENTION_DAYS are deleted, a batch at a time.
            "retention.purge": {"task": "retention.purge", "schedule": 3600.0},
        },
    )
    if settings.redis_url:
        celery.conf.broker_transport_options = {"visibility_timeout": 3600}
    return celery
