"""Consultation rules, given events → when command → then events or error.

The stories follow the regional consultation in Jakarta (20 to 21 February 2018, organised by the
Human Rights Working Group) and the national workshop in Hanoi (18 December 2019).
"""

from __future__ import annotations

import inspect
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4
from zoneinfo import ZoneInfo

import pytest

from services.consultations.commands import (
    DEFAULT_THEMATIC_AREAS,
    AssignToWorkingGroup,
    CancelConsultation,
    CancelRegistration,
    ChangeSession,
    CheckIn,
    CloseRegistration,
    CompleteConsultation,
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
    ConsultationError,
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
    SessionChanged,
    SessionRemoved,
    SessionScheduled,
    Speaker,
    WorkingGroupFormed,
)
from services.consultations.model import (
    CONSULTATION,
    Command,
    Consultation,
    evolve,
    registration_open_at,
    status_at,
)
from services.decider import Context
from services.messages import DomainEvent, Personal
from services.ports import RecordedEvent
from services.registry import EVENTS

WIB = ZoneInfo("Asia/Jakarta")
ICT = ZoneInfo("Asia/Ho_Chi_Minh")

HRWG = uuid4()  # Human Rights Working Group, the organiser
HOME = uuid4()  # an NGO from Singapore
MMN = uuid4()  # Mekong Migrant Network


def wib(month: int, day: int, hour: int, minute: int = 0) -> datetime:
    """A time in Jakarta in 2018."""
    return datetime(2018, month, day, hour, minute, tzinfo=WIB)


START = wib(2, 20, 8, 30)
END = wib(2, 21, 17)
CLOSES = wib(2, 16, 17)
JANUARY = wib(1, 15, 9)  # while planning

ACCESS_TO_JUSTICE = DEFAULT_THEMATIC_AREAS[2]
DECENT_WORK = DEFAULT_THEMATIC_AREAS[0]


def given(*events: DomainEvent) -> Consultation:
    return CONSULTATION.fold(events)


def when(
    state: Consultation,
    command: Command,
    *,
    now: datetime = JANUARY,
    organisation_id: UUID | None = None,
) -> list[DomainEvent]:
    ctx = Context(now=now, actor="organiser@hrwg.example", organisation_id=organisation_id)
    return list(CONSULTATION.decide(state, command, ctx))


def planned(cid: UUID, *, capacity: int | None = None, **changes: Any) -> ConsultationPlanned:
    details: dict[str, Any] = {
        "consultation_id": cid,
        "title": "Regional CSO Consultation on the Implementation of the ASEAN Consensus",
        "theme": "Rights of migrant workers",
        "scope": "regional",
        "host_country": "ID",
        "city": "Jakarta",
        "venue": None,
        "mode": "in_person",
        "virtual_url": None,
        "timezone": "Asia/Jakarta",
        "starts_at": START,
        "ends_at": END,
        "organiser_id": HRWG,
        "co_organiser_ids": (),
        "partner_ids": (),
        "capacity": capacity,
        "thematic_areas": DEFAULT_THEMATIC_AREAS,
        "objectives": ("Develop a regional action plan on the ASEAN Consensus",),
        "series_id": None,
    }
    details.update(changes)
    return ConsultationPlanned(**details)


def opened(cid: UUID, closes_at: datetime = CLOSES) -> RegistrationOpened:
    return RegistrationOpened(cid, closes_at)


def participant(
    cid: UUID,
    name: str,
    country: str | None = "ID",
    *,
    role: str = "delegate",
    organisation_id: UUID | None = None,
    waitlisted: bool = False,
    person_id: UUID | None = None,
) -> ParticipantRegistered | ParticipantWaitlisted:
    person = person_id or uuid4()
    event = ParticipantWaitlisted if waitlisted else ParticipantRegistered
    return event(
        consultation_id=cid,
        registration_id=uuid4(),
        person_id=person,
        name=Personal(person, name),
        email=Personal(person, f"{person.hex[:8]}@example.org"),
        organisation_id=organisation_id,
        role=role,
        country=country,
    )


def register(
    cid: UUID,
    name: str,
    *,
    person_id: UUID | None = None,
    organisation_id: UUID | None = None,
    country: str | None = "ID",
    role: str = "delegate",
    email: str = "someone@example.org",
) -> RegisterParticipant:
    return RegisterParticipant(
        consultation_id=cid,
        registration_id=uuid4(),
        person_id=person_id or uuid4(),
        name=name,
        email=email,
        role=role,
        organisation_id=organisation_id,
        country=country,
    )


def session(
    cid: UUID,
    title: str,
    starts_at: datetime,
    ends_at: datetime,
    *,
    kind: str = "plenary",
    thematic_area: str | None = None,
) -> SessionScheduled:
    return SessionScheduled(cid, uuid4(), title, kind, starts_at, ends_at, thematic_area, ())


def stored(event: DomainEvent) -> DomainEvent:
    """The event as it comes back from the log (JSON and back)."""
    new = EVENTS.to_new_event(event)
    record = RecordedEvent(
        id=new.id,
        stream_id=uuid4(),
        stream_type="consultation",
        version=1,
        position=1,
        type=new.type,
        schema_version=new.schema_version,
        data=dict(new.data),
        metadata={},
        recorded_at=datetime.now(UTC),
    )
    return EVENTS.decode(record)


# --- planning -----------------------------------------------------------------------------


def test_planning_the_jakarta_regional_consultation() -> None:
    cid = uuid4()
    command = PlanConsultation(
        consultation_id=cid,
        title="Regional CSO Consultation on the Implementation of the ASEAN Consensus",
        theme="Rights of migrant workers",
        scope="regional",
        host_country="ID",
        city="Jakarta",
        mode="in_person",
        timezone="Asia/Jakarta",
        starts_at=START,
        ends_at=END,
        organiser_id=HRWG,
        thematic_areas=DEFAULT_THEMATIC_AREAS,
        objectives=("Develop a regional action plan on the ASEAN Consensus",),
    )
    events = when(given(), command)
    assert events == [planned(cid)]
    event = events[0]
    assert isinstance(event, ConsultationPlanned)
    assert event.starts_at.tzinfo is UTC
    assert event.starts_at == datetime(2018, 2, 20, 1, 30, tzinfo=UTC)
    state = given(*events)
    assert state.exists
    assert state.thematic_areas == DEFAULT_THEMATIC_AREAS
    assert status_at(state, JANUARY) == "planned"


def test_the_hanoi_workshop_keeps_its_diacritics_and_organiser_defined_areas() -> None:
    cid, series = uuid4(), uuid4()
    areas = ("Social insurance for workers in Vietnam", "Roles of government and civil society")
    events = when(
        given(),
        PlanConsultation(
            consultation_id=cid,
            title="Hội thảo tham vấn quốc gia về Đồng thuận ASEAN",
            scope="national",
            host_country="VN",
            city="Hà Nội",
            mode="hybrid",
            virtual_url="https://meet.example/hanoi",
            timezone="Asia/Ho_Chi_Minh",
            starts_at=datetime(2019, 12, 18, 8, tzinfo=ICT),
            ends_at=datetime(2019, 12, 18, 17, tzinfo=ICT),
            organiser_id=HRWG,
            partner_ids=(MMN, MMN),
            capacity=40,
            thematic_areas=areas,
            series_id=series,
        ),
    )
    state = given(*events)
    assert state.city == "Hà Nội"
    assert state.title.startswith("Hội thảo")
    assert state.thematic_areas == areas
    assert state.partner_ids == (MMN,)
    assert state.series_id == series
    assert stored(events[0]) == events[0]


