"""Celery tasks: thin wrappers that take ids, re-read state and are safe to run twice."""

from __future__ import annotations

from collections import Counter

from celery import Task

from workers.celery_app import app, log, reminders, system

#: Messages one send task takes: a wave of a thousand is a few dozen tasks to publish and
#: run, not a thousand, and still spreads over several workers.
SEND_CHUNK = 25


@app.task(name="events.sequence", ignore_result=True)
def sequence_events() -> int:
    """Number committed events that still lack a position; returns the head position."""
    return system().store.sequence_pending()


@app.task(name="projections.catch_up")
def catch_up_projections(until: int | None = None) -> int:
    """Apply the log to every projection; returns the number of events applied."""
    return system().projector.catch_up(until=until)


@app.task(name="statements.compile")
def compile_statement(statement_id: str, job_id: str) -> dict[str, str]:
    """Render the statement from the log into MD/HTML/PDF, store them, record and publish."""
    from uuid import UUID

    from infra.compile import compile_statement as run

    return run(system(), UUID(statement_id), UUID(job_id))


@app.task(name="statements.sweep", ignore_result=True)
def sweep_statements(older_than_s: float = 120.0) -> int:
    """Re-enqueue publication jobs that a crashed worker left unfinished (idempotent)."""
    from infra.compile import unfinished_jobs

    jobs = unfinished_jobs(system(), older_than_s)
    for statement_id, job_id in jobs:
        compile_statement.delay(str(statement_id), str(job_id))
    return len(jobs)


@app.task(name="reminders.tick", ignore_result=True)
def tick_reminders() -> int:
    """Fan out the reminders that fell due and enqueue one send per ready message.

    Run by the scheduler every minute and by the relay after a notice-worthy event; two
    schedulers ticking at once still produce each message once (see ``infra.reminders``).
    """
    keys = reminders().tick()
    for start in range(0, len(keys), SEND_CHUNK):
        send_reminders.delay(keys[start : start + SEND_CHUNK])
    return len(keys)


@app.task(name="reminders.send_many", ignore_result=True, bind=True)
def send_reminders(self: Task, keys: list[str]) -> dict[str, int]:
    """Send each message, exactly once per key, in turn; returns how many had each outcome.

    One message that fails unexpectedly does not hold back the others: it stays handed out
    until its lease runs out, and the tick after that hands it out again.
    """
    pipeline = reminders()
    outcomes: Counter[str] = Counter()
    for key in keys:
        try:
            outcomes[pipeline.send(key, task_id=self.request.id).status] += 1
        except Exception:
            log.exception("message not sent", key=key)
            outcomes["error"] += 1
    return dict(outcomes)


@app.task(name="reminders.send", ignore_result=True, bind=True)
def send_reminder(self: Task, key: str) -> str:
    """Send one message, exactly once per key; returns what happened. (Kept for tasks that a
    tick of an earlier version queued; ticks now queue ``reminders.send_many``.)"""
    return reminders().send(key, task_id=self.request.id).status


@app.task(name="invitations.expire", ignore_result=True)
def expire_invitations() -> int:
    """Record ``invitation.expired`` for live invitations whose link's time is up."""
    from infra.invitations import expire_due

    return expire_due(system())


@app.task(name="idempotency.purge", ignore_result=True)
def purge_idempotency_keys() -> int:
    """Delete stored answers to Idempotency-Keys past their 24 h retention."""
    from infra.idempotency import IdempotencyStore

    return IdempotencyStore(system().db).purge()


@app.task(name="retention.purge", ignore_result=True)
def purge_settled_records() -> dict[str, int]:
    """Delete settled webhook deliveries (with their attempts) and e-mails older than
    ``CONCORD_RETENTION_DAYS``; returns how many of each went."""
    from infra.retention import purge

    s = system()
    return purge(s.db, s.settings.retention_days).as_dict()


@app.task(name="webhooks.scan", ignore_result=True)
def scan_webhooks() -> int:
    """Enqueue a delivery run for each subscription whose next delivery is due (or stranded
    by a worker that died mid-attempt); due times live in the database."""
    from infra.webhooks.delivery import deliverer

    due = deliverer(system()).due()
    for subscription_id in due:
        deliver_webhooks.delay(str(subscription_id))
    return len(due)


@app.task(name="webhooks.deliver", ignore_result=True)
def deliver_webhooks(subscription_id: str) -> int:
    """Send one subscription's due deliveries in position order; returns how many finished."""
    from uuid import UUID

    from infra.webhooks.delivery import deliverer

    return deliverer(system()).run(UUID(subscription_id))
