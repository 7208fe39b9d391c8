"""Invitations to endorse a statement by e-mail, for organisations without an API key.

The organiser invites an organisation at an address; the mail worker sends the link (a notice
through the same outbox as every reminder). The link's token is derived from the service's
secret and never shown here or stored: only its hash is in the log.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import Query, Request, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, EmailStr, Field
from sqlalchemy import func, select

from api.commands import new_id, run
from api.deps import MinPosition, Organiser, Principal, SystemDep
from api.fields import Text
from api.problems import ProblemError
from api.routers.organisations import load_organisation
from api.routers.statements import _fold
from api.routing import Router
from api.schemas import Problem
from api.threads import in_thread
from infra.bootstrap import System
from infra.invitations import hash_for
from infra.projections.invitations import invitations
from infra.tokens import SecretKeyMissing
from services.invitations import commands as c
from services.invitations.model import DEFAULT_EXPIRY, INVITATION, LIVE, MAX_EXPIRY, MIN_EXPIRY
from services.statements.model import Statement, endorsement_open_at
from services.statements.model import status as statement_status

router = Router(tags=["invitations"])
ERRORS: dict[int | str, dict[str, Any]] = {
    c: {"model": Problem} for c in (401, 403, 404, 409, 422, 503)
}
Status = Literal["issued", "opened", "used", "expired", "revoked"]

_EXPIRES = Field(
    default=None,
    description="How long the link works, as an ISO 8601 duration (`P14D`, `PT48H`): "
    f"between {MIN_EXPIRY} and {MAX_EXPIRY.days} days; {DEFAULT_EXPIRY.days} days if left out.",
)


class InvitationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    organisation_id: UUID
    email: EmailStr = Field(description="Where the link is sent (personal data).")
    language: Annotated[
        str | None, Field(pattern=r"^[a-zA-Z]{2,3}(-[a-zA-Z0-9]{2,8})*$", max_length=35)
    ] = Field(default=None, description="BCP 47; the statement's language if left out.")
    expires_in: timedelta | None = _EXPIRES


class InvitationResend(BaseModel):
    model_config = ConfigDict(extra="forbid")
    expires_in: timedelta | None = _EXPIRES


class InvitationRevoke(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Text(2000) | None = None  # type: ignore[valid-type]


class InvitationPublic(BaseModel):
    """An invitation as the organiser sees it (never its link)."""

    id: UUID
    statement_id: UUID
    organisation_id: UUID
    email: str | None = Field(description="null once the person's data was erased")
    language: str
    status: Status = Field(
        description="`expired` as soon as the link's time is up (the log records it shortly)"
    )
    generation: int = Field(description="How many links were sent (each resend kills the last)")
    expires_at: AwareDatetime
    issued_at: AwareDatetime
    resent_at: AwareDatetime | None
    opened_at: AwareDatetime | None
    used_at: AwareDatetime | None
    expired_at: AwareDatetime | None
    revoked_at: AwareDatetime | None
    endorsement_position: int | None = Field(
        description="Position of the endorsement the link made, once used"
    )
    version: int


class InvitationsPublic(BaseModel):
    data: list[InvitationPublic]
    total: int
    limit: int
    offset: int


def _public(row: Any, now: datetime) -> InvitationPublic:
    current = row.status
    if current in LIVE and row.expires_at <= now:
        current = "expired"
    return InvitationPublic(
        id=row.invitation_id,
        statement_id=row.statement_id,
        organisation_id=row.organisation_id,
        email=row.email,
        language=row.language,
        status=current,
        generation=row.generation,
        expires_at=row.expires_at,
        issued_at=row.issued_at,
        resent_at=row.resent_at,
        opened_at=row.opened_at,
        used_at=row.used_at,
        expired_at=row.expired_at,
        revoked_at=row.revoked_at,
        endorsement_position=row.endorsement_position,
        version=row.version,
    )


async def _row(system: System, statement_id: UUID, invitation_id: UUID) -> Any:
    def load() -> Any:
        with system.db.read() as conn:
            return conn.execute(
                select(invitations).where(
                    invitations.c.invitation_id == invitation_id,
                    invitations.c.statement_id == statement_id,
                )
            ).first()

    row = await in_thread(load)
    if row is None:
        raise ProblemError(
            404,
            "Not found",
            f"No invitation {invitation_id} to statement {statement_id}.",
            type_="unknown-invitation",
        )
    return row


def _check_open(state: Statement, now: datetime) -> None:
    """Invitations go out only while the statement is open for endorsement."""
    if endorsement_open_at(state, now):
        return
    current = statement_status(state)
    why = {
        "drafting": "it is being drafted (finalise it first)",
        "closed": "its endorsements are closed",
        "published": "it is published",
    }.get(current, "its endorsement deadline has passed")
    raise ProblemError(
        409,
        "Conflict",
        f"The statement is not open for endorsement: {why}.",
        type_="statement-not-open",
        statement_status=current,
    )


async def _token_hash(system: System, invitation_id: UUID, generation: int) -> str:
    try:
        return await in_thread(hash_for, system, invitation_id, generation)
    except SecretKeyMissing as exc:
        raise ProblemError(
            503,
            "Service unavailable",
            f"Invitation links cannot be signed: {exc}.",
            type_="secret-key-missing",
        ) from None


async def _answer(
    system: System, statement_id: UUID, invitation_id: UUID, response: Response
) -> InvitationPublic:
    row = await _row(system, statement_id, invitation_id)
    response.headers["ETag"] = f'"{row.version}"'
    return _public(row, system.bus.clock.now())


async def _run(
    system: System,
    request: Request,
    response: Response,
    principal: Principal,
    invitation_id: UUID,
    command: Any,
) -> None:
    await run(system, request, response, principal, INVITATION, invitation_id, command)


@router.post(
    "/v1/statements/{statement_id}/invitations",
    status_code=201,
    response_model=InvitationPublic,
    responses=ERRORS,
)
async def invite(
    statement_id: UUID,
    body: InvitationCreate,
    request: Request,
    response: Response,
    system: SystemDep,
    principal: Organiser,
) -> InvitationPublic:
    """Invite an organisation by e-mail to endorse the finalised statement through a
    single-use, expiring link (the e-mail goes out within seconds; the link is never shown)."""
    state = (await _fold(system, statement_id)).state
    _check_open(state, system.bus.clock.now())
    await load_organisation(system, body.organisation_id)
    invitation_id = new_id(request)
    assert state.consultation_id is not None
    await _run(
        system,
        request,
        response,
        principal,
        invitation_id,
        c.IssueInvitation(
            invitation_id=invitation_id,
            statement_id=statement_id,
            consultation_id=state.consultation_id,
            organisation_id=body.organisation_id,
            email=str(body.email),
            language=body.language or state.language,
            token_hash=await _token_hash(system, invitation_id, 1),
            expires_in=body.expires_in or DEFAULT_EXPIRY,
        ),
    )
    response.headers["Location"] = f"/v1/statements/{statement_id}/invitations/{invitation_id}"
    return await _answer(system, statement_id, invitation_id, response)


@router.get(
    "/v1/statements/{statement_id}/invitations",
    response_model=InvitationsPublic,
    responses=ERRORS,
    dependencies=[MinPosition],
)
async def list_invitations(
    statement_id: UUID,
    system: SystemDep,
    _principal: Organiser,
    status: Annotated[Status | None, Query(description="Only invitations in this state.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> InvitationsPublic:
    """The statement's invitations, oldest first, with what became of each link."""
    await _fold(system, statement_id)
    now = system.bus.clock.now()

    def load() -> tuple[list[Any], int]:
        where = [invitations.c.statement_id == statement_id]
        if status in LIVE:
            where += [invitations.c.status == status, invitations.c.expires_at > now]
        elif status == "expired":
            where.append(
                (invitations.c.status == "expired")
                | (invitations.c.status.in_(LIVE) & (invitations.c.expires_at <= now))
            )
        elif status is not None:
            where.append(invitations.c.status == status)
        with system.db.read() as conn:
            total = conn.execute(select(func.count()).select_from(invitations).where(*where))
            rows = conn.execute(
                select(invitations)
                .where(*where)
                .order_by(invitations.c.issued_at, invitations.c.invitation_id)
                .limit(limit)
                .offset(offset)
            ).all()
            return rows, int(total.scalar_one())

    rows, total = await in_thread(load)
    return InvitationsPublic(
        data=[_public(r, now) for r in rows], total=total, limit=limit, offset=offset
    )


