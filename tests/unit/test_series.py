"""Series rules, given events → when command → then events or error.

The story: national consultations on the ASEAN Consensus across the member states, organised
by the Human Rights Working Group; Hanoi (18 December 2019) was the fourth, with more planned
in Myanmar, Cambodia, Laos, the Philippines, Singapore and Brunei.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from uuid import UUID, uuid4

import pytest

from services.decider import Context
from services.messages import DomainEvent
from services.ports import RecordedEvent
from services.registry import EVENTS
from services.series.commands import ExtendSeriesPlan, JoinSeries, LaunchSeries
from services.series.errors import (
    CountryNotPlanned,
    InvalidValue,
    SeriesAlreadyLaunched,
    UnknownSeries,
)
from services.series.events import ConsultationJoinedSeries, SeriesLaunched, SeriesPlanExtended
from services.series.model import SERIES, Command, Series, progress

CTX = Context(now=datetime(2019, 9, 1, tzinfo=UTC))
TITLE = "National consultations on the implementation of the ASEAN Consensus"
FIRST_FOUR = ("ID", "TH", "MY", "VN")
MORE = ("MM", "KH", "LA", "PH", "SG", "BN")


def given(*events: DomainEvent) -> Series:
    return SERIES.fold(events)


def when(state: Series, command: Command) -> list[DomainEvent]:
    return list(SERIES.decide(state, command, CTX))


def launched(sid: UUID, countries: tuple[str, ...] = FIRST_FOUR) -> SeriesLaunched:
    return SeriesLaunched(sid, TITLE, countries, None)


def stored(event: DomainEvent) -> DomainEvent:
    new = EVENTS.to_new_event(event)
    record = RecordedEvent(
        id=new.id,
        stream_id=uuid4(),
        stream_type="series",
        version=1,
        position=1,
        type=new.type,
        schema_version=new.schema_version,
        data=dict(new.data),
        metadata={},
        recorded_at=datetime.now(UTC),
    )
    return EVENTS.decode(record)


def test_launching_a_series() -> None:
    sid = uuid4()
    command = LaunchSeries(sid, f"  {TITLE} ", FIRST_FOUR, description="Dialogue on the Consensus")
    events = when(given(), command)
    assert events == [SeriesLaunched(sid, TITLE, FIRST_FOUR, "Dialogue on the Consensus")]
    assert stored(events[0]) == events[0]
    state = given(*events)
    assert state.planned_countries == FIRST_FOUR
    assert progress(state).remaining == FIRST_FOUR


def test_a_series_is_launched_once() -> None:
    sid = uuid4()
    with pytest.raises(SeriesAlreadyLaunched) as refused:
        when(given(launched(sid)), LaunchSeries(sid, TITLE, FIRST_FOUR))
    assert refused.value.code == "series-already-launched"


def test_planned_countries_are_named_once_each() -> None:
    sid = uuid4()
    events = when(given(), LaunchSeries(sid, TITLE, ("ID", "VN", "ID")))
    assert events == [SeriesLaunched(sid, TITLE, ("ID", "VN"), None)]


@pytest.mark.parametrize(
    ("title", "countries", "field"),
    [
        (" ", FIRST_FOUR, "title"),
        (TITLE, (), "planned_countries"),
        (TITLE, ("Viet Nam",), "planned_countries"),
        (TITLE, ("vn",), "planned_countries"),
    ],
)
def test_launching_refuses_invalid_details(
    title: str, countries: tuple[str, ...], field: str
) -> None:
    with pytest.raises(InvalidValue) as refused:
        when(given(), LaunchSeries(uuid4(), title, countries))
    assert refused.value.field == field
    assert refused.value.code == "invalid-value"


def test_extending_the_plan_adds_only_new_countries() -> None:
    sid = uuid4()
    state = given(launched(sid))
    events = when(state, ExtendSeriesPlan(sid, ("VN", *MORE)))
    assert events == [SeriesPlanExtended(sid, MORE)]
    assert stored(events[0]) == events[0]
    after = given(launched(sid), *events)
    assert after.planned_countries == FIRST_FOUR + MORE
    assert when(after, ExtendSeriesPlan(sid, ("MM", "ID"))) == []


def test_a_consultation_joins_for_a_planned_country() -> None:
    sid, hanoi = uuid4(), uuid4()
    events = when(given(launched(sid)), JoinSeries(sid, hanoi, "VN"))
    assert events == [ConsultationJoinedSeries(sid, hanoi, "VN")]
    assert stored(events[0]) == events[0]
    assert given(launched(sid), *events).consultations == {hanoi: "VN"}


def test_a_consultation_joins_once() -> None:
    sid, hanoi = uuid4(), uuid4()
    state = given(launched(sid), ConsultationJoinedSeries(sid, hanoi, "VN"))
    assert when(state, JoinSeries(sid, hanoi, "VN")) == []
    assert when(state, JoinSeries(sid, hanoi, "TH")) == []  # the first join stands


def test_a_country_must_be_planned_before_a_consultation_joins_for_it() -> None:
    sid, yangon = uuid4(), uuid4()
    state = given(launched(sid))
    with pytest.raises(CountryNotPlanned, match="extend the plan") as refused:
        when(state, JoinSeries(sid, yangon, "MM"))
    assert refused.value.code == "country-not-planned"
    extended = given(launched(sid), SeriesPlanExtended(sid, ("MM",)))
    assert when(extended, JoinSeries(sid, yangon, "MM")) == [
        ConsultationJoinedSeries(sid, yangon, "MM")
    ]


def test_a_country_may_see_more_than_one_consultation() -> None:
    sid, first, second = uuid4(), uuid4(), uuid4()
    state = given(launched(sid), ConsultationJoinedSeries(sid, first, "ID"))
    assert when(state, JoinSeries(sid, second, "ID")) == [
        ConsultationJoinedSeries(sid, second, "ID")
    ]


def test_joining_refuses_an_invalid_country() -> None:
    sid = uuid4()
    with pytest.raises(InvalidValue):
        when(given(launched(sid)), JoinSeries(sid, uuid4(), "Vietnam"))


@pytest.mark.parametrize(
    "command",
    [
        lambda sid: ExtendSeriesPlan(sid, ("MM",)),
        lambda sid: JoinSeries(sid, uuid4(), "VN"),
    ],
    ids=["extend", "join"],
)
def test_commands_on_an_unknown_series_are_refused(command: Callable[[UUID], Command]) -> None:
    sid = uuid4()
    with pytest.raises(UnknownSeries) as refused:
        when(given(), command(sid))
    assert refused.value.code == "unknown-series"
    with pytest.raises(UnknownSeries):
        when(given(launched(uuid4())), command(sid))


def test_progress_shows_the_countries_done_and_those_remaining() -> None:
    sid = uuid4()
    jakarta, bangkok, kuala_lumpur, hanoi, yangon = (uuid4() for _ in range(5))
    state = given(
        launched(sid),
        ConsultationJoinedSeries(sid, jakarta, "ID"),
        ConsultationJoinedSeries(sid, bangkok, "TH"),
        ConsultationJoinedSeries(sid, kuala_lumpur, "MY"),
        ConsultationJoinedSeries(sid, hanoi, "VN"),
        SeriesPlanExtended(sid, MORE),
        ConsultationJoinedSeries(sid, yangon, "MM"),
    )
    done = progress(state, {jakarta, bangkok, kuala_lumpur, hanoi})
    assert done.covered == (*FIRST_FOUR, "MM")
    assert done.completed == FIRST_FOUR
    assert done.remaining == ("KH", "LA", "PH", "SG", "BN")
    assert done.consultations_by_country["VN"] == (hanoi,)
    assert done.consultations_by_country["BN"] == ()
    assert progress(state).completed == ()
    assert progress(state).covered == done.covered


def test_every_series_event_is_registered() -> None:
    assert [t for t in EVENTS.types() if t.startswith("series.")] == [
        "series.consultation_joined",
        "series.launched",
        "series.plan_extended",
    ]
