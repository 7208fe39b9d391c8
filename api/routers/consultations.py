"""Consultations: planning, agenda, working groups, registration and the calendar."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Annotated, Any, Literal
from uuid import UUID, uuid4
from zoneinfo import ZoneInfo

import orjson
from fastapi import Query, Request, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, EmailStr, Field, HttpUrl
from sqlalchemy import and_, bindparam, false, func, not_, select

from api.commands import etag, new_id, run
from api.deps import (
    IfMatch,
    Member,
    MinPosition,
    MinPositionHeader,
    Organiser,
    Principal,
    PrincipalDep,
    SystemDep,
    ensure_acts_for,
    reach_min_position,
    system_of,
)
from api.fields import Country, Text, TimeZone
from api.freshness import CONSULTATIONS, kept_of
from api.problems import ProblemError
from api.responses import tagged
from api.routing import Router
from api.schemas import Problem
from api.threads import in_thread
from infra.bootstrap import System
from infra.freshness import with_checkpoint
from infra.projections.consultations import consultations, document, registrations
from infra.projections.organisations import organisations
from infra.projections.series import series as series_table
from services.bus import Outcome
from services.consultations import commands as c
from services.consultations.events import ParticipantRegistered
from services.consultations.model import CONSULTATION, Consultation, status_at
from services.people import person_id
from services.series.commands import JoinSeries
from services.series.model import SERIES

router = Router(prefix="/v1/consultations", tags=["consultations"])

Status = Literal["planned", "registration_open", "registration_closed", "cancelled", "completed"]
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem},
    403: {"model": Problem},
    404: {"model": Problem},
    409: {"model": Problem},
    412: {"model": Problem},
    422: {"model": Problem},
}


# -- schemas ------------------------------------------------------------------------------


class ConsultationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: Text(500)  # type: ignore[valid-type]
    theme: Text(500) | None = None  # type: ignore[valid-type]
    scope: Literal[c.SCOPES]  # type: ignore[valid-type]
    host_country: Country
    city: Text(200) | None = None  # type: ignore[valid-type]
    venue: Text(500) | None = None  # type: ignore[valid-type]
    mode: Literal[c.MODES]  # type: ignore[valid-type]
    virtual_url: HttpUrl | None = None
    timezone: TimeZone
    starts_at: AwareDatetime
    ends_at: AwareDatetime
    organiser_id: UUID
    co_organiser_ids: list[UUID] = Field(default_factory=list, max_length=50)
    partner_ids: list[UUID] = Field(default_factory=list, max_length=100)
    capacity: int | None = Field(default=None, ge=1, le=100_000)
    thematic_areas: list[Text(300)] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(c.DEFAULT_THEMATIC_AREAS), max_length=30
    )
    objectives: list[Text(2000)] = Field(default_factory=list, max_length=30)  # type: ignore[valid-type]
    series_id: UUID | None = None


class ConsultationUpdate(BaseModel):
    """Fields to change; ``null`` clears an optional one."""

    model_config = ConfigDict(extra="forbid")
    title: Text(500) | None = None  # type: ignore[valid-type]
    theme: Text(500) | None = None  # type: ignore[valid-type]
    scope: Literal[c.SCOPES] | None = None  # type: ignore[valid-type]
    host_country: Country | None = None
    city: Text(200) | None = None  # type: ignore[valid-type]
    venue: Text(500) | None = None  # type: ignore[valid-type]
    mode: Literal[c.MODES] | None = None  # type: ignore[valid-type]
    virtual_url: HttpUrl | None = None
    timezone: TimeZone | None = None
    co_organiser_ids: list[UUID] | None = Field(default=None, max_length=50)
    partner_ids: list[UUID] | None = Field(default=None, max_length=100)
    capacity: int | None = Field(default=None, ge=1, le=100_000)
    thematic_areas: list[Text(300)] | None = Field(default=None, max_length=30)  # type: ignore[valid-type]
    objectives: list[Text(2000)] | None = Field(default=None, max_length=30)  # type: ignore[valid-type]


class Reschedule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    starts_at: AwareDatetime
    ends_at: AwareDatetime
    reason: Text(2000) | None = None  # type: ignore[valid-type]


class OpenRegistration(BaseModel):
    model_config = ConfigDict(extra="forbid")
    closes_at: AwareDatetime


class Cancel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Text(2000)  # type: ignore[valid-type]


class SpeakerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Text(300)  # type: ignore[valid-type]
    organisation_id: UUID | None = None


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: Text(500)  # type: ignore[valid-type]
    kind: Literal[c.SESSION_KINDS]  # type: ignore[valid-type]
    starts_at: AwareDatetime
    ends_at: AwareDatetime
    thematic_area: Text(300) | None = None  # type: ignore[valid-type]
    speakers: list[SpeakerIn] = Field(default_factory=list, max_length=50)


class SessionUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: Text(500) | None = None  # type: ignore[valid-type]
    kind: Literal[c.SESSION_KINDS] | None = None  # type: ignore[valid-type]
    starts_at: AwareDatetime | None = None
    ends_at: AwareDatetime | None = None
    thematic_area: Text(300) | None = None  # type: ignore[valid-type]
    speakers: list[SpeakerIn] | None = Field(default=None, max_length=50)


class WorkingGroupCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    thematic_area: Text(300)  # type: ignore[valid-type]
    facilitator_registration_id: UUID | None = None


class RegistrationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Text(300)  # type: ignore[valid-type]
    email: EmailStr
    organisation_id: UUID | None = None
    role: Literal[c.ROLES]  # type: ignore[valid-type]
    country: Country | None = None


class RegistrationCancel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Text(2000) | None = None  # type: ignore[valid-type]


class Assignment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    working_group_id: UUID


class RegistrationPublic(BaseModel):
    id: UUID
    consultation_id: UUID
    name: str | None = Field(description="null once the person is erased.")
    email: str | None = Field(description="null once the person is erased.")
    organisation_id: UUID | None
    role: str
    country: str | None
    status: str
    waitlist_position: int | None
    checked_in: bool
    working_group_id: UUID | None
    registered_at: datetime
    updated_at: datetime


class RegistrationsPublic(BaseModel):
    data: list[RegistrationPublic]
    total: int
    limit: int
    offset: int


class ConsultationsPublic(BaseModel):
    data: list[dict[str, Any]]
    total: int
    limit: int
    offset: int


# -- helpers ------------------------------------------------------------------------------


def utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def localise(doc: dict[str, Any], now: datetime) -> dict[str, Any]:
    """Times in the consultation's own zone (RFC 3339 with its offset) and the live status."""
    return Shown.of(doc).at(now)


