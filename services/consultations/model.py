"""The consultation aggregate: decide and evolve.

Rescheduling and the agenda: *moving* a consultation (new start, same length) moves its whole
agenda by the same amount, recorded as one ``SessionChanged`` per session after the
``ConsultationRescheduled``; *resizing* it (a new length) leaves every session where it is and
is refused with :class:`SessionsOutsideSchedule`, naming each session that would no longer fit,
so the organiser moves or removes those sessions first.

Seats and the waitlist: with a capacity, registrations beyond it are waitlisted in order.
Whenever a seat frees up (a seat holder cancels, capacity is raised or made unlimited) the first
in line are promoted in the same decision, right after the event that freed the seat.

The calendar ``sequence`` (iCalendar SEQUENCE) starts at 0 and grows by one on each reschedule
and each revision of the place (country, city, venue, mode, link or time zone); each session
has its own, growing by one on each change.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services.consultations.commands import (
    MODES,
    ROLES,
    SCOPES,
    SESSION_KINDS,
    AssignToWorkingGroup,
    CancelConsultation,
    CancelRegistration,
    ChangeSession,
    CheckIn,
    CloseRegistration,
    CompleteConsultation,
    ConfigureReminders,
    FormWorkingGroup,
    OpenRegistration,
    PlanConsultation,
    RegisterParticipant,
    RemoveSession,
    RescheduleConsultation,
    ReviseConsultation,
    ScheduleSession,
    SpeakerDetails,
)
from services.consultations.errors import (
    AlreadyRegistered,
    CapacityBelowRegistered,
    ConsultationAlreadyHeld,
    ConsultationAlreadyPlanned,
    ConsultationIsCancelled,
    ConsultationNotStarted,
    DuplicateIdentifier,
    InvalidRegistrationDeadline,
    InvalidSchedule,
    InvalidValue,
    NotYourOrganisation,
    ReasonRequired,
    RegistrationIsCancelled,
    RegistrationIsClosed,
    RegistrationIsWaitlisted,
    RegistrationNotOpen,
    SessionsOutsideSchedule,
    ThematicAreaInUse,
    UnknownConsultation,
    UnknownRegistration,
    UnknownSession,
    UnknownThematicArea,
    UnknownWorkingGroup,
    WorkingGroupAlreadyFormed,
)
from services.consultations.events import (
    ConsultationCancelled,
    ConsultationCompleted,
    ConsultationPlanned,
    ConsultationRescheduled,
    ConsultationRevised,
    ParticipantAssigned,
    ParticipantCheckedIn,
    ParticipantPromoted,
    ParticipantRegistered,
    ParticipantWaitlisted,
    RegistrationCancelled,
    RegistrationClosed,
    RegistrationOpened,
    RemindersConfigured,
    SessionChanged,
    SessionRemoved,
    SessionScheduled,
    Speaker,
    WorkingGroupFormed,
)
from services.decider import Context, Decider
from services.messages import DomainEvent, Personal
from services.reminders.rules import check_offsets

STREAM_TYPE = "consultation"

#: Statuses of :func:`status_at`.
STATUSES = ("planned", "registration_open", "registration_closed", "cancelled", "completed")

REGISTERED = "registered"
WAITLISTED = "waitlisted"
CANCELLED = "cancelled"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: Details a revision may change, in the order of ConsultationPlanned.
DETAILS = (
    "title",
    "theme",
    "scope",
    "host_country",
    "city",
    "venue",
    "mode",
    "virtual_url",
    "timezone",
    "organiser_id",
    "co_organiser_ids",
    "partner_ids",
    "capacity",
    "thematic_areas",
    "objectives",
    "series_id",
)
#: Details a revision may set to nothing (no capacity means unlimited).
CLEARABLE = ("theme", "city", "venue", "virtual_url", "capacity", "series_id")
#: Details that make up the place: changing one is a calendar update (sequence + 1).
PLACE = frozenset({"host_country", "city", "venue", "mode", "virtual_url", "timezone"})


@dataclass(frozen=True)
class Session:
    session_id: UUID
    title: str
    kind: str
    starts_at: datetime
    ends_at: datetime
    thematic_area: str | None
    speakers: tuple[Speaker, ...]
    sequence: int = 0


@dataclass(frozen=True)
class WorkingGroup:
    working_group_id: UUID
    thematic_area: str
    facilitator_registration_id: UUID | None


@dataclass(frozen=True)
class Registration:
    registration_id: UUID
    person_id: UUID
    name: Personal[str]
    email: Personal[str]
    organisation_id: UUID | None
    role: str
    country: str | None
    status: str
    checked_in: bool = False
    working_group_id: UUID | None = None

    @property
    def active(self) -> bool:
        """Registered or waitlisted, not cancelled."""
        return self.status != CANCELLED


@dataclass(frozen=True)
class Consultation:
    consultation_id: UUID | None = None
    title: str = ""
    theme: str | None = None
    scope: str = ""
    host_country: str = ""
    city: str | None = None
    venue: str | None = None
    mode: str = ""
    virtual_url: str | None = None
    timezone: str = "UTC"
    starts_at: datetime = _EPOCH
    ends_at: datetime = _EPOCH
    organiser_id: UUID | None = None
    co_organiser_ids: tuple[UUID, ...] = ()
    partner_ids: tuple[UUID, ...] = ()
    capacity: int | None = None
    thematic_areas: tuple[str, ...] = ()
    objectives: tuple[str, ...] = ()
    series_id: UUID | None = None
    sequence: int = 0
    registration_opened: bool = False
    registration_closes_at: datetime | None = None
    registration_closed: bool = False
    cancelled: bool = False
    cancellation_reason: str | None = None
    completed: bool = False
    sessions: Mapping[UUID, Session] = field(default_factory=dict)
    working_groups: Mapping[UUID, WorkingGroup] = field(default_factory=dict)
    registrations: Mapping[UUID, Registration] = field(default_factory=dict)
    waitlist_ids: tuple[UUID, ...] = ()
    #: Reminder offsets (seconds) per anchor where the organiser chose them.
    reminder_offsets: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def exists(self) -> bool:
        return self.consultation_id is not None

    @property
    def registered(self) -> tuple[Registration, ...]:
        """Participants holding a seat, in registration order."""
        return tuple(r for r in self.registrations.values() if r.status == REGISTERED)

    @property
    def registered_count(self) -> int:
        return sum(1 for r in self.registrations.values() if r.status == REGISTERED)

    @property
    def waitlist(self) -> tuple[Registration, ...]:
        """Waitlisted participants, first in line first."""
        return tuple(self.registrations[i] for i in self.waitlist_ids)

    @property
    def seats_left(self) -> int | None:
        """Free seats, or None when capacity is unlimited."""
        if self.capacity is None:
            return None
        return max(self.capacity - self.registered_count, 0)

    @property
    def checked_in_count(self) -> int:
        return sum(1 for r in self.registrations.values() if r.active and r.checked_in)

    @property
    def counts_by_role(self) -> dict[str, int]:
        """Seat holders by role."""
        return dict(Counter(r.role for r in self.registered))

    @property
    def counts_by_country(self) -> dict[str | None, int]:
        """Seat holders by country (None: not given)."""
        return dict(Counter(r.country for r in self.registered))

    @property
    def sessions_in_order(self) -> tuple[Session, ...]:
        """The agenda by start time."""
        return tuple(sorted(self.sessions.values(), key=lambda s: (s.starts_at, s.ends_at)))

    def waitlist_position(self, registration_id: UUID) -> int | None:
        """1 for the first in line; None if not waitlisted."""
        try:
            return self.waitlist_ids.index(registration_id) + 1
        except ValueError:
            return None

    def active_registration_of(self, person_id: UUID) -> Registration | None:
        """The person's registered or waitlisted registration, if any."""
        for registration in self.registrations.values():
            if registration.person_id == person_id and registration.active:
                return registration
        return None

    def working_group_for(self, thematic_area: str) -> WorkingGroup | None:
        for group in self.working_groups.values():
            if group.thematic_area == thematic_area:
                return group
        return None


