"""Dependencies shared by every router, as ``Annotated`` aliases."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request
from starlette.concurrency import run_in_threadpool

from api.problems import ProblemError
from infra.bootstrap import System
from infra.projections.projector import ProjectionTimeout

#: How long a read with ``X-Min-Position`` waits for the projections before answering 503.
MIN_POSITION_WAIT_S = 5.0


def get_system(request: Request) -> System:
    system: System = request.app.state.system
    return system


SystemDep = Annotated[System, Depends(get_system)]


@dataclass(frozen=True)
class Principal:
    """Who is calling. Authentication by API key arrives with the consultations issue; until
    then every caller is anonymous and the routes already ask for a principal, so adding the
    check changes no route."""

    actor: str = "anonymous"
    api_key_id: str | None = None
    role: str | None = None


def current_principal() -> Principal:
    return Principal()


PrincipalDep = Annotated[Principal, Depends(current_principal)]


async def wait_for_min_position(
    system: SystemDep,
    x_min_position: Annotated[
        int | None,
        Header(ge=0, description="Answer only with state that includes this event position."),
    ] = None,
) -> None:
    """Honour ``X-Min-Position``: wait until the projections include it, else 503."""
    if x_min_position is None or x_min_position == 0:
        return
    if x_min_position > await run_in_threadpool(system.store.head_position):
        # Not in the log yet (the writer may still be numbering it): wait a little.
        await asyncio.sleep(0)
    try:
        await run_in_threadpool(system.projector.wait_for, x_min_position, MIN_POSITION_WAIT_S)
    except ProjectionTimeout:
        raise ProblemError(
            503,
            "Service unavailable",
            f"The read side has not reached position {x_min_position} yet; retry shortly.",
            type_="position-not-reached",
            headers={"Retry-After": "1"},
        ) from None


MinPosition = Depends(wait_for_min_position)