@dataclass(frozen=True)
class Shown:
    """A consultation's document as shown, but for its status (which moves with the clock)."""

    #: In the consultation's own zone, without ``status``.
    doc: dict[str, Any]
    #: What the status is worked out from.
    probe: Consultation
    #: The document rendered, by status (a kept document is read far more often than it
    #: changes, and its status takes one of a handful of values).
    rendered: dict[str, bytes] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, doc: dict[str, Any]) -> Shown:
        zone = ZoneInfo(doc["timezone"])

        def local(value: str | None) -> str | None:
            return datetime.fromisoformat(value).astimezone(zone).isoformat() if value else None

        out = {**doc, "starts_at": local(doc["starts_at"]), "ends_at": local(doc["ends_at"])}
        out["registration"] = {
            **doc["registration"],
            "closes_at": local(doc["registration"]["closes_at"]),
        }
        out["agenda"] = [
            {**s, "starts_at": local(s["starts_at"]), "ends_at": local(s["ends_at"])}
            for s in doc["agenda"]
        ]
        closes = doc["registration"]["closes_at"]
        probe = Consultation(
            consultation_id=UUID(doc["id"]),
            registration_opened=doc["registration"]["opened"],
            registration_closes_at=datetime.fromisoformat(closes) if closes else None,
            registration_closed=doc["registration"]["closed"],
            cancelled=doc["cancelled"],
            completed=doc["completed"],
        )
        return cls(out, probe)

    @property
    def version(self) -> int:
        return int(self.doc["version"])

    def at(self, now: datetime) -> dict[str, Any]:
        """The document with its status at ``now``."""
        return {**self.doc, "status": status_at(self.probe, now)}

    def response(self, now: datetime) -> Response:
        """:meth:`at` as the JSON response, with its ``ETag`` (what ``tagged`` would send)."""
        status = status_at(self.probe, now)
        body = self.rendered.get(status)
        if body is None:
            body = self.rendered[status] = orjson.dumps({**self.doc, "status": status})
        response = Response(body, media_type="application/json")
        etag(response, self.version)
        return response


