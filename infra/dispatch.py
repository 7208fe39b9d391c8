"""Work starts from the committed log: a checkpointed relay turns events into Celery tasks.

The relay is run by the worker like a projection, with its checkpoint in the projection
checkpoints table: it reads events in position order, enqueues the task each routed event
calls for, and moves its checkpoint. An API process that crashes right after its commit loses
nothing — the event is in the log and the relay will see it (the transactional-outbox guarantee
without a second table). Enqueueing happens before the checkpoint commits, so a crash in
between enqueues again: every task must be idempotent (they are: they take ids and re-read
the log).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from typing import Any

import structlog
from sqlalchemy import Connection, Table

from infra.projections.base import Tables
from services.ports import RecordedEvent

log = structlog.get_logger("concord.dispatch")

Task = tuple[str, dict[str, Any]]
Route = Callable[[RecordedEvent], Task | None]
Send = Callable[[str, dict[str, Any]], None]

#: The correlation id of the event being relayed; the Celery sender puts it in the task's
#: headers, and the worker binds it to every log line the task writes.
CORRELATION: ContextVar[str | None] = ContextVar("concord_correlation", default=None)


class Dispatcher:
    """A projection whose effect is enqueueing tasks for routed event types."""

    name = "dispatch"
    tables: tuple[Table, ...] = ()
    #: Routes read ids from the payload, never a name: personal data stays sealed.
    personal = False

    def __init__(self, send: Send, routes: Mapping[str, Route]) -> None:
        self.send = send
        self.routes = dict(routes)

    def apply(self, conn: Connection, tables: Tables, events: Sequence[RecordedEvent]) -> None:
        sent: list[Task] = []
        for event in events:
            route = self.routes.get(event.type)
            task = route(event) if route else None
            if task is not None and task not in sent:  # one tick per batch is enough
                sent.append(task)
                name, kwargs = task
                token = CORRELATION.set(event.metadata.get("correlation_id"))
                try:
                    self.send(name, kwargs)
                finally:
                    CORRELATION.reset(token)
                log.info("task enqueued", task=name, position=event.position, **kwargs)


def celery_sender(app: Any, queue: str) -> Send:
    """Send by task name, so infra needs no import of the workers package."""

    def send(name: str, kwargs: dict[str, Any]) -> None:
        correlation = CORRELATION.get()
        headers = {"correlation_id": correlation} if correlation else None
        app.send_task(name, kwargs=kwargs, queue=queue, headers=headers)

    return send
