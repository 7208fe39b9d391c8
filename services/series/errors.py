"""Errors of the series context."""

from __future__ import annotations

from services.errors import DomainError


class SeriesError(DomainError):
    code = "series-error"


class UnknownSeries(SeriesError):
    code = "unknown-series"


class SeriesAlreadyLaunched(SeriesError):
    code = "series-already-launched"


class CountryNotPlanned(SeriesError):
    """A consultation can join only for a planned country: extend the plan first."""

    code = "country-not-planned"


class InvalidValue(SeriesError):
    """A value a command carries is not acceptable; ``field`` names it."""

    code = "invalid-value"

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")