def status_clause(status: str, now: datetime) -> Any:
    t = consultations.c
    live = and_(not_(t.cancelled), not_(t.completed))
    open_now = and_(
        t.registration_opened, not_(t.registration_closed), t.registration_closes_at > now
    )
    return {
        "cancelled": t.cancelled,
        "completed": and_(t.completed, not_(t.cancelled)),
        "registration_open": and_(live, open_now),
        "registration_closed": and_(live, t.registration_opened, not_(open_now)),
        "planned": and_(live, not_(t.registration_opened)),
    }.get(status, false())


def _missing_organisations(system: System, ids: dict[str, list[UUID]]) -> list[dict[str, Any]]:
    wanted = {i for values in ids.values() for i in values}
    if not wanted:
        return []
    with system.db.read() as conn:
        known = set(
            conn.execute(
                select(organisations.c.organisation_id).where(
                    organisations.c.organisation_id.in_(wanted)
                )
            ).scalars()
        )
    return [
        {"field": field, "in": "body", "message": f"unknown organisation {i}", "type": "unknown"}
        for field, values in ids.items()
        for i in values
        if i not in known
    ]


async def check_organisations(system: System, **ids: list[UUID]) -> None:
    errors = await in_thread(_missing_organisations, system, ids)
    if errors:
        raise ProblemError(
            422,
            "Validation failed",
            "Unknown organisations.",
            type_="validation-failed",
            errors=errors,
        )


async def load_doc(system: System, consultation_id: UUID) -> dict[str, Any]:
    def load() -> Any:
        with system.db.read() as conn:
            return conn.execute(
                select(consultations.c.detail).where(
                    consultations.c.consultation_id == consultation_id
                )
            ).scalar()

    doc = await in_thread(load)
    if doc is None:
        raise _unknown(consultation_id)
    return dict(doc)


def _unknown(consultation_id: UUID) -> ProblemError:
    return ProblemError(
        404, "Not found", f"No consultation {consultation_id}.", type_="unknown-consultation"
    )


#: A consultation's document with its checkpoint, for :meth:`api.freshness.Kept.read`.
_DETAIL = with_checkpoint(
    select(consultations.c.detail).where(consultations.c.consultation_id == bindparam("key")),
    CONSULTATIONS,
)


async def shown(request: Request, system: System, consultation_id: UUID) -> Shown:
    """The consultation as shown now: what this process kept, unless its projection moved
    since (one check shared with the reads around it; see api/freshness.py)."""
    found = await kept_of(request).read(
        system, CONSULTATIONS, consultation_id, _DETAIL, lambda row: Shown.of(dict(row.detail))
    )
    if found is None:
        raise _unknown(consultation_id)
    return found


async def respond(system: System, consultation_id: UUID, response: Response) -> dict[str, Any]:
    doc = await load_doc(system, consultation_id)
    etag(response, doc["version"])
    return localise(doc, datetime.now(UTC))


async def command(
    system: System,
    request: Request,
    response: Response,
    principal: Principal,
    consultation_id: UUID,
    cmd: Any,
    version: int | None = None,
) -> Any:
    return await run(
        system, request, response, principal, CONSULTATION, consultation_id, cmd, if_match=version
    )