def registration_open_at(state: Consultation, now: datetime) -> bool:
    """Whether a participant could register at ``now``."""
    return (
        state.exists
        and not state.cancelled
        and not state.completed
        and state.registration_opened
        and not state.registration_closed
        and state.registration_closes_at is not None
        and now < state.registration_closes_at
    )


def status_at(state: Consultation, now: datetime) -> str:
    """One of :data:`STATUSES`, as of ``now`` (registration closes by itself at its deadline)."""
    if not state.exists:
        raise UnknownConsultation("no such consultation")
    if state.cancelled:
        return "cancelled"
    if state.completed:
        return "completed"
    if registration_open_at(state, now):
        return "registration_open"
    if state.registration_opened:
        return "registration_closed"
    return "planned"


Command = (
    PlanConsultation
    | ReviseConsultation
    | RescheduleConsultation
    | OpenRegistration
    | CloseRegistration
    | ScheduleSession
    | ChangeSession
    | RemoveSession
    | FormWorkingGroup
    | RegisterParticipant
    | CancelRegistration
    | CheckIn
    | AssignToWorkingGroup
    | CompleteConsultation
    | CancelConsultation
    | ConfigureReminders
)


# --- evolve -------------------------------------------------------------------------------


def evolve(state: Consultation, event: DomainEvent) -> Consultation:
    if isinstance(event, _ROSTER_EVENTS):
        return _roster_run(state, (event,))
    match event:
        case ConsultationPlanned():
            return Consultation(**{f.name: getattr(event, f.name) for f in fields(event)})
        case ConsultationRevised():
            changes: dict[str, Any] = {
                k: getattr(event, k) for k in DETAILS if getattr(event, k) is not None
            }
            changes.update(dict.fromkeys(event.cleared))
            return replace(state, sequence=event.sequence, **changes)
        case ConsultationRescheduled():
            return replace(
                state, starts_at=event.starts_at, ends_at=event.ends_at, sequence=event.sequence
            )
        case RegistrationOpened():
            return replace(
                state,
                registration_opened=True,
                registration_closes_at=event.closes_at,
                registration_closed=False,
            )
        case RegistrationClosed():
            return replace(state, registration_closed=True)
        case SessionScheduled() | SessionChanged():
            session = Session(
                event.session_id,
                event.title,
                event.kind,
                event.starts_at,
                event.ends_at,
                event.thematic_area,
                event.speakers,
                event.sequence,
            )
            return replace(state, sessions={**state.sessions, session.session_id: session})
        case SessionRemoved():
            sessions = {k: v for k, v in state.sessions.items() if k != event.session_id}
            return replace(state, sessions=sessions)
        case WorkingGroupFormed():
            group = WorkingGroup(
                event.working_group_id, event.thematic_area, event.facilitator_registration_id
            )
            groups = {**state.working_groups, group.working_group_id: group}
            return replace(state, working_groups=groups)
        case ConsultationCompleted():
            return replace(state, completed=True)
        case ConsultationCancelled():
            return replace(state, cancelled=True, cancellation_reason=event.reason)
        case RemindersConfigured():
            return replace(state, reminder_offsets={**state.reminder_offsets, **event.offsets})
    return state


