"""Erasing a person: their key is deleted, the log keeps its shape and its hashes.

Who may: an ``admin`` key for anyone; an ``organisation`` key for its own people — those it
registered for a consultation, and its own signatories. Anyone else's person answers 404, so
an organisation cannot probe who else is known.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import Depends, Request, Response
from pydantic import BaseModel, ConfigDict, EmailStr, Field, model_validator
from sqlalchemy import select

from api.commands import run
from api.deps import Principal, SystemDep, require
from api.fields import Text
from api.problems import ProblemError
from api.routing import Router
from api.schemas import Problem
from api.threads import in_thread
from infra.bootstrap import System
from infra.projections.consultations import registrations
from services.people import PERSON, AlreadyErased, ErasePerson, person_id

router = Router(prefix="/v1/people", tags=["people"])

Eraser = Annotated[Principal, Depends(require("admin", "organisation"))]
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem},
    403: {"model": Problem},
    404: {"model": Problem},
    409: {"model": Problem},
    422: {"model": Problem},
}


class Erasure(BaseModel):
    """Name the person one way: their id, the e-mail they registered with, or (for an
    organisation's own signatory) the signatory name as endorsed."""

    model_config = ConfigDict(extra="forbid")
    person_id: UUID | None = None
    email: EmailStr | None = None
    signatory_name: Text(300) | None = None  # type: ignore[valid-type]
    organisation_id: UUID | None = Field(
        default=None,
        description="With `signatory_name`: whose signatory (an organisation key: itself).",
    )
    reason: Text(500) | None = Field(  # type: ignore[valid-type]
        default=None, description="Why, for the record (it is kept: no personal data here)."
    )

    @model_validator(mode="after")
    def _one_way(self) -> Erasure:
        given = [n for n in ("person_id", "email", "signatory_name") if getattr(self, n)]
        if len(given) != 1:
            raise ValueError("name the person by exactly one of person_id, email, signatory_name")
        return self


class Erased(BaseModel):
    person_id: UUID
    erased: bool = True
    position: int | None = Field(description="The `person.erased` event's position in the log.")
    key_deleted: bool = Field(description="False if the person had no key (no data sealed).")
    erased_at: datetime


def _subject(body: Erasure, principal: Principal) -> UUID:
    if body.person_id is not None:
        return body.person_id
    if body.email is not None:
        return person_id(str(body.email))
    organisation = body.organisation_id or principal.organisation_id
    if organisation is None:
        raise ProblemError(
            422,
            "Invalid request",
            "A signatory is named with its organisation: give organisation_id.",
            errors=[{"field": "organisation_id", "in": "body", "message": "required"}],
        )
    return person_id(f"{organisation}/{body.signatory_name}")


def _own(system: System, principal: Principal, subject: UUID, body: Erasure) -> bool:
    """May this caller erase ``subject``? Admins anyone; an organisation its own people."""
    if principal.role == "admin":
        return True
    organisation = principal.organisation_id
    if body.signatory_name is not None:
        return body.organisation_id in (None, organisation)
    with system.db.read() as conn:
        linked = conn.execute(
            select(registrations.c.registration_id)
            .where(
                registrations.c.person_id == subject,
                registrations.c.organisation_id == organisation,
            )
            .limit(1)
        ).first()
    return linked is not None


@router.post("/erase", response_model=Erased, responses=ERRORS)
async def erase_person(
    body: Erasure, request: Request, response: Response, system: SystemDep, principal: Eraser
) -> Erased:
    """Erase a person: their names, e-mails and titles read as erased (null) everywhere from
    now on — read models, the feed, the live stream, webhooks, CSV and documents compiled
    later — while counts, the endorsements of organisations and the log's hashes stay intact.
    Integrators receive `person.erased` and should delete their copies."""
    subject = _subject(body, principal)
    allowed = await in_thread(_own, system, principal, subject, body)
    known = await in_thread(system.store.knows, subject)
    recorded_before = await in_thread(system.store.stream_version, subject)
    if not allowed or not (known or recorded_before):
        raise ProblemError(404, "Not found", f"No person {subject} that this key may erase.")
    try:
        outcome = await run(
            system, request, response, principal, PERSON, subject, ErasePerson(subject, body.reason)
        )
    except AlreadyErased:
        # Erased before — and if that request died before the key went, it goes now.
        await in_thread(system.store.forget, subject)
        raise
    # Catching the projections up has normally deleted the key already (infra/projections/
    # erasures.py); if that failed, it goes now.
    deleted = await in_thread(system.store.forget, subject)
    recorded = outcome.recorded[0]
    return Erased(
        person_id=subject,
        position=outcome.position,
        key_deleted=known or deleted,
        erased_at=recorded.recorded_at,
    )