def parse_as_of(value: str) -> tuple[int | None, datetime | None]:
    if value.isascii() and value.isdigit() and len(value) <= 18:
        return int(value), None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ProblemError(
            422,
            "Validation failed",
            "as_of is an RFC 3339 time with offset or a position.",
            type_="validation-failed",
            errors=[{"field": "as_of", "in": "query", "message": "invalid", "type": "as_of"}],
        ) from None
    if when.tzinfo is None:
        raise ProblemError(
            422,
            "Validation failed",
            "as_of needs a UTC offset (e.g. 2018-02-21T10:00:00+07:00).",
            type_="validation-failed",
            errors=[{"field": "as_of", "in": "query", "message": "no offset", "type": "as_of"}],
        )
    return None, when


# -- planning -----------------------------------------------------------------------------


# The busiest routes first: a router tries its routes in order (see api/routing.py).
@router.get("/{consultation_id}", responses=ERRORS, response_model=dict[str, Any])
async def get_consultation(
    consultation_id: UUID,
    request: Request,
    x_min_position: MinPositionHeader = None,
    as_of: Annotated[
        str | None,
        Query(
            max_length=40,
            description="An RFC 3339 time or an event position: the "
            "consultation as it stood then, rebuilt from the log.",
        ),
    ] = None,
) -> Response:
    """A consultation with its agenda, working groups and counts (public)."""
    # A parameter, not MinPosition: one dependency fewer for FastAPI to solve on every read.
    await reach_min_position(request, x_min_position)
    system = system_of(request)
    if as_of is None:
        now = await shown(request, system, consultation_id)
        return now.response(datetime.now(UTC))
    position, when = parse_as_of(as_of)

    state, version, _ = await in_thread(
        partial(
            system.bus.load, CONSULTATION, consultation_id, until_position=position, until_time=when
        )
    )
    if not state.exists:
        raise ProblemError(
            404,
            "Not found",
            f"Consultation {consultation_id} did not exist then.",
            type_="unknown-consultation",
        )
    return tagged(localise(document(state, version), when or datetime.now(UTC)), version)


@router.post("/{consultation_id}/registrations", status_code=201, responses=ERRORS)
async def register(
    consultation_id: UUID,
    body: RegistrationCreate,
    request: Request,
    response: Response,
    system: SystemDep,
    principal: Member,
) -> dict[str, Any]:
    """Register a person; beyond capacity they join the waitlist (status ``waitlisted``)."""
    organisation_id = body.organisation_id
    if principal.role == "organisation":
        organisation_id = organisation_id or principal.organisation_id
    ensure_acts_for(principal, organisation_id)
    if organisation_id is not None:
        await check_organisations(system, organisation_id=[organisation_id])
    email = str(body.email)
    registration_id = new_id(request)
    outcome = await command(
        system,
        request,
        response,
        principal,
        consultation_id,
        c.RegisterParticipant(
            consultation_id=consultation_id,
            registration_id=registration_id,
            person_id=person_id(email),
            name=body.name,
            email=email,
            role=body.role,
            organisation_id=organisation_id,
            country=body.country,
        ),
    )
    status = "waitlisted" if outcome.events[0].type.endswith("waitlisted") else "registered"
    response.headers["Location"] = (
        f"/v1/consultations/{consultation_id}/registrations/{registration_id}"
    )
    row = _registered(outcome) or await _registration(system, registration_id)
    return {**row.model_dump(mode="json"), "status": status}


def _registered(outcome: Outcome) -> RegistrationPublic | None:
    """A new registration with a seat as the roster shows it, from its own event: nothing to
    read back (a waitlisted one's place in line is the roster's to say)."""
    event = outcome.events[0] if outcome.events else None
    if not isinstance(event, ParticipantRegistered) or not outcome.recorded:
        return None
    at = outcome.recorded[0].recorded_at
    return RegistrationPublic(
        id=event.registration_id,
        consultation_id=event.consultation_id,
        name=event.name.value,
        email=event.email.value,
        organisation_id=event.organisation_id,
        role=event.role,
        country=event.country,
        status="registered",
        waitlist_position=None,
        checked_in=False,
        working_group_id=None,
        registered_at=at,
        updated_at=at,
    )