#: The events that change only the roster and the waitlist.
_ROSTER_EVENTS = (
    ParticipantRegistered,
    ParticipantWaitlisted,
    ParticipantPromoted,
    RegistrationCancelled,
    ParticipantCheckedIn,
    ParticipantAssigned,
)


def evolve_all(state: Consultation, events: Iterable[DomainEvent]) -> Consultation:
    """The state after ``events``, as :func:`evolve` one by one would leave it.

    A run of registration events changes one copy of the roster and the waitlist instead of
    copying them per event, so folding a consultation with thousands of registrations takes
    linear time, not quadratic.
    """
    run: list[DomainEvent] = []
    for event in events:
        if isinstance(event, _ROSTER_EVENTS):
            run.append(event)
            continue
        if run:
            state, run = _roster_run(state, run), []
        state = evolve(state, event)
    return _roster_run(state, run) if run else state


def _roster_run(state: Consultation, events: Iterable[DomainEvent]) -> Consultation:
    """``state`` after a run of roster events, applied to one copy of the roster and line."""
    roster, line = dict(state.registrations), list(state.waitlist_ids)
    for event in events:
        rid = event.registration_id  # type: ignore[attr-defined]
        match event:
            case ParticipantRegistered() | ParticipantWaitlisted():
                waitlisted = isinstance(event, ParticipantWaitlisted)
                roster[rid] = Registration(
                    registration_id=rid,
                    person_id=event.person_id,
                    name=event.name,
                    email=event.email,
                    organisation_id=event.organisation_id,
                    role=event.role,
                    country=event.country,
                    status=WAITLISTED if waitlisted else REGISTERED,
                )
                if waitlisted:
                    line.append(rid)
            case ParticipantPromoted() | RegistrationCancelled():
                promoted = isinstance(event, ParticipantPromoted)
                roster[rid] = replace(roster[rid], status=REGISTERED if promoted else CANCELLED)
                # Whoever is no longer waitlisted leaves the line.
                line = [i for i in line if roster[i].status == WAITLISTED]
            case ParticipantCheckedIn():
                roster[rid] = replace(roster[rid], checked_in=True)
            case ParticipantAssigned():
                roster[rid] = replace(roster[rid], working_group_id=event.working_group_id)
    return replace(state, registrations=roster, waitlist_ids=tuple(line))