def test_planning_twice_is_refused() -> None:
    cid = uuid4()
    command = PlanConsultation(cid, "X", "regional", "ID", "in_person", "UTC", START, END, HRWG)
    with pytest.raises(ConsultationAlreadyPlanned):
        when(given(planned(cid)), command)


@pytest.mark.parametrize(
    ("starts_at", "ends_at"),
    [(END, START), (START, START)],
    ids=["ends-before-start", "ends-at-start"],
)
def test_a_consultation_must_end_after_it_starts(starts_at: datetime, ends_at: datetime) -> None:
    command = PlanConsultation(
        uuid4(), "X", "regional", "ID", "in_person", "Asia/Jakarta", starts_at, ends_at, HRWG
    )
    with pytest.raises(InvalidSchedule):
        when(given(), command)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("title", "   "),
        ("scope", "global"),
        ("mode", "online"),
        ("host_country", "Indonesia"),
        ("host_country", "id"),
        ("timezone", "Mars/Olympus_Mons"),
        ("timezone", "Asia"),
        ("starts_at", datetime(2018, 2, 20, 8, 30)),
        ("capacity", 0),
        ("thematic_areas", ("Access to justice", "Access to justice")),
        ("thematic_areas", ("",)),
    ],
)
def test_planning_refuses_invalid_details(field: str, value: object) -> None:
    details: dict[str, Any] = {
        "consultation_id": uuid4(),
        "title": "Regional CSO Consultation",
        "scope": "regional",
        "host_country": "ID",
        "mode": "in_person",
        "timezone": "Asia/Jakarta",
        "starts_at": START,
        "ends_at": END,
        "organiser_id": HRWG,
        field: value,
    }
    with pytest.raises(InvalidValue) as refused:
        when(given(), PlanConsultation(**details))
    assert refused.value.field == field
    assert refused.value.code == "invalid-value"


def _every_command(cid: UUID) -> list[Command]:
    rid, sid, wid = uuid4(), uuid4(), uuid4()
    return [
        ReviseConsultation(cid, title="X"),
        RescheduleConsultation(cid, START, END),
        OpenRegistration(cid, CLOSES),
        CloseRegistration(cid),
        ScheduleSession(cid, sid, "Opening", "plenary", START, END),
        ChangeSession(cid, sid, title="X"),
        RemoveSession(cid, sid),
        FormWorkingGroup(cid, wid, ACCESS_TO_JUSTICE),
        register(cid, "Hà Thị Minh Đức"),
        CancelRegistration(cid, rid),
        CheckIn(cid, rid),
        AssignToWorkingGroup(cid, rid, wid),
        CompleteConsultation(cid),
        CancelConsultation(cid, "postponed"),
    ]


@pytest.mark.parametrize("index", range(14))
def test_every_command_on_a_consultation_never_planned_is_refused(index: int) -> None:
    cid = uuid4()
    command = _every_command(cid)[index]
    with pytest.raises(UnknownConsultation) as refused:
        when(given(), command)
    assert refused.value.code == "unknown-consultation"
    with pytest.raises(UnknownConsultation):
        when(given(planned(uuid4())), command)  # another consultation's stream


def test_a_consultation_never_planned_has_no_status() -> None:
    with pytest.raises(UnknownConsultation):
        status_at(given(), JANUARY)


# --- revising -----------------------------------------------------------------------------


def test_revising_records_only_what_changed() -> None:
    cid = uuid4()
    state = given(planned(cid))
    command = ReviseConsultation(
        cid, title=state.title, theme="The 2017 ASEAN Consensus", co_organiser_ids=(HOME,)
    )
    events = when(state, command)
    assert events == [
        ConsultationRevised(
            cid, sequence=0, theme="The 2017 ASEAN Consensus", co_organiser_ids=(HOME,)
        )
    ]
    assert given(planned(cid), *events).theme == "The 2017 ASEAN Consensus"


def test_revising_with_nothing_new_changes_nothing() -> None:
    cid = uuid4()
    state = given(planned(cid))
    assert when(state, ReviseConsultation(cid)) == []
    assert when(state, ReviseConsultation(cid, city="Jakarta", scope="regional")) == []
    assert when(state, ReviseConsultation(cid, cleared=("venue", "capacity"))) == []


def test_changing_the_place_is_a_calendar_update() -> None:
    cid = uuid4()
    state = given(planned(cid))
    events = when(state, ReviseConsultation(cid, venue="Hotel Ibis Tamarin, Jakarta"))
    assert events == [ConsultationRevised(cid, sequence=1, venue="Hotel Ibis Tamarin, Jakarta")]
    state = given(planned(cid), *events)
    assert state.sequence == 1
    events = when(state, ReviseConsultation(cid, objectives=("Agree on recommendations",)))
    assert events == [
        ConsultationRevised(cid, sequence=1, objectives=("Agree on recommendations",))
    ]


def test_clearing_a_detail_sets_it_to_nothing() -> None:
    cid = uuid4()
    state = given(planned(cid))
    events = when(state, ReviseConsultation(cid, cleared=("theme", "city")))
    assert events == [ConsultationRevised(cid, sequence=1, cleared=("theme", "city"))]
    state = given(planned(cid), *events)
    assert state.theme is None
    assert state.city is None


@pytest.mark.parametrize(
    ("command_changes", "field"),
    [
        ({"cleared": ("title",)}, "cleared"),
        ({"theme": "X", "cleared": ("theme",)}, "theme"),
        ({"capacity": -3}, "capacity"),
        ({"host_country": "XXX"}, "host_country"),
    ],
)
def test_revising_refuses_invalid_details(command_changes: dict[str, Any], field: str) -> None:
    cid = uuid4()
    with pytest.raises(InvalidValue) as refused:
        when(given(planned(cid)), ReviseConsultation(cid, **command_changes))
    assert refused.value.field == field


def test_organisers_may_define_their_own_thematic_areas() -> None:
    cid = uuid4()
    areas = (*DEFAULT_THEMATIC_AREAS, "Migrant domestic workers")
    events = when(given(planned(cid)), ReviseConsultation(cid, thematic_areas=areas))
    assert events == [ConsultationRevised(cid, sequence=0, thematic_areas=areas)]


def test_an_area_in_use_cannot_be_dropped() -> None:
    cid = uuid4()
    group = WorkingGroupFormed(cid, uuid4(), ACCESS_TO_JUSTICE, None)
    panel = session(cid, "Decent work", wib(2, 20, 10), wib(2, 20, 12), thematic_area=DECENT_WORK)
    state = given(planned(cid), group, panel)
    rest = tuple(a for a in DEFAULT_THEMATIC_AREAS if a not in (ACCESS_TO_JUSTICE, DECENT_WORK))
    with pytest.raises(ThematicAreaInUse, match="Access to justice"):
        when(state, ReviseConsultation(cid, thematic_areas=rest))
    with pytest.raises(ThematicAreaInUse, match="Decent work"):
        when(state, ReviseConsultation(cid, thematic_areas=(ACCESS_TO_JUSTICE,)))
    keep = (ACCESS_TO_JUSTICE, DECENT_WORK)
    assert when(state, ReviseConsultation(cid, thematic_areas=keep)) == [
        ConsultationRevised(cid, sequence=0, thematic_areas=keep)
    ]


