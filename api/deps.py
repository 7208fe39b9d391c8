"""Dependencies shared by every router, as ``Annotated`` aliases."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar
from uuid import UUID

import structlog
from fastapi import Depends, Header, Request

from api.problems import ProblemError
from api.threads import in_thread
from infra.bootstrap import System
from infra.keys import ROLES, ApiKey, ApiKeys, Identified
from infra.projections.projector import ProjectionTimeout
from services.ports import Metadata

#: How long a read with ``X-Min-Position`` waits for the projections before answering 503.
MIN_POSITION_WAIT_S = 5.0


async def get_system(request: Request) -> System:
    """The app's wiring. ``async`` although it never waits: FastAPI runs a plain ``def``
    dependency in the thread pool, a thread hop on every request for an attribute read."""
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
            idempotency_key=request.scope.get("state", {}).get("idempotency_key"),
        )


_UNAUTHENTICATED = {"WWW-Authenticate": 'Bearer realm="concord"'}


@dataclass(frozen=True)
class Authentication:
    """What the ``Authorization`` header of a request amounts to, worked out once per request
    (by the rate limiter, before routing; see api/ratelimit.py)."""

    #: ``anonymous`` (no header), ``active``, or why a key that was sent is refused:
    #: ``bad-scheme`` (not ``Bearer <key>``), ``malformed`` (mistyped), ``unknown``, ``revoked``.
    status: str = "anonymous"
    #: The active key; None when anonymous or refused.
    key: ApiKey | None = None
    #: Why a key that was sent is refused (the 401's detail); None when it is fine or absent.
    refusal: str | None = None
    #: The prefix the presented key shows, for logs (never the secret).
    prefix: str | None = None
    #: A revoked key that was presented (its use is recorded against it).
    revoked: ApiKey | None = None


ANONYMOUS = Authentication()


def authenticate(keys: ApiKeys, authorization: str | None) -> Authentication:
    """Check ``Authorization: Bearer <key>`` (a database lookup unless the key is malformed
    or, within ``CONCORD_KEY_CACHE_S``, already known)."""
    known = authenticate_known(keys, authorization)
    if known is not None:
        return known
    return _authentication(keys.identify(_secret(authorization)))


def authenticate_known(keys: ApiKeys, authorization: str | None) -> Authentication | None:
    """:func:`authenticate` when it needs no database lookup (no header, a bad scheme, a
    malformed key, an active key seen lately); None when the key must be looked up."""
    if authorization is None:
        return ANONYMOUS
    secret = _secret(authorization)
    if not secret:
        return Authentication("bad-scheme", refusal="Use 'Authorization: Bearer <api key>'.")
    found = keys.known(secret)
    return _authentication(found) if found is not None else None


def _secret(authorization: str | None) -> str:
    """The key of ``Bearer <key>``; empty for any other scheme."""
    scheme, _, secret = (authorization or "").partition(" ")
    return secret.strip() if scheme.lower() == "bearer" else ""


def _authentication(found: Identified) -> Authentication:
    if found.status == "active":
        return Authentication("active", key=found.key, prefix=found.prefix)
    if found.status == "malformed":
        detail = "This is not a well-formed API key (mistyped or cut short?)."
    else:
        detail = "The API key is unknown or revoked."
    revoked = found.key if found.status == "revoked" else None
    return Authentication(found.status, refusal=detail, prefix=found.prefix, revoked=revoked)


async def current_principal(request: Request) -> Principal:
    """The caller's key from ``Authorization: Bearer …``; anonymous without the header.

    Its only parameter is the request (no sub-dependencies to solve on every call): the rate
    limiter has authenticated it already, and the header is not part of any route's schema."""
    state = request.scope.setdefault("state", {})
    auth: Authentication | None = state.get("auth")
    known: tuple[Authentication, Principal] | None = state.get(_PRINCIPAL)
    if known is not None and auth is known[0]:  # checked already (api/routing.py)
        return known[1]
    if auth is None:  # a route the rate limiter does not see (/metrics)
        system: System = request.app.state.system
        authorization = request.headers.get("authorization")
        auth = await in_thread(authenticate, system.keys, authorization)
    if auth.refusal is not None:
        raise ProblemError(
            401, "Unauthorized", auth.refusal, type_="unauthenticated", headers=_UNAUTHENTICATED
        )
    principal = Principal(auth.key)
    if auth.key is not None:
        structlog.contextvars.bind_contextvars(api_key=auth.key.prefix)
    # With the authentication it came from: a read run again (api/middleware.py) is
    # authenticated again, and is not answered with the first run's principal.
    state[_PRINCIPAL] = (auth, principal)
    return principal


