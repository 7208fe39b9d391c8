"""Errors of the consultations context: one family, each with a stable ``code``."""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

from services.errors import DomainError


class ConsultationError(DomainError):
    code = "consultation-error"


class UnknownConsultation(ConsultationError):
    """The consultation was never planned."""

    code = "unknown-consultation"


class ConsultationAlreadyPlanned(ConsultationError):
    code = "consultation-already-planned"


class InvalidValue(ConsultationError):
    """A value a command carries is not acceptable; ``field`` names it."""

    code = "invalid-value"

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class InvalidSchedule(ConsultationError):
    """An end not after its start, or a session outside the consultation's time."""

    code = "invalid-schedule"


class SessionsOutsideSchedule(InvalidSchedule):
    """A reschedule would leave agenda sessions outside the consultation's new time."""

    code = "sessions-outside-schedule"

    def __init__(self, session_ids: Iterable[UUID], titles: Iterable[str]) -> None:
        self.session_ids = tuple(session_ids)
        names = ", ".join(f"{t!r} ({s})" for s, t in zip(self.session_ids, titles, strict=True))
        super().__init__(
            f"these sessions would lie outside the new schedule: {names}; move or remove them first"
        )


class InvalidRegistrationDeadline(ConsultationError):
    """Registration must close in the future and no later than the consultation ends."""

    code = "invalid-registration-deadline"


class ReasonRequired(ConsultationError):
    code = "reason-required"


class ConsultationIsCancelled(ConsultationError):
    code = "consultation-cancelled"


class ConsultationAlreadyHeld(ConsultationError):
    code = "consultation-already-held"


class ConsultationNotStarted(ConsultationError):
    """A consultation cannot be completed before it starts."""

    code = "consultation-not-started"


class RegistrationNotOpen(ConsultationError):
    """Registration was never opened."""

    code = "registration-not-open"


class RegistrationIsClosed(ConsultationError):
    """Registration was closed, or its deadline has passed."""

    code = "registration-closed"


class AlreadyRegistered(ConsultationError):
    """The person already has an active (registered or waitlisted) registration."""

    code = "already-registered"

    def __init__(self, person_id: UUID, registration_id: UUID) -> None:
        self.person_id = person_id
        self.registration_id = registration_id
        super().__init__(f"person {person_id} is already registered as {registration_id}")


class NotYourOrganisation(ConsultationError):
    """An organisation acted for a person or registration of another organisation."""

    code = "not-your-organisation"


class DuplicateIdentifier(ConsultationError):
    """A new registration, session or working group reuses an id already in use."""

    code = "duplicate-identifier"


class UnknownRegistration(ConsultationError):
    code = "unknown-registration"


class RegistrationIsCancelled(ConsultationError):
    code = "registration-cancelled"


class RegistrationIsWaitlisted(ConsultationError):
    """Only participants with a seat can check in."""

    code = "registration-waitlisted"


class CapacityBelowRegistered(ConsultationError):
    """Capacity cannot go below the number of participants already holding a seat."""

    code = "capacity-below-registered"


class UnknownSession(ConsultationError):
    code = "unknown-session"


class UnknownWorkingGroup(ConsultationError):
    code = "unknown-working-group"


class UnknownThematicArea(ConsultationError):
    """The thematic area is not one of the consultation's."""

    code = "unknown-thematic-area"


class WorkingGroupAlreadyFormed(ConsultationError):
    """There is one working group per thematic area."""

    code = "working-group-already-formed"


class ThematicAreaInUse(ConsultationError):
    """A thematic area cannot be dropped while a session or working group uses it."""

    code = "thematic-area-in-use"
