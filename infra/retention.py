"""Retention: settled records of sending are deleted after ``CONCORD_RETENTION_DAYS``.

Two tables grow with every event and every e-mail, and nothing reads a row again once it is
settled:

* ``webhook_deliveries``: one row per subscription and event it wants, with its attempts in
  ``webhook_attempts`` (each with the first bytes of the endpoint's answer). A delivery that
  was delivered or given up (``failed``) and has not changed for the retention goes, with its
  attempts.
* ``mail_outbox``: one row per message. A message sent, skipped, dropped or given up whose last
  due time is older than the retention goes.

Nothing the service needs goes with them. The log records every message sent
(``reminder.sent``) and every delivery given up (``webhook.delivery_failed``). The relay never
writes a delivery for an event it has passed, so a purged delivery is not sent again, and a
replay still sends any event again (as a new delivery where the old one is gone). Fan-out
markers (``reminder_fanouts``) stay, so a purged message is never fanned out again. What goes
is the detail of old attempts: ``GET /v1/subscriptions/{id}/deliveries`` lists the retained
period only.

Rows go a batch at a time, each batch its own short transaction that locks only its rows, so
the API and the workers never wait long. A subscription's deliveries are read from the head of
its queue (its (subscription, position) index): deliveries settle in position order, so the
old settled ones are the head, and the first window holding anything else ends that
subscription's turn. Messages are found by status and due time (their index). A run stops
after ``budget_s`` and the next one goes on.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Connection, delete, select

from infra.db import Database
from infra.schema import mail_outbox
from infra.webhooks.tables import webhook_attempts, webhook_deliveries, webhook_subscriptions

log = structlog.get_logger("concord.retention")

#: Delivery states that are final (a replay makes a delivery pending again).
SETTLED_DELIVERIES = ("delivered", "failed")
#: Message states that are final.
SETTLED_MESSAGES = ("sent", "skipped", "dropped", "failed")
#: Rows one transaction deletes at most.
BATCH = 1000
#: Seconds one run works at most (the next run, an hour later, goes on).
BUDGET_S = 300.0


@dataclass(frozen=True)
class Purged:
    """What one run deleted; ``complete`` is false when it stopped at its time budget."""

    deliveries: int = 0
    attempts: int = 0
    messages: int = 0
    complete: bool = True

    def as_dict(self) -> dict[str, int]:
        return {k: int(v) for k, v in asdict(self).items()}


def purge(
    db: Database,
    retention_days: float,
    *,
    now: datetime | None = None,
    batch: int = BATCH,
    budget_s: float = BUDGET_S,
) -> Purged:
    """Delete what settled more than ``retention_days`` before ``now`` (0: keep everything)."""
    if retention_days <= 0:
        return Purged()
    cutoff = (now or datetime.now(UTC)) - timedelta(days=retention_days)
    deadline = time.monotonic() + budget_s
    deliveries = attempts = messages = 0
    complete = True
    with db.read() as conn:
        subscriptions = conn.execute(select(webhook_subscriptions.c.id)).scalars().all()
    for subscription_id in subscriptions:
        while True:
            if time.monotonic() >= deadline:
                complete = False
                break
            with db.write() as conn:
                gone, attempts_gone, more = _deliveries(conn, subscription_id, cutoff, batch)
            deliveries += gone
            attempts += attempts_gone
            if not more:
                break
    while complete:
        if time.monotonic() >= deadline:
            complete = False
            break
        with db.write() as conn:
            gone = _messages(conn, cutoff, batch)
        messages += gone
        if gone < batch:
            break
    purged = Purged(deliveries, attempts, messages, complete)
    if deliveries or messages or not complete:
        log.info("settled records purged", older_than=cutoff.isoformat(), **purged.as_dict())
    return purged


def _deliveries(
    conn: Connection, subscription_id: Any, cutoff: datetime, batch: int
) -> tuple[int, int, bool]:
    """Delete the old settled deliveries in the head window of one subscription's queue (and
    their attempts); (deliveries, attempts, whether the next window may hold more)."""
    d = webhook_deliveries
    window = conn.execute(
        select(d.c.id, d.c.status, d.c.updated_at)
        .where(d.c.subscription_id == subscription_id)
        .order_by(d.c.position)
        .limit(batch)
        .with_for_update(skip_locked=True)  # a row someone is changing is not ours to judge
    ).all()
    ids = [r.id for r in window if r.status in SETTLED_DELIVERIES and r.updated_at < cutoff]
    if not ids:
        return 0, 0, False
    a = webhook_attempts
    attempts = conn.execute(delete(a).where(a.c.delivery_id.in_(ids))).rowcount
    deliveries = conn.execute(delete(d).where(d.c.id.in_(ids))).rowcount
    return int(deliveries or 0), int(attempts or 0), len(ids) == len(window) == batch


def _messages(conn: Connection, cutoff: datetime, batch: int) -> int:
    m = mail_outbox
    keys = (
        conn.execute(
            select(m.c.key)
            .where(m.c.status.in_(SETTLED_MESSAGES), m.c.next_attempt_at < cutoff)
            .limit(batch)
            .with_for_update(skip_locked=True)
        )
        .scalars()
        .all()
    )
    if not keys:
        return 0
    return int(conn.execute(delete(m).where(m.c.key.in_(keys))).rowcount or 0)
