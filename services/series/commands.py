"""What can be asked of a series."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID


@dataclass(frozen=True)
class LaunchSeries:
    series_id: UUID
    title: str
    planned_countries: tuple[str, ...]
    description: str | None = None


@dataclass(frozen=True)
class ExtendSeriesPlan:
    series_id: UUID
    countries: tuple[str, ...]


@dataclass(frozen=True)
class JoinSeries:
    """A consultation held in ``country`` (its host country) becomes part of the series."""

    series_id: UUID
    consultation_id: UUID
    country: str
