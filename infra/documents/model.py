"""What a compiled joint statement shows: plain, immutable data, built from the event log.

Nothing here reads a clock or a database. Whoever builds a ``StatementDocument`` takes every
value, including ``compiled_at``, from the log, so that rendering the same log twice gives the
same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

ERASED = "[erased]"
"""What an erased personal name reads as in the log; rendered as it is."""


@dataclass(frozen=True, slots=True)
class Recommendation:
    """One numbered recommendation ("3.2") and whom it addresses."""

    number: str
    text: str
    addressed_to: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Section:
    """The recommendations of one thematic area, in their order in the statement."""

    thematic_area: str
    recommendations: tuple[Recommendation, ...]


@dataclass(frozen=True, slots=True)
class Signatory:
    """An organisation that endorsed the finalised text, and the person who signed for it."""

    organisation_name: str
    acronym: str | None
    country: str  # ISO 3166-1 alpha-2
    kind: str
    signatory_name: str  # may be ERASED
    signatory_title: str | None = None


@dataclass(frozen=True, slots=True)
class Consultation:
    """Where and when the statement was agreed; times are shown in ``timezone``."""

    title: str
    city: str | None
    host_country: str  # ISO 3166-1 alpha-2
    starts_at: datetime  # tz-aware
    ends_at: datetime  # tz-aware
    timezone: str  # IANA name, e.g. "Asia/Jakarta"


@dataclass(frozen=True, slots=True)
class StatementDocument:
    """Everything the compiled statement shows; signatories in any order (rendering sorts)."""

    statement_id: UUID
    title: str
    language: str  # BCP 47
    preamble: str | None
    consultation: Consultation
    sections: tuple[Section, ...]
    content_hash: str  # hex digest of the finalised canonical text
    finalised_at: datetime  # tz-aware
    endorsement_deadline: datetime  # tz-aware
    compiled_at: datetime  # tz-aware; the time recorded in the log, never the wall clock
    public_url: str  # base of links, e.g. "https://concord.example.org"
    signatories: tuple[Signatory, ...]

    def __post_init__(self) -> None:
        for name in ("finalised_at", "endorsement_deadline", "compiled_at"):
            _require_aware(name, getattr(self, name))
        _require_aware("consultation.starts_at", self.consultation.starts_at)
        _require_aware("consultation.ends_at", self.consultation.ends_at)


def _require_aware(name: str, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")