def test_capacity_cannot_go_below_the_seats_taken() -> None:
    cid = uuid4()
    state = given(
        planned(cid, capacity=40),
        opened(cid),
        participant(cid, "Hà Thị Minh Đức", "VN"),
        participant(cid, "Sinapan Samydorai", "SG"),
        participant(cid, "Rafendi Djamin", "ID"),
    )
    with pytest.raises(CapacityBelowRegistered) as refused:
        when(state, ReviseConsultation(cid, capacity=2))
    assert refused.value.code == "capacity-below-registered"
    assert when(state, ReviseConsultation(cid, capacity=3)) == [
        ConsultationRevised(cid, sequence=0, capacity=3)
    ]


def test_raising_capacity_promotes_as_many_as_fit_in_waitlist_order() -> None:
    cid = uuid4()
    line = [
        participant(cid, "Maita Santiago", "PH", waitlisted=True),
        participant(cid, "William Gois", "MY", waitlisted=True),
        participant(cid, "Nguyễn Thị Tuyết", "VN", waitlisted=True),
    ]
    history = [
        planned(cid, capacity=2),
        opened(cid),
        participant(cid, "Hà Thị Minh Đức", "VN"),
        participant(cid, "Sinapan Samydorai", "SG"),
        *line,
    ]
    state = given(*history)
    events = when(state, ReviseConsultation(cid, capacity=4))
    assert events == [
        ConsultationRevised(cid, sequence=0, capacity=4),
        ParticipantPromoted(cid, line[0].registration_id),
        ParticipantPromoted(cid, line[1].registration_id),
    ]
    after = given(*history, *events)
    assert after.registered_count == 4
    assert [r.registration_id for r in after.waitlist] == [line[2].registration_id]
    assert after.waitlist_position(line[2].registration_id) == 1
    assert after.seats_left == 0


def test_making_capacity_unlimited_promotes_everyone_waiting() -> None:
    cid = uuid4()
    line = [
        participant(cid, "Maita Santiago", "PH", waitlisted=True),
        participant(cid, "William Gois", "MY", waitlisted=True),
    ]
    state = given(planned(cid, capacity=1), opened(cid), participant(cid, "Đức", "VN"), *line)
    events = when(state, ReviseConsultation(cid, cleared=("capacity",)))
    assert events == [
        ConsultationRevised(cid, sequence=0, cleared=("capacity",)),
        ParticipantPromoted(cid, line[0].registration_id),
        ParticipantPromoted(cid, line[1].registration_id),
    ]
    after = given(planned(cid, capacity=1), opened(cid), *line, *events)
    assert after.capacity is None
    assert after.seats_left is None
    assert after.waitlist == ()


# --- rescheduling -------------------------------------------------------------------------


def test_rescheduling_counts_calendar_updates() -> None:
    cid = uuid4()
    state = given(planned(cid))
    later_end = wib(2, 22, 12)
    events = when(state, RescheduleConsultation(cid, START, later_end, reason="  third day  "))
    assert events == [ConsultationRescheduled(cid, START, later_end, "third day", sequence=1)]
    state = given(planned(cid), *events)
    assert state.ends_at == later_end
    revised = when(state, ReviseConsultation(cid, venue="Hotel Ibis"))
    state = given(planned(cid), *events, *revised)
    again = when(state, RescheduleConsultation(cid, START, END))
    assert again == [ConsultationRescheduled(cid, START, END, None, sequence=3)]


def test_rescheduling_to_the_same_time_changes_nothing() -> None:
    cid = uuid4()
    same_instant = START.astimezone(UTC)
    assert when(given(planned(cid)), RescheduleConsultation(cid, same_instant, END)) == []


def test_rescheduling_must_end_after_it_starts() -> None:
    cid = uuid4()
    with pytest.raises(InvalidSchedule):
        when(given(planned(cid)), RescheduleConsultation(cid, END, START))


def test_moving_a_consultation_moves_its_agenda_with_it() -> None:
    cid = uuid4()
    opening = session(cid, "Opening", wib(2, 20, 8, 30), wib(2, 20, 9, 30))
    closing = session(cid, "Closing plenary", wib(2, 21, 16), wib(2, 21, 17))
    state = given(planned(cid), closing, opening)
    week = timedelta(days=7)
    events = when(state, RescheduleConsultation(cid, START + week, END + week, "venue flooded"))
    assert events == [
        ConsultationRescheduled(cid, START + week, END + week, "venue flooded", sequence=1),
        SessionChanged(
            cid,
            opening.session_id,
            "Opening",
            "plenary",
            opening.starts_at + week,
            opening.ends_at + week,
            None,
            (),
            sequence=1,
        ),
        SessionChanged(
            cid,
            closing.session_id,
            "Closing plenary",
            "plenary",
            closing.starts_at + week,
            closing.ends_at + week,
            None,
            (),
            sequence=1,
        ),
    ]
    after = given(planned(cid), closing, opening, *events)
    assert [s.starts_at for s in after.sessions_in_order] == [wib(2, 27, 8, 30), wib(2, 28, 16)]


def test_lengthening_a_consultation_leaves_the_agenda_in_place() -> None:
    cid = uuid4()
    opening = session(cid, "Opening", wib(2, 20, 8, 30), wib(2, 20, 9, 30))
    state = given(planned(cid), opening)
    events = when(state, RescheduleConsultation(cid, wib(2, 20, 8), END))
    assert events == [ConsultationRescheduled(cid, wib(2, 20, 8), END, None, sequence=1)]


def test_shortening_is_refused_while_sessions_would_fall_outside() -> None:
    cid = uuid4()
    opening = session(cid, "Opening", wib(2, 20, 8, 30), wib(2, 20, 9, 30))
    day_two = session(cid, "Working groups report back", wib(2, 21, 9), wib(2, 21, 12))
    closing = session(cid, "Closing plenary", wib(2, 21, 16), wib(2, 21, 17))
    state = given(planned(cid), opening, day_two, closing)
    with pytest.raises(SessionsOutsideSchedule) as refused:
        when(state, RescheduleConsultation(cid, START, wib(2, 20, 17)))
    assert refused.value.session_ids == (day_two.session_id, closing.session_id)
    assert "Working groups report back" in str(refused.value)
    assert "Closing plenary" in str(refused.value)
    assert refused.value.code == "sessions-outside-schedule"
    assert isinstance(refused.value, InvalidSchedule)
    # Remove them first, then shortening goes through.
    removed = [SessionRemoved(cid, day_two.session_id), SessionRemoved(cid, closing.session_id)]
    state = given(planned(cid), opening, day_two, closing, *removed)
    assert when(state, RescheduleConsultation(cid, START, wib(2, 20, 17))) == [
        ConsultationRescheduled(cid, START, wib(2, 20, 17), None, sequence=1)
    ]


def test_rescheduling_cannot_end_before_registration_closes() -> None:
    cid = uuid4()
    state = given(planned(cid), opened(cid, wib(2, 19, 17)))
    earlier = timedelta(days=3)
    with pytest.raises(InvalidRegistrationDeadline):
        when(state, RescheduleConsultation(cid, START - earlier, END - earlier))


# --- opening and closing registration -----------------------------------------------------


