"""The joint statement aggregate: decide and evolve, and what the read side needs of it.

Life cycle: drafting → finalised (text frozen, endorsements open until the deadline) → closed
(endorsements closed) → compiled (any number of times) → published. Reopening a finalised or
closed statement returns it to drafting and voids every active endorsement.

Decisions worth knowing:

* Sections are one per thematic area, ordered as the consultation's areas. Adding a
  recommendation to an area without a section adds the section first, in the same decision.
  A section's id is derived from the statement and the area (:func:`section_id_for`).
* The canonical text (:func:`canonical_text`) holds the title, language, preamble and every
  section that has at least one recommendation not withdrawn, in area order, each with its
  recommendations in the order they were added. Its SHA-256 is the content hash.
* Finalising is refused while amendments are pending: each proposing organisation gets an
  explicit answer. Withdrawing a recommendation rejects its pending amendments with a reason.
* Organisers act with ``Context.organisation_id`` None and may do anything. An organisation acts
  only for itself (propose, endorse, withdraw its endorsement); it edits and steers the text
  (recommendations, amendment decisions, finalise, reopen, close, compile, publish) only if it
  is on the drafting committee.
* An endorsement may be withdrawn until endorsements are closed, even after the deadline (an
  organisation can always take its name off a text not yet published). Endorsing again after
  withdrawing records a new endorsement; both stay in :attr:`Statement.endorsement_records`.
* Compiling needs closed endorsements and names the content hash it rendered; the same job
  recording the same files again changes nothing. Publishing publishes the latest compilation;
  publishing again with the same job changes nothing.

``Statement.version`` counts the events applied, so it equals the stream version of the last
event; revisions and endorsements remember the version of the event that made them.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from uuid import UUID, uuid5
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services.decider import Context, Decider
from services.messages import DomainEvent, Personal
from services.statements.commands import (
    AcceptAmendment,
    AddRecommendation,
    AddSection,
    CloseEndorsements,
    EndorseStatement,
    FinaliseStatement,
    ProposeAmendment,
    PublishStatement,
    RecordCompilation,
    RejectAmendment,
    ReopenStatement,
    RequestPublication,
    ReviseRecommendation,
    StartDrafting,
    WithdrawEndorsement,
    WithdrawRecommendation,
)
from services.statements.errors import (
    AlreadyEndorsed,
    AlreadyPublished,
    AmendmentAlreadyDecided,
    AmendmentsPending,
    ContentHashMismatch,
    DuplicateIdentifier,
    EmptyStatement,
    EndorsementDeadlinePassed,
    EndorsementsAreClosed,
    EndorsementsStillOpen,
    InvalidDeadline,
    InvalidValue,
    NotCompiled,
    NotEndorsed,
    NotFinalised,
    NotOnDraftingCommittee,
    NotYourOrganisation,
    ReasonRequired,
    RecommendationIsWithdrawn,
    StatementAlreadyStarted,
    TextFrozen,
    UnknownAmendment,
    UnknownRecommendation,
    UnknownStatement,
    UnknownThematicArea,
)
from services.statements.events import (
    AmendmentAccepted,
    AmendmentProposed,
    AmendmentRejected,
    DraftingStarted,
    EndorsementsClosed,
    EndorsementWithdrawn,
    PublicationRequested,
    RecommendationAdded,
    RecommendationRevised,
    RecommendationWithdrawn,
    SectionAdded,
    StatementCompiled,
    StatementEndorsed,
    StatementFinalised,
    StatementPublished,
    StatementReopened,
)

STREAM_TYPE = "statement"

#: Statuses of :func:`status`.
STATUSES = ("drafting", "finalised", "closed", "published")

#: Kinds of :class:`Revision`.
ADDED, REVISED, AMENDED, WITHDRAWN = "added", "revised", "amended", "withdrawn"
#: Statuses of :class:`Amendment`.
PENDING, ACCEPTED, REJECTED = "pending", "accepted", "rejected"
#: Statuses of :class:`Endorsement` (``withdrawn`` as above).
ACTIVE, VOIDED = "active", "voided"

#: Reason recorded on pending amendments rejected because their recommendation was withdrawn.
WITHDRAWN_REASON = "The recommendation was withdrawn."

_LANGUAGE = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_FILE_KIND = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class Section:
    section_id: UUID
    thematic_area: str


@dataclass(frozen=True)
class Revision:
    """One step in a recommendation's history, made by the event at ``version``."""

    version: int
    kind: str
    text: str
    addressed_to: tuple[str, ...]
    amendment_id: UUID | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Recommendation:
    recommendation_id: UUID
    section_id: UUID
    thematic_area: str
    text: str
    addressed_to: tuple[str, ...]
    withdrawn: bool = False
    history: tuple[Revision, ...] = ()


