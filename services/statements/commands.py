"""What can be asked of a joint statement.

The caller supplies what the statement cannot know by itself: the consultation's thematic
areas and time zone, the person id of a signatory, the endorsing organisation's details (after
checking the organisation exists), and for compiling the job, file hashes and compile time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID


@dataclass(frozen=True)
class StartDrafting:
    statement_id: UUID
    consultation_id: UUID
    title: str
    language: str
    thematic_areas: tuple[str, ...]
    preamble: str | None = None
    drafting_committee: tuple[UUID, ...] = ()


@dataclass(frozen=True)
class AddSection:
    """Add the section of a thematic area (adding a recommendation does it too)."""

    statement_id: UUID
    thematic_area: str


@dataclass(frozen=True)
class AddRecommendation:
    statement_id: UUID
    recommendation_id: UUID
    thematic_area: str
    text: str
    addressed_to: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReviseRecommendation:
    """New text and/or addressees; ``None`` leaves one as it is."""

    statement_id: UUID
    recommendation_id: UUID
    text: str | None = None
    addressed_to: tuple[str, ...] | None = None


@dataclass(frozen=True)
class WithdrawRecommendation:
    statement_id: UUID
    recommendation_id: UUID
    reason: str | None = None


@dataclass(frozen=True)
class ProposeAmendment:
    statement_id: UUID
    amendment_id: UUID
    recommendation_id: UUID
    organisation_id: UUID
    text: str
    rationale: str


@dataclass(frozen=True)
class AcceptAmendment:
    statement_id: UUID
    amendment_id: UUID


@dataclass(frozen=True)
class RejectAmendment:
    statement_id: UUID
    amendment_id: UUID
    reason: str


@dataclass(frozen=True)
class FinaliseStatement:
    """Freeze the text; ``timezone`` is the consultation's, for showing the deadline."""

    statement_id: UUID
    endorsement_deadline: datetime
    timezone: str = "UTC"


@dataclass(frozen=True)
class EndorseStatement:
    """Sign on behalf of an organisation.

    ``content_hash`` pins the text being signed: it must be the finalised one. Left as None it
    means "the text finalised right now" (decided atomically with the endorsement); the event
    always records the hash.
    """

    statement_id: UUID
    organisation_id: UUID
    person_id: UUID
    signatory_name: str
    organisation_name: str
    organisation_country: str
    organisation_kind: str
    signatory_title: str | None = None
    content_hash: str | None = None


@dataclass(frozen=True)
class WithdrawEndorsement:
    statement_id: UUID
    organisation_id: UUID
    reason: str | None = None


@dataclass(frozen=True)
class ReopenStatement:
    statement_id: UUID
    reason: str


@dataclass(frozen=True)
class CloseEndorsements:
    statement_id: UUID


@dataclass(frozen=True)
class RecordCompilation:
    """A job rendered the text ``content_hash``; ``files`` maps kind (md, html, pdf) → SHA-256."""

    statement_id: UUID
    job_id: UUID
    content_hash: str
    files: Mapping[str, str] = field(default_factory=dict)
    compiled_at: datetime | None = None


@dataclass(frozen=True)
class PublishStatement:
    statement_id: UUID
    job_id: UUID


@dataclass(frozen=True)
class RequestPublication:
    """Ask for the statement to be compiled and published by a background job."""

    statement_id: UUID
    job_id: UUID