def test_opening_registration_until_a_deadline() -> None:
    cid = uuid4()
    state = given(planned(cid))
    events = when(state, OpenRegistration(cid, CLOSES))
    assert events == [RegistrationOpened(cid, CLOSES)]
    state = given(planned(cid), *events)
    assert registration_open_at(state, JANUARY)
    assert status_at(state, JANUARY) == "registration_open"


def test_registration_must_close_in_the_future_and_by_the_end() -> None:
    cid = uuid4()
    state = given(planned(cid))
    with pytest.raises(InvalidRegistrationDeadline):
        when(state, OpenRegistration(cid, wib(1, 10, 9)))
    with pytest.raises(InvalidRegistrationDeadline):
        when(state, OpenRegistration(cid, JANUARY))
    with pytest.raises(InvalidRegistrationDeadline):
        when(state, OpenRegistration(cid, END + timedelta(minutes=1)))
    assert when(state, OpenRegistration(cid, END)) == [RegistrationOpened(cid, END)]


def test_opening_again_moves_the_deadline_or_reopens() -> None:
    cid = uuid4()
    state = given(planned(cid), opened(cid))
    assert when(state, OpenRegistration(cid, CLOSES)) == []
    later = wib(2, 18, 12)
    assert when(state, OpenRegistration(cid, later)) == [RegistrationOpened(cid, later)]
    closed = given(planned(cid), opened(cid), RegistrationClosed(cid))
    assert when(closed, OpenRegistration(cid, CLOSES)) == [RegistrationOpened(cid, CLOSES)]
    reopened = given(planned(cid), opened(cid), RegistrationClosed(cid), opened(cid))
    assert registration_open_at(reopened, JANUARY)


def test_closing_registration() -> None:
    cid = uuid4()
    state = given(planned(cid), opened(cid))
    events = when(state, CloseRegistration(cid))
    assert events == [RegistrationClosed(cid)]
    closed = given(planned(cid), opened(cid), *events)
    assert status_at(closed, JANUARY) == "registration_closed"
    assert when(closed, CloseRegistration(cid)) == []


def test_closing_a_registration_past_its_deadline_changes_nothing() -> None:
    cid = uuid4()
    state = given(planned(cid), opened(cid))
    assert when(state, CloseRegistration(cid), now=CLOSES) == []


def test_closing_a_registration_never_opened_is_refused() -> None:
    cid = uuid4()
    with pytest.raises(RegistrationNotOpen):
        when(given(planned(cid)), CloseRegistration(cid))


def test_registration_closes_by_itself_at_its_deadline() -> None:
    cid = uuid4()
    state = given(planned(cid), opened(cid))
    just_before = CLOSES - timedelta(seconds=1)
    assert status_at(state, just_before) == "registration_open"
    assert status_at(state, CLOSES) == "registration_closed"
    assert isinstance(when(state, register(cid, "Đức"), now=just_before)[0], ParticipantRegistered)
    with pytest.raises(RegistrationIsClosed, match="closed at"):
        when(state, register(cid, "Đức"), now=CLOSES)


# --- registering --------------------------------------------------------------------------


def test_registering_wraps_personal_data_for_the_person() -> None:
    cid, person = uuid4(), uuid4()
    state = given(planned(cid, capacity=40), opened(cid))
    command = RegisterParticipant(
        consultation_id=cid,
        registration_id=uuid4(),
        person_id=person,
        name="Hà Thị Minh Đức",
        email=" duc@molisa.example ",
        role="speaker",
        country="VN",
    )
    events = when(state, command)
    assert events == [
        ParticipantRegistered(
            consultation_id=cid,
            registration_id=command.registration_id,
            person_id=person,
            name=Personal(person, "Hà Thị Minh Đức"),
            email=Personal(person, "duc@molisa.example"),
            organisation_id=None,
            role="speaker",
            country="VN",
        )
    ]
    assert stored(events[0]) == events[0]
    data = EVENTS.to_new_event(events[0]).data
    assert data["name"] == {"$personal": {"subject": str(person), "value": "Hà Thị Minh Đức"}}
    after = given(planned(cid, capacity=40), opened(cid), *events)
    assert after.registered_count == 1
    assert after.seats_left == 39


def test_nobody_registers_before_registration_opens() -> None:
    cid = uuid4()
    with pytest.raises(RegistrationNotOpen) as refused:
        when(given(planned(cid)), register(cid, "Đức"))
    assert refused.value.code == "registration-not-open"


def test_nobody_registers_after_registration_is_closed() -> None:
    cid = uuid4()
    with pytest.raises(RegistrationIsClosed) as refused:
        when(given(planned(cid), opened(cid), RegistrationClosed(cid)), register(cid, "Đức"))
    assert refused.value.code == "registration-closed"


def test_nobody_registers_for_a_cancelled_consultation() -> None:
    cid = uuid4()
    state = given(planned(cid), opened(cid), ConsultationCancelled(cid, "postponed"))
    with pytest.raises(ConsultationIsCancelled):
        when(state, register(cid, "Đức"))


def test_nobody_registers_for_a_consultation_already_held() -> None:
    cid = uuid4()
    state = given(planned(cid), opened(cid, END), ConsultationCompleted(cid))
    with pytest.raises(ConsultationAlreadyHeld) as refused:
        when(state, register(cid, "Đức"), now=wib(2, 21, 12))
    assert refused.value.code == "consultation-already-held"


def test_beyond_capacity_participants_are_waitlisted_in_order() -> None:
    cid = uuid4()
    history: list[DomainEvent] = [planned(cid, capacity=2), opened(cid)]
    names = ["Hà Thị Minh Đức", "Sinapan Samydorai", "Maita Santiago", "William Gois"]
    commands = [register(cid, n) for n in names]
    for command in commands:
        history += when(given(*history), command)
    kinds = [type(e) for e in history[2:]]
    assert kinds == [
        ParticipantRegistered,
        ParticipantRegistered,
        ParticipantWaitlisted,
        ParticipantWaitlisted,
    ]
    state = given(*history)
    assert [r.name.value for r in state.waitlist] == ["Maita Santiago", "William Gois"]
    assert state.waitlist_position(commands[3].registration_id) == 2
    assert state.waitlist_position(commands[0].registration_id) is None
    assert status_at(state, JANUARY) == "registration_open"


def test_one_person_registers_once() -> None:
    cid, person = uuid4(), uuid4()
    first = participant(cid, "Hà Thị Minh Đức", "VN", person_id=person)
    state = given(planned(cid), opened(cid), first)
    with pytest.raises(AlreadyRegistered) as refused:
        when(state, register(cid, "Ha Thi Minh Duc", person_id=person))
    assert refused.value.registration_id == first.registration_id
    assert str(first.registration_id) in str(refused.value)
    assert refused.value.code == "already-registered"


def test_a_waitlisted_person_is_already_registered_too() -> None:
    cid, person = uuid4(), uuid4()
    first = participant(cid, "Đức", "VN", person_id=person, waitlisted=True)
    state = given(planned(cid, capacity=1), opened(cid), participant(cid, "A"), first)
    with pytest.raises(AlreadyRegistered):
        when(state, register(cid, "Đức", person_id=person))