@dataclass(frozen=True)
class Amendment:
    amendment_id: UUID
    recommendation_id: UUID
    organisation_id: UUID
    text: str
    rationale: str
    proposed_version: int
    status: str = PENDING
    reason: str | None = None
    decided_version: int | None = None


@dataclass(frozen=True)
class Endorsement:
    """An organisation's signature on the text ``content_hash``, made at ``version``."""

    organisation_id: UUID
    signatory_name: Personal[str]
    signatory_title: Personal[str] | None
    content_hash: str
    organisation_name: str
    organisation_country: str
    organisation_kind: str
    version: int
    status: str = ACTIVE
    ended_version: int | None = None
    reason: str | None = None

    @property
    def active(self) -> bool:
        return self.status == ACTIVE


@dataclass(frozen=True)
class Compilation:
    job_id: UUID
    content_hash: str
    files: Mapping[str, str]
    compiled_at: datetime
    version: int


@dataclass(frozen=True)
class Publication:
    job_id: UUID
    content_hash: str
    files: Mapping[str, str]
    version: int


@dataclass(frozen=True)
class SectionText:
    """A section as read: its area and its recommendations not withdrawn, in order."""

    section_id: UUID
    thematic_area: str
    recommendations: tuple[Recommendation, ...]


@dataclass(frozen=True)
class Statement:
    statement_id: UUID | None = None
    consultation_id: UUID | None = None
    title: str = ""
    language: str = ""
    preamble: str | None = None
    drafting_committee: tuple[UUID, ...] = ()
    thematic_areas: tuple[str, ...] = ()
    version: int = 0
    sections: Mapping[str, Section] = field(default_factory=dict)
    recommendations: Mapping[UUID, Recommendation] = field(default_factory=dict)
    amendments: Mapping[UUID, Amendment] = field(default_factory=dict)
    finalised: bool = False
    content_hash: str | None = None
    endorsement_deadline: datetime | None = None
    timezone: str = "UTC"
    #: Every endorsement ever made, in order, with its status (active, withdrawn, voided).
    endorsement_records: tuple[Endorsement, ...] = ()
    #: Where each organisation's active endorsement is in ``endorsement_records``: deciding
    #: or withdrawing on a statement with 10,000 signatories looks one up, never scans.
    active_at: Mapping[UUID, int] = field(default_factory=dict)
    closed: bool = False
    compilation: Compilation | None = None
    published: Publication | None = None
    reopen_reasons: tuple[str, ...] = ()
    #: Publication jobs asked for, in order (the worker compiles the latest).
    publication_jobs: tuple[UUID, ...] = ()

    @property
    def exists(self) -> bool:
        return self.statement_id is not None


Command = (
    StartDrafting
    | AddSection
    | AddRecommendation
    | ReviseRecommendation
    | WithdrawRecommendation
    | ProposeAmendment
    | AcceptAmendment
    | RejectAmendment
    | FinaliseStatement
    | EndorseStatement
    | WithdrawEndorsement
    | ReopenStatement
    | CloseEndorsements
    | RecordCompilation
    | PublishStatement
    | RequestPublication
)


# --- read helpers -------------------------------------------------------------------------


def section_id_for(statement_id: UUID, thematic_area: str) -> UUID:
    """The id of a statement's section for ``thematic_area`` (stable, derived)."""
    return uuid5(statement_id, thematic_area)


def status(state: Statement) -> str:
    """One of :data:`STATUSES`."""
    if not state.exists:
        raise UnknownStatement("no such statement")
    if state.published is not None:
        return "published"
    if state.closed:
        return "closed"
    if state.finalised:
        return "finalised"
    return "drafting"


def sections_in_order(state: Statement, *, include_empty: bool = True) -> tuple[SectionText, ...]:
    """Sections in thematic-area order, each with its recommendations not withdrawn."""
    order = {area: i for i, area in enumerate(state.thematic_areas)}
    found = []
    for section in sorted(state.sections.values(), key=lambda s: order[s.thematic_area]):
        recommendations = tuple(
            r
            for r in state.recommendations.values()
            if r.section_id == section.section_id and not r.withdrawn
        )
        if recommendations or include_empty:
            found.append(SectionText(section.section_id, section.thematic_area, recommendations))
    return tuple(found)