@router.post("", status_code=201, responses=ERRORS)
async def plan_consultation(
    body: ConsultationCreate,
    request: Request,
    response: Response,
    system: SystemDep,
    principal: Organiser,
) -> dict[str, Any]:
    """Plan a consultation; dates are given with an offset and stored in UTC."""
    await check_organisations(
        system,
        organiser_id=[body.organiser_id],
        co_organiser_ids=body.co_organiser_ids,
        partner_ids=body.partner_ids,
    )
    if body.series_id is not None:
        await _check_series(system, body.series_id, body.host_country)
    consultation_id = new_id(request)
    await command(
        system,
        request,
        response,
        principal,
        consultation_id,
        c.PlanConsultation(
            consultation_id=consultation_id,
            title=body.title,
            theme=body.theme,
            scope=body.scope,
            host_country=body.host_country,
            city=body.city,
            venue=body.venue,
            mode=body.mode,
            virtual_url=str(body.virtual_url) if body.virtual_url else None,
            timezone=body.timezone,
            starts_at=utc(body.starts_at),
            ends_at=utc(body.ends_at),
            organiser_id=body.organiser_id,
            co_organiser_ids=tuple(body.co_organiser_ids),
            partner_ids=tuple(body.partner_ids),
            capacity=body.capacity,
            thematic_areas=tuple(dict.fromkeys(body.thematic_areas)),
            objectives=tuple(body.objectives),
            series_id=body.series_id,
        ),
    )
    if body.series_id is not None:
        # The series records that this consultation joined it (idempotent on retry).
        await run(
            system,
            request,
            Response(),
            principal,
            SERIES,
            body.series_id,
            JoinSeries(body.series_id, consultation_id, body.host_country),
        )
    response.headers["Location"] = f"/v1/consultations/{consultation_id}"
    return await respond(system, consultation_id, response)


async def _check_series(system: System, series_id: UUID, country: str) -> None:
    def load() -> Any:
        with system.db.read() as conn:
            return conn.execute(
                select(series_table.c.planned_countries).where(
                    series_table.c.series_id == series_id
                )
            ).scalar()

    planned = await in_thread(load)
    if planned is None:
        raise ProblemError(
            422,
            "Validation failed",
            f"Unknown series {series_id}.",
            type_="validation-failed",
            errors=[
                {"field": "series_id", "in": "body", "message": "unknown series", "type": "unknown"}
            ],
        )
    if country not in planned:
        raise ProblemError(
            409,
            "Conflict",
            f"{country} is not among the series' planned countries; extend the plan first.",
            type_="country-not-planned",
        )


@router.patch("/{consultation_id}", responses=ERRORS)
async def revise_consultation(
    consultation_id: UUID,
    body: ConsultationUpdate,
    request: Request,
    response: Response,
    system: SystemDep,
    principal: Organiser,
    version: IfMatch,
) -> dict[str, Any]:
    """Change details; send the ETag in If-Match to avoid overwriting someone else's change."""
    given = body.model_dump(exclude_unset=True)
    cleared = tuple(k for k, v in given.items() if v is None)
    changes = {k: v for k, v in given.items() if v is not None}
    await check_organisations(
        system,
        co_organiser_ids=changes.get("co_organiser_ids", []),
        partner_ids=changes.get("partner_ids", []),
    )
    for key in ("co_organiser_ids", "partner_ids", "thematic_areas", "objectives"):
        if key in changes:
            changes[key] = tuple(changes[key])
    if "virtual_url" in changes:
        changes["virtual_url"] = str(changes["virtual_url"])
    await command(
        system,
        request,
        response,
        principal,
        consultation_id,
        c.ReviseConsultation(consultation_id=consultation_id, cleared=cleared, **changes),
        version,
    )
    return await respond(system, consultation_id, response)


@router.post("/{consultation_id}/reschedule", responses=ERRORS)
async def reschedule(
    consultation_id: UUID,
    body: Reschedule,
    request: Request,
    response: Response,
    system: SystemDep,
    principal: Organiser,
    version: IfMatch,
) -> dict[str, Any]:
    """Move the consultation (the calendar's SEQUENCE goes up; reminders follow)."""
    await command(
        system,
        request,
        response,
        principal,
        consultation_id,
        c.RescheduleConsultation(
            consultation_id, utc(body.starts_at), utc(body.ends_at), body.reason
        ),
        version,
    )
    return await respond(system, consultation_id, response)


