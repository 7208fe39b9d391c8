"""What happens to a series, as past-tense facts."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from services.messages import DomainEvent
from services.registry import EVENTS


@EVENTS.register
@dataclass(frozen=True)
class SeriesLaunched(DomainEvent):
    type = "series.launched"
    series_id: UUID
    title: str
    planned_countries: tuple[str, ...]
    description: str | None


@EVENTS.register
@dataclass(frozen=True)
class SeriesPlanExtended(DomainEvent):
    """Countries added to the plan (only those not planned before)."""

    type = "series.plan_extended"
    series_id: UUID
    countries: tuple[str, ...]


@EVENTS.register
@dataclass(frozen=True)
class ConsultationJoinedSeries(DomainEvent):
    type = "series.consultation_joined"
    series_id: UUID
    consultation_id: UUID
    country: str
