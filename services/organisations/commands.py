"""What can be asked of an organisation."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

#: Kinds of organisation met in the sources; data, not code paths.
KINDS = (
    "ngo",
    "trade_union",
    "migrant_association",
    "nhri",
    "un_agency",
    "intergovernmental",
    "ministry",
    "academic",
    "donor",
    "network",
    "other",
)


@dataclass(frozen=True)
class RegisterOrganisation:
    organisation_id: UUID
    name: str
    kind: str
    country: str
    acronym: str | None = None
    email: str | None = None
    website: str | None = None


@dataclass(frozen=True)
class ReviseOrganisation:
    organisation_id: UUID
    name: str | None = None
    acronym: str | None = None
    kind: str | None = None
    country: str | None = None
    email: str | None = None
    website: str | None = None
