"""Which committed events start which background task (by task name)."""

from __future__ import annotations

from infra.dispatch import Route, Task
from services.ports import RecordedEvent


def _compile(event: RecordedEvent) -> Task:
    return "statements.compile", {
        "statement_id": str(event.stream_id),
        "job_id": str(event.data["job_id"]),
    }


ROUTES: dict[str, Route] = {"statement.publication_requested": _compile}
