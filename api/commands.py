"""Running a command from a route: the bus in a worker thread, then the standard headers."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, TypeVar
from uuid import UUID, uuid4, uuid5

import structlog
from fastapi import Request, Response

from api.deps import Principal
from api.problems import Accepted, domain_status
from api.threads import in_thread
from infra.bootstrap import System
from infra.metrics import count_command
from services.bus import Job, Outcome, PreconditionFailed
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
    next read already shows its own change (those off the command path are caught up by
    their readers instead: see ``Projector.inline``).
    """

    state = request.scope.setdefault("state", {})
    step = state.get("concord_steps", 0)  # the n-th command of this request
    state["concord_steps"] = step + 1
    metadata = replace(principal.metadata(request), step=step)

    def execute() -> tuple[Outcome, bool]:
        context = Context(
            now=system.bus.clock.now(),
            actor=principal.actor,
            organisation_id=principal.organisation_id,
        )
        job = Job(command, context, metadata, if_match)
        outcome = system.lanes.handle(decider, stream_id, job)
        if outcome.position is None:
            return outcome, not outcome.changed
        wanted = system.projector.inline_for(decider.stream_type)
        try:
            if wanted:
                system.projector.catch_up(until=outcome.position, names=wanted)
        except Exception:  # the worker will catch the read side up; the command stands
            log.exception("inline projection failed after a committed command")
            return outcome, False
        return outcome, True

    name = type(command).__name__
    try:
        outcome, readable = await in_thread(execute)
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


def new_id(request: Request) -> UUID:
    """An id for something a request creates: random, but under an ``Idempotency-Key`` the
    same on every retry of that request (so a retry finds what the first attempt made)."""
    state = request.scope.setdefault("state", {})
    idempotency = state.get("idempotency")
    if idempotency is None:
        return uuid4()
    n = state.get("concord_ids", 0)
    state["concord_ids"] = n + 1
    return uuid5(IDS, f"{idempotency}:{n}")


#: The namespace of ids derived from idempotency keys.
IDS = UUID("5b0c3b8e-8f5e-4d0b-9d0e-6a1c0d7e7a51")


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