# --- decide -------------------------------------------------------------------------------


def decide(state: Consultation, command: Command, ctx: Context) -> Sequence[DomainEvent]:
    if isinstance(command, PlanConsultation):
        return _plan(state, command)
    if not state.exists or state.consultation_id != command.consultation_id:
        raise UnknownConsultation(f"no consultation {command.consultation_id}")
    match command:
        case ReviseConsultation():
            return _revise(state, command)
        case RescheduleConsultation():
            return _reschedule(state, command, ctx)
        case OpenRegistration():
            return _open_registration(state, command, ctx)
        case CloseRegistration():
            return _close_registration(state, command, ctx)
        case ScheduleSession():
            return _schedule_session(state, command)
        case ChangeSession():
            return _change_session(state, command)
        case RemoveSession():
            check_changeable(state)
            _session(state, command.session_id)
            return [SessionRemoved(command.consultation_id, command.session_id)]
        case FormWorkingGroup():
            return _form_working_group(state, command)
        case RegisterParticipant():
            return _register(state, command, ctx)
        case CancelRegistration():
            return _cancel_registration(state, command, ctx)
        case CheckIn():
            return _check_in(state, command)
        case AssignToWorkingGroup():
            return _assign(state, command)
        case CompleteConsultation():
            return _complete(state, command, ctx)
        case CancelConsultation():
            return _cancel(state, command)
        case ConfigureReminders():
            return _configure_reminders(state, command)
    raise TypeError(f"not a consultation command: {command!r}")


def _plan(state: Consultation, command: PlanConsultation) -> Sequence[DomainEvent]:
    if state.exists:
        raise ConsultationAlreadyPlanned(
            f"consultation {command.consultation_id} is already planned"
        )
    starts_at, ends_at = check_window(command.starts_at, command.ends_at)
    details = {k: _checked(k, getattr(command, k)) for k in DETAILS}
    return [
        ConsultationPlanned(
            consultation_id=command.consultation_id,
            starts_at=starts_at,
            ends_at=ends_at,
            **details,
        )
    ]


def _revise(state: Consultation, command: ReviseConsultation) -> Sequence[DomainEvent]:
    check_changeable(state)
    check_cleared(command.cleared, CLEARABLE, command)
    proposed = {k: _checked(k, getattr(command, k)) for k in DETAILS}
    changes = {k: v for k, v in proposed.items() if v is not None and v != getattr(state, k)}
    cleared = tuple(k for k in CLEARABLE if k in command.cleared and getattr(state, k) is not None)
    if not changes and not cleared:
        return []
    if "thematic_areas" in changes:
        check_areas_kept(state, changes["thematic_areas"])
    if "capacity" in changes and changes["capacity"] < state.registered_count:
        raise CapacityBelowRegistered(
            f"{state.registered_count} participants hold a seat; "
            f"capacity cannot be {changes['capacity']}"
        )
    place_changed = not PLACE.isdisjoint(changes.keys() | set(cleared))
    revised = ConsultationRevised(
        consultation_id=command.consultation_id,
        sequence=state.sequence + (1 if place_changed else 0),
        cleared=cleared,
        **changes,
    )
    return [revised, *promotions(evolve(state, revised), command.consultation_id)]


