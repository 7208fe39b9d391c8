"""From the committed log to delivery rows: one per (subscription, public event it wants).

A projection with its own checkpoint (``webhooks``), run by the worker next to the task relay:
each page of the log becomes delivery rows in the same transaction that moves the checkpoint,
so a crash repeats a page and the unique (subscription, event) key makes that a no-op. Rows
are created for paused and disabled subscriptions too, so nothing is skipped while they wait.
After a page it asks for a delivery run of each active subscription that got rows (a nudge;
the scheduler's scan finds them anyway).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

from sqlalchemy import Connection, Table, select

from infra.db import insert_or_skip
from infra.dispatch import Send
from infra.integration.contract import for_internal, internal_types
from infra.projections.base import Tables
from infra.webhooks.tables import webhook_deliveries, webhook_subscriptions
from services.ports import RecordedEvent

NAME = "webhooks"
DELIVER = "webhooks.deliver"


def wanted_types(event_types: Iterable[str] | None) -> frozenset[str] | None:
    """The stored types a subscription's filter names (None: every public type)."""
    return None if event_types is None else frozenset(internal_types(event_types))


def wants(types: frozenset[str] | None, event_type: str) -> bool:
    """Whether a subscription with filter ``types`` gets events of ``event_type``."""
    return for_internal(event_type) is not None and (types is None or event_type in types)


def delivery_row(subscription_id: UUID, event: RecordedEvent, now: datetime) -> dict[str, Any]:
    return {
        "id": uuid4(),
        "subscription_id": subscription_id,
        "event_id": event.id,
        "position": event.position,
        "event_type": event.type,
        "status": "pending",
        "attempts": 0,
        "round": 0,
        "next_attempt_at": now,
        "created_at": now,
        "updated_at": now,
    }


def insert_new(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Insert delivery rows, skipping any (subscription, event) that already has one."""
    table = webhook_deliveries
    for start in range(0, len(rows), 500):
        chunk = rows[start : start + 500]
        conn.execute(insert_or_skip(conn, table), chunk)


class WebhookRelay:
    """The projection that turns committed public events into webhook deliveries."""

    name = NAME
    tables: tuple[Table, ...] = ()
    #: A delivery row names the event; the payload is read when it is delivered.
    payload = False

    def __init__(self, send: Send) -> None:
        self.send = send

    def apply(self, conn: Connection, tables: Tables, events: Sequence[RecordedEvent]) -> None:
        public = [e for e in events if for_internal(e.type) is not None]
        if not public:
            return
        subscriptions = conn.execute(
            select(
                webhook_subscriptions.c.id,
                webhook_subscriptions.c.event_types,
                webhook_subscriptions.c.start_after,
                webhook_subscriptions.c.status,
            )
        ).all()
        now = datetime.now(UTC)
        rows: list[dict[str, Any]] = []
        nudge: list[UUID] = []
        for sub in subscriptions:
            types = wanted_types(sub.event_types)
            mine = [
                delivery_row(sub.id, e, now)
                for e in public
                if (e.position or 0) > sub.start_after and wants(types, e.type)
            ]
            rows += mine
            if mine and sub.status == "active":
                nudge.append(sub.id)
        if rows:
            insert_new(conn, rows)
        for subscription_id in nudge:
            # The task first catches this relay up (waiting for this transaction's lock), so
            # it sees these rows even if it starts before they commit.
            self.send(DELIVER, {"subscription_id": str(subscription_id)})
