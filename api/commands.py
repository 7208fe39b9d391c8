"""Running a command from a route: the bus in a worker thread, then the standard headers."""

from __future__ import annotations

from typing import Any, TypeVar
from uuid import UUID

from fastapi import Request, Response
from starlette.concurrency import run_in_threadpool

from api.deps import Principal
from infra.bootstrap import System
from services.bus import Outcome
from services.decider import Context, Decider

S = TypeVar("S")
C = TypeVar("C")

#: How long a command waits for the read side to include its own events (read-your-writes).
PROJECTION_WAIT_S = 5.0


async def run(
    system: System,
    request: Request,
    response: Response,
    principal: Principal,
    decider: Decider[S, C],
    stream_id: UUID,
    command: C,
    *,
    if_match: int | None = None,
) -> Outcome:
    """Decide and append; set ``ETag`` (stream version) and ``X-Event-Position``.

    The projections are brought up to the new position before answering, so the caller's
    next read already shows its own change.
    """

    def execute() -> Outcome:
        outcome = system.bus.handle(
            decider,
            stream_id,
            command,
            metadata=principal.metadata(request),
            if_match=if_match,
            context=Context(
                now=system.bus.clock.now(),
                actor=principal.actor,
                organisation_id=principal.organisation_id,
            ),
        )
        if outcome.position is not None:
            system.projector.catch_up(until=outcome.position)
        return outcome

    outcome = await run_in_threadpool(execute)
    stamp(response, outcome.version, outcome.position)
    return outcome


def stamp(response: Response, version: int, position: int | None) -> None:
    response.headers["ETag"] = f'"{version}"'
    if position is not None:
        response.headers["X-Event-Position"] = str(position)


def etag(response: Response, version: Any) -> None:
    """``ETag`` of a read: the stream version it reflects."""
    if version is not None:
        response.headers["ETag"] = f'"{version}"'