def test_after_cancelling_a_person_may_register_again() -> None:
    cid, person = uuid4(), uuid4()
    first = participant(cid, "Hà Thị Minh Đức", "VN", person_id=person)
    cancelled = RegistrationCancelled(cid, first.registration_id, None, "organiser")
    state = given(planned(cid), opened(cid), first, cancelled)
    again = register(cid, "Hà Thị Minh Đức", person_id=person)
    events = when(state, again)
    assert [type(e) for e in events] == [ParticipantRegistered]
    after = given(planned(cid), opened(cid), first, cancelled, *events)
    active = after.active_registration_of(person)
    assert active is not None
    assert active.registration_id == again.registration_id


def test_a_registration_id_is_used_once() -> None:
    cid = uuid4()
    first = participant(cid, "Đức")
    state = given(planned(cid), opened(cid), first)
    command = RegisterParticipant(
        cid, first.registration_id, uuid4(), "Tuyết", "t@x.org", "observer"
    )
    with pytest.raises(DuplicateIdentifier):
        when(state, command)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"role": "guest"}, "role"),
        ({"email": "not an address"}, "email"),
        ({"email": "@example.org"}, "email"),
        ({"country": "Viet Nam"}, "country"),
        ({"name": " "}, "name"),
    ],
)
def test_registering_refuses_invalid_details(changes: dict[str, Any], field: str) -> None:
    cid = uuid4()
    command = register(cid, **{"name": "Hà Thị Minh Đức", **changes})
    with pytest.raises(InvalidValue) as refused:
        when(given(planned(cid), opened(cid)), command)
    assert refused.value.field == field


def test_an_organisation_registers_only_its_own_people() -> None:
    cid = uuid4()
    state = given(planned(cid), opened(cid))
    with pytest.raises(NotYourOrganisation) as refused:
        when(state, register(cid, "Đức", organisation_id=MMN), organisation_id=HOME)
    assert refused.value.code == "not-your-organisation"
    with pytest.raises(NotYourOrganisation):
        when(state, register(cid, "Đức"), organisation_id=HOME)
    events = when(state, register(cid, "Đức", organisation_id=HOME), organisation_id=HOME)
    assert [type(e) for e in events] == [ParticipantRegistered]


def test_folding_many_events_at_once_leaves_what_evolving_them_one_by_one_leaves() -> None:
    """Runs of registration events change one copy of the roster (linear in the number of
    registrations); the state must be the same as evolving each event, whatever the mix and
    the starting point."""
    cid = uuid4()
    seated = [participant(cid, f"Delegate {n}", "ID") for n in range(3)]
    line = [participant(cid, f"Waiting {n}", "VN", waitlisted=True) for n in range(4)]
    group = WorkingGroupFormed(cid, uuid4(), ACCESS_TO_JUSTICE, seated[0].registration_id)
    history: list[DomainEvent] = [
        planned(cid, capacity=3),
        opened(cid),
        *seated,
        *line[:2],
        RegistrationCancelled(cid, seated[1].registration_id, "visa refused", "organiser"),
        ParticipantPromoted(cid, line[0].registration_id),
        *line[2:],
        RegistrationCancelled(cid, line[2].registration_id, None, "organiser"),
        ConsultationRevised(cid, sequence=0, capacity=5),
        ParticipantPromoted(cid, line[1].registration_id),
        ParticipantPromoted(cid, line[3].registration_id),
        group,
        ParticipantAssigned(cid, seated[0].registration_id, group.working_group_id),
        ParticipantCheckedIn(cid, seated[0].registration_id),
        ParticipantCheckedIn(cid, line[0].registration_id),
        ParticipantAssigned(cid, line[0].registration_id, group.working_group_id),
        participant(cid, "Late", "PH"),
    ]
    one_by_one = Consultation()
    for event in history:
        one_by_one = evolve(one_by_one, event)
    assert one_by_one.registered_count == 6 and one_by_one.waitlist_ids == ()
    for split in range(len(history) + 1):
        at_once = CONSULTATION.fold(history[split:], CONSULTATION.fold(history[:split]))
        assert at_once == one_by_one, f"folded in two at {split}"
        assert dict(at_once.registrations) == dict(one_by_one.registrations)


# --- cancelling a registration ------------------------------------------------------------


def test_cancelling_a_seat_promotes_the_first_in_line() -> None:
    cid = uuid4()
    seated = participant(cid, "Hà Thị Minh Đức", "VN")
    first, second = (
        participant(cid, "Maita Santiago", "PH", waitlisted=True),
        participant(cid, "William Gois", "MY", waitlisted=True),
    )
    history = [planned(cid, capacity=1), opened(cid), seated, first, second]
    events = when(given(*history), CancelRegistration(cid, seated.registration_id, "visa refused"))
    assert events == [
        RegistrationCancelled(cid, seated.registration_id, "visa refused", "organiser"),
        ParticipantPromoted(cid, first.registration_id),
    ]
    after = given(*history, *events)
    assert [r.name.value for r in after.registered] == ["Maita Santiago"]
    assert [r.name.value for r in after.waitlist] == ["William Gois"]
    assert after.waitlist_position(second.registration_id) == 1


def test_promotion_still_happens_after_registration_closed() -> None:
    cid = uuid4()
    seated = participant(cid, "Đức", "VN")
    waiting = participant(cid, "Maita Santiago", "PH", waitlisted=True)
    state = given(planned(cid, capacity=1), opened(cid), seated, waiting, RegistrationClosed(cid))
    events = when(state, CancelRegistration(cid, seated.registration_id), now=wib(2, 19, 9))
    assert events[1:] == [ParticipantPromoted(cid, waiting.registration_id)]


def test_cancelling_a_waitlisted_registration_promotes_nobody() -> None:
    cid = uuid4()
    seated = participant(cid, "Đức", "VN")
    first = participant(cid, "Maita Santiago", "PH", waitlisted=True)
    second = participant(cid, "William Gois", "MY", waitlisted=True)
    history = [planned(cid, capacity=1), opened(cid), seated, first, second]
    events = when(given(*history), CancelRegistration(cid, first.registration_id))
    assert events == [RegistrationCancelled(cid, first.registration_id, None, "organiser")]
    after = given(*history, *events)
    assert [r.registration_id for r in after.waitlist] == [second.registration_id]
    assert after.registered_count == 1


def test_cancelling_with_nobody_waiting_just_frees_the_seat() -> None:
    cid = uuid4()
    seated = participant(cid, "Đức", "VN")
    state = given(planned(cid, capacity=10), opened(cid), seated)
    events = when(state, CancelRegistration(cid, seated.registration_id, "  "))
    assert events == [RegistrationCancelled(cid, seated.registration_id, None, "organiser")]
    assert given(planned(cid, capacity=10), opened(cid), seated, *events).seats_left == 10


def test_a_registration_is_cancelled_once() -> None:
    cid = uuid4()
    seated = participant(cid, "Đức")
    state = given(
        planned(cid),
        opened(cid),
        seated,
        RegistrationCancelled(cid, seated.registration_id, None, "organiser"),
    )
    with pytest.raises(RegistrationIsCancelled) as refused:
        when(state, CancelRegistration(cid, seated.registration_id))
    assert refused.value.code == "registration-cancelled"


def test_cancelling_an_unknown_registration_is_refused() -> None:
    cid = uuid4()
    with pytest.raises(UnknownRegistration) as refused:
        when(given(planned(cid), opened(cid)), CancelRegistration(cid, uuid4()))
    assert refused.value.code == "unknown-registration"


