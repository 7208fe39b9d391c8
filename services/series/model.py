"""The series aggregate: decide and evolve, and the progress of a series.

A consultation joins a series once: joining again is a no-op, even naming another country
(the first join stands).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from uuid import UUID

from services.decider import Context, Decider
from services.messages import DomainEvent
from services.series.commands import ExtendSeriesPlan, JoinSeries, LaunchSeries
from services.series.errors import (
    CountryNotPlanned,
    InvalidValue,
    SeriesAlreadyLaunched,
    UnknownSeries,
)
from services.series.events import ConsultationJoinedSeries, SeriesLaunched, SeriesPlanExtended

STREAM_TYPE = "series"


@dataclass(frozen=True)
class Series:
    series_id: UUID | None = None
    title: str = ""
    description: str | None = None
    planned_countries: tuple[str, ...] = ()
    #: Country of each consultation that joined, in joining order.
    consultations: Mapping[UUID, str] = field(default_factory=dict)

    @property
    def exists(self) -> bool:
        return self.series_id is not None


@dataclass(frozen=True)
class SeriesProgress:
    """Planned countries, in plan order: with a consultation (and of those, a completed one),
    and without any yet."""

    covered: tuple[str, ...]
    completed: tuple[str, ...]
    remaining: tuple[str, ...]
    consultations_by_country: Mapping[str, tuple[UUID, ...]]


def progress(state: Series, completed_consultation_ids: Collection[UUID] = ()) -> SeriesProgress:
    """Which planned countries have a joined (and a completed) consultation, and which remain."""
    by_country: dict[str, tuple[UUID, ...]] = dict.fromkeys(state.planned_countries, ())
    for consultation_id, country in state.consultations.items():
        by_country[country] = (*by_country.get(country, ()), consultation_id)
    planned = state.planned_countries
    done = set(completed_consultation_ids)
    return SeriesProgress(
        covered=tuple(c for c in planned if by_country[c]),
        completed=tuple(c for c in planned if done.intersection(by_country[c])),
        remaining=tuple(c for c in planned if not by_country[c]),
        consultations_by_country=by_country,
    )


Command = LaunchSeries | ExtendSeriesPlan | JoinSeries


def evolve(state: Series, event: DomainEvent) -> Series:
    match event:
        case SeriesLaunched():
            return Series(
                series_id=event.series_id,
                title=event.title,
                description=event.description,
                planned_countries=event.planned_countries,
            )
        case SeriesPlanExtended():
            return replace(state, planned_countries=state.planned_countries + event.countries)
        case ConsultationJoinedSeries():
            consultations = {**state.consultations, event.consultation_id: event.country}
            return replace(state, consultations=consultations)
    return state


def decide(state: Series, command: Command, ctx: Context) -> Sequence[DomainEvent]:
    match command:
        case LaunchSeries():
            if state.exists:
                raise SeriesAlreadyLaunched(f"series {command.series_id} is already launched")
            title = command.title.strip()
            if not title:
                raise InvalidValue("title", "must not be blank")
            countries = _countries("planned_countries", command.planned_countries)
            if not countries:
                raise InvalidValue("planned_countries", "name at least one country")
            description = (command.description or "").strip() or None
            return [SeriesLaunched(command.series_id, title, countries, description)]
        case ExtendSeriesPlan():
            _check_exists(state, command.series_id)
            countries = _countries("countries", command.countries)
            added = tuple(c for c in countries if c not in state.planned_countries)
            if not added:
                return []
            return [SeriesPlanExtended(command.series_id, added)]
        case JoinSeries():
            _check_exists(state, command.series_id)
            country = _countries("country", (command.country,))[0]
            if command.consultation_id in state.consultations:
                return []
            if country not in state.planned_countries:
                raise CountryNotPlanned(
                    f"{country} is not planned in this series "
                    f"({', '.join(state.planned_countries)}); extend the plan first"
                )
            return [ConsultationJoinedSeries(command.series_id, command.consultation_id, country)]
    raise TypeError(f"not a series command: {command!r}")


def _check_exists(state: Series, series_id: UUID) -> None:
    if not state.exists or state.series_id != series_id:
        raise UnknownSeries(f"no series {series_id}")


def _countries(name: str, values: tuple[str, ...]) -> tuple[str, ...]:
    """ISO 3166-1 alpha-2 codes, each once, in the order given."""
    for value in values:
        if len(value) != 2 or not value.isascii() or not value.isalpha() or not value.isupper():
            raise InvalidValue(name, f"must be ISO 3166-1 alpha-2 codes such as VN, not {value!r}")
    return tuple(dict.fromkeys(values))


SERIES: Decider[Series, Command] = Decider(STREAM_TYPE, Series, evolve, decide)
