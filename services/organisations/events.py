"""What happens to an organisation, as past-tense facts."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from services.messages import DomainEvent
from services.registry import EVENTS


@EVENTS.register
@dataclass(frozen=True)
class OrganisationRegistered(DomainEvent):
    type = "organisation.registered"
    organisation_id: UUID
    name: str
    acronym: str | None
    kind: str
    country: str
    email: str | None
    website: str | None


@EVENTS.register
@dataclass(frozen=True)
class OrganisationRevised(DomainEvent):
    """New details; fields left as None did not change."""

    type = "organisation.revised"
    organisation_id: UUID
    name: str | None = None
    acronym: str | None = None
    kind: str | None = None
    country: str | None = None
    email: str | None = None
    website: str | None = None
