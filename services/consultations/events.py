"""What happens to a consultation, as past-tense facts.

Every event names its consultation. Times are UTC. People's names and e-mails are
:class:`~services.messages.Personal`, with the person's id as subject.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from services.messages import DomainEvent, Personal
from services.registry import EVENTS


@dataclass(frozen=True)
class Speaker:
    person_id: UUID
    name: Personal[str]
    organisation_id: UUID | None = None


@EVENTS.register
@dataclass(frozen=True)
class ConsultationPlanned(DomainEvent):
    type = "consultation.planned"
    consultation_id: UUID
    title: str
    theme: str | None
    scope: str
    host_country: str
    city: str | None
    venue: str | None
    mode: str
    virtual_url: str | None
    timezone: str
    starts_at: datetime
    ends_at: datetime
    organiser_id: UUID
    co_organiser_ids: tuple[UUID, ...]
    partner_ids: tuple[UUID, ...]
    capacity: int | None
    thematic_areas: tuple[str, ...]
    objectives: tuple[str, ...]
    series_id: UUID | None


@EVENTS.register
@dataclass(frozen=True)
class ConsultationRevised(DomainEvent):
    """Changed details only: None means unchanged, ``cleared`` names details set to nothing.

    ``sequence`` is the consultation's calendar sequence after this revision; it is one more
    than before when the place (country, city, venue, mode, link or time zone) changed.
    """

    type = "consultation.revised"
    consultation_id: UUID
    sequence: int
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


@EVENTS.register
@dataclass(frozen=True)
class ConsultationRescheduled(DomainEvent):
    """New start and end; ``sequence`` (iCalendar SEQUENCE) is one more than before."""

    type = "consultation.rescheduled"
    consultation_id: UUID
    starts_at: datetime
    ends_at: datetime
    reason: str | None
    sequence: int


@EVENTS.register
@dataclass(frozen=True)
class RegistrationOpened(DomainEvent):
    """Registration is open until ``closes_at`` (also sent to move the deadline or reopen)."""

    type = "consultation.registration_opened"
    consultation_id: UUID
    closes_at: datetime


@EVENTS.register
@dataclass(frozen=True)
class RegistrationClosed(DomainEvent):
    type = "consultation.registration_closed"
    consultation_id: UUID


@EVENTS.register
@dataclass(frozen=True)
class SessionScheduled(DomainEvent):
    type = "consultation.session_scheduled"
    consultation_id: UUID
    session_id: UUID
    title: str
    kind: str
    starts_at: datetime
    ends_at: datetime
    thematic_area: str | None
    speakers: tuple[Speaker, ...]
    sequence: int = 0


@EVENTS.register
@dataclass(frozen=True)
class SessionChanged(DomainEvent):
    """The whole session as it now is; ``sequence`` is one more than before."""

    type = "consultation.session_changed"
    consultation_id: UUID
    session_id: UUID
    title: str
    kind: str
    starts_at: datetime
    ends_at: datetime
    thematic_area: str | None
    speakers: tuple[Speaker, ...]
    sequence: int


@EVENTS.register
@dataclass(frozen=True)
class SessionRemoved(DomainEvent):
    type = "consultation.session_removed"
    consultation_id: UUID
    session_id: UUID


@EVENTS.register
@dataclass(frozen=True)
class WorkingGroupFormed(DomainEvent):
    type = "consultation.working_group_formed"
    consultation_id: UUID
    working_group_id: UUID
    thematic_area: str
    facilitator_registration_id: UUID | None


@EVENTS.register
@dataclass(frozen=True)
class ParticipantRegistered(DomainEvent):
    type = "consultation.participant_registered"
    consultation_id: UUID
    registration_id: UUID
    person_id: UUID
    name: Personal[str]
    email: Personal[str]
    organisation_id: UUID | None
    role: str
    country: str | None


@EVENTS.register
@dataclass(frozen=True)
class ParticipantWaitlisted(DomainEvent):
    """Registered beyond capacity: in line for a seat, in the order of these events."""

    type = "consultation.participant_waitlisted"
    consultation_id: UUID
    registration_id: UUID
    person_id: UUID
    name: Personal[str]
    email: Personal[str]
    organisation_id: UUID | None
    role: str
    country: str | None


@EVENTS.register
@dataclass(frozen=True)
class ParticipantPromoted(DomainEvent):
    """A waitlisted participant got a seat."""

    type = "consultation.participant_promoted"
    consultation_id: UUID
    registration_id: UUID


@EVENTS.register
@dataclass(frozen=True)
class RegistrationCancelled(DomainEvent):
    """``cancelled_by`` is "organisation" (then ``organisation_id`` names it) or "organiser"."""

    type = "consultation.registration_cancelled"
    consultation_id: UUID
    registration_id: UUID
    reason: str | None
    cancelled_by: str
    organisation_id: UUID | None = None


@EVENTS.register
@dataclass(frozen=True)
class ParticipantCheckedIn(DomainEvent):
    type = "consultation.participant_checked_in"
    consultation_id: UUID
    registration_id: UUID


@EVENTS.register
@dataclass(frozen=True)
class ParticipantAssigned(DomainEvent):
    """A participant joined a working group (leaving the one they were in, if any)."""

    type = "consultation.participant_assigned"
    consultation_id: UUID
    registration_id: UUID
    working_group_id: UUID


@EVENTS.register
@dataclass(frozen=True)
class ConsultationCompleted(DomainEvent):
    """The consultation was held."""

    type = "consultation.completed"
    consultation_id: UUID


@EVENTS.register
@dataclass(frozen=True)
class ConsultationCancelled(DomainEvent):
    type = "consultation.cancelled"
    consultation_id: UUID
    reason: str


@EVENTS.register
@dataclass(frozen=True)
class RemindersConfigured(DomainEvent):
    """The consultation's own reminder offsets, in seconds before each anchor; anchors not
    named here use the defaults."""

    type = "consultation.reminders_configured"
    consultation_id: UUID
    offsets: Mapping[str, tuple[int, ...]]