@router.post("/{consultation_id}/open-registration", responses=ERRORS)
async def open_registration(
    consultation_id: UUID,
    body: OpenRegistration,
    request: Request,
    response: Response,
    system: SystemDep,
    principal: Organiser,
    version: IfMatch,
) -> dict[str, Any]:
    """Open registration until ``closes_at``."""
    await command(
        system,
        request,
        response,
        principal,
        consultation_id,
        c.OpenRegistration(consultation_id, utc(body.closes_at)),
        version,
    )
    return await respond(system, consultation_id, response)


@router.post("/{consultation_id}/close-registration", responses=ERRORS)
async def close_registration(
    consultation_id: UUID,
    request: Request,
    response: Response,
    system: SystemDep,
    principal: Organiser,
    version: IfMatch,
) -> dict[str, Any]:
    """Close registration now."""
    await command(
        system,
        request,
        response,
        principal,
        consultation_id,
        c.CloseRegistration(consultation_id),
        version,
    )
    return await respond(system, consultation_id, response)


@router.post("/{consultation_id}/cancel", responses=ERRORS)
async def cancel(
    consultation_id: UUID,
    body: Cancel,
    request: Request,
    response: Response,
    system: SystemDep,
    principal: Organiser,
    version: IfMatch,
) -> dict[str, Any]:
    """Cancel the consultation, with a reason everyone will see."""
    await command(
        system,
        request,
        response,
        principal,
        consultation_id,
        c.CancelConsultation(consultation_id, body.reason),
        version,
    )
    return await respond(system, consultation_id, response)


@router.post("/{consultation_id}/complete", responses=ERRORS)
async def complete(
    consultation_id: UUID,
    request: Request,
    response: Response,
    system: SystemDep,
    principal: Organiser,
    version: IfMatch,
) -> dict[str, Any]:
    """Record that the consultation was held."""
    await command(
        system,
        request,
        response,
        principal,
        consultation_id,
        c.CompleteConsultation(consultation_id),
        version,
    )
    return await respond(system, consultation_id, response)


# -- agenda and working groups ------------------------------------------------------------


def speakers(items: list[SpeakerIn]) -> tuple[c.SpeakerDetails, ...]:
    return tuple(
        c.SpeakerDetails(person_id=uuid4(), name=s.name, organisation_id=s.organisation_id)
        for s in items
    )


@router.post("/{consultation_id}/sessions", status_code=201, responses=ERRORS)
async def schedule_session(
    consultation_id: UUID,
    body: SessionCreate,
    request: Request,
    response: Response,
    system: SystemDep,
    principal: Organiser,
    version: IfMatch,
) -> dict[str, Any]:
    """Add a session to the agenda (within the consultation's dates)."""
    await check_organisations(
        system, speakers=[s.organisation_id for s in body.speakers if s.organisation_id]
    )
    session_id = new_id(request)
    await command(
        system,
        request,
        response,
        principal,
        consultation_id,
        c.ScheduleSession(
            consultation_id,
            session_id,
            body.title,
            body.kind,
            utc(body.starts_at),
            utc(body.ends_at),
            body.thematic_area,
            speakers(body.speakers),
        ),
        version,
    )
    response.headers["Location"] = f"/v1/consultations/{consultation_id}/sessions/{session_id}"
    doc = await respond(system, consultation_id, response)
    return next(s for s in doc["agenda"] if s["id"] == str(session_id))


