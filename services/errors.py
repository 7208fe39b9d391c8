"""The root of every error family the core raises. None of them knows about HTTP."""

from __future__ import annotations

from uuid import UUID


class DomainError(Exception):
    """A command was refused by a rule of the domain."""

    code: str = "domain-error"


class ConcurrencyError(DomainError):
    """The stream moved on since the caller read it: the expected version is stale."""

    code = "concurrency-conflict"

    def __init__(self, stream_id: UUID, expected: int | None, actual: int | None = None) -> None:
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual
        detail = f"stream {stream_id} is not at version {expected}"
        if actual is not None:
            detail += f" (it is at version {actual})"
        super().__init__(detail)


class UnknownEventType(DomainError):
    """An event type that no registered event class or upcaster knows."""

    code = "unknown-event-type"