def canonical_text(state: Statement) -> bytes:
    """The statement's text as canonical JSON (sorted keys, no whitespace, UTF-8)."""
    text = {
        "title": state.title,
        "language": state.language,
        "preamble": state.preamble,
        "sections": [
            {
                "thematic_area": s.thematic_area,
                "recommendations": [
                    {
                        "id": str(r.recommendation_id),
                        "text": r.text,
                        "addressed_to": list(r.addressed_to),
                    }
                    for r in s.recommendations
                ],
            }
            for s in sections_in_order(state, include_empty=False)
        ],
    }
    return json.dumps(text, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def content_hash(state: Statement) -> str:
    """SHA-256 (hex) of :func:`canonical_text`: what finalising freezes and endorsers sign."""
    return hashlib.sha256(canonical_text(state)).hexdigest()


def pending_amendments(state: Statement) -> tuple[Amendment, ...]:
    """Amendments awaiting a decision, in the order they were proposed."""
    return tuple(a for a in state.amendments.values() if a.status == PENDING)


def amendments_of(state: Statement, recommendation_id: UUID) -> tuple[Amendment, ...]:
    """Every amendment ever proposed to a recommendation, in order."""
    return tuple(a for a in state.amendments.values() if a.recommendation_id == recommendation_id)


def history(state: Statement, recommendation_id: UUID) -> tuple[Revision, ...]:
    """A recommendation's revisions, oldest first: added, revised, amended, withdrawn."""
    recommendation = state.recommendations.get(recommendation_id)
    if recommendation is None:
        raise UnknownRecommendation(f"no recommendation {recommendation_id}")
    return recommendation.history


def active_endorsements(state: Statement) -> tuple[Endorsement, ...]:
    """Endorsements that count, in the order they were made."""
    records = state.endorsement_records
    return tuple(records[i] for i in sorted(state.active_at.values()))


def active_endorsement_of(state: Statement, organisation_id: UUID) -> Endorsement | None:
    at = state.active_at.get(organisation_id)
    return None if at is None else state.endorsement_records[at]


def counts_by_country(state: Statement) -> dict[str, int]:
    """Active endorsements per organisation country, by country code."""
    counts = Counter(e.organisation_country for e in active_endorsements(state))
    return dict(sorted(counts.items()))


def counts_by_kind(state: Statement) -> dict[str, int]:
    """Active endorsements per organisation kind, by kind."""
    counts = Counter(e.organisation_kind for e in active_endorsements(state))
    return dict(sorted(counts.items()))


def signatories_by_country(state: Statement) -> tuple[tuple[str, tuple[Endorsement, ...]], ...]:
    """Active endorsements grouped by country code, each group by organisation name."""
    groups: dict[str, list[Endorsement]] = {}
    for endorsement in active_endorsements(state):
        groups.setdefault(endorsement.organisation_country, []).append(endorsement)
    return tuple(
        (country, tuple(sorted(groups[country], key=_name_key))) for country in sorted(groups)
    )


def endorsement_open_at(state: Statement, now: datetime) -> bool:
    """Whether an organisation could endorse at ``now``."""
    return (
        state.finalised
        and not state.closed
        and state.endorsement_deadline is not None
        and now < state.endorsement_deadline
    )


def _name_key(endorsement: Endorsement) -> tuple[str, str]:
    return (endorsement.organisation_name.casefold(), str(endorsement.organisation_id))


# --- evolve -------------------------------------------------------------------------------


def evolve(state: Statement, event: DomainEvent) -> Statement:
    """The state after ``event``; each event adds one to ``version``."""
    state = replace(state, version=state.version + 1)
    v = state.version
    match event:
        case DraftingStarted():
            return Statement(
                statement_id=event.statement_id,
                consultation_id=event.consultation_id,
                title=event.title,
                language=event.language,
                preamble=event.preamble,
                drafting_committee=event.drafting_committee,
                thematic_areas=event.thematic_areas,
                version=v,
            )
        case SectionAdded():
            section = Section(event.section_id, event.thematic_area)
            return replace(state, sections={**state.sections, section.thematic_area: section})
        case RecommendationAdded():
            area = next(
                s.thematic_area for s in state.sections.values() if s.section_id == event.section_id
            )
            recommendation = Recommendation(
                recommendation_id=event.recommendation_id,
                section_id=event.section_id,
                thematic_area=area,
                text=event.text,
                addressed_to=event.addressed_to,
                history=(Revision(v, ADDED, event.text, event.addressed_to),),
            )
            return _put(state, recommendation)
        case RecommendationRevised():
            return _revised(
                state, event.recommendation_id, v, REVISED, event.text, event.addressed_to
            )
        case RecommendationWithdrawn():
            current = state.recommendations[event.recommendation_id]
            revision = Revision(
                v, WITHDRAWN, current.text, current.addressed_to, reason=event.reason
            )
            return _put(
                state,
                replace(current, withdrawn=True, history=(*current.history, revision)),
            )
        case AmendmentProposed():
            amendment = Amendment(
                amendment_id=event.amendment_id,
                recommendation_id=event.recommendation_id,
                organisation_id=event.organisation_id,
                text=event.text,
                rationale=event.rationale,
                proposed_version=v,
            )
            return replace(state, amendments={**state.amendments, event.amendment_id: amendment})
        case AmendmentAccepted():
            state = _decided(state, event.amendment_id, ACCEPTED, None, v)
            current = state.recommendations[event.recommendation_id]
            return _revised(
                state,
                event.recommendation_id,
                v,
                AMENDED,
                event.text,
                current.addressed_to,
                event.amendment_id,
            )
        case AmendmentRejected():
            return _decided(state, event.amendment_id, REJECTED, event.reason, v)
        case StatementFinalised():
            return replace(
                state,
                finalised=True,
                content_hash=event.content_hash,
                endorsement_deadline=event.endorsement_deadline,
                timezone=event.timezone,
            )
        case StatementEndorsed():
            at = len(state.endorsement_records)
            return replace(
                state,
                endorsement_records=(*state.endorsement_records, _endorsement(event, v)),
                active_at={**state.active_at, event.organisation_id: at},
            )
        case EndorsementWithdrawn():
            return _end_endorsements(state, {event.organisation_id}, WITHDRAWN, event.reason, v)
        case StatementReopened():
            state = _end_endorsements(state, set(event.voided), VOIDED, event.reason, v)
            return replace(
                state,
                finalised=False,
                content_hash=None,
                endorsement_deadline=None,
                closed=False,
                compilation=None,
                reopen_reasons=(*state.reopen_reasons, event.reason),
            )
        case EndorsementsClosed():
            return replace(state, closed=True)
        case StatementCompiled():
            compilation = Compilation(
                event.job_id, event.content_hash, dict(event.files), event.compiled_at, v
            )
            return replace(state, compilation=compilation)
        case PublicationRequested():
            return replace(state, publication_jobs=(*state.publication_jobs, event.job_id))
        case StatementPublished():
            published = Publication(event.job_id, event.content_hash, dict(event.files), v)
            return replace(state, published=published)
    return state


def _put(state: Statement, recommendation: Recommendation) -> Statement:
    recommendations = {**state.recommendations, recommendation.recommendation_id: recommendation}
    return replace(state, recommendations=recommendations)


def _revised(
    state: Statement,
    recommendation_id: UUID,
    version: int,
    kind: str,
    text: str,
    addressed_to: tuple[str, ...],
    amendment_id: UUID | None = None,
) -> Statement:
    current = state.recommendations[recommendation_id]
    revision = Revision(version, kind, text, addressed_to, amendment_id)
    return _put(
        state,
        replace(
            current, text=text, addressed_to=addressed_to, history=(*current.history, revision)
        ),
    )


def _decided(
    state: Statement, amendment_id: UUID, decision: str, reason: str | None, version: int
) -> Statement:
    amendment = replace(
        state.amendments[amendment_id], status=decision, reason=reason, decided_version=version
    )
    return replace(state, amendments={**state.amendments, amendment_id: amendment})


def _end_endorsements(
    state: Statement, organisation_ids: set[UUID], how: str, reason: str | None, version: int
) -> Statement:
    ending = [(o, state.active_at[o]) for o in organisation_ids if o in state.active_at]
    if not ending:
        return state
    records = list(state.endorsement_records)
    for _, at in ending:
        records[at] = replace(records[at], status=how, ended_version=version, reason=reason)
    active_at = dict(state.active_at)
    for organisation_id, _ in ending:
        del active_at[organisation_id]
    return replace(state, endorsement_records=tuple(records), active_at=active_at)


def _endorsement(event: StatementEndorsed, version: int) -> Endorsement:
    return Endorsement(
        organisation_id=event.organisation_id,
        signatory_name=event.signatory_name,
        signatory_title=event.signatory_title,
        content_hash=event.content_hash,
        organisation_name=event.organisation_name,
        organisation_country=event.organisation_country,
        organisation_kind=event.organisation_kind,
        version=version,
    )


def evolve_all(state: Statement, events: Iterable[DomainEvent]) -> Statement:
    """The state after ``events``, as :func:`evolve` one by one would leave it.

    A run of endorsements is applied at once: one copy of the endorsement records and of the
    index of active ones per run instead of per endorsement, so folding a statement with
    10,000 signatories takes linear time, not quadratic.
    """
    added: list[Endorsement] = []
    placed: dict[UUID, int] = {}

    def flush(state: Statement) -> Statement:
        if not added:
            return state
        state = replace(
            state,
            version=state.version + len(added),
            endorsement_records=(*state.endorsement_records, *added),
            active_at={**state.active_at, **placed},
        )
        added.clear()
        placed.clear()
        return state

    for event in events:
        if isinstance(event, StatementEndorsed):
            placed[event.organisation_id] = len(state.endorsement_records) + len(added)
            added.append(_endorsement(event, state.version + len(added) + 1))
        else:
            state = evolve(flush(state), event)
    return flush(state)


# --- decide -------------------------------------------------------------------------------


def decide(state: Statement, command: Command, ctx: Context) -> Sequence[DomainEvent]:
    if isinstance(command, StartDrafting):
        return _start(state, command)
    if not state.exists or state.statement_id != command.statement_id:
        raise UnknownStatement(f"no statement {command.statement_id}")
    match command:
        case AddSection():
            check_editor(state, ctx)
            check_drafting(state)
            area = check_area(state, command.thematic_area)
            return [] if area in state.sections else [_section_added(state, area)]
        case AddRecommendation():
            return _add_recommendation(state, command, ctx)
        case ReviseRecommendation():
            return _revise_recommendation(state, command, ctx)
        case WithdrawRecommendation():
            return _withdraw_recommendation(state, command, ctx)
        case ProposeAmendment():
            return _propose(state, command, ctx)
        case AcceptAmendment():
            check_editor(state, ctx)
            check_drafting(state)
            amendment = check_pending(state, command.amendment_id)
            return [
                AmendmentAccepted(
                    statement_id=command.statement_id,
                    amendment_id=amendment.amendment_id,
                    recommendation_id=amendment.recommendation_id,
                    text=amendment.text,
                )
            ]
        case RejectAmendment():
            check_editor(state, ctx)
            check_drafting(state)
            amendment = check_pending(state, command.amendment_id)
            reason = _required_reason(command.reason, "say why the amendment is rejected")
            return [AmendmentRejected(command.statement_id, amendment.amendment_id, reason)]
        case FinaliseStatement():
            return _finalise(state, command, ctx)
        case EndorseStatement():
            return _endorse(state, command, ctx)
        case WithdrawEndorsement():
            return _withdraw_endorsement(state, command, ctx)
        case ReopenStatement():
            return _reopen(state, command, ctx)
        case CloseEndorsements():
            check_editor(state, ctx)
            if state.closed:
                return []
            if not state.finalised:
                raise NotFinalised("only a finalised statement has endorsements to close")
            return [EndorsementsClosed(command.statement_id)]
        case RecordCompilation():
            return _compile(state, command, ctx)
        case PublishStatement():
            return _publish(state, command, ctx)
        case RequestPublication():
            return _request_publication(state, command, ctx)
    raise TypeError(f"not a statement command: {command!r}")


def _start(state: Statement, command: StartDrafting) -> Sequence[DomainEvent]:
    if state.exists:
        raise StatementAlreadyStarted(f"statement {command.statement_id} is already drafted")
    areas = _texts("thematic_areas", command.thematic_areas)
    if not areas:
        raise InvalidValue("thematic_areas", "a statement needs at least one thematic area")
    return [
        DraftingStarted(
            statement_id=command.statement_id,
            consultation_id=command.consultation_id,
            title=_text("title", command.title),
            language=_language(command.language),
            preamble=_optional_text(command.preamble),
            drafting_committee=tuple(dict.fromkeys(command.drafting_committee)),
            thematic_areas=areas,
        )
    ]


def _section_added(state: Statement, area: str) -> SectionAdded:
    assert state.statement_id is not None
    return SectionAdded(state.statement_id, section_id_for(state.statement_id, area), area)


def _add_recommendation(
    state: Statement, command: AddRecommendation, ctx: Context
) -> Sequence[DomainEvent]:
    check_editor(state, ctx)
    check_drafting(state)
    if command.recommendation_id in state.recommendations:
        raise DuplicateIdentifier(f"recommendation {command.recommendation_id} already exists")
    area = check_area(state, command.thematic_area)
    text = _text("text", command.text)
    addressed_to = _texts("addressed_to", command.addressed_to)
    section = state.sections.get(area)
    added: list[DomainEvent] = []
    if section is None:
        new = _section_added(state, area)
        added.append(new)
        section_id = new.section_id
    else:
        section_id = section.section_id
    added.append(
        RecommendationAdded(
            statement_id=command.statement_id,
            recommendation_id=command.recommendation_id,
            section_id=section_id,
            text=text,
            addressed_to=addressed_to,
        )
    )
    return added


def _revise_recommendation(
    state: Statement, command: ReviseRecommendation, ctx: Context
) -> Sequence[DomainEvent]:
    check_editor(state, ctx)
    check_drafting(state)
    current = check_standing(state, command.recommendation_id)
    text = current.text if command.text is None else _text("text", command.text)
    addressed_to = (
        current.addressed_to
        if command.addressed_to is None
        else _texts("addressed_to", command.addressed_to)
    )
    if (text, addressed_to) == (current.text, current.addressed_to):
        return []
    return [
        RecommendationRevised(command.statement_id, current.recommendation_id, text, addressed_to)
    ]


def _withdraw_recommendation(
    state: Statement, command: WithdrawRecommendation, ctx: Context
) -> Sequence[DomainEvent]:
    check_editor(state, ctx)
    check_drafting(state)
    current = check_recommendation(state, command.recommendation_id)
    if current.withdrawn:
        return []
    rejected = [
        AmendmentRejected(command.statement_id, a.amendment_id, WITHDRAWN_REASON)
        for a in pending_amendments(state)
        if a.recommendation_id == current.recommendation_id
    ]
    withdrawn = RecommendationWithdrawn(
        command.statement_id, current.recommendation_id, _optional_text(command.reason)
    )
    return [withdrawn, *rejected]


def _propose(state: Statement, command: ProposeAmendment, ctx: Context) -> Sequence[DomainEvent]:
    check_acting_for(ctx, command.organisation_id)
    check_drafting(state)
    if command.amendment_id in state.amendments:
        raise DuplicateIdentifier(f"amendment {command.amendment_id} already exists")
    current = check_standing(state, command.recommendation_id)
    text = _text("text", command.text)
    if text == current.text:
        raise InvalidValue("text", "is the recommendation's text already")
    return [
        AmendmentProposed(
            statement_id=command.statement_id,
            amendment_id=command.amendment_id,
            recommendation_id=current.recommendation_id,
            organisation_id=command.organisation_id,
            text=text,
            rationale=_text("rationale", command.rationale),
        )
    ]


def _finalise(state: Statement, command: FinaliseStatement, ctx: Context) -> Sequence[DomainEvent]:
    check_editor(state, ctx)
    check_drafting(state)
    deadline = _utc("endorsement_deadline", command.endorsement_deadline)
    if deadline <= ctx.now:
        raise InvalidDeadline(
            f"the endorsement deadline must be in the future, not {deadline.isoformat()}"
        )
    timezone = _timezone("timezone", command.timezone)
    pending = pending_amendments(state)
    if pending:
        raise AmendmentsPending(a.amendment_id for a in pending)
    if not sections_in_order(state, include_empty=False):
        raise EmptyStatement("add at least one recommendation before finalising")
    return [StatementFinalised(command.statement_id, content_hash(state), deadline, timezone)]


def _endorse(state: Statement, command: EndorseStatement, ctx: Context) -> Sequence[DomainEvent]:
    check_acting_for(ctx, command.organisation_id)
    check_endorsable(state, ctx.now)
    assert state.content_hash is not None
    existing = active_endorsement_of(state, command.organisation_id)
    if existing is not None:
        existing_title = existing.signatory_title
        raise AlreadyEndorsed(
            existing.organisation_id,
            existing.signatory_name.value,
            None if existing_title is None else existing_title.value,
            existing.version,
            existing.content_hash,
        )
    if command.content_hash is not None and command.content_hash != state.content_hash:
        raise ContentHashMismatch(state.content_hash, command.content_hash)
    person = command.person_id
    title = _optional_text(command.signatory_title)
    return [
        StatementEndorsed(
            statement_id=command.statement_id,
            organisation_id=command.organisation_id,
            signatory_name=Personal(person, _text("signatory_name", command.signatory_name)),
            signatory_title=None if title is None else Personal(person, title),
            content_hash=state.content_hash,
            organisation_name=_text("organisation_name", command.organisation_name),
            organisation_country=_country("organisation_country", command.organisation_country),
            organisation_kind=_text("organisation_kind", command.organisation_kind),
        )
    ]


def _withdraw_endorsement(
    state: Statement, command: WithdrawEndorsement, ctx: Context
) -> Sequence[DomainEvent]:
    check_acting_for(ctx, command.organisation_id)
    if state.closed:
        raise EndorsementsAreClosed("endorsements are closed; nothing can be withdrawn")
    if active_endorsement_of(state, command.organisation_id) is None:
        raise NotEndorsed(f"organisation {command.organisation_id} has not endorsed this text")
    return [
        EndorsementWithdrawn(
            command.statement_id, command.organisation_id, _optional_text(command.reason)
        )
    ]


def _reopen(state: Statement, command: ReopenStatement, ctx: Context) -> Sequence[DomainEvent]:
    check_editor(state, ctx)
    check_not_published(state)
    if not state.finalised:
        raise NotFinalised("the statement is still being drafted")
    reason = _required_reason(command.reason, "say why the statement is reopened")
    voided = tuple(e.organisation_id for e in active_endorsements(state))
    return [StatementReopened(command.statement_id, reason, voided)]


def _compile(state: Statement, command: RecordCompilation, ctx: Context) -> Sequence[DomainEvent]:
    check_editor(state, ctx)
    check_not_published(state)
    if not state.finalised:
        raise NotFinalised("the statement is still being drafted")
    if not state.closed:
        raise EndorsementsStillOpen("close endorsements before compiling the statement")
    assert state.content_hash is not None
    if command.content_hash != state.content_hash:
        raise ContentHashMismatch(state.content_hash, command.content_hash)
    files = _files(command.files)
    compiled_at = ctx.now if command.compiled_at is None else command.compiled_at
    compiled_at = _utc("compiled_at", compiled_at)
    latest = state.compilation
    if latest is not None and (latest.job_id, dict(latest.files)) == (command.job_id, files):
        return []
    return [
        StatementCompiled(
            command.statement_id, command.job_id, state.content_hash, files, compiled_at
        )
    ]


def _publish(state: Statement, command: PublishStatement, ctx: Context) -> Sequence[DomainEvent]:
    check_editor(state, ctx)
    if state.published is not None:
        if state.published.job_id == command.job_id:
            return []
        raise AlreadyPublished(f"statement {command.statement_id} is already published")
    compilation = state.compilation
    if compilation is None:
        raise NotCompiled("compile the statement before publishing it")
    return [
        StatementPublished(
            command.statement_id, command.job_id, compilation.content_hash, dict(compilation.files)
        )
    ]


def _request_publication(
    state: Statement, command: RequestPublication, ctx: Context
) -> Sequence[DomainEvent]:
    check_editor(state, ctx)
    if command.job_id in state.publication_jobs:
        return []
    if state.published is not None:
        raise AlreadyPublished(f"statement {command.statement_id} is already published")
    if not state.closed or state.content_hash is None:
        raise EndorsementsStillOpen("close endorsements before publishing")
    return [PublicationRequested(command.statement_id, command.job_id, state.content_hash)]


# --- rules --------------------------------------------------------------------------------


def check_editor(state: Statement, ctx: Context) -> None:
    """Organisers (no organisation) or an organisation on the drafting committee."""
    acting_for = ctx.organisation_id
    if acting_for is not None and acting_for not in state.drafting_committee:
        raise NotOnDraftingCommittee(
            f"organisation {acting_for} is not on the drafting committee of this statement"
        )


def check_acting_for(ctx: Context, organisation_id: UUID) -> None:
    """An organisation acts only for itself; organisers act for any."""
    if ctx.organisation_id is not None and ctx.organisation_id != organisation_id:
        raise NotYourOrganisation(
            f"organisation {ctx.organisation_id} acts only on its own behalf, not {organisation_id}"
        )


def check_drafting(state: Statement) -> None:
    """The text may change: not finalised (or reopened since)."""
    if state.published is not None:
        raise AlreadyPublished(f"statement {state.statement_id} is published")
    if state.finalised:
        raise TextFrozen("the text is finalised; reopen the statement to change it")


def check_not_published(state: Statement) -> None:
    if state.published is not None:
        raise AlreadyPublished(f"statement {state.statement_id} is published")


def check_endorsable(state: Statement, now: datetime) -> None:
    """An organisation may endorse at ``now``; else the precise reason why not."""
    if state.closed:
        raise EndorsementsAreClosed("endorsements are closed")
    if not state.finalised or state.endorsement_deadline is None:
        raise NotFinalised("the statement is not finalised for endorsement yet")
    if now >= state.endorsement_deadline:
        raise EndorsementDeadlinePassed(state.endorsement_deadline)


def check_area(state: Statement, area: str) -> str:
    """``area`` is one of the statement's thematic areas (surrounding blanks ignored)."""
    area = _nfc(area).strip()
    if area not in state.thematic_areas:
        known = "; ".join(state.thematic_areas)
        raise UnknownThematicArea(f"{area!r} is not a thematic area of this statement ({known})")
    return area


def check_recommendation(state: Statement, recommendation_id: UUID) -> Recommendation:
    recommendation = state.recommendations.get(recommendation_id)
    if recommendation is None:
        raise UnknownRecommendation(f"no recommendation {recommendation_id}")
    return recommendation


def check_standing(state: Statement, recommendation_id: UUID) -> Recommendation:
    """The recommendation, which must exist and not be withdrawn."""
    recommendation = check_recommendation(state, recommendation_id)
    if recommendation.withdrawn:
        raise RecommendationIsWithdrawn(f"recommendation {recommendation_id} was withdrawn")
    return recommendation


def check_pending(state: Statement, amendment_id: UUID) -> Amendment:
    """The amendment, which must exist and await a decision."""
    amendment = state.amendments.get(amendment_id)
    if amendment is None:
        raise UnknownAmendment(f"no amendment {amendment_id}")
    if amendment.status != PENDING:
        raise AmendmentAlreadyDecided(amendment_id, amendment.status)
    return amendment


# --- values -------------------------------------------------------------------------------


def _nfc(value: str) -> str:
    """Composed Unicode, so that equal-looking texts hash alike ("Đức" typed either way)."""
    return unicodedata.normalize("NFC", value)


def _text(name: str, value: str) -> str:
    text = _nfc(value).strip()
    if not text:
        raise InvalidValue(name, "must not be blank")
    return text


def _optional_text(value: str | None) -> str | None:
    return _nfc(value or "").strip() or None


def _texts(name: str, values: tuple[str, ...]) -> tuple[str, ...]:
    texts = tuple(_text(name, v) for v in values)
    if len(set(texts)) != len(texts):
        raise InvalidValue(name, "must not repeat an entry")
    return texts


def _required_reason(value: str, message: str) -> str:
    reason = _optional_text(value)
    if reason is None:
        raise ReasonRequired(message)
    return reason


def _language(value: str) -> str:
    language = value.strip()
    if not _LANGUAGE.fullmatch(language):
        raise InvalidValue("language", f"must be a BCP 47 tag such as en or vi, not {value!r}")
    return language


def _country(name: str, value: str) -> str:
    if len(value) != 2 or not value.isascii() or not value.isalpha() or not value.isupper():
        raise InvalidValue(name, f"must be an ISO 3166-1 alpha-2 code such as ID, not {value!r}")
    return value


def _utc(name: str, value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidValue(name, "needs a time zone offset")
    return value.astimezone(UTC)


def _timezone(name: str, value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        message = f"must be an IANA time zone such as Asia/Jakarta, not {value!r}"
        raise InvalidValue(name, message) from None
    return value


def _files(files: Mapping[str, str]) -> dict[str, str]:
    if not files:
        raise InvalidValue("files", "a compilation produces at least one file")
    for kind, digest in files.items():
        if not _FILE_KIND.fullmatch(kind):
            raise InvalidValue("files", f"a file kind is a short name such as pdf, not {kind!r}")
        if not _SHA256.fullmatch(digest):
            raise InvalidValue("files", f"{kind}: not a lowercase hex SHA-256 digest")
    return dict(sorted(files.items()))


STATEMENT: Decider[Statement, Command] = Decider(STREAM_TYPE, Statement, evolve, decide, evolve_all)