def _reschedule(
    state: Consultation, command: RescheduleConsultation, ctx: Context
) -> Sequence[DomainEvent]:
    check_changeable(state)
    starts_at, ends_at = check_window(command.starts_at, command.ends_at)
    if (starts_at, ends_at) == (state.starts_at, state.ends_at):
        return []
    closes_at = state.registration_closes_at
    if registration_open_at(state, ctx.now) and closes_at is not None and closes_at > ends_at:
        raise InvalidRegistrationDeadline(
            f"registration closes at {closes_at.isoformat()}, after the new end "
            f"{ends_at.isoformat()}; move the registration deadline first"
        )
    moved = ends_at - starts_at == state.ends_at - state.starts_at
    delta = starts_at - state.starts_at if moved else timedelta(0)
    agenda = state.sessions_in_order
    misfits = [s for s in agenda if s.starts_at + delta < starts_at or s.ends_at + delta > ends_at]
    if misfits:
        raise SessionsOutsideSchedule([s.session_id for s in misfits], [s.title for s in misfits])
    rescheduled = ConsultationRescheduled(
        consultation_id=command.consultation_id,
        starts_at=starts_at,
        ends_at=ends_at,
        reason=_optional_reason(command.reason),
        sequence=state.sequence + 1,
    )
    if not delta:
        return [rescheduled]
    shifted = [
        _session_changed(
            command.consultation_id,
            replace(s, starts_at=s.starts_at + delta, ends_at=s.ends_at + delta),
        )
        for s in agenda
    ]
    return [rescheduled, *shifted]


def _open_registration(
    state: Consultation, command: OpenRegistration, ctx: Context
) -> Sequence[DomainEvent]:
    check_changeable(state)
    closes_at = _utc("closes_at", command.closes_at)
    if closes_at <= ctx.now:
        raise InvalidRegistrationDeadline(
            f"registration must close in the future, not at {closes_at.isoformat()}"
        )
    if closes_at > state.ends_at:
        raise InvalidRegistrationDeadline(
            f"registration must close by the end of the consultation ({state.ends_at.isoformat()})"
        )
    if registration_open_at(state, ctx.now) and state.registration_closes_at == closes_at:
        return []
    return [RegistrationOpened(command.consultation_id, closes_at)]


def _close_registration(
    state: Consultation, command: CloseRegistration, ctx: Context
) -> Sequence[DomainEvent]:
    check_changeable(state)
    if not state.registration_opened:
        raise RegistrationNotOpen("registration was never opened")
    if not registration_open_at(state, ctx.now):
        return []
    return [RegistrationClosed(command.consultation_id)]


def _schedule_session(state: Consultation, command: ScheduleSession) -> Sequence[DomainEvent]:
    check_changeable(state)
    if command.session_id in state.sessions:
        raise DuplicateIdentifier(f"session {command.session_id} already exists")
    starts_at, ends_at = check_window(command.starts_at, command.ends_at)
    check_within(state, starts_at, ends_at)
    area = command.thematic_area
    return [
        SessionScheduled(
            consultation_id=command.consultation_id,
            session_id=command.session_id,
            title=_text("title", command.title),
            kind=_choice("kind", command.kind, SESSION_KINDS),
            starts_at=starts_at,
            ends_at=ends_at,
            thematic_area=None if area is None else check_area(state, area),
            speakers=_speakers(command.speakers),
        )
    ]


def _change_session(state: Consultation, command: ChangeSession) -> Sequence[DomainEvent]:
    check_changeable(state)
    session = _session(state, command.session_id)
    check_cleared(command.cleared, ("thematic_area",), command)
    starts_at, ends_at = check_window(
        session.starts_at if command.starts_at is None else command.starts_at,
        session.ends_at if command.ends_at is None else command.ends_at,
    )
    check_within(state, starts_at, ends_at)
    area = session.thematic_area
    if command.thematic_area is not None:
        area = check_area(state, command.thematic_area)
    elif "thematic_area" in command.cleared:
        area = None
    changed = Session(
        session_id=session.session_id,
        title=session.title if command.title is None else _text("title", command.title),
        kind=session.kind if command.kind is None else _choice("kind", command.kind, SESSION_KINDS),
        starts_at=starts_at,
        ends_at=ends_at,
        thematic_area=area,
        speakers=session.speakers if command.speakers is None else _speakers(command.speakers),
        sequence=session.sequence,
    )
    if changed == session:
        return []
    return [_session_changed(command.consultation_id, changed)]


