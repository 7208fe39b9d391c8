"""Which committed events start which background task (by task name)."""

from __future__ import annotations

from infra.dispatch import Route, Task
from services.ports import RecordedEvent
from services.reminders.rules import NOTICES


def _compile(event: RecordedEvent) -> Task:
    return "statements.compile", {
        "statement_id": str(event.stream_id),
        "job_id": str(event.data["job_id"]),
    }


def _notice(event: RecordedEvent) -> Task:
    """A notice-worthy event: tick now rather than at the next minute."""
    return "reminders.tick", {}


ROUTES: dict[str, Route] = {
    "statement.publication_requested": _compile,
    **dict.fromkeys(NOTICES, _notice),
}
