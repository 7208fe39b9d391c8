"""One way to run any command: load the stream, decide, append with the expected version.

A concurrent writer that appended in between makes the append fail with ConcurrencyError; the
command is then decided again on the fresh state (deciding is pure, so that is safe) — unless
the caller pinned a version with ``If-Match``, in which case the mismatch is reported as
:class:`PreconditionFailed`. A conflict is never turned into a lost event.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

from services.decider import Context, Decider
from services.errors import ConcurrencyError, DomainError
from services.messages import DomainEvent, EventRegistry
from services.ports import AppendResult, Clock, EventStore, Metadata, RecordedEvent

S = TypeVar("S")
C = TypeVar("C")

#: Times a command is re-decided after losing a race before the conflict is reported.
RETRIES = 5


class PreconditionFailed(DomainError):
    """``If-Match`` named a version the stream is no longer (or not yet) at."""

    code = "precondition-failed"

    def __init__(self, stream_id: UUID, expected: int, actual: int) -> None:
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual
        super().__init__(f"stream {stream_id} is at version {actual}, not {expected}")


class NotFound(DomainError):
    """The stream a command addresses does not exist."""

    code = "not-found"


@dataclass(frozen=True)
class Outcome:
    """What a command did: the stream's version and position after it, and its events."""

    stream_id: UUID
    version: int
    position: int | None
    events: tuple[DomainEvent, ...]
    recorded: tuple[RecordedEvent, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.events)


class CommandBus:
    """Runs commands against aggregates stored in an event store."""

    def __init__(self, store: EventStore, registry: EventRegistry, clock: Clock) -> None:
        self.store = store
        self.registry = registry
        self.clock = clock

    def load(
        self,
        decider: Decider[S, Any],
        stream_id: UUID,
        *,
        until_position: int | None = None,
        until_time: datetime | None = None,
    ) -> tuple[S, int, int | None]:
        """(state, version, last position) of one stream, now or as it stood then."""
        records = self.store.read_stream(
            stream_id, until_position=until_position, until_time=until_time
        )
        state = decider.fold(self.registry.decode(r) for r in records)
        if not records:
            return state, 0, None
        return state, records[-1].version, records[-1].position

    def handle(
        self,
        decider: Decider[S, C],
        stream_id: UUID,
        command: C,
        *,
        metadata: Metadata | None = None,
        if_match: int | None = None,
        context: Context | None = None,
    ) -> Outcome:
        """Decide ``command`` on the stream's current state and append the resulting events."""
        for attempt in range(RETRIES + 1):
            state, version, position = self.load(decider, stream_id)
            if if_match is not None and if_match != version:
                raise PreconditionFailed(stream_id, if_match, version)
            ctx = context or Context(now=self.clock.now())
            events = tuple(decider.decide(state, command, ctx))
            if not events:
                return Outcome(stream_id, version, position, ())
            try:
                result: AppendResult = self.store.append(
                    stream_id,
                    decider.stream_type,
                    version,
                    [self.registry.to_new_event(e) for e in events],
                    metadata,
                )
            except ConcurrencyError as conflict:
                if if_match is not None:
                    # Someone appended between our check and our append: the version the
                    # caller pinned is gone, which is exactly what If-Match reports.
                    actual = conflict.actual if conflict.actual is not None else version + 1
                    raise PreconditionFailed(stream_id, if_match, actual) from None
                if attempt == RETRIES:
                    raise
                continue
            return Outcome(stream_id, result.version, result.position, events, result.events)
        raise AssertionError("unreachable")  # pragma: no cover
