"""Organisations: NGOs, unions, associations, institutions and agencies that take part."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from fastapi import Query, Request, Response
from pydantic import BaseModel, ConfigDict, EmailStr, Field, HttpUrl
from sqlalchemy import bindparam, func, select

from api.commands import etag, new_id, run
from api.deps import (
    AnyKey,
    IfMatch,
    Member,
    MinPosition,
    Organiser,
    PrincipalDep,
    SystemDep,
    ensure_acts_for,
)
from api.fields import Country, Text
from api.freshness import ORGANISATIONS, kept_of
from api.problems import ProblemError
from api.routing import Router
from api.schemas import Problem
from api.threads import in_thread
from infra.bootstrap import System
from infra.freshness import with_checkpoint
from infra.projections.consultations import consultations, registrations
from infra.projections.organisations import organisations
from services.organisations.commands import KINDS, RegisterOrganisation, ReviseOrganisation
from services.organisations.model import ORGANISATION

router = Router(prefix="/v1/organisations", tags=["organisations"])

Kind = Literal[KINDS]  # type: ignore[valid-type]


class OrganisationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Text(300)  # type: ignore[valid-type]
    acronym: Text(50) | None = None  # type: ignore[valid-type]
    kind: Kind
    country: Country
    email: EmailStr | None = None
    website: HttpUrl | None = None


class OrganisationUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Text(300) | None = None  # type: ignore[valid-type]
    acronym: Text(50) | None = None  # type: ignore[valid-type]
    kind: Kind | None = None
    country: Country | None = None
    email: EmailStr | None = None
    website: HttpUrl | None = None


class OrganisationPublic(BaseModel):
    id: UUID
    name: str
    acronym: str | None
    kind: str
    country: str
    email: str | None
    website: str | None
    registered_at: datetime
    updated_at: datetime
    version: int = Field(description="Stream version; send it back in If-Match to update safely.")


class Attendance(BaseModel):
    consultation_id: UUID
    title: str
    host_country: str
    starts_at: datetime
    participants: int = Field(description="Its people registered (not waitlisted or cancelled).")


class OrganisationProfile(OrganisationPublic):
    consultations_attended: list[Attendance] | None = Field(
        default=None, description="Only for admins, organisers and the organisation itself."
    )


class OrganisationsPublic(BaseModel):
    data: list[OrganisationPublic]
    total: int
    limit: int
    offset: int


def _public(row: object) -> OrganisationPublic:
    m = row._mapping  # type: ignore[attr-defined]
    return OrganisationPublic(
        id=m["organisation_id"],
        **{
            k: m[k]
            for k in (
                "name",
                "acronym",
                "kind",
                "country",
                "email",
                "website",
                "registered_at",
                "updated_at",
                "version",
            )
        },
    )


ERRORS = {401: {"model": Problem}, 403: {"model": Problem}, 422: {"model": Problem}}


@router.post(
    "",
    status_code=201,
    response_model=OrganisationPublic,
    responses={**ERRORS, 409: {"model": Problem}},
)
async def register_organisation(
    body: OrganisationCreate,
    request: Request,
    response: Response,
    system: SystemDep,
    principal: Organiser,
) -> OrganisationPublic:
    """Register an organisation (admins and organisers)."""
    organisation_id = new_id(request)
    command = RegisterOrganisation(
        organisation_id=organisation_id,
        name=body.name,
        acronym=body.acronym,
        kind=body.kind,
        country=body.country,
        email=str(body.email) if body.email else None,
        website=str(body.website) if body.website else None,
    )
    await run(system, request, response, principal, ORGANISATION, organisation_id, command)
    response.headers["Location"] = f"/v1/organisations/{organisation_id}"
    return await load_organisation(system, organisation_id)


@router.patch(
    "/{organisation_id}",
    response_model=OrganisationPublic,
    responses={**ERRORS, 404: {"model": Problem}, 412: {"model": Problem}},
)
async def revise_organisation(
    organisation_id: UUID,
    body: OrganisationUpdate,
    request: Request,
    response: Response,
    system: SystemDep,
    principal: Member,
    version: IfMatch,
) -> OrganisationPublic:
    """Change an organisation's details (organisers, or the organisation itself)."""
    ensure_acts_for(principal, organisation_id)
    changes = body.model_dump(exclude_unset=True)
    command = ReviseOrganisation(
        organisation_id=organisation_id,
        **{
            k: (str(v) if k in ("email", "website") and v is not None else v)
            for k, v in changes.items()
        },
    )
    await run(
        system,
        request,
        response,
        principal,
        ORGANISATION,
        organisation_id,
        command,
        if_match=version,
    )
    return await load_organisation(system, organisation_id)