def test_an_organisation_cancels_only_its_own_registrations() -> None:
    cid = uuid4()
    ours = participant(cid, "Sinapan Samydorai", "SG", organisation_id=HOME)
    theirs = participant(cid, "Nguyễn Thị Tuyết", "VN", organisation_id=MMN)
    state = given(planned(cid), opened(cid), ours, theirs)
    with pytest.raises(NotYourOrganisation):
        when(state, CancelRegistration(cid, theirs.registration_id), organisation_id=HOME)
    events = when(state, CancelRegistration(cid, ours.registration_id), organisation_id=HOME)
    assert events == [RegistrationCancelled(cid, ours.registration_id, None, "organisation", HOME)]


# --- checking in --------------------------------------------------------------------------


def test_checking_in_a_participant_with_a_seat() -> None:
    cid = uuid4()
    seated = participant(cid, "Hà Thị Minh Đức", "VN")
    state = given(planned(cid), opened(cid), seated)
    events = when(state, CheckIn(cid, seated.registration_id), now=START)
    assert events == [ParticipantCheckedIn(cid, seated.registration_id)]
    after = given(planned(cid), opened(cid), seated, *events)
    assert after.checked_in_count == 1
    assert when(after, CheckIn(cid, seated.registration_id), now=START) == []


def test_checking_in_after_the_consultation_was_held_records_attendance() -> None:
    cid = uuid4()
    seated = participant(cid, "Đức")
    state = given(planned(cid), opened(cid), seated, ConsultationCompleted(cid))
    assert when(state, CheckIn(cid, seated.registration_id)) == [
        ParticipantCheckedIn(cid, seated.registration_id)
    ]


def test_a_waitlisted_participant_cannot_check_in() -> None:
    cid = uuid4()
    waiting = participant(cid, "Maita Santiago", "PH", waitlisted=True)
    state = given(planned(cid, capacity=1), opened(cid), participant(cid, "Đức"), waiting)
    with pytest.raises(RegistrationIsWaitlisted) as refused:
        when(state, CheckIn(cid, waiting.registration_id))
    assert refused.value.code == "registration-waitlisted"


def test_a_cancelled_registration_cannot_check_in() -> None:
    cid = uuid4()
    seated = participant(cid, "Đức")
    cancelled = RegistrationCancelled(cid, seated.registration_id, None, "organiser")
    with pytest.raises(RegistrationIsCancelled):
        when(
            given(planned(cid), opened(cid), seated, cancelled),
            CheckIn(cid, seated.registration_id),
        )
    with pytest.raises(UnknownRegistration):
        when(given(planned(cid), opened(cid), seated), CheckIn(cid, uuid4()))


def test_nobody_checks_in_to_a_cancelled_consultation() -> None:
    cid = uuid4()
    seated = participant(cid, "Đức")
    state = given(planned(cid), opened(cid), seated, ConsultationCancelled(cid, "floods"))
    with pytest.raises(ConsultationIsCancelled):
        when(state, CheckIn(cid, seated.registration_id))


# --- the agenda ---------------------------------------------------------------------------


def test_scheduling_a_session_with_speakers() -> None:
    cid, sid, duc = uuid4(), uuid4(), uuid4()
    hanoi = planned(
        cid,
        title="Consultation Workshop on the Implementation of the ASEAN Consensus",
        scope="national",
        host_country="VN",
        city="Hà Nội",
        timezone="Asia/Ho_Chi_Minh",
        starts_at=datetime(2019, 12, 18, 8, tzinfo=ICT),
        ends_at=datetime(2019, 12, 18, 17, tzinfo=ICT),
    )
    command = ScheduleSession(
        consultation_id=cid,
        session_id=sid,
        title="Opening remarks",
        kind="plenary",
        starts_at=datetime(2019, 12, 18, 8, 30, tzinfo=ICT),
        ends_at=datetime(2019, 12, 18, 9, tzinfo=ICT),
        speakers=(SpeakerDetails(duc, "Hà Thị Minh Đức", None),),
    )
    events = when(given(hanoi), command, now=datetime(2019, 12, 1, tzinfo=UTC))
    assert events == [
        SessionScheduled(
            cid,
            sid,
            "Opening remarks",
            "plenary",
            datetime(2019, 12, 18, 1, 30, tzinfo=UTC),
            datetime(2019, 12, 18, 2, tzinfo=UTC),
            None,
            (Speaker(duc, Personal(duc, "Hà Thị Minh Đức"), None),),
        )
    ]
    assert stored(events[0]) == events[0]
    after = given(hanoi, *events)
    assert after.sessions[sid].speakers[0].name.value == "Hà Thị Minh Đức"


@pytest.mark.parametrize(
    ("starts_at", "ends_at"),
    [
        (wib(2, 20, 8), wib(2, 20, 9)),  # before the consultation starts
        (wib(2, 21, 16), wib(2, 21, 18)),  # after it ends
        (wib(2, 20, 11), wib(2, 20, 10)),  # ends before it starts
    ],
)
def test_a_session_lies_within_the_consultation(starts_at: datetime, ends_at: datetime) -> None:
    cid = uuid4()
    command = ScheduleSession(cid, uuid4(), "Panel", "panel", starts_at, ends_at)
    with pytest.raises(InvalidSchedule) as refused:
        when(given(planned(cid)), command)
    assert refused.value.code == "invalid-schedule"


def test_a_session_fills_the_whole_consultation_if_it_likes() -> None:
    cid = uuid4()
    command = ScheduleSession(cid, uuid4(), "Everything", "plenary", START, END)
    assert [type(e) for e in when(given(planned(cid)), command)] == [SessionScheduled]


def test_a_session_names_a_thematic_area_of_the_consultation() -> None:
    cid = uuid4()
    command = ScheduleSession(
        cid, uuid4(), "Panel", "panel", wib(2, 20, 10), wib(2, 20, 12), thematic_area="Climate"
    )
    with pytest.raises(UnknownThematicArea) as refused:
        when(given(planned(cid)), command)
    assert refused.value.code == "unknown-thematic-area"


def test_a_session_kind_is_plenary_panel_or_working_group() -> None:
    cid = uuid4()
    command = ScheduleSession(cid, uuid4(), "Lunch", "break", wib(2, 20, 12), wib(2, 20, 13))
    with pytest.raises(InvalidValue) as refused:
        when(given(planned(cid)), command)
    assert refused.value.field == "kind"


def test_a_session_id_is_used_once() -> None:
    cid = uuid4()
    opening = session(cid, "Opening", wib(2, 20, 8, 30), wib(2, 20, 9, 30))
    command = ScheduleSession(
        cid, opening.session_id, "Again", "plenary", wib(2, 20, 10), wib(2, 20, 11)
    )
    with pytest.raises(DuplicateIdentifier):
        when(given(planned(cid), opening), command)


def test_changing_a_session_records_it_whole() -> None:
    cid = uuid4()
    panel = session(cid, "Access to justice", wib(2, 20, 10), wib(2, 20, 12), kind="panel")
    state = given(planned(cid), panel)
    command = ChangeSession(
        cid, panel.session_id, ends_at=wib(2, 20, 12, 30), thematic_area=ACCESS_TO_JUSTICE
    )
    events = when(state, command)
    assert events == [
        SessionChanged(
            cid,
            panel.session_id,
            "Access to justice",
            "panel",
            wib(2, 20, 10),
            wib(2, 20, 12, 30),
            ACCESS_TO_JUSTICE,
            (),
            sequence=1,
        )
    ]
    state = given(planned(cid), panel, *events)
    assert when(state, ChangeSession(cid, panel.session_id, title="Access to justice")) == []
    cleared = when(state, ChangeSession(cid, panel.session_id, cleared=("thematic_area",)))
    assert isinstance(cleared[0], SessionChanged)
    assert cleared[0].thematic_area is None
    assert cleared[0].sequence == 2


