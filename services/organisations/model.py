"""The organisation aggregate: decide and evolve."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from uuid import UUID

from services.decider import Context, Decider
from services.messages import DomainEvent
from services.organisations.commands import RegisterOrganisation, ReviseOrganisation
from services.organisations.errors import OrganisationAlreadyRegistered, UnknownOrganisation
from services.organisations.events import OrganisationRegistered, OrganisationRevised

STREAM_TYPE = "organisation"


@dataclass(frozen=True)
class Organisation:
    organisation_id: UUID | None = None
    name: str = ""
    acronym: str | None = None
    kind: str = ""
    country: str = ""
    email: str | None = None
    website: str | None = None

    @property
    def exists(self) -> bool:
        return self.organisation_id is not None


Command = RegisterOrganisation | ReviseOrganisation
DETAILS = ("name", "acronym", "kind", "country", "email", "website")


def evolve(state: Organisation, event: DomainEvent) -> Organisation:
    match event:
        case OrganisationRegistered():
            return Organisation(**{f.name: getattr(event, f.name) for f in fields(event)})
        case OrganisationRevised():
            changes = {k: getattr(event, k) for k in DETAILS if getattr(event, k) is not None}
            return replace(state, **changes)
    return state


def decide(state: Organisation, command: Command, ctx: Context) -> Sequence[DomainEvent]:
    match command:
        case RegisterOrganisation():
            if state.exists:
                raise OrganisationAlreadyRegistered(
                    f"organisation {command.organisation_id} is already registered"
                )
            return [
                OrganisationRegistered(
                    organisation_id=command.organisation_id,
                    name=command.name,
                    acronym=command.acronym,
                    kind=command.kind,
                    country=command.country,
                    email=command.email,
                    website=command.website,
                )
            ]
        case ReviseOrganisation():
            if not state.exists:
                raise UnknownOrganisation(f"no organisation {command.organisation_id}")
            changes = {
                k: getattr(command, k)
                for k in DETAILS
                if getattr(command, k) is not None and getattr(command, k) != getattr(state, k)
            }
            if not changes:
                return []
            return [OrganisationRevised(organisation_id=command.organisation_id, **changes)]
    raise TypeError(f"not an organisation command: {command!r}")


ORGANISATION: Decider[Organisation, Command] = Decider(STREAM_TYPE, Organisation, evolve, decide)
