"""The Celery application: Redis when ``REDIS_URL`` is set, else an embedded SQLite broker.

Settings that matter for never losing work (see STANDARDS.md and celery #1628, #3541, #2856):

* ``task_acks_late`` + ``task_reject_on_worker_lost``: a task is acknowledged only once it has
  run, and a worker killed mid-task gives it back to the queue instead of dropping it.
* ``worker_prefetch_multiplier = 1``: a worker holds one message at a time, so a crash strands
  at most one and long tasks do not queue up behind each other.
* ``worker_cancel_long_running_tasks_on_connection_loss``: after a broker reconnect a late-ack
  task would be redelivered *and* keep running; cancelling it avoids running it twice at once.
* No ETA or countdown longer than the broker's visibility timeout: due times live in the
  database and the scheduler scans for them.

The worker's main process also runs the projector loop: it numbers stragglers (the
sequencer's fallback) and keeps every projection caught up with the log.
"""

from __future__ import annotations

from typing import Any

import structlog
from celery import signals

from infra.bootstrap import System, bootstrap
from infra.logging import configure as configure_logging
from infra.queue import make_app
from infra.reminders import Reminders
from infra.runtime import tune_process
from infra.settings import get_settings

log = structlog.get_logger("concord.worker")
tune_process()
app = make_app(include=["workers.tasks"])
_system: System | None = None
_reminders: Reminders | None = None


def system() -> System:
    """This process's wiring, built on first use (after any fork)."""
    global _system
    if _system is None:
        _system = bootstrap()
    return _system


def reminders() -> Reminders:
    """This process's reminder pipeline (and its mail transport), built on first use."""
    global _reminders
    if _reminders is None:
        _reminders = Reminders(system())
    return _reminders


@signals.setup_logging.connect
def _logging(**_: Any) -> None:
    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level)


@signals.task_prerun.connect
def _bind_log_context(task: Any = None, task_id: str | None = None, **_: Any) -> None:
    """Every log line a task writes names the task and, when the relay started it, the
    correlation id of the request that caused the event (X-Request-ID)."""
    structlog.contextvars.clear_contextvars()
    correlation = getattr(task.request, "correlation_id", None) if task is not None else None
    structlog.contextvars.bind_contextvars(
        task=getattr(task, "name", None), task_id=task_id, correlation_id=correlation
    )


@signals.task_postrun.connect
def _clear_log_context(**_: Any) -> None:
    structlog.contextvars.clear_contextvars()


@signals.worker_process_init.connect
def _forget_parent_wiring(**_: Any) -> None:
    """A pool process forked after the worker was ready (a replacement for one that died, or
    one recycled) inherits the main process's wiring, whose pooled database connections the
    main process is still using: two processes on one socket read each other's rows. The
    child lets go of them without closing them (SQLAlchemy's ``dispose(close=False)``) and
    builds its own on first use."""
    global _system, _reminders
    _reminders = None
    if _system is not None:
        _system.db.dispose(close=False)
        _system = None


@signals.worker_ready.connect
def _start_projector(**_: Any) -> None:
    system().start_background(dispatch=True)
    log.info("projector loop started")


@signals.worker_shutdown.connect
def _stop_projector(**_: Any) -> None:
    global _system, _reminders
    _reminders = None
    if _system is not None:
        _system.close()
        _system = None


__all__ = ["app", "reminders", "system"]
