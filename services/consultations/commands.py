"""What can be asked of a consultation.

Optional fields left as ``None`` mean "no change" in revisions; a nullable detail is set to
nothing by naming it in ``cleared`` (a PATCH with ``null``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

SCOPES = ("regional", "national")
MODES = ("in_person", "virtual", "hybrid")
SESSION_KINDS = ("plenary", "panel", "working_group")
ROLES = ("delegate", "speaker", "resource_person", "observer", "facilitator")

#: The seven thematic areas used across the sources: a default to offer, not a closed list.
DEFAULT_THEMATIC_AREAS = (
    "Decent work and social protection",
    "Undocumented migrant workers and cross-cutting human rights issues",
    "Access to justice",
    "Information, empowerment and recruitment",
    "Repatriation and reintegration",
    "Cooperation among member states and mechanisms",
    "Standard-setting and ratification of the UN migrant workers convention (CMW)",
)


@dataclass(frozen=True)
class PlanConsultation:
    consultation_id: UUID
    title: str
    scope: str
    host_country: str
    mode: str
    timezone: str
    starts_at: datetime
    ends_at: datetime
    organiser_id: UUID
    theme: str | None = None
    city: str | None = None
    venue: str | None = None
    virtual_url: str | None = None
    co_organiser_ids: tuple[UUID, ...] = ()
    partner_ids: tuple[UUID, ...] = ()
    capacity: int | None = None
    thematic_areas: tuple[str, ...] = ()
    objectives: tuple[str, ...] = ()
    series_id: UUID | None = None


@dataclass(frozen=True)
class ReviseConsultation:
    """New details; ``None`` leaves a detail as it is, ``cleared`` names details to empty."""

    consultation_id: UUID
    title: str | None = None
    theme: str | None = None
    scope: str | None = None
    host_country: str | None = None
    city: str | None = None
    venue: str | None = None
    mode: str | None = None
    virtual_url: str | None = None
    timezone: str | None = None
    organiser_id: UUID | None = None
    co_organiser_ids: tuple[UUID, ...] | None = None
    partner_ids: tuple[UUID, ...] | None = None
    capacity: int | None = None
    thematic_areas: tuple[str, ...] | None = None
    objectives: tuple[str, ...] | None = None
    series_id: UUID | None = None
    cleared: tuple[str, ...] = ()


@dataclass(frozen=True)
class RescheduleConsultation:
    consultation_id: UUID
    starts_at: datetime
    ends_at: datetime
    reason: str | None = None


@dataclass(frozen=True)
class OpenRegistration:
    consultation_id: UUID
    closes_at: datetime


@dataclass(frozen=True)
class CloseRegistration:
    consultation_id: UUID


@dataclass(frozen=True)
class SpeakerDetails:
    """A speaker as the caller names them; the event wraps the name as personal data."""

    person_id: UUID
    name: str
    organisation_id: UUID | None = None


@dataclass(frozen=True)
class ScheduleSession:
    consultation_id: UUID
    session_id: UUID
    title: str
    kind: str
    starts_at: datetime
    ends_at: datetime
    thematic_area: str | None = None
    speakers: tuple[SpeakerDetails, ...] = ()


@dataclass(frozen=True)
class ChangeSession:
    """New session details; ``None`` leaves one as it is, ``cleared`` may name thematic_area."""

    consultation_id: UUID
    session_id: UUID
    title: str | None = None
    kind: str | None = None
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    thematic_area: str | None = None
    speakers: tuple[SpeakerDetails, ...] | None = None
    cleared: tuple[str, ...] = ()


@dataclass(frozen=True)
class RemoveSession:
    consultation_id: UUID
    session_id: UUID


@dataclass(frozen=True)
class FormWorkingGroup:
    consultation_id: UUID
    working_group_id: UUID
    thematic_area: str
    facilitator_registration_id: UUID | None = None


@dataclass(frozen=True)
class RegisterParticipant:
    consultation_id: UUID
    registration_id: UUID
    person_id: UUID
    name: str
    email: str
    role: str
    organisation_id: UUID | None = None
    country: str | None = None


@dataclass(frozen=True)
class CancelRegistration:
    consultation_id: UUID
    registration_id: UUID
    reason: str | None = None


@dataclass(frozen=True)
class CheckIn:
    consultation_id: UUID
    registration_id: UUID


@dataclass(frozen=True)
class AssignToWorkingGroup:
    consultation_id: UUID
    registration_id: UUID
    working_group_id: UUID


@dataclass(frozen=True)
class CompleteConsultation:
    consultation_id: UUID


@dataclass(frozen=True)
class CancelConsultation:
    consultation_id: UUID
    reason: str


@dataclass(frozen=True)
class ConfigureReminders:
    """Offsets before each reminder anchor (see ``services.reminders.rules``); an anchor left
    out keeps its current offsets, an empty tuple turns its reminders off."""

    consultation_id: UUID
    offsets: Mapping[str, tuple[timedelta, ...]]