@router.get(
    "/v1/statements/{statement_id}/invitations/{invitation_id}",
    response_model=InvitationPublic,
    responses=ERRORS,
    dependencies=[MinPosition],
)
async def get_invitation(
    statement_id: UUID,
    invitation_id: UUID,
    response: Response,
    system: SystemDep,
    _principal: Organiser,
) -> InvitationPublic:
    """One invitation and what became of its link."""
    return await _answer(system, statement_id, invitation_id, response)


@router.post(
    "/v1/statements/{statement_id}/invitations/{invitation_id}/resend",
    response_model=InvitationPublic,
    responses=ERRORS,
)
async def resend(
    statement_id: UUID,
    invitation_id: UUID,
    request: Request,
    response: Response,
    system: SystemDep,
    principal: Organiser,
    body: InvitationResend | None = None,
) -> InvitationPublic:
    """Send a fresh link (with a fresh expiry); every earlier link of the invitation stops
    working. Not for a used or revoked invitation."""
    await _row(system, statement_id, invitation_id)
    state = (await _fold(system, statement_id)).state
    _check_open(state, system.bus.clock.now())
    current, _, _ = await in_thread(system.bus.load, INVITATION, invitation_id)
    generation = current.generation + 1
    await _run(
        system,
        request,
        response,
        principal,
        invitation_id,
        c.ResendInvitation(
            invitation_id=invitation_id,
            generation=generation,
            token_hash=await _token_hash(system, invitation_id, generation),
            expires_in=(body.expires_in if body else None) or DEFAULT_EXPIRY,
        ),
    )
    return await _answer(system, statement_id, invitation_id, response)


@router.post(
    "/v1/statements/{statement_id}/invitations/{invitation_id}/revoke",
    response_model=InvitationPublic,
    responses=ERRORS,
)
async def revoke(
    statement_id: UUID,
    invitation_id: UUID,
    request: Request,
    response: Response,
    system: SystemDep,
    principal: Organiser,
    body: InvitationRevoke | None = None,
) -> InvitationPublic:
    """Revoke the invitation: its links stop working at once (an endorsement it made stays)."""
    await _row(system, statement_id, invitation_id)
    await _run(
        system,
        request,
        response,
        principal,
        invitation_id,
        c.RevokeInvitation(invitation_id, body.reason if body else None),
    )
    return await _answer(system, statement_id, invitation_id, response)