def test_a_changed_session_still_lies_within_the_consultation() -> None:
    cid = uuid4()
    panel = session(cid, "Panel", wib(2, 20, 10), wib(2, 20, 12))
    state = given(planned(cid), panel)
    with pytest.raises(InvalidSchedule):
        when(state, ChangeSession(cid, panel.session_id, ends_at=wib(2, 22, 12)))
    with pytest.raises(InvalidSchedule):
        when(state, ChangeSession(cid, panel.session_id, starts_at=wib(2, 20, 13)))
    with pytest.raises(InvalidValue):
        when(state, ChangeSession(cid, panel.session_id, cleared=("title",)))


def test_removing_a_session() -> None:
    cid = uuid4()
    panel = session(cid, "Panel", wib(2, 20, 10), wib(2, 20, 12))
    events = when(given(planned(cid), panel), RemoveSession(cid, panel.session_id))
    assert events == [SessionRemoved(cid, panel.session_id)]
    assert given(planned(cid), panel, *events).sessions == {}


def test_changing_or_removing_an_unknown_session_is_refused() -> None:
    cid = uuid4()
    state = given(planned(cid))
    with pytest.raises(UnknownSession) as refused:
        when(state, ChangeSession(cid, uuid4(), title="X"))
    assert refused.value.code == "unknown-session"
    with pytest.raises(UnknownSession):
        when(state, RemoveSession(cid, uuid4()))


# --- working groups -----------------------------------------------------------------------


def test_forming_one_working_group_per_thematic_area() -> None:
    cid = uuid4()
    facilitator = participant(cid, "Rafendi Djamin", "ID", role="facilitator")
    history: list[DomainEvent] = [planned(cid), opened(cid), facilitator]
    for area in DEFAULT_THEMATIC_AREAS:
        history += when(given(*history), FormWorkingGroup(cid, uuid4(), area))
    state = given(*history)
    assert sorted(g.thematic_area for g in state.working_groups.values()) == sorted(
        DEFAULT_THEMATIC_AREAS
    )
    with pytest.raises(WorkingGroupAlreadyFormed) as refused:
        when(state, FormWorkingGroup(cid, uuid4(), ACCESS_TO_JUSTICE))
    assert refused.value.code == "working-group-already-formed"


def test_a_working_group_with_a_facilitator() -> None:
    cid, wid = uuid4(), uuid4()
    facilitator = participant(cid, "Rafendi Djamin", "ID", role="facilitator")
    state = given(planned(cid), opened(cid), facilitator)
    command = FormWorkingGroup(cid, wid, ACCESS_TO_JUSTICE, facilitator.registration_id)
    events = when(state, command)
    assert events == [WorkingGroupFormed(cid, wid, ACCESS_TO_JUSTICE, facilitator.registration_id)]


def test_a_working_group_needs_a_thematic_area_of_the_consultation() -> None:
    cid = uuid4()
    with pytest.raises(UnknownThematicArea, match="Climate"):
        when(given(planned(cid)), FormWorkingGroup(cid, uuid4(), "Climate migration"))


def test_a_working_group_for_an_area_the_organiser_defined() -> None:
    cid, wid = uuid4(), uuid4()
    areas = ("Migrant domestic workers",)
    state = given(planned(cid, thematic_areas=areas))
    assert when(state, FormWorkingGroup(cid, wid, " Migrant domestic workers ")) == [
        WorkingGroupFormed(cid, wid, "Migrant domestic workers", None)
    ]


def test_a_facilitator_must_hold_an_active_registration() -> None:
    cid = uuid4()
    gone = participant(cid, "Đức")
    cancelled = RegistrationCancelled(cid, gone.registration_id, None, "organiser")
    state = given(planned(cid), opened(cid), gone, cancelled)
    with pytest.raises(UnknownRegistration):
        when(state, FormWorkingGroup(cid, uuid4(), ACCESS_TO_JUSTICE, uuid4()))
    with pytest.raises(RegistrationIsCancelled):
        when(state, FormWorkingGroup(cid, uuid4(), ACCESS_TO_JUSTICE, gone.registration_id))


def test_a_working_group_id_is_used_once() -> None:
    cid, wid = uuid4(), uuid4()
    state = given(planned(cid), WorkingGroupFormed(cid, wid, ACCESS_TO_JUSTICE, None))
    with pytest.raises(DuplicateIdentifier):
        when(state, FormWorkingGroup(cid, wid, DECENT_WORK))


def test_assigning_participants_to_working_groups() -> None:
    cid, justice, work = uuid4(), uuid4(), uuid4()
    seated = participant(cid, "Hà Thị Minh Đức", "VN")
    waiting = participant(cid, "Maita Santiago", "PH", waitlisted=True)
    history = [
        planned(cid, capacity=1),
        opened(cid),
        seated,
        waiting,
        WorkingGroupFormed(cid, justice, ACCESS_TO_JUSTICE, None),
        WorkingGroupFormed(cid, work, DECENT_WORK, None),
    ]
    state = given(*history)
    events = when(state, AssignToWorkingGroup(cid, seated.registration_id, justice))
    assert events == [ParticipantAssigned(cid, seated.registration_id, justice)]
    state = given(*history, *events)
    assert state.registrations[seated.registration_id].working_group_id == justice
    assert when(state, AssignToWorkingGroup(cid, seated.registration_id, justice)) == []
    assert when(state, AssignToWorkingGroup(cid, seated.registration_id, work)) == [
        ParticipantAssigned(cid, seated.registration_id, work)
    ]
    assert when(state, AssignToWorkingGroup(cid, waiting.registration_id, work)) == [
        ParticipantAssigned(cid, waiting.registration_id, work)
    ]


def test_assignment_needs_an_active_registration_and_a_working_group() -> None:
    cid, wid = uuid4(), uuid4()
    seated = participant(cid, "Đức")
    gone = participant(cid, "Tuyết", "VN")
    history = [
        planned(cid),
        opened(cid),
        seated,
        gone,
        RegistrationCancelled(cid, gone.registration_id, None, "organiser"),
        WorkingGroupFormed(cid, wid, ACCESS_TO_JUSTICE, None),
    ]
    state = given(*history)
    with pytest.raises(UnknownWorkingGroup) as refused:
        when(state, AssignToWorkingGroup(cid, seated.registration_id, uuid4()))
    assert refused.value.code == "unknown-working-group"
    with pytest.raises(UnknownRegistration):
        when(state, AssignToWorkingGroup(cid, uuid4(), wid))
    with pytest.raises(RegistrationIsCancelled):
        when(state, AssignToWorkingGroup(cid, gone.registration_id, wid))


# --- completing and cancelling ------------------------------------------------------------