def _session_changed(consultation_id: UUID, session: Session) -> SessionChanged:
    """The event for ``session`` as it now is, with the next sequence number."""
    return SessionChanged(
        consultation_id=consultation_id,
        session_id=session.session_id,
        title=session.title,
        kind=session.kind,
        starts_at=session.starts_at,
        ends_at=session.ends_at,
        thematic_area=session.thematic_area,
        speakers=session.speakers,
        sequence=session.sequence + 1,
    )


def _form_working_group(state: Consultation, command: FormWorkingGroup) -> Sequence[DomainEvent]:
    check_changeable(state)
    if command.working_group_id in state.working_groups:
        raise DuplicateIdentifier(f"working group {command.working_group_id} already exists")
    area = check_area(state, command.thematic_area)
    existing = state.working_group_for(area)
    if existing is not None:
        raise WorkingGroupAlreadyFormed(
            f"working group {existing.working_group_id} already works on {area!r}"
        )
    if command.facilitator_registration_id is not None:
        active_registration(state, command.facilitator_registration_id)
    return [
        WorkingGroupFormed(
            consultation_id=command.consultation_id,
            working_group_id=command.working_group_id,
            thematic_area=area,
            facilitator_registration_id=command.facilitator_registration_id,
        )
    ]


def _register(
    state: Consultation, command: RegisterParticipant, ctx: Context
) -> Sequence[DomainEvent]:
    check_registration_open(state, ctx.now)
    if ctx.organisation_id is not None and command.organisation_id != ctx.organisation_id:
        raise NotYourOrganisation(
            f"organisation {ctx.organisation_id} registers only its own people"
        )
    if command.registration_id in state.registrations:
        raise DuplicateIdentifier(f"registration {command.registration_id} already exists")
    existing = state.active_registration_of(command.person_id)
    if existing is not None:
        raise AlreadyRegistered(command.person_id, existing.registration_id)
    person = command.person_id
    seat_free = not state.waitlist_ids and (state.seats_left is None or state.seats_left > 0)
    event: type[ParticipantRegistered | ParticipantWaitlisted] = (
        ParticipantRegistered if seat_free else ParticipantWaitlisted
    )
    return [
        event(
            consultation_id=command.consultation_id,
            registration_id=command.registration_id,
            person_id=person,
            name=Personal(person, _text("name", command.name)),
            email=Personal(person, _email(command.email)),
            organisation_id=command.organisation_id,
            role=_choice("role", command.role, ROLES),
            country=None if command.country is None else _country("country", command.country),
        )
    ]


def _cancel_registration(
    state: Consultation, command: CancelRegistration, ctx: Context
) -> Sequence[DomainEvent]:
    check_changeable(state)
    registration = _registration(state, command.registration_id)
    acting_for = ctx.organisation_id
    if acting_for is not None and registration.organisation_id != acting_for:
        raise NotYourOrganisation(f"organisation {acting_for} cancels only its own registrations")
    if not registration.active:
        raise RegistrationIsCancelled(f"registration {command.registration_id} is cancelled")
    cancelled = RegistrationCancelled(
        consultation_id=command.consultation_id,
        registration_id=command.registration_id,
        reason=_optional_reason(command.reason),
        cancelled_by="organiser" if acting_for is None else "organisation",
        organisation_id=acting_for,
    )
    return [cancelled, *promotions(evolve(state, cancelled), command.consultation_id)]


def _check_in(state: Consultation, command: CheckIn) -> Sequence[DomainEvent]:
    if state.cancelled:
        raise ConsultationIsCancelled(f"consultation {command.consultation_id} was cancelled")
    registration = active_registration(state, command.registration_id)
    if registration.status == WAITLISTED:
        raise RegistrationIsWaitlisted(
            f"registration {command.registration_id} is on the waitlist, without a seat"
        )
    if registration.checked_in:
        return []
    return [ParticipantCheckedIn(command.consultation_id, command.registration_id)]


def _assign(state: Consultation, command: AssignToWorkingGroup) -> Sequence[DomainEvent]:
    check_changeable(state)
    registration = active_registration(state, command.registration_id)
    if command.working_group_id not in state.working_groups:
        raise UnknownWorkingGroup(f"no working group {command.working_group_id}")
    if registration.working_group_id == command.working_group_id:
        return []
    return [
        ParticipantAssigned(
            command.consultation_id, command.registration_id, command.working_group_id
        )
    ]


