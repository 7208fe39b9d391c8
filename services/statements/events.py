"""What happens to a joint statement, as past-tense facts.

Every event names its statement. Times are UTC. Signatories' names and titles are
:class:`~services.messages.Personal`, with the signatory's person id as subject. Events carry
what a document needs (the organisation snapshot of an endorsement, the text an accepted
amendment applied) so that a statement can be rendered from its log alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from services.messages import DomainEvent, Personal
from services.registry import EVENTS


@EVENTS.register
@dataclass(frozen=True)
class DraftingStarted(DomainEvent):
    """``thematic_areas`` are the consultation's, in its order: sections follow that order."""

    type = "statement.drafting_started"
    statement_id: UUID
    consultation_id: UUID
    title: str
    language: str
    preamble: str | None
    drafting_committee: tuple[UUID, ...]
    thematic_areas: tuple[str, ...]


@EVENTS.register
@dataclass(frozen=True)
class SectionAdded(DomainEvent):
    type = "statement.section_added"
    statement_id: UUID
    section_id: UUID
    thematic_area: str


@EVENTS.register
@dataclass(frozen=True)
class RecommendationAdded(DomainEvent):
    type = "statement.recommendation_added"
    statement_id: UUID
    recommendation_id: UUID
    section_id: UUID
    text: str
    addressed_to: tuple[str, ...]


@EVENTS.register
@dataclass(frozen=True)
class RecommendationRevised(DomainEvent):
    """The recommendation as it now reads (text and addressees, whole)."""

    type = "statement.recommendation_revised"
    statement_id: UUID
    recommendation_id: UUID
    text: str
    addressed_to: tuple[str, ...]


@EVENTS.register
@dataclass(frozen=True)
class RecommendationWithdrawn(DomainEvent):
    type = "statement.recommendation_withdrawn"
    statement_id: UUID
    recommendation_id: UUID
    reason: str | None


@EVENTS.register
@dataclass(frozen=True)
class AmendmentProposed(DomainEvent):
    """An organisation proposes ``text`` to replace the recommendation's text."""

    type = "statement.amendment_proposed"
    statement_id: UUID
    amendment_id: UUID
    recommendation_id: UUID
    organisation_id: UUID
    text: str
    rationale: str


@EVENTS.register
@dataclass(frozen=True)
class AmendmentAccepted(DomainEvent):
    """The amendment's ``text`` now is the text of recommendation ``recommendation_id``."""

    type = "statement.amendment_accepted"
    statement_id: UUID
    amendment_id: UUID
    recommendation_id: UUID
    text: str


@EVENTS.register
@dataclass(frozen=True)
class AmendmentRejected(DomainEvent):
    type = "statement.amendment_rejected"
    statement_id: UUID
    amendment_id: UUID
    reason: str


@EVENTS.register
@dataclass(frozen=True)
class StatementFinalised(DomainEvent):
    """The text is frozen as ``content_hash``; endorsements are open until the deadline (UTC).

    ``timezone`` is the consultation's IANA zone, for showing the deadline.
    """

    type = "statement.finalised"
    statement_id: UUID
    content_hash: str
    endorsement_deadline: datetime
    timezone: str


@EVENTS.register
@dataclass(frozen=True)
class StatementEndorsed(DomainEvent):
    """An organisation signed the text ``content_hash``; its details as they were then."""

    type = "statement.endorsed"
    statement_id: UUID
    organisation_id: UUID
    signatory_name: Personal[str]
    signatory_title: Personal[str] | None
    content_hash: str
    organisation_name: str
    organisation_country: str
    organisation_kind: str


@EVENTS.register
@dataclass(frozen=True)
class EndorsementWithdrawn(DomainEvent):
    type = "statement.endorsement_withdrawn"
    statement_id: UUID
    organisation_id: UUID
    reason: str | None


@EVENTS.register
@dataclass(frozen=True)
class StatementReopened(DomainEvent):
    """Back to drafting; ``voided`` names every organisation whose endorsement no longer counts."""

    type = "statement.reopened"
    statement_id: UUID
    reason: str
    voided: tuple[UUID, ...]


@EVENTS.register
@dataclass(frozen=True)
class EndorsementsClosed(DomainEvent):
    type = "statement.endorsements_closed"
    statement_id: UUID


@EVENTS.register
@dataclass(frozen=True)
class StatementCompiled(DomainEvent):
    """Job ``job_id`` rendered the text ``content_hash``.

    ``files`` maps each kind (md, html, pdf) to the SHA-256 of its bytes.
    """

    type = "statement.compiled"
    statement_id: UUID
    job_id: UUID
    content_hash: str
    files: Mapping[str, str]
    compiled_at: datetime


@EVENTS.register
@dataclass(frozen=True)
class PublicationRequested(DomainEvent):
    """A job was asked to compile and publish the closed statement (the worker's cue)."""

    type = "statement.publication_requested"
    statement_id: UUID
    job_id: UUID
    content_hash: str


@EVENTS.register
@dataclass(frozen=True)
class StatementPublished(DomainEvent):
    """The files of the latest compilation are public."""

    type = "statement.published"
    statement_id: UUID
    job_id: UUID
    content_hash: str
    files: Mapping[str, str]
