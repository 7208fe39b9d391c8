"""Running a command from a route: the bus in a worker thread, then the standard headers."""

from __future__ import annotations

from typing import Any, TypeVar
from uuid import UUID

import structlog
from fastapi import Request, Response
from starlette.concurrency import run_in_threadpool

from api.deps import Principal
from api.problems import Accepted, domain_status
from infra.bootstrap import System
from infra.metrics import count_command
from services.bus import Outcome, PreconditionFailed
from services.decider import Context, Decider
from services.errors import ConcurrencyError, DomainError

log = structlog.get_logger("concord.api")
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

    def execute() -> tuple[Outcome, bool]:
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
        if outcome.changed:
            # From here on the command has happened: nothing may turn it into an error that
            # invites the client to send it again (see api/idempotency.py).
            request.scope.setdefault("state", {})["concord_committed"] = True
        if outcome.position is None:
            return outcome, not outcome.changed
        try:
            system.projector.catch_up(until=outcome.position)
        except Exception:  # the worker will catch the read side up; the command stands
            log.exception("inline projection failed after a committed command")
            return outcome, False
        return outcome, True

    name = type(command).__name__
    try:
        outcome, readable = await run_in_threadpool(execute)
    except Exception as exc:
        count_command(name, outcome_class(exc))
        raise
    count_command(name, "ok" if outcome.changed else "unchanged")
    stamp(response, outcome.version, outcome.position)
    if not readable:
        # Committed, but the read side does not show it yet: say so rather than read back
        # something stale (or a 404) that a retry would then replay.
        raise Accepted(outcome)
    return outcome


def outcome_class(exc: Exception) -> str:
    """The ``outcome`` label of a refused or failed command (see infra/metrics.py)."""
    if not isinstance(exc, DomainError):
        return "error"
    if isinstance(exc, ConcurrencyError | PreconditionFailed):
        return "conflict"
    status, _ = domain_status(exc)
    return {403: "forbidden", 404: "not_found", 422: "invalid"}.get(status, "conflict")


def stamp(response: Response, version: int, position: int | None) -> None:
    response.headers["ETag"] = f'"{version}"'
    if position is not None:
        response.headers["X-Event-Position"] = str(position)


def etag(response: Response, version: Any) -> None:
    """``ETag`` of a read: the stream version it reflects."""
    if version is not None:
        response.headers["ETag"] = f'"{version}"'