@router.patch("/{consultation_id}/sessions/{session_id}", responses=ERRORS)
async def change_session(
    consultation_id: UUID,
    session_id: UUID,
    body: SessionUpdate,
    request: Request,
    response: Response,
    system: SystemDep,
    principal: Organiser,
    version: IfMatch,
) -> dict[str, Any]:
    """Change a session; ``null`` clears its thematic area."""
    given = body.model_dump(exclude_unset=True)
    cleared = tuple(k for k, v in given.items() if v is None)
    await command(
        system,
        request,
        response,
        principal,
        consultation_id,
        c.ChangeSession(
            consultation_id,
            session_id,
            title=body.title,
            kind=body.kind,
            starts_at=utc(body.starts_at) if body.starts_at else None,
            ends_at=utc(body.ends_at) if body.ends_at else None,
            thematic_area=body.thematic_area,
            speakers=speakers(body.speakers) if body.speakers is not None else None,
            cleared=cleared,
        ),
        version,
    )
    doc = await respond(system, consultation_id, response)
    return next(s for s in doc["agenda"] if s["id"] == str(session_id))


@router.delete("/{consultation_id}/sessions/{session_id}", status_code=204, responses=ERRORS)
async def remove_session(
    consultation_id: UUID,
    session_id: UUID,
    request: Request,
    response: Response,
    system: SystemDep,
    principal: Organiser,
    version: IfMatch,
) -> Response:
    """Remove a session from the agenda."""
    await command(
        system,
        request,
        response,
        principal,
        consultation_id,
        c.RemoveSession(consultation_id, session_id),
        version,
    )
    response.status_code = 204
    return response


@router.post("/{consultation_id}/working-groups", status_code=201, responses=ERRORS)
async def form_working_group(
    consultation_id: UUID,
    body: WorkingGroupCreate,
    request: Request,
    response: Response,
    system: SystemDep,
    principal: Organiser,
    version: IfMatch,
) -> dict[str, Any]:
    """Form the working group of one thematic area."""
    group_id = new_id(request)
    await command(
        system,
        request,
        response,
        principal,
        consultation_id,
        c.FormWorkingGroup(
            consultation_id, group_id, body.thematic_area, body.facilitator_registration_id
        ),
        version,
    )
    doc = await respond(system, consultation_id, response)
    return next(g for g in doc["working_groups"] if g["id"] == str(group_id))


# -- registrations ------------------------------------------------------------------------


async def _registration(system: System, registration_id: UUID) -> RegistrationPublic:
    def load() -> Any:
        with system.db.read() as conn:
            return conn.execute(
                select(registrations).where(registrations.c.registration_id == registration_id)
            ).first()

    row = await in_thread(load)
    if row is None:
        raise ProblemError(
            404, "Not found", f"No registration {registration_id}.", type_="unknown-registration"
        )
    return _reg(row)


def _reg(row: Any) -> RegistrationPublic:
    m = row._mapping
    return RegistrationPublic(
        id=m["registration_id"], **{k: m[k] for k in RegistrationPublic.model_fields if k != "id"}
    )