def _complete(
    state: Consultation, command: CompleteConsultation, ctx: Context
) -> Sequence[DomainEvent]:
    if state.cancelled:
        raise ConsultationIsCancelled(f"consultation {command.consultation_id} was cancelled")
    if state.completed:
        return []
    if ctx.now < state.starts_at:
        raise ConsultationNotStarted(
            f"consultation {command.consultation_id} starts at {state.starts_at.isoformat()}"
        )
    return [ConsultationCompleted(command.consultation_id)]


def _cancel(state: Consultation, command: CancelConsultation) -> Sequence[DomainEvent]:
    check_changeable(state)
    reason = _optional_reason(command.reason)
    if reason is None:
        raise ReasonRequired("say why the consultation is cancelled")
    return [ConsultationCancelled(command.consultation_id, reason)]


def _configure_reminders(state: Consultation, command: ConfigureReminders) -> Sequence[DomainEvent]:
    check_changeable(state)
    offsets: dict[str, tuple[int, ...]] = {}
    for anchor, chosen in command.offsets.items():
        try:
            checked = check_offsets(anchor, tuple(chosen))
        except ValueError as exc:
            raise InvalidValue(f"offsets.{anchor}", str(exc)) from None
        offsets[anchor] = tuple(int(o.total_seconds()) for o in checked)
    if all(state.reminder_offsets.get(a) == o for a, o in offsets.items()):
        return []
    return [RemindersConfigured(command.consultation_id, offsets)]


def promotions(state: Consultation, consultation_id: UUID) -> list[ParticipantPromoted]:
    """Promote the first in line for as many seats as are free, in waitlist order."""
    free = state.seats_left
    line = state.waitlist_ids if free is None else state.waitlist_ids[:free]
    return [ParticipantPromoted(consultation_id, registration_id) for registration_id in line]


# --- rules --------------------------------------------------------------------------------


def check_changeable(state: Consultation) -> None:
    """Neither cancelled nor held."""
    if state.cancelled:
        raise ConsultationIsCancelled(f"consultation {state.consultation_id} was cancelled")
    if state.completed:
        raise ConsultationAlreadyHeld(f"consultation {state.consultation_id} was already held")


def check_registration_open(state: Consultation, now: datetime) -> None:
    """A participant may register at ``now``; else the precise reason why not."""
    check_changeable(state)
    if not state.registration_opened:
        raise RegistrationNotOpen("registration has not been opened")
    if state.registration_closed:
        raise RegistrationIsClosed("registration was closed")
    closes_at = state.registration_closes_at
    if closes_at is not None and now >= closes_at:
        raise RegistrationIsClosed(f"registration closed at {closes_at.isoformat()}")


def check_window(starts_at: datetime, ends_at: datetime) -> tuple[datetime, datetime]:
    """Both times in UTC, the end after the start."""
    starts_at, ends_at = _utc("starts_at", starts_at), _utc("ends_at", ends_at)
    if ends_at <= starts_at:
        raise InvalidSchedule(
            f"ends_at ({ends_at.isoformat()}) must be after starts_at ({starts_at.isoformat()})"
        )
    return starts_at, ends_at


def check_within(state: Consultation, starts_at: datetime, ends_at: datetime) -> None:
    """A session lies within the consultation's start and end."""
    if starts_at < state.starts_at or ends_at > state.ends_at:
        raise InvalidSchedule(
            f"a session must lie within the consultation, {state.starts_at.isoformat()} "
            f"to {state.ends_at.isoformat()}"
        )


def check_area(state: Consultation, area: str) -> str:
    """``area`` is one of the consultation's thematic areas (surrounding blanks ignored)."""
    area = area.strip()
    if area not in state.thematic_areas:
        known = "; ".join(state.thematic_areas) or "none"
        raise UnknownThematicArea(f"{area!r} is not a thematic area of this consultation ({known})")
    return area


def check_areas_kept(state: Consultation, areas: tuple[str, ...]) -> None:
    """Areas still used by a session or working group cannot be dropped."""
    used = {g.thematic_area for g in state.working_groups.values()}
    used |= {s.thematic_area for s in state.sessions.values() if s.thematic_area is not None}
    dropped = sorted(used - set(areas))
    if dropped:
        raise ThematicAreaInUse(
            f"sessions or working groups still use {', '.join(map(repr, dropped))}"
        )


