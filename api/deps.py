"""Dependencies shared by every router, as ``Annotated`` aliases."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated
from uuid import UUID

import structlog
from fastapi import Depends, Header, Request
from starlette.concurrency import run_in_threadpool

from api.problems import ProblemError
from infra.bootstrap import System
from infra.keys import ROLES, ApiKey
from infra.projections.projector import ProjectionTimeout
from services.ports import Metadata

#: How long a read with ``X-Min-Position`` waits for the projections before answering 503.
MIN_POSITION_WAIT_S = 5.0


def get_system(request: Request) -> System:
    system: System = request.app.state.system
    return system


SystemDep = Annotated[System, Depends(get_system)]


@dataclass(frozen=True)
class Principal:
    """Who is calling: an API key (with its role and organisation), or nobody."""

    key: ApiKey | None = None

    @property
    def authenticated(self) -> bool:
        return self.key is not None

    @property
    def role(self) -> str | None:
        return self.key.role if self.key else None

    @property
    def organisation_id(self) -> UUID | None:
        return self.key.organisation_id if self.key else None

    @property
    def actor(self) -> str:
        if self.key is None:
            return "anonymous"
        who = (
            f"organisation:{self.key.organisation_id}"
            if self.key.organisation_id
            else self.key.role
        )
        return f"{who} (key {self.key.prefix} {self.key.name})"

    def acts_for(self, organisation_id: UUID | None) -> bool:
        """Admins and organisers act for anyone; an organisation key only for itself."""
        if self.role in ("admin", "organiser"):
            return True
        return self.role == "organisation" and organisation_id == self.organisation_id

    def metadata(self, request: Request, causation_id: str | None = None) -> Metadata:
        """Event metadata: who, through which key, and the request's correlation id."""
        return Metadata(
            actor=self.actor,
            api_key_id=str(self.key.id) if self.key else None,
            causation_id=causation_id,
            correlation_id=request.scope.get("state", {}).get("request_id"),
        )


_UNAUTHENTICATED = {"WWW-Authenticate": 'Bearer realm="concord"'}


async def current_principal(
    request: Request,
    system: SystemDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Principal:
    """The caller's key from ``Authorization: Bearer …``; anonymous without the header."""
    if authorization is None:
        return Principal()
    scheme, _, secret = authorization.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise ProblemError(
            401,
            "Unauthorized",
            "Use 'Authorization: Bearer <api key>'.",
            type_="unauthenticated",
            headers=_UNAUTHENTICATED,
        )
    key = await run_in_threadpool(system.keys.authenticate, secret.strip())
    if key is None:
        raise ProblemError(
            401,
            "Unauthorized",
            "The API key is unknown or revoked.",
            type_="unauthenticated",
            headers=_UNAUTHENTICATED,
        )
    structlog.contextvars.bind_contextvars(api_key=key.prefix)
    return Principal(key)


PrincipalDep = Annotated[Principal, Depends(current_principal)]


def require(*roles: str) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency admitting only callers with one of ``roles`` (401 without a key, else 403)."""

    async def check(principal: PrincipalDep) -> Principal:
        if not principal.authenticated:
            raise ProblemError(
                401,
                "Unauthorized",
                "This needs an API key.",
                type_="unauthenticated",
                headers=_UNAUTHENTICATED,
            )
        if principal.role not in roles:
            raise ProblemError(
                403,
                "Forbidden",
                f"Keys of role {principal.role!r} may not do this (needs {' or '.join(roles)}).",
                type_="forbidden",
            )
        return principal

    return check


def ensure_acts_for(principal: Principal, organisation_id: UUID | None) -> None:
    """403 unless the caller may act for ``organisation_id``."""
    if not principal.acts_for(organisation_id):
        raise ProblemError(
            403,
            "Forbidden",
            "An organisation key acts only for its own organisation.",
            type_="forbidden",
        )


Admin = Annotated[Principal, Depends(require("admin"))]
Organiser = Annotated[Principal, Depends(require("admin", "organiser"))]
Member = Annotated[Principal, Depends(require("admin", "organiser", "organisation"))]
EventReader = Annotated[Principal, Depends(require("admin", "organiser", "integrator"))]
AnyKey = Annotated[Principal, Depends(require(*ROLES))]


def if_match(
    value: Annotated[
        str | None,
        Header(alias="If-Match", description='Apply only if the resource is at this version: "3".'),
    ] = None,
) -> int | None:
    """The version named by ``If-Match`` (an ETag we issued), or None."""
    if value is None or value.strip() == "*":
        return None
    tag = value.strip().removeprefix("W/").strip('"')
    if not tag.isdigit():
        raise ProblemError(
            400,
            "Bad request",
            'If-Match must be an ETag issued by this API, e.g. "3".',
            type_="bad-if-match",
        )
    return int(tag)


IfMatch = Annotated[int | None, Depends(if_match)]


async def wait_for_min_position(
    system: SystemDep,
    x_min_position: Annotated[
        int | None,
        Header(
            ge=0,
            le=2**63 - 1,
            description="Answer only with state that includes this event position.",
        ),
    ] = None,
) -> None:
    """Honour ``X-Min-Position``: wait until the projections include it, else 503."""
    if x_min_position is None or x_min_position == 0:
        return
    if x_min_position > await run_in_threadpool(system.store.head_position):
        # Positions are handed out only once numbered, so this one was never issued (yet).
        raise ProblemError(
            503,
            "Service unavailable",
            f"Position {x_min_position} is not in the log.",
            type_="position-not-reached",
            headers={"Retry-After": "1"},
        )
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