@router.get(
    "/{consultation_id}/registrations",
    response_model=RegistrationsPublic,
    dependencies=[MinPosition],
    responses=ERRORS,
)
async def list_registrations(
    consultation_id: UUID,
    system: SystemDep,
    principal: Member,
    status: Literal["registered", "waitlisted", "cancelled"] | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> RegistrationsPublic:
    """The roster: organisers see everyone, an organisation only its own people."""
    await load_doc(system, consultation_id)
    t = registrations
    where = [t.c.consultation_id == consultation_id]
    if principal.role == "organisation":
        where.append(t.c.organisation_id == principal.organisation_id)
    if status:
        where.append(t.c.status == status)

    def load() -> RegistrationsPublic:
        with system.db.read() as conn:
            total = conn.execute(select(func.count()).select_from(t).where(*where)).scalar_one()
            rows = conn.execute(
                select(t)
                .where(*where)
                .order_by(t.c.status, t.c.waitlist_position, t.c.registered_at, t.c.registration_id)
                .limit(limit)
                .offset(offset)
            ).all()
        return RegistrationsPublic(
            data=[_reg(r) for r in rows], total=total, limit=limit, offset=offset
        )

    return await in_thread(load)


async def _own_registration(
    system: System, principal: Principal, consultation_id: UUID, registration_id: UUID
) -> RegistrationPublic:
    row = await _registration(system, registration_id)
    if row.consultation_id != consultation_id:
        raise ProblemError(
            404,
            "Not found",
            f"No registration {registration_id} here.",
            type_="unknown-registration",
        )
    ensure_acts_for(principal, row.organisation_id)
    return row


@router.post("/{consultation_id}/registrations/{registration_id}/cancel", responses=ERRORS)
async def cancel_registration(
    consultation_id: UUID,
    registration_id: UUID,
    body: RegistrationCancel | None,
    request: Request,
    response: Response,
    system: SystemDep,
    principal: Member,
) -> RegistrationPublic:
    """Cancel a registration (organisers, or the participant's organisation); the first in
    line on the waitlist is promoted."""
    await _own_registration(system, principal, consultation_id, registration_id)
    await command(
        system,
        request,
        response,
        principal,
        consultation_id,
        c.CancelRegistration(consultation_id, registration_id, body.reason if body else None),
    )
    return await _registration(system, registration_id)


@router.post("/{consultation_id}/registrations/{registration_id}/check-in", responses=ERRORS)
async def check_in(
    consultation_id: UUID,
    registration_id: UUID,
    request: Request,
    response: Response,
    system: SystemDep,
    principal: Organiser,
) -> RegistrationPublic:
    """Record that the participant arrived."""
    await command(
        system,
        request,
        response,
        principal,
        consultation_id,
        c.CheckIn(consultation_id, registration_id),
    )
    return await _registration(system, registration_id)


@router.post("/{consultation_id}/registrations/{registration_id}/working-group", responses=ERRORS)
async def assign(
    consultation_id: UUID,
    registration_id: UUID,
    body: Assignment,
    request: Request,
    response: Response,
    system: SystemDep,
    principal: Organiser,
) -> RegistrationPublic:
    """Assign a participant to a working group."""
    await command(
        system,
        request,
        response,
        principal,
        consultation_id,
        c.AssignToWorkingGroup(consultation_id, registration_id, body.working_group_id),
    )
    return await _registration(system, registration_id)


# -- reads ----------------------------------------------------------------------------------


@router.get("", response_model=ConsultationsPublic, dependencies=[MinPosition], responses=ERRORS)
async def list_consultations(
    system: SystemDep,
    _principal: PrincipalDep,
    status: Status | None = None,
    country: Country | None = None,
    from_: Annotated[
        AwareDatetime | None, Query(alias="from", description="Ends at or after")
    ] = None,
    to: Annotated[AwareDatetime | None, Query(description="Starts at or before")] = None,
    series_id: UUID | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> ConsultationsPublic:
    """Consultations by start date (public), filtered by status, country, dates and series."""
    now = datetime.now(UTC)
    t = consultations
    where = []
    if status:
        where.append(status_clause(status, now))
    if country:
        where.append(t.c.host_country == country)
    if from_:
        where.append(t.c.ends_at >= utc(from_))
    if to:
        where.append(t.c.starts_at <= utc(to))
    if series_id:
        where.append(t.c.series_id == series_id)

    def load() -> ConsultationsPublic:
        with system.db.read() as conn:
            total = conn.execute(select(func.count()).select_from(t).where(*where)).scalar_one()
            docs = (
                conn.execute(
                    select(t.c.detail)
                    .where(*where)
                    .order_by(t.c.starts_at, t.c.consultation_id)
                    .limit(limit)
                    .offset(offset)
                )
                .scalars()
                .all()
            )
        return ConsultationsPublic(
            data=[localise(dict(d), now) for d in docs], total=total, limit=limit, offset=offset
        )

    return await in_thread(load)


@router.get("/{consultation_id}/calendar.ics", responses={404: {"model": Problem}})
async def calendar(consultation_id: UUID, system: SystemDep) -> Response:
    """RFC 5545 calendar: the consultation and each agenda session, in its time zone."""
    from infra.calendar import ics

    doc = await load_doc(system, consultation_id)
    body = ics(doc, system.settings.public_url)
    return Response(
        body,
        media_type="text/calendar; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="consultation-{consultation_id}.ics"',
            "ETag": f'"{doc["version"]}"',
        },
    )