@router.get("", response_model=OrganisationsPublic, dependencies=[MinPosition], responses=ERRORS)
async def list_organisations(
    system: SystemDep,
    _principal: AnyKey,
    country: Country | None = None,
    kind: Kind | None = None,
    q: Annotated[str | None, Query(max_length=100, description="Name or acronym contains")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> OrganisationsPublic:
    """Organisations, by country then name."""
    table = organisations
    where = []
    if country:
        where.append(table.c.country == country)
    if kind:
        where.append(table.c.kind == kind)
    if q:
        like = f"%{q.lower()}%"
        where.append(func.lower(table.c.name).like(like) | func.lower(table.c.acronym).like(like))

    def load() -> OrganisationsPublic:
        with system.db.read() as conn:
            total = conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()
            rows = conn.execute(
                select(table)
                .where(*where)
                .order_by(table.c.country, table.c.name, table.c.organisation_id)
                .limit(limit)
                .offset(offset)
            ).all()
        return OrganisationsPublic(
            data=[_public(r) for r in rows], total=total, limit=limit, offset=offset
        )

    return await in_thread(load)


@router.get(
    "/{organisation_id}",
    response_model=OrganisationProfile,
    dependencies=[MinPosition],
    responses={**ERRORS, 404: {"model": Problem}},
)
async def get_organisation(
    organisation_id: UUID, response: Response, system: SystemDep, principal: PrincipalDep
) -> OrganisationProfile:
    """An organisation's profile (public); with a key, also the consultations it attended."""
    organisation = await load_organisation(system, organisation_id)
    etag(response, organisation.version)
    profile = OrganisationProfile(**organisation.model_dump())
    if principal.role in ("admin", "organiser") or (
        principal.role == "organisation" and principal.organisation_id == organisation_id
    ):
        profile.consultations_attended = await in_thread(_attended, system, organisation_id)
    return profile


def _attended(system: System, organisation_id: UUID) -> list[Attendance]:
    r, c = registrations, consultations
    with system.db.read() as conn:
        rows = conn.execute(
            select(
                c.c.consultation_id,
                c.c.title,
                c.c.host_country,
                c.c.starts_at,
                func.count().label("participants"),
            )
            .join(r, r.c.consultation_id == c.c.consultation_id)
            .where(
                r.c.organisation_id == organisation_id,
                r.c.status == "registered",
                c.c.cancelled.is_(False),
            )
            .group_by(c.c.consultation_id, c.c.title, c.c.host_country, c.c.starts_at)
            .order_by(c.c.starts_at)
        ).all()
    return [Attendance(**row._mapping) for row in rows]


#: An organisation's row; with its checkpoint, for :meth:`api.freshness.Kept.read`.
_ORGANISATION = select(organisations).where(organisations.c.organisation_id == bindparam("key"))
_KEPT_ORGANISATION = with_checkpoint(_ORGANISATION, ORGANISATIONS)


async def load_organisation(
    system: SystemDep, organisation_id: UUID, request: Request | None = None
) -> OrganisationPublic:
    """The organisation as its projection shows it. With ``request``: what this process kept
    of it, unless the projection's rows changed since (one check shared with the requests
    around it; see api/freshness.py) — no thread hop and no query for an organisation that
    endorses, withdraws and endorses again."""
    if request is not None:
        organisation = await kept_of(request).read(
            system, ORGANISATIONS, organisation_id, _KEPT_ORGANISATION, _public
        )
    else:

        def load() -> object:
            with system.db.read() as conn:
                return conn.execute(_ORGANISATION, {"key": organisation_id}).first()

        row = await in_thread(load)
        organisation = _public(row) if row is not None else None
    if organisation is None:
        raise ProblemError(
            404, "Not found", f"No organisation {organisation_id}.", type_="unknown-organisation"
        )
    return organisation