PrincipalDep = Annotated[Principal, Depends(current_principal)]

_PRINCIPAL = "concord_principal"


def system_of(request: Request) -> System:
    """The app's wiring, for the routes read most often.

    Every ``Depends`` costs each request FastAPI's solving of it (its cache key, its scopes,
    unwrapping the callable): on a read served from memory, ``SystemDep`` and ``PrincipalDep``
    together were a tenth of the request. Those routes take the request and ask it instead."""
    system: System = request.app.state.system
    return system


def principal_of(request: Request) -> Principal:
    """The caller, as the key check every /v1 route depends on (:func:`current_principal`)
    found it; see :func:`system_of`."""
    principal: Principal = request.scope["state"][_PRINCIPAL][1]
    return principal


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

    # A route that depends on this check needs a key: its OpenAPI entry says so (api/openapi.py).
    check.requires_key = True  # type: ignore[attr-defined]
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


#: What If-Match may hold: an entity tag this API issued (a stream version in quotes, RFC 9110
#: §8.8.3; ``W/`` tolerated), or ``*``. Documented as the header's pattern, checked here (a 400).
ETAG = re.compile(r'(W/)?"([0-9]{1,18})"')
ETAG_PATTERN = r'^(\*|(W/)?"[0-9]{1,18}")$'


async def if_match(  # async: no thread hop (see get_system)
    value: Annotated[
        str | None,
        Header(
            alias="If-Match",
            description='Apply only if the resource is at this version: "3".',
            json_schema_extra={"pattern": ETAG_PATTERN},
        ),
    ] = None,
) -> int | None:
    """The version named by ``If-Match`` (an ETag we issued), or None."""
    if value is None or value.strip() == "*":
        return None
    tag = ETAG.fullmatch(value.strip())
    if tag is None:
        raise ProblemError(
            400,
            "Bad request",
            'If-Match must be an ETag issued by this API, e.g. "3".',
            type_="bad-if-match",
        )
    return int(tag.group(2))


IfMatch = Annotated[int | None, Depends(if_match)]


MinPositionHeader = Annotated[
    int | None,
    Header(
        ge=0,
        le=2**63 - 1,
        description="Answer only with state that includes this event position.",
    ),
]


async def wait_for_min_position(request: Request, x_min_position: MinPositionHeader = None) -> None:
    """``X-Min-Position`` as a dependency (see :func:`reach_min_position`)."""
    await reach_min_position(request, x_min_position)


async def reach_min_position(request: Request, x_min_position: int | None) -> None:
    """Honour ``X-Min-Position``: wait until the projections include it, else 503."""
    if x_min_position is None or x_min_position == 0:
        return
    system: System = request.app.state.system
    if x_min_position > await in_thread(system.store.head_position):
        # Positions are handed out only once numbered, so this one was never issued (yet).
        raise ProblemError(
            503,
            "Service unavailable",
            f"Position {x_min_position} is not in the log.",
            type_="position-not-reached",
            headers={"Retry-After": "1"},
        )
    try:
        await in_thread(system.projector.wait_for, x_min_position, MIN_POSITION_WAIT_S)
    except ProjectionTimeout:
        raise ProblemError(
            503,
            "Service unavailable",
            f"The read side has not reached position {x_min_position} yet; retry shortly.",
            type_="position-not-reached",
            headers={"Retry-After": "1"},
        ) from None


MinPosition = Depends(wait_for_min_position)


T = TypeVar("T")


def app_member(app: Any, name: str, make: Callable[[System], T]) -> T:
    """``app.state.<name>``: made from the app's system on first use, the same one after."""
    state = app.state
    member: T | None = getattr(state, name, None)
    if member is None:
        member = make(state.system)
        setattr(state, name, member)
    return member