def test_a_consultation_is_completed_once_it_has_started() -> None:
    cid = uuid4()
    state = given(planned(cid), opened(cid))
    with pytest.raises(ConsultationNotStarted) as refused:
        when(state, CompleteConsultation(cid), now=START - timedelta(minutes=1))
    assert refused.value.code == "consultation-not-started"
    events = when(state, CompleteConsultation(cid), now=END)
    assert events == [ConsultationCompleted(cid)]
    held = given(planned(cid), opened(cid), *events)
    assert status_at(held, END) == "completed"
    assert when(held, CompleteConsultation(cid), now=END) == []


def test_a_cancelled_consultation_cannot_be_completed() -> None:
    cid = uuid4()
    with pytest.raises(ConsultationIsCancelled):
        when(given(planned(cid), ConsultationCancelled(cid, "floods")), CompleteConsultation(cid))


def test_cancelling_needs_a_reason() -> None:
    cid = uuid4()
    with pytest.raises(ReasonRequired) as refused:
        when(given(planned(cid)), CancelConsultation(cid, "  "))
    assert refused.value.code == "reason-required"
    events = when(given(planned(cid)), CancelConsultation(cid, "Postponed: travel restrictions"))
    assert events == [ConsultationCancelled(cid, "Postponed: travel restrictions")]
    state = given(planned(cid), *events)
    assert status_at(state, JANUARY) == "cancelled"
    assert state.cancellation_reason == "Postponed: travel restrictions"


def test_cancelling_twice_is_refused() -> None:
    cid = uuid4()
    state = given(planned(cid), ConsultationCancelled(cid, "floods"))
    with pytest.raises(ConsultationIsCancelled) as refused:
        when(state, CancelConsultation(cid, "again"))
    assert refused.value.code == "consultation-cancelled"


def test_a_consultation_held_cannot_be_cancelled() -> None:
    cid = uuid4()
    with pytest.raises(ConsultationAlreadyHeld):
        when(given(planned(cid), ConsultationCompleted(cid)), CancelConsultation(cid, "late"))


@pytest.mark.parametrize("index", [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11])  # 10: check-in, below
@pytest.mark.parametrize("ending", ["cancelled", "completed"])
def test_nothing_changes_once_a_consultation_is_over(index: int, ending: str) -> None:
    cid = uuid4()
    seated = participant(cid, "Đức")
    wid = uuid4()
    panel = session(cid, "Panel", wib(2, 20, 10), wib(2, 20, 12))
    end: DomainEvent = (
        ConsultationCancelled(cid, "floods")
        if ending == "cancelled"
        else ConsultationCompleted(cid)
    )
    state = given(
        planned(cid),
        opened(cid),
        seated,
        panel,
        WorkingGroupFormed(cid, wid, DECENT_WORK, None),
        end,
    )
    commands: list[Command] = [
        ReviseConsultation(cid, title="Another"),
        RescheduleConsultation(cid, START, END + timedelta(days=1)),
        OpenRegistration(cid, CLOSES),
        CloseRegistration(cid),
        ScheduleSession(cid, uuid4(), "Late", "plenary", START, END),
        ChangeSession(cid, panel.session_id, title="X"),
        RemoveSession(cid, panel.session_id),
        FormWorkingGroup(cid, uuid4(), ACCESS_TO_JUSTICE),
        register(cid, "Hà Thị Minh Đức"),
        CancelRegistration(cid, seated.registration_id),
        CheckIn(cid, seated.registration_id),
        AssignToWorkingGroup(cid, seated.registration_id, wid),
    ]
    expected = ConsultationIsCancelled if ending == "cancelled" else ConsultationAlreadyHeld
    with pytest.raises(expected):
        when(state, commands[index])


# --- what projections read ----------------------------------------------------------------


def test_counts_by_role_and_country_count_seat_holders() -> None:
    cid = uuid4()
    people = [
        participant(cid, "Hà Thị Minh Đức", "VN", role="speaker"),
        participant(cid, "Nguyễn Thị Tuyết", "VN"),
        participant(cid, "Sinapan Samydorai", "SG", role="resource_person"),
        participant(cid, "Rafendi Djamin", "ID", role="facilitator"),
        participant(cid, "Anonymous observer", None, role="observer"),
        participant(cid, "Maita Santiago", "PH", waitlisted=True),
    ]
    state = given(planned(cid, capacity=5), opened(cid), *people)
    assert state.registered_count == 5
    assert state.counts_by_role == {
        "speaker": 1,
        "delegate": 1,
        "resource_person": 1,
        "facilitator": 1,
        "observer": 1,
    }
    assert state.counts_by_country == {"VN": 2, "SG": 1, "ID": 1, None: 1}
    assert [r.name.value for r in state.waitlist] == ["Maita Santiago"]


def test_the_whole_jakarta_story_round_trips_through_the_log() -> None:
    cid, wid, duc = uuid4(), uuid4(), uuid4()
    commands: list[tuple[Command, datetime]] = [
        (
            PlanConsultation(
                cid,
                "Regional CSO Consultation on the Implementation of the ASEAN Consensus",
                "regional",
                "ID",
                "in_person",
                "Asia/Jakarta",
                START,
                END,
                HRWG,
                capacity=1,
                thematic_areas=DEFAULT_THEMATIC_AREAS,
            ),
            JANUARY,
        ),
        (ReviseConsultation(cid, venue="Jakarta", cleared=("theme",)), JANUARY),
        (OpenRegistration(cid, CLOSES), JANUARY),
        (register(cid, "Hà Thị Minh Đức", person_id=duc, country="VN"), JANUARY),
        (register(cid, "Sinapan Samydorai", country="SG", organisation_id=HOME), JANUARY),
        (
            ScheduleSession(
                cid,
                uuid4(),
                "Opening",
                "plenary",
                START,
                START + timedelta(hours=1),
                speakers=(SpeakerDetails(duc, "Hà Thị Minh Đức"),),
            ),
            JANUARY,
        ),
        (FormWorkingGroup(cid, wid, ACCESS_TO_JUSTICE), JANUARY),
        (RescheduleConsultation(cid, START + timedelta(days=1), END + timedelta(days=1)), JANUARY),
        (CloseRegistration(cid), JANUARY),
        (CompleteConsultation(cid), END + timedelta(days=1)),
    ]
    history: list[DomainEvent] = []
    for command, now in commands:
        history += when(given(*history), command, now=now)
    state = given(*history)
    seated = state.registered[0]
    history += when(state, CheckIn(cid, seated.registration_id))
    assert {e.type for e in history} >= {
        "consultation.planned",
        "consultation.revised",
        "consultation.registration_opened",
        "consultation.participant_registered",
        "consultation.participant_waitlisted",
        "consultation.session_scheduled",
        "consultation.working_group_formed",
        "consultation.rescheduled",
        "consultation.session_changed",
        "consultation.registration_closed",
        "consultation.completed",
        "consultation.participant_checked_in",
    }
    assert [stored(e) for e in history] == history
    assert given(*(stored(e) for e in history)) == given(*history)


def test_every_consultation_event_is_registered_and_named_for_its_stream() -> None:
    consultation_events = [t for t in EVENTS.types() if t.startswith("consultation.")]
    assert len(consultation_events) == 18
    for name in consultation_events:
        cls = EVENTS.event_class(name)
        assert "consultation_id" in inspect.signature(cls).parameters


def test_each_error_has_its_own_code() -> None:
    family: list[type[ConsultationError]] = [ConsultationError]
    for cls in family:
        family += cls.__subclasses__()
    assert len(family) > 20
    assert len({cls.code for cls in family}) == len(family)