def check_cleared(cleared: Iterable[str], allowed: Sequence[str], command: object) -> None:
    """Only nullable details may be cleared, and not set at the same time."""
    for name in cleared:
        if name not in allowed:
            raise InvalidValue("cleared", f"{name!r} cannot be cleared (only {', '.join(allowed)})")
        if getattr(command, name) is not None:
            raise InvalidValue(name, "cannot be both set and cleared")


def active_registration(state: Consultation, registration_id: UUID) -> Registration:
    """The registration, which must exist and not be cancelled (it may be waitlisted)."""
    registration = _registration(state, registration_id)
    if not registration.active:
        raise RegistrationIsCancelled(f"registration {registration_id} is cancelled")
    return registration


def _registration(state: Consultation, registration_id: UUID) -> Registration:
    registration = state.registrations.get(registration_id)
    if registration is None:
        raise UnknownRegistration(f"no registration {registration_id}")
    return registration


def _session(state: Consultation, session_id: UUID) -> Session:
    session = state.sessions.get(session_id)
    if session is None:
        raise UnknownSession(f"no session {session_id}")
    return session


# --- values -------------------------------------------------------------------------------


def _utc(name: str, value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidValue(name, "needs a time zone offset")
    return value.astimezone(UTC)


def _text(name: str, value: str) -> str:
    text = value.strip()
    if not text:
        raise InvalidValue(name, "must not be blank")
    return text


def _texts(name: str, values: tuple[str, ...]) -> tuple[str, ...]:
    texts = tuple(_text(name, v) for v in values)
    if len(set(texts)) != len(texts):
        raise InvalidValue(name, "must not repeat an entry")
    return texts


def _choice(name: str, value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise InvalidValue(name, f"must be one of {', '.join(allowed)}, not {value!r}")
    return value


def _country(name: str, value: str) -> str:
    if len(value) != 2 or not value.isascii() or not value.isalpha() or not value.isupper():
        raise InvalidValue(name, f"must be an ISO 3166-1 alpha-2 code such as ID, not {value!r}")
    return value


def _timezone(name: str, value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        message = f"must be an IANA time zone such as Asia/Jakarta, not {value!r}"
        raise InvalidValue(name, message) from None
    return value


def _capacity(name: str, value: int) -> int:
    if value < 1:
        raise InvalidValue(name, "must be at least 1 (leave it out for no limit)")
    return value


def _ids(name: str, values: tuple[UUID, ...]) -> tuple[UUID, ...]:
    return tuple(dict.fromkeys(values))


def _same(name: str, value: Any) -> Any:
    return value


def _email(value: str) -> str:
    email = value.strip()
    local, _, domain = email.rpartition("@")
    if not local or not domain or any(c.isspace() for c in email):
        raise InvalidValue("email", f"not an e-mail address: {value!r}")
    return email


def _optional_reason(reason: str | None) -> str | None:
    return (reason or "").strip() or None


def _speakers(speakers: tuple[SpeakerDetails, ...]) -> tuple[Speaker, ...]:
    return tuple(
        Speaker(
            s.person_id, Personal(s.person_id, _text("speakers.name", s.name)), s.organisation_id
        )
        for s in speakers
    )


_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "title": _text,
    "theme": _text,
    "scope": lambda name, value: _choice(name, value, SCOPES),
    "host_country": _country,
    "city": _text,
    "venue": _text,
    "mode": lambda name, value: _choice(name, value, MODES),
    "virtual_url": _text,
    "timezone": _timezone,
    "organiser_id": _same,
    "co_organiser_ids": _ids,
    "partner_ids": _ids,
    "capacity": _capacity,
    "thematic_areas": _texts,
    "objectives": _texts,
    "series_id": _same,
}


def _checked(name: str, value: Any) -> Any:
    """``value`` checked and normalised for detail ``name``; None stays None."""
    return None if value is None else _CHECKS[name](name, value)


CONSULTATION: Decider[Consultation, Command] = Decider(
    STREAM_TYPE, Consultation, evolve, decide, evolve_all
)
