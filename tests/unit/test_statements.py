"""Joint statement rules, given events → when command → then events or error.

The stories follow the joint statement of the regional consultation in Jakarta (20 to 21
February 2018): "Regional Civil Society Recommendations on the Implementation of the 2017 ASEAN
Consensus on the Protection and Promotion of the Rights of Migrant Workers", with
recommendations in the seven thematic areas, endorsed by 16 NGOs from eight member states.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import unicodedata
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple
from uuid import UUID, uuid4
from zoneinfo import ZoneInfo

import pytest

from services.consultations.commands import DEFAULT_THEMATIC_AREAS as AREAS
from services.decider import Context
from services.messages import DomainEvent, Personal
from services.ports import RecordedEvent
from services.registry import EVENTS
from services.statements import errors as statement_errors
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
    StatementError,
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
from services.statements.model import (
    STATEMENT,
    WITHDRAWN_REASON,
    Command,
    Statement,
    active_endorsement_of,
    active_endorsements,
    amendments_of,
    canonical_text,
    content_hash,
    counts_by_country,
    counts_by_kind,
    endorsement_open_at,
    evolve,
    history,
    pending_amendments,
    section_id_for,
    sections_in_order,
    signatories_by_country,
    status,
)

WIB = ZoneInfo("Asia/Jakarta")

TITLE = (
    "Regional Civil Society Recommendations on the Implementation of the 2017 ASEAN Consensus "
    "on the Protection and Promotion of the Rights of Migrant Workers"
)
PREAMBLE = (
    "We, civil society organisations from eight ASEAN Member States, gathered in Jakarta on "
    "20 to 21 February 2018, recommend:"
)
DECENT_WORK, UNDOCUMENTED, JUSTICE, INFORMATION, REPATRIATION, COOPERATION, CMW = AREAS

HRWG = uuid4()  # Human Rights Working Group, the organiser, on the drafting committee


def wib(month: int, day: int, hour: int, minute: int = 0) -> datetime:
    """A time in Jakarta in 2018."""
    return datetime(2018, month, day, hour, minute, tzinfo=WIB)


DRAFTING = wib(2, 21, 15)
ENDORSING = wib(3, 1, 10)
DEADLINE = wib(3, 15, 23, 59)
AFTER_DEADLINE = wib(3, 16, 9)
COMPILE_TIME = datetime(2018, 3, 17, 2, tzinfo=UTC)
FILES = {
    "md": hashlib.sha256(b"md").hexdigest(),
    "html": hashlib.sha256(b"html").hexdigest(),
    "pdf": hashlib.sha256(b"pdf").hexdigest(),
}


class Org(NamedTuple):
    organisation_id: UUID
    name: str
    country: str
    kind: str
    signatory: str
    title: str | None


def _org(name: str, country: str, signatory: str, title: str | None = "Director") -> Org:
    return Org(uuid4(), name, country, "ngo", signatory, title)


#: The 16 endorsing NGOs, two from each of eight member states (signatories are invented).
NGOS = (
    _org("Human Rights Working Group", "ID", "Sri Wahyuni Lestari", "Executive Director"),
    _org("Migrant CARE", "ID", "Budi Santoso"),
    _org("Tenaganita", "MY", "Siti Aminah binti Yusof"),
    _org("North South Initiative", "MY", "Rajesh Kumar a/l Muthu"),
    _org("Center for Migrant Advocacy", "PH", "Maria Clara Reyes"),
    _org("Migrante International", "PH", "Juan dela Cruz", None),
    _org("Humanitarian Organization for Migration Economics", "SG", "Tan Mei Ling"),
    _org("Transient Workers Count Too", "SG", "Muhammad Hafiz", "Vice-President"),
    _org("MAP Foundation", "TH", "สมชาย ใจดี", "ผู้อำนวยการ"),
    _org("Labour Rights Promotion Network", "TH", "Malee Srisuk"),
    _org("Trung tâm Phát triển và Hội nhập", "VN", "Hà Thị Minh Đức", "Giám đốc"),
    _org("Institute for Social Development Studies", "VN", "Nguyễn Văn An"),
    _org("Legal Support for Children and Women", "KH", "Sok Dara"),
    _org("CENTRAL Cambodia", "KH", "Chan Sophea"),
    _org("Future World Center", "MM", "Aung Aung"),
    _org("Foundation for Education and Development", "MM", "Mya Mya Win"),
)
MAP, HANOI_NGO = NGOS[8], NGOS[10]

#: A first recommendation for each thematic area, with whom it is addressed to.
RECOMMENDATIONS = (
    (
        DECENT_WORK,
        "Extend social protection to all migrant workers, including domestic workers.",
        ("ASEAN Member States",),
    ),
    (
        UNDOCUMENTED,
        "Do not detain undocumented migrant workers and their children.",
        ("ASEAN Member States",),
    ),
    (
        JUSTICE,
        "Guarantee access to legal aid and interpreters in labour disputes.",
        ("ASEAN Member States", "ACMW"),
    ),
    (
        INFORMATION,
        "Regulate recruitment agencies and ban recruitment fees charged to workers.",
        ("ASEAN Member States",),
    ),
    (
        REPATRIATION,
        "Fund reintegration programmes for returning migrant workers.",
        ("ASEAN Member States",),
    ),
    (
        COOPERATION,
        "Adopt an action plan for the Consensus with civil society participation.",
        ("ACMW", "ASEAN Secretariat"),
    ),
    (
        CMW,
        "Ratify the UN Convention on the Rights of All Migrant Workers (CMW).",
        ("ASEAN Member States",),
    ),
)


# --- story helpers ------------------------------------------------------------------------


def given(*events: DomainEvent) -> Statement:
    return STATEMENT.fold(events)


def when(
    state: Statement,
    command: Command,
    *,
    now: datetime = DRAFTING,
    organisation_id: UUID | None = None,
) -> list[DomainEvent]:
    ctx = Context(now=now, actor="secretariat@hrwg.example", organisation_id=organisation_id)
    return list(STATEMENT.decide(state, command, ctx))


def started(sid: UUID, *, committee: tuple[UUID, ...] = (HRWG,)) -> DraftingStarted:
    return DraftingStarted(
        statement_id=sid,
        consultation_id=uuid4(),
        title=TITLE,
        language="en",
        preamble=PREAMBLE,
        drafting_committee=committee,
        thematic_areas=AREAS,
    )


def section(sid: UUID, area: str) -> SectionAdded:
    return SectionAdded(sid, section_id_for(sid, area), area)


def recommendation(
    sid: UUID, area: str, text: str, addressed_to: tuple[str, ...] = ("ASEAN Member States",)
) -> RecommendationAdded:
    return RecommendationAdded(sid, uuid4(), section_id_for(sid, area), text, addressed_to)


def drafted(sid: UUID) -> list[DomainEvent]:
    """The statement with a section and a recommendation in each of the seven areas."""
    events: list[DomainEvent] = [started(sid)]
    for area, text, addressed_to in RECOMMENDATIONS:
        events += [section(sid, area), recommendation(sid, area, text, addressed_to)]
    return events


def finalised(sid: UUID, *before: DomainEvent) -> list[DomainEvent]:
    """The drafted statement (plus ``before``), finalised with DEADLINE."""
    events = [*drafted(sid), *before]
    digest = content_hash(given(*events))
    return [*events, StatementFinalised(sid, digest, DEADLINE.astimezone(UTC), "Asia/Jakarta")]


def endorsed(sid: UUID, org: Org, digest: str) -> StatementEndorsed:
    person = uuid4()
    return StatementEndorsed(
        statement_id=sid,
        organisation_id=org.organisation_id,
        signatory_name=Personal(person, org.signatory),
        signatory_title=None if org.title is None else Personal(person, org.title),
        content_hash=digest,
        organisation_name=org.name,
        organisation_country=org.country,
        organisation_kind=org.kind,
    )


def endorse(sid: UUID, org: Org, **changes: Any) -> EndorseStatement:
    details: dict[str, Any] = {
        "statement_id": sid,
        "organisation_id": org.organisation_id,
        "person_id": uuid4(),
        "signatory_name": org.signatory,
        "signatory_title": org.title,
        "organisation_name": org.name,
        "organisation_country": org.country,
        "organisation_kind": org.kind,
    }
    details.update(changes)
    return EndorseStatement(**details)


def hash_of(events: list[DomainEvent]) -> str:
    state = given(*events)
    assert state.content_hash is not None
    return state.content_hash


def closed(sid: UUID) -> list[DomainEvent]:
    """Finalised, endorsed by all 16 NGOs, endorsements closed."""
    events = finalised(sid)
    digest = hash_of(events)
    return [*events, *(endorsed(sid, org, digest) for org in NGOS), EndorsementsClosed(sid)]


def stored(event: DomainEvent) -> DomainEvent:
    """The event as it comes back from the log (JSON and back)."""
    new = EVENTS.to_new_event(event)
    record = RecordedEvent(
        id=new.id,
        stream_id=uuid4(),
        stream_type="statement",
        version=1,
        position=1,
        type=new.type,
        schema_version=new.schema_version,
        data=dict(new.data),
        metadata={},
        recorded_at=datetime.now(UTC),
    )
    return EVENTS.decode(record)


# --- starting -----------------------------------------------------------------------------


def test_starting_to_draft_the_jakarta_statement() -> None:
    sid, cid = uuid4(), uuid4()
    command = StartDrafting(
        statement_id=sid,
        consultation_id=cid,
        title=f"  {TITLE} ",
        language="en",
        thematic_areas=AREAS,
        preamble=PREAMBLE,
        drafting_committee=(HRWG, HRWG),
    )
    events = when(given(), command)
    assert events == [DraftingStarted(sid, cid, TITLE, "en", PREAMBLE, (HRWG,), AREAS)]
    state = given(*events)
    assert state.exists
    assert state.version == 1
    assert status(state) == "drafting"
    assert sections_in_order(state) == ()
    assert stored(events[0]) == events[0]


def test_starting_twice_is_refused() -> None:
    sid = uuid4()
    with pytest.raises(StatementAlreadyStarted):
        when(given(started(sid)), StartDrafting(sid, uuid4(), "X", "en", AREAS))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"title": "  "}, "title"),
        ({"language": "English"}, "language"),
        ({"language": ""}, "language"),
        ({"thematic_areas": ()}, "thematic_areas"),
        ({"thematic_areas": (JUSTICE, f" {JUSTICE}")}, "thematic_areas"),
    ],
)
def test_starting_refuses_invalid_details(changes: dict[str, Any], field: str) -> None:
    details: dict[str, Any] = {
        "statement_id": uuid4(),
        "consultation_id": uuid4(),
        "title": TITLE,
        "language": "en",
        "thematic_areas": AREAS,
    }
    with pytest.raises(InvalidValue) as refused:
        when(given(), StartDrafting(**{**details, **changes}))
    assert refused.value.field == field
    assert refused.value.code == "invalid-value"
    assert refused.value.details == {"field": field}


def test_a_statement_in_vietnamese_with_a_blank_preamble() -> None:
    sid = uuid4()
    command = StartDrafting(sid, uuid4(), "Khuyến nghị của xã hội dân sự", "vi", AREAS, "  ")
    (event,) = when(given(), command)
    assert isinstance(event, DraftingStarted)
    assert event.language == "vi"
    assert event.preamble is None
    assert event.title == "Khuyến nghị của xã hội dân sự"


def _every_command(sid: UUID) -> list[Command]:
    rid, aid, oid = uuid4(), uuid4(), uuid4()
    org = NGOS[0]
    return [
        AddSection(sid, JUSTICE),
        AddRecommendation(sid, rid, JUSTICE, "text"),
        ReviseRecommendation(sid, rid, text="new"),
        WithdrawRecommendation(sid, rid),
        ProposeAmendment(sid, aid, rid, oid, "text", "why"),
        AcceptAmendment(sid, aid),
        RejectAmendment(sid, aid, "no"),
        FinaliseStatement(sid, DEADLINE, "Asia/Jakarta"),
        endorse(sid, org),
        WithdrawEndorsement(sid, org.organisation_id),
        ReopenStatement(sid, "changes"),
        CloseEndorsements(sid),
        RecordCompilation(sid, uuid4(), "0" * 64, FILES),
        PublishStatement(sid, uuid4()),
    ]


@pytest.mark.parametrize("index", range(14))
def test_every_command_on_a_statement_never_started_is_refused(index: int) -> None:
    sid = uuid4()
    command = _every_command(sid)[index]
    with pytest.raises(UnknownStatement) as refused:
        when(given(), command)
    assert refused.value.code == "unknown-statement"
    with pytest.raises(UnknownStatement):
        when(given(started(uuid4())), command)  # another statement's stream


def test_a_statement_never_started_has_no_status() -> None:
    with pytest.raises(UnknownStatement):
        status(given())


# --- sections and recommendations ---------------------------------------------------------


def test_a_recommendation_in_an_area_without_a_section_adds_the_section_first() -> None:
    sid, rid = uuid4(), uuid4()
    command = AddRecommendation(
        sid,
        rid,
        f" {JUSTICE} ",
        " Guarantee access to legal aid. ",
        ("ASEAN Member States", "ACMW"),
    )
    events = when(given(started(sid)), command)
    sec = section_id_for(sid, JUSTICE)
    assert events == [
        SectionAdded(sid, sec, JUSTICE),
        RecommendationAdded(
            sid, rid, sec, "Guarantee access to legal aid.", ("ASEAN Member States", "ACMW")
        ),
    ]
    again = when(given(started(sid), *events), AddRecommendation(sid, uuid4(), JUSTICE, "More."))
    assert [type(e) for e in again] == [RecommendationAdded]


def test_a_section_is_added_once_per_area() -> None:
    sid = uuid4()
    state = given(started(sid))
    events = when(state, AddSection(sid, CMW))
    assert events == [SectionAdded(sid, section_id_for(sid, CMW), CMW)]
    assert when(given(started(sid), *events), AddSection(sid, CMW)) == []


def test_section_ids_are_derived_from_the_statement_and_the_area() -> None:
    sid = uuid4()
    assert section_id_for(sid, CMW) == section_id_for(sid, CMW)
    assert section_id_for(sid, CMW) != section_id_for(sid, JUSTICE)
    assert section_id_for(sid, CMW) != section_id_for(uuid4(), CMW)


def test_a_recommendation_needs_a_thematic_area_of_the_statement() -> None:
    sid = uuid4()
    with pytest.raises(UnknownThematicArea) as refused:
        when(given(started(sid)), AddRecommendation(sid, uuid4(), "Climate migration", "text"))
    assert refused.value.code == "unknown-thematic-area"
    with pytest.raises(UnknownThematicArea):
        when(given(started(sid)), AddSection(sid, "Climate migration"))


def test_a_recommendation_id_is_used_once() -> None:
    sid = uuid4()
    first = recommendation(sid, JUSTICE, "Legal aid.")
    state = given(started(sid), section(sid, JUSTICE), first)
    with pytest.raises(DuplicateIdentifier):
        when(state, AddRecommendation(sid, first.recommendation_id, CMW, "Ratify."))


@pytest.mark.parametrize(
    ("text", "addressed_to", "field"),
    [
        ("   ", (), "text"),
        ("Ratify the CMW.", ("ACMW", " ACMW"), "addressed_to"),
        ("Ratify the CMW.", ("",), "addressed_to"),
    ],
)
def test_a_recommendation_refuses_invalid_details(
    text: str, addressed_to: tuple[str, ...], field: str
) -> None:
    sid = uuid4()
    with pytest.raises(InvalidValue) as refused:
        when(given(started(sid)), AddRecommendation(sid, uuid4(), CMW, text, addressed_to))
    assert refused.value.field == field


def test_sections_follow_the_thematic_areas_and_recommendations_their_insertion() -> None:
    sid = uuid4()
    ratify = recommendation(sid, CMW, "Ratify the CMW.")
    legal_aid = recommendation(sid, JUSTICE, "Legal aid.")
    interpreters = recommendation(sid, JUSTICE, "Interpreters.")
    dropped = recommendation(sid, JUSTICE, "Dropped.")
    state = given(
        started(sid),
        section(sid, CMW),
        ratify,
        section(sid, DECENT_WORK),
        section(sid, JUSTICE),
        legal_aid,
        dropped,
        interpreters,
        RecommendationWithdrawn(sid, dropped.recommendation_id, None),
    )
    found = sections_in_order(state)
    assert [s.thematic_area for s in found] == [DECENT_WORK, JUSTICE, CMW]
    assert found[0].recommendations == ()
    assert [r.text for r in found[1].recommendations] == ["Legal aid.", "Interpreters."]
    assert [s.thematic_area for s in sections_in_order(state, include_empty=False)] == [
        JUSTICE,
        CMW,
    ]


def test_revising_records_the_recommendation_whole() -> None:
    sid = uuid4()
    added = recommendation(sid, JUSTICE, "Legal aid.")
    state = given(started(sid), section(sid, JUSTICE), added)
    rid = added.recommendation_id
    events = when(state, ReviseRecommendation(sid, rid, addressed_to=("ACMW",)))
    assert events == [RecommendationRevised(sid, rid, "Legal aid.", ("ACMW",))]
    events = when(state, ReviseRecommendation(sid, rid, text="Free legal aid."))
    assert events == [RecommendationRevised(sid, rid, "Free legal aid.", ("ASEAN Member States",))]
    assert given(started(sid), section(sid, JUSTICE), added, *events).recommendations[rid].text == (
        "Free legal aid."
    )


def test_revising_with_nothing_new_changes_nothing() -> None:
    sid = uuid4()
    added = recommendation(sid, JUSTICE, "Legal aid.")
    state = given(started(sid), section(sid, JUSTICE), added)
    command = ReviseRecommendation(
        sid, added.recommendation_id, text=" Legal aid. ", addressed_to=("ASEAN Member States",)
    )
    assert when(state, command) == []


def test_revising_or_withdrawing_an_unknown_recommendation_is_refused() -> None:
    sid = uuid4()
    state = given(started(sid))
    with pytest.raises(UnknownRecommendation) as refused:
        when(state, ReviseRecommendation(sid, uuid4(), text="x"))
    assert refused.value.code == "unknown-recommendation"
    with pytest.raises(UnknownRecommendation):
        when(state, WithdrawRecommendation(sid, uuid4()))
    with pytest.raises(UnknownRecommendation):
        history(state, uuid4())


def test_withdrawing_a_recommendation_once() -> None:
    sid = uuid4()
    added = recommendation(sid, JUSTICE, "Legal aid.")
    rid = added.recommendation_id
    state = given(started(sid), section(sid, JUSTICE), added)
    events = when(state, WithdrawRecommendation(sid, rid, " merged into another "))
    assert events == [RecommendationWithdrawn(sid, rid, "merged into another")]
    after = given(started(sid), section(sid, JUSTICE), added, *events)
    assert after.recommendations[rid].withdrawn
    assert when(after, WithdrawRecommendation(sid, rid)) == []
    with pytest.raises(RecommendationIsWithdrawn) as refused:
        when(after, ReviseRecommendation(sid, rid, text="Back again."))
    assert refused.value.code == "recommendation-withdrawn"


def test_withdrawing_a_recommendation_rejects_its_pending_amendments() -> None:
    sid = uuid4()
    added = recommendation(sid, JUSTICE, "Legal aid.")
    other = recommendation(sid, CMW, "Ratify.")
    rid = added.recommendation_id
    on_it = AmendmentProposed(sid, uuid4(), rid, MAP.organisation_id, "Free legal aid.", "cost")
    decided = AmendmentProposed(sid, uuid4(), rid, MAP.organisation_id, "Legal aid now.", "urgency")
    elsewhere = AmendmentProposed(
        sid, uuid4(), other.recommendation_id, MAP.organisation_id, "Ratify now.", "urgency"
    )
    state = given(
        started(sid),
        section(sid, JUSTICE),
        added,
        section(sid, CMW),
        other,
        decided,
        AmendmentRejected(sid, decided.amendment_id, "too vague"),
        on_it,
        elsewhere,
    )
    events = when(state, WithdrawRecommendation(sid, rid))
    assert events == [
        RecommendationWithdrawn(sid, rid, None),
        AmendmentRejected(sid, on_it.amendment_id, WITHDRAWN_REASON),
    ]
    after = STATEMENT.fold(events, state)
    assert pending_amendments(after) == (after.amendments[elsewhere.amendment_id],)


# --- amendments ---------------------------------------------------------------------------


def test_an_organisation_proposes_an_amendment_for_itself() -> None:
    sid, aid = uuid4(), uuid4()
    added = recommendation(sid, JUSTICE, "Legal aid.")
    rid = added.recommendation_id
    state = given(started(sid), section(sid, JUSTICE), added)
    command = ProposeAmendment(
        sid,
        aid,
        rid,
        MAP.organisation_id,
        "Free legal aid and interpreters.",
        "Workers cannot pay.",
    )
    events = when(state, command, organisation_id=MAP.organisation_id)
    assert events == [
        AmendmentProposed(
            sid,
            aid,
            rid,
            MAP.organisation_id,
            "Free legal aid and interpreters.",
            "Workers cannot pay.",
        )
    ]
    after = STATEMENT.fold(events, state)
    (pending,) = pending_amendments(after)
    assert pending.amendment_id == aid
    assert pending.status == "pending"
    assert amendments_of(after, rid) == (pending,)
    assert stored(events[0]) == events[0]


def test_an_organisation_proposes_only_on_its_own_behalf() -> None:
    sid = uuid4()
    added = recommendation(sid, JUSTICE, "Legal aid.")
    state = given(started(sid), section(sid, JUSTICE), added)
    command = ProposeAmendment(
        sid, uuid4(), added.recommendation_id, HANOI_NGO.organisation_id, "Free legal aid.", "cost"
    )
    with pytest.raises(NotYourOrganisation) as refused:
        when(state, command, organisation_id=MAP.organisation_id)
    assert refused.value.code == "not-your-organisation"
    assert len(when(state, command)) == 1  # an organiser records it for the organisation


@pytest.mark.parametrize(
    ("text", "rationale", "field"),
    [
        ("Legal aid.", "no change", "text"),
        (" ", "empty", "text"),
        ("Free legal aid.", "  ", "rationale"),
    ],
)
def test_an_amendment_refuses_invalid_details(text: str, rationale: str, field: str) -> None:
    sid = uuid4()
    added = recommendation(sid, JUSTICE, "Legal aid.")
    state = given(started(sid), section(sid, JUSTICE), added)
    command = ProposeAmendment(
        sid, uuid4(), added.recommendation_id, MAP.organisation_id, text, rationale
    )
    with pytest.raises(InvalidValue) as refused:
        when(state, command)
    assert refused.value.field == field


def test_an_amendment_needs_a_standing_recommendation_and_a_new_id() -> None:
    sid = uuid4()
    added = recommendation(sid, JUSTICE, "Legal aid.")
    rid = added.recommendation_id
    proposed = AmendmentProposed(sid, uuid4(), rid, MAP.organisation_id, "Free legal aid.", "cost")
    state = given(started(sid), section(sid, JUSTICE), added, proposed)
    org = MAP.organisation_id
    with pytest.raises(DuplicateIdentifier):
        when(state, ProposeAmendment(sid, proposed.amendment_id, rid, org, "Other.", "x"))
    with pytest.raises(UnknownRecommendation):
        when(state, ProposeAmendment(sid, uuid4(), uuid4(), org, "Other.", "x"))
    withdrawn = STATEMENT.fold([RecommendationWithdrawn(sid, rid, None)], state)
    with pytest.raises(RecommendationIsWithdrawn):
        when(withdrawn, ProposeAmendment(sid, uuid4(), rid, org, "Other.", "x"))


def test_accepting_an_amendment_applies_its_text() -> None:
    sid = uuid4()
    added = recommendation(sid, JUSTICE, "Legal aid.", ("ASEAN Member States", "ACMW"))
    rid = added.recommendation_id
    proposed = AmendmentProposed(sid, uuid4(), rid, MAP.organisation_id, "Free legal aid.", "cost")
    state = given(started(sid), section(sid, JUSTICE), added, proposed)
    events = when(state, AcceptAmendment(sid, proposed.amendment_id))
    assert events == [AmendmentAccepted(sid, proposed.amendment_id, rid, "Free legal aid.")]
    after = STATEMENT.fold(events, state)
    assert after.recommendations[rid].text == "Free legal aid."
    assert after.recommendations[rid].addressed_to == ("ASEAN Member States", "ACMW")
    assert after.amendments[proposed.amendment_id].status == "accepted"
    assert pending_amendments(after) == ()


def test_rejecting_an_amendment_needs_a_reason() -> None:
    sid = uuid4()
    added = recommendation(sid, JUSTICE, "Legal aid.")
    proposed = AmendmentProposed(
        sid, uuid4(), added.recommendation_id, MAP.organisation_id, "Free legal aid.", "cost"
    )
    state = given(started(sid), section(sid, JUSTICE), added, proposed)
    with pytest.raises(ReasonRequired) as refused:
        when(state, RejectAmendment(sid, proposed.amendment_id, "  "))
    assert refused.value.code == "reason-required"
    events = when(state, RejectAmendment(sid, proposed.amendment_id, " Covered by area 6. "))
    assert events == [AmendmentRejected(sid, proposed.amendment_id, "Covered by area 6.")]
    after = STATEMENT.fold(events, state)
    assert after.recommendations[added.recommendation_id].text == "Legal aid."
    assert after.amendments[proposed.amendment_id].reason == "Covered by area 6."


def test_an_amendment_is_decided_once() -> None:
    sid = uuid4()
    added = recommendation(sid, JUSTICE, "Legal aid.")
    proposed = AmendmentProposed(
        sid, uuid4(), added.recommendation_id, MAP.organisation_id, "Free legal aid.", "cost"
    )
    aid = proposed.amendment_id
    accepted = given(
        started(sid),
        section(sid, JUSTICE),
        added,
        proposed,
        AmendmentAccepted(sid, aid, added.recommendation_id, "Free legal aid."),
    )
    with pytest.raises(AmendmentAlreadyDecided) as refused:
        when(accepted, RejectAmendment(sid, aid, "changed our minds"))
    assert refused.value.code == "amendment-already-decided"
    assert refused.value.details == {"amendment_id": str(aid), "status": "accepted"}
    rejected = given(started(sid), section(sid, JUSTICE), added, proposed)
    rejected = STATEMENT.fold([AmendmentRejected(sid, aid, "no")], rejected)
    with pytest.raises(AmendmentAlreadyDecided):
        when(rejected, AcceptAmendment(sid, aid))


def test_deciding_an_unknown_amendment_is_refused() -> None:
    sid = uuid4()
    with pytest.raises(UnknownAmendment) as refused:
        when(given(started(sid)), AcceptAmendment(sid, uuid4()))
    assert refused.value.code == "unknown-amendment"
    with pytest.raises(UnknownAmendment):
        when(given(started(sid)), RejectAmendment(sid, uuid4(), "no"))


def test_the_history_of_a_recommendation() -> None:
    sid = uuid4()
    added = recommendation(sid, JUSTICE, "Legal aid.")
    rid = added.recommendation_id
    proposed = AmendmentProposed(sid, uuid4(), rid, MAP.organisation_id, "Free legal aid.", "cost")
    state = given(
        started(sid),  # 1
        section(sid, JUSTICE),  # 2
        added,  # 3
        RecommendationRevised(sid, rid, "Legal aid for all.", ("ACMW",)),  # 4
        proposed,  # 5
        AmendmentAccepted(sid, proposed.amendment_id, rid, "Free legal aid."),  # 6
        RecommendationWithdrawn(sid, rid, "merged"),  # 7
    )
    assert [(r.version, r.kind, r.text, r.addressed_to) for r in history(state, rid)] == [
        (3, "added", "Legal aid.", ("ASEAN Member States",)),
        (4, "revised", "Legal aid for all.", ("ACMW",)),
        (6, "amended", "Free legal aid.", ("ACMW",)),
        (7, "withdrawn", "Free legal aid.", ("ACMW",)),
    ]
    assert history(state, rid)[2].amendment_id == proposed.amendment_id
    assert history(state, rid)[3].reason == "merged"
    assert state.version == 7


def test_only_organisers_and_the_drafting_committee_edit_the_text() -> None:
    sid = uuid4()
    member = NGOS[1].organisation_id
    added = recommendation(sid, JUSTICE, "Legal aid.")
    proposed = AmendmentProposed(
        sid, uuid4(), added.recommendation_id, MAP.organisation_id, "Free legal aid.", "cost"
    )
    state = given(started(sid, committee=(HRWG, member)), section(sid, JUSTICE), added, proposed)
    outsider = MAP.organisation_id
    for command in (
        AddSection(sid, CMW),
        AddRecommendation(sid, uuid4(), CMW, "Ratify."),
        ReviseRecommendation(sid, added.recommendation_id, text="Free legal aid."),
        WithdrawRecommendation(sid, added.recommendation_id),
        AcceptAmendment(sid, proposed.amendment_id),
        RejectAmendment(sid, proposed.amendment_id, "no"),
        FinaliseStatement(sid, DEADLINE),
    ):
        with pytest.raises(NotOnDraftingCommittee) as refused:
            when(state, command, organisation_id=outsider)
        assert refused.value.code == "not-on-drafting-committee"
    assert len(when(state, AcceptAmendment(sid, proposed.amendment_id), organisation_id=member))
    assert len(when(state, AddRecommendation(sid, uuid4(), CMW, "Ratify."), organisation_id=member))


# --- finalising ---------------------------------------------------------------------------


def test_finalising_freezes_the_text_under_its_content_hash() -> None:
    sid = uuid4()
    state = given(*drafted(sid))
    events = when(state, FinaliseStatement(sid, DEADLINE, "Asia/Jakarta"))
    digest = hashlib.sha256(canonical_text(state)).hexdigest()
    assert events == [
        StatementFinalised(sid, digest, datetime(2018, 3, 15, 16, 59, tzinfo=UTC), "Asia/Jakarta")
    ]
    finalised_event = events[0]
    assert isinstance(finalised_event, StatementFinalised)
    assert finalised_event.endorsement_deadline.tzinfo is UTC
    assert stored(finalised_event) == finalised_event
    after = STATEMENT.fold(events, state)
    assert status(after) == "finalised"
    assert after.content_hash == content_hash(state) == digest
    assert after.timezone == "Asia/Jakarta"
    assert endorsement_open_at(after, ENDORSING)


def test_the_canonical_text_is_sorted_compact_utf8_json_of_the_text() -> None:
    sid = uuid4()
    legal_aid = recommendation(sid, JUSTICE, "Trợ giúp pháp lý miễn phí.", ("ACMW",))
    ratify = recommendation(sid, CMW, "ให้สัตยาบัน CMW", ())
    withdrawn = recommendation(sid, CMW, "Dropped.")
    state = given(
        started(sid),
        section(sid, DECENT_WORK),  # empty: not part of the text
        section(sid, CMW),
        ratify,
        withdrawn,
        section(sid, JUSTICE),
        legal_aid,
        RecommendationWithdrawn(sid, withdrawn.recommendation_id, None),
    )
    expected = (
        '{"language":"en","preamble":"' + PREAMBLE + '","sections":['
        '{"recommendations":[{"addressed_to":["ACMW"],"id":"'
        + str(legal_aid.recommendation_id)
        + '","text":"Trợ giúp pháp lý miễn phí."}],"thematic_area":"Access to justice"},'
        '{"recommendations":[{"addressed_to":[],"id":"'
        + str(ratify.recommendation_id)
        + '","text":"ให้สัตยาบัน CMW"}],"thematic_area":"'
        + CMW
        + '"}],"title":"'
        + TITLE
        + '"}'
    )
    assert canonical_text(state) == expected.encode("utf-8")
    assert json.loads(canonical_text(state))["sections"][0]["thematic_area"] == JUSTICE
    assert content_hash(state) == hashlib.sha256(expected.encode("utf-8")).hexdigest()


def test_the_content_hash_changes_with_the_text_and_not_with_the_unicode_form() -> None:
    sid = uuid4()
    composed = "Hà Nội và Đức"
    decomposed = unicodedata.normalize("NFD", composed)
    assert composed != decomposed
    one = when(given(started(sid)), AddRecommendation(sid, UUID(int=1), JUSTICE, composed))
    two = when(given(started(sid)), AddRecommendation(sid, UUID(int=1), JUSTICE, decomposed))
    assert one == two
    state = given(started(sid), *one)
    revised = STATEMENT.fold([RecommendationRevised(sid, UUID(int=1), "Hà Nội.", ())], state)
    assert content_hash(revised) != content_hash(state)


@pytest.mark.parametrize(
    "deadline", [DRAFTING, DRAFTING - timedelta(days=1)], ids=["now", "in-the-past"]
)
def test_the_endorsement_deadline_must_be_in_the_future(deadline: datetime) -> None:
    sid = uuid4()
    with pytest.raises(InvalidDeadline) as refused:
        when(given(*drafted(sid)), FinaliseStatement(sid, deadline, "Asia/Jakarta"))
    assert refused.value.code == "invalid-deadline"


@pytest.mark.parametrize(
    ("command_changes", "field"),
    [
        ({"endorsement_deadline": datetime(2018, 3, 15, 23, 59)}, "endorsement_deadline"),
        ({"timezone": "Asia/Atlantis"}, "timezone"),
    ],
)
def test_finalising_refuses_invalid_details(command_changes: dict[str, Any], field: str) -> None:
    sid = uuid4()
    details: dict[str, Any] = {"statement_id": sid, "endorsement_deadline": DEADLINE}
    with pytest.raises(InvalidValue) as refused:
        when(given(*drafted(sid)), FinaliseStatement(**{**details, **command_changes}))
    assert refused.value.field == field


def test_finalising_is_refused_while_amendments_are_pending() -> None:
    sid = uuid4()
    events = drafted(sid)
    target = next(e for e in events if isinstance(e, RecommendationAdded))
    proposed = AmendmentProposed(
        sid, uuid4(), target.recommendation_id, MAP.organisation_id, "Better.", "clarity"
    )
    with pytest.raises(AmendmentsPending) as refused:
        when(given(*events, proposed), FinaliseStatement(sid, DEADLINE))
    assert refused.value.code == "amendments-pending"
    assert refused.value.amendment_ids == (proposed.amendment_id,)
    assert refused.value.details == {"amendment_ids": [str(proposed.amendment_id)]}
    rejected = AmendmentRejected(sid, proposed.amendment_id, "clear enough")
    assert len(when(given(*events, proposed, rejected), FinaliseStatement(sid, DEADLINE))) == 1


def test_a_statement_without_recommendations_cannot_be_finalised() -> None:
    sid = uuid4()
    withdrawn = recommendation(sid, CMW, "Ratify.")
    state = given(
        started(sid),
        section(sid, CMW),
        withdrawn,
        RecommendationWithdrawn(sid, withdrawn.recommendation_id, None),
    )
    with pytest.raises(EmptyStatement) as refused:
        when(state, FinaliseStatement(sid, DEADLINE))
    assert refused.value.code == "statement-empty"


def _frozen_commands(sid: UUID, rid: UUID, aid: UUID) -> list[Command]:
    return [
        AddSection(sid, CMW),
        AddRecommendation(sid, uuid4(), CMW, "Ratify it now."),
        ReviseRecommendation(sid, rid, text="Changed."),
        WithdrawRecommendation(sid, rid),
        ProposeAmendment(sid, uuid4(), rid, MAP.organisation_id, "Changed.", "late"),
        AcceptAmendment(sid, aid),
        RejectAmendment(sid, aid, "late"),
        FinaliseStatement(sid, DEADLINE),
    ]


@pytest.mark.parametrize("index", range(8))
def test_the_finalised_text_cannot_change(index: int) -> None:
    sid = uuid4()
    events = drafted(sid)
    target = next(e for e in events if isinstance(e, RecommendationAdded))
    rid = target.recommendation_id
    proposed = AmendmentProposed(sid, uuid4(), rid, MAP.organisation_id, "Better.", "clarity")
    rejected = AmendmentRejected(sid, proposed.amendment_id, "clear enough")
    state = given(*finalised(sid, proposed, rejected))
    command = _frozen_commands(sid, rid, proposed.amendment_id)[index]
    with pytest.raises(TextFrozen) as refused:
        when(state, command, now=ENDORSING)
    assert refused.value.code == "statement-finalised"
    with pytest.raises(TextFrozen):
        when(given(*closed(sid)), command, now=AFTER_DEADLINE)


# --- endorsing ----------------------------------------------------------------------------


def test_sixteen_ngos_from_eight_member_states_endorse_the_jakarta_statement() -> None:
    sid = uuid4()
    events = finalised(sid)
    digest = hash_of(events)
    state = given(*events)
    for org in NGOS:
        command = endorse(sid, org, content_hash=digest)
        new = when(state, command, now=ENDORSING, organisation_id=org.organisation_id)
        assert new == [
            StatementEndorsed(
                statement_id=sid,
                organisation_id=org.organisation_id,
                signatory_name=Personal(command.person_id, org.signatory),
                signatory_title=None
                if org.title is None
                else Personal(command.person_id, org.title),
                content_hash=digest,
                organisation_name=org.name,
                organisation_country=org.country,
                organisation_kind="ngo",
            )
        ]
        assert stored(new[0]) == new[0]
        state = STATEMENT.fold(new, state)
    assert len(active_endorsements(state)) == 16
    assert [e.organisation_id for e in active_endorsements(state)] == [
        o.organisation_id for o in NGOS
    ]
    countries = ["ID", "KH", "MM", "MY", "PH", "SG", "TH", "VN"]
    assert counts_by_country(state) == dict.fromkeys(countries, 2)
    assert list(counts_by_country(state)) == countries
    assert counts_by_kind(state) == {"ngo": 16}
    grouped = dict(signatories_by_country(state))
    assert [e.organisation_name for e in grouped["VN"]] == [
        "Institute for Social Development Studies",
        "Trung tâm Phát triển và Hội nhập",
    ]
    names = {e.signatory_name.value for e in active_endorsements(state)}
    assert {"Hà Thị Minh Đức", "สมชาย ใจดี"} <= names


def test_an_endorsement_wraps_the_signatory_as_personal_data() -> None:
    sid, person = uuid4(), uuid4()
    state = given(*finalised(sid))
    events = when(state, endorse(sid, HANOI_NGO, person_id=person), now=ENDORSING)
    data = EVENTS.to_new_event(events[0]).data
    assert data["signatory_name"] == {
        "$personal": {"subject": str(person), "value": "Hà Thị Minh Đức"}
    }
    assert data["signatory_title"] == {"$personal": {"subject": str(person), "value": "Giám đốc"}}
    assert data["organisation_name"] == "Trung tâm Phát triển và Hội nhập"


def test_an_endorsement_without_a_title() -> None:
    sid = uuid4()
    state = given(*finalised(sid))
    (event,) = when(state, endorse(sid, NGOS[5], signatory_title="  "), now=ENDORSING)
    assert isinstance(event, StatementEndorsed)
    assert event.signatory_title is None
    assert stored(event) == event


def test_no_endorsement_before_the_statement_is_finalised() -> None:
    sid = uuid4()
    with pytest.raises(NotFinalised) as refused:
        when(given(*drafted(sid)), endorse(sid, MAP))
    assert refused.value.code == "not-finalised"


@pytest.mark.parametrize("now", [DEADLINE, AFTER_DEADLINE], ids=["at", "after"])
def test_no_endorsement_from_the_deadline_on(now: datetime) -> None:
    sid = uuid4()
    state = given(*finalised(sid))
    with pytest.raises(EndorsementDeadlinePassed) as refused:
        when(state, endorse(sid, MAP), now=now)
    assert refused.value.code == "endorsement-deadline-passed"
    assert refused.value.details == {"endorsement_deadline": "2018-03-15T16:59:00+00:00"}
    assert not endorsement_open_at(state, now)
    assert len(when(state, endorse(sid, MAP), now=DEADLINE - timedelta(seconds=1))) == 1


def test_no_endorsement_after_endorsements_are_closed() -> None:
    sid = uuid4()
    state = given(*finalised(sid), EndorsementsClosed(sid))
    with pytest.raises(EndorsementsAreClosed) as refused:
        when(state, endorse(sid, MAP), now=ENDORSING)
    assert refused.value.code == "endorsements-closed"
    assert not endorsement_open_at(state, ENDORSING)


def test_an_organisation_endorses_once_and_is_told_about_its_endorsement() -> None:
    sid = uuid4()
    events = finalised(sid)
    digest = hash_of(events)
    first = endorsed(sid, HANOI_NGO, digest)
    state = given(*events, first)
    with pytest.raises(AlreadyEndorsed) as refused:
        when(state, endorse(sid, HANOI_NGO, signatory_name="Someone Else"), now=ENDORSING)
    assert refused.value.code == "already-endorsed"
    assert refused.value.details == {
        "organisation_id": str(HANOI_NGO.organisation_id),
        "signatory_name": "Hà Thị Minh Đức",
        "signatory_title": "Giám đốc",
        "version": state.version,
        "content_hash": digest,
    }
    assert "Hà Thị Minh Đức" in str(refused.value)


def test_an_endorsement_names_exactly_the_finalised_text() -> None:
    sid = uuid4()
    events = finalised(sid)
    state = given(*events)
    stale = hashlib.sha256(b"an earlier draft").hexdigest()
    with pytest.raises(ContentHashMismatch) as refused:
        when(state, endorse(sid, MAP, content_hash=stale), now=ENDORSING)
    assert refused.value.code == "content-hash-mismatch"
    assert refused.value.details == {"expected": hash_of(events), "given": stale}
    (event,) = when(state, endorse(sid, MAP), now=ENDORSING)  # no hash: the one finalised now
    assert isinstance(event, StatementEndorsed)
    assert event.content_hash == hash_of(events)


def test_an_organisation_endorses_and_withdraws_only_for_itself() -> None:
    sid = uuid4()
    events = finalised(sid)
    state = given(*events)
    with pytest.raises(NotYourOrganisation):
        when(state, endorse(sid, MAP), now=ENDORSING, organisation_id=HANOI_NGO.organisation_id)
    with_map = given(*events, endorsed(sid, MAP, hash_of(events)))
    with pytest.raises(NotYourOrganisation):
        when(
            with_map,
            WithdrawEndorsement(sid, MAP.organisation_id),
            now=ENDORSING,
            organisation_id=HANOI_NGO.organisation_id,
        )
    # organisers act for any organisation
    assert len(when(state, endorse(sid, MAP), now=ENDORSING)) == 1
    assert len(when(with_map, WithdrawEndorsement(sid, MAP.organisation_id), now=ENDORSING)) == 1


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"signatory_name": " "}, "signatory_name"),
        ({"organisation_name": ""}, "organisation_name"),
        ({"organisation_country": "Thailand"}, "organisation_country"),
        ({"organisation_country": "th"}, "organisation_country"),
        ({"organisation_kind": " "}, "organisation_kind"),
    ],
)
def test_endorsing_refuses_invalid_details(changes: dict[str, Any], field: str) -> None:
    sid = uuid4()
    with pytest.raises(InvalidValue) as refused:
        when(given(*finalised(sid)), endorse(sid, MAP, **changes), now=ENDORSING)
    assert refused.value.field == field


def test_withdrawing_and_endorsing_again_keeps_both_in_the_history() -> None:
    sid = uuid4()
    events = finalised(sid)
    digest = hash_of(events)
    state = given(*events, endorsed(sid, MAP, digest))
    withdrawn = when(
        state,
        WithdrawEndorsement(sid, MAP.organisation_id, " signatory changed "),
        now=ENDORSING,
        organisation_id=MAP.organisation_id,
    )
    assert withdrawn == [EndorsementWithdrawn(sid, MAP.organisation_id, "signatory changed")]
    state = STATEMENT.fold(withdrawn, state)
    assert active_endorsement_of(state, MAP.organisation_id) is None
    assert active_endorsements(state) == ()
    again = when(
        state,
        endorse(sid, MAP, signatory_name="นางสาว มาลี ศรีสุข"),
        now=ENDORSING,
        organisation_id=MAP.organisation_id,
    )
    state = STATEMENT.fold(again, state)
    records = state.endorsement_records
    assert [(e.signatory_name.value, e.status) for e in records] == [
        ("สมชาย ใจดี", "withdrawn"),
        ("นางสาว มาลี ศรีสุข", "active"),
    ]
    assert records[0].reason == "signatory changed"
    assert records[0].ended_version == records[1].version - 1
    assert active_endorsements(state) == (records[1],)


def test_withdrawing_needs_an_active_endorsement() -> None:
    sid = uuid4()
    with pytest.raises(NotEndorsed) as refused:
        when(given(*finalised(sid)), WithdrawEndorsement(sid, MAP.organisation_id), now=ENDORSING)
    assert refused.value.code == "not-endorsed"
    with pytest.raises(NotEndorsed):
        when(given(*drafted(sid)), WithdrawEndorsement(sid, MAP.organisation_id))


def test_withdrawing_is_possible_after_the_deadline_until_closing() -> None:
    sid = uuid4()
    events = finalised(sid)
    with_map = [*events, endorsed(sid, MAP, hash_of(events))]
    command = WithdrawEndorsement(sid, MAP.organisation_id)
    assert len(when(given(*with_map), command, now=AFTER_DEADLINE)) == 1
    with pytest.raises(EndorsementsAreClosed):
        when(given(*with_map, EndorsementsClosed(sid)), command, now=AFTER_DEADLINE)


def test_folding_many_events_at_once_leaves_what_evolving_them_one_by_one_leaves() -> None:
    """Runs of endorsements are applied at once (linear in the statement's length); the
    state must be the same as evolving each event, whatever the mix and the starting point."""
    sid = uuid4()
    events = finalised(sid)
    digest = hash_of(events)
    history: list[DomainEvent] = [
        *events,
        *(endorsed(sid, org, digest) for org in NGOS[:6]),
        EndorsementWithdrawn(sid, NGOS[1].organisation_id, "changed"),
        endorsed(sid, NGOS[1], digest),
        endorsed(sid, NGOS[6], digest),
        EndorsementWithdrawn(sid, NGOS[6].organisation_id, None),
        StatementReopened(sid, "Add the work plan.", tuple(o.organisation_id for o in NGOS[:6])),
    ]
    refinalised = when(
        given(*history), FinaliseStatement(sid, DEADLINE, "Asia/Jakarta"), now=ENDORSING
    )
    history += [*refinalised, *(endorsed(sid, org, hash_of(history + refinalised)) for org in NGOS)]
    one_by_one = Statement()
    for event in history:
        one_by_one = evolve(one_by_one, event)
    assert len(active_endorsements(one_by_one)) == len(NGOS)
    for split in range(len(history) + 1):
        at_once = STATEMENT.fold(history[split:], STATEMENT.fold(history[:split]))
        assert at_once == one_by_one, f"folded in two at {split}"


# --- reopening ----------------------------------------------------------------------------


def test_reopening_voids_the_endorsements_and_lets_the_text_change() -> None:
    sid = uuid4()
    events = finalised(sid)
    digest = hash_of(events)
    events += [
        endorsed(sid, HANOI_NGO, digest),
        endorsed(sid, MAP, digest),
        endorsed(sid, NGOS[0], digest),
        EndorsementWithdrawn(sid, NGOS[0].organisation_id, None),
    ]
    state = given(*events)
    with pytest.raises(ReasonRequired):
        when(state, ReopenStatement(sid, " "), now=ENDORSING)
    reopened = when(state, ReopenStatement(sid, "Add the ACMW work plan."), now=ENDORSING)
    assert reopened == [
        StatementReopened(
            sid, "Add the ACMW work plan.", (HANOI_NGO.organisation_id, MAP.organisation_id)
        )
    ]
    assert stored(reopened[0]) == reopened[0]
    state = STATEMENT.fold(reopened, state)
    assert status(state) == "drafting"
    assert state.content_hash is None
    assert active_endorsements(state) == ()
    assert [e.status for e in state.endorsement_records] == ["voided", "voided", "withdrawn"]
    # the text changes again, and finalising again gives another hash
    changed = when(state, AddRecommendation(sid, uuid4(), COOPERATION, "Publish the work plan."))
    state = STATEMENT.fold(changed, state)
    refinalised = when(state, FinaliseStatement(sid, DEADLINE, "Asia/Jakarta"), now=ENDORSING)
    state = STATEMENT.fold(refinalised, state)
    assert state.content_hash is not None
    assert state.content_hash != digest
    # old endorsements do not count: the old text cannot be signed, the organisations sign anew
    with pytest.raises(ContentHashMismatch):
        when(state, endorse(sid, MAP, content_hash=digest), now=ENDORSING)
    (again,) = when(state, endorse(sid, MAP), now=ENDORSING)
    assert isinstance(again, StatementEndorsed)
    assert again.content_hash == state.content_hash


def test_reopening_a_statement_still_being_drafted_is_refused() -> None:
    sid = uuid4()
    with pytest.raises(NotFinalised):
        when(given(*drafted(sid)), ReopenStatement(sid, "why not"))


def test_reopening_after_closing_and_compiling_starts_over() -> None:
    sid = uuid4()
    events = closed(sid)
    digest = hash_of(events)
    events.append(StatementCompiled(sid, uuid4(), digest, FILES, COMPILE_TIME))
    reopened = when(given(*events), ReopenStatement(sid, "A member state objected."))
    (event,) = reopened
    assert isinstance(event, StatementReopened)
    assert event.voided == tuple(o.organisation_id for o in NGOS)
    state = given(*events, *reopened)
    assert status(state) == "drafting"
    assert not state.closed
    assert state.compilation is None
    assert state.reopen_reasons == ("A member state objected.",)


# --- closing, compiling, publishing -------------------------------------------------------


def test_closing_endorsements() -> None:
    sid = uuid4()
    state = given(*finalised(sid))
    events = when(state, CloseEndorsements(sid), now=AFTER_DEADLINE)
    assert events == [EndorsementsClosed(sid)]
    after = STATEMENT.fold(events, state)
    assert status(after) == "closed"
    assert when(after, CloseEndorsements(sid), now=AFTER_DEADLINE) == []
    with pytest.raises(NotFinalised):
        when(given(*drafted(sid)), CloseEndorsements(sid))


def test_compiling_records_the_files_of_the_closed_statement() -> None:
    sid, job = uuid4(), uuid4()
    events = closed(sid)
    digest = hash_of(events)
    state = given(*events)
    compiled = when(state, RecordCompilation(sid, job, digest, FILES, COMPILE_TIME))
    assert compiled == [
        StatementCompiled(sid, job, digest, dict(sorted(FILES.items())), COMPILE_TIME)
    ]
    assert stored(compiled[0]) == compiled[0]
    after = STATEMENT.fold(compiled, state)
    assert after.compilation is not None
    assert after.compilation.files == FILES
    assert status(after) == "closed"
    # the same job recording the same files again changes nothing; another job recompiles
    assert when(after, RecordCompilation(sid, job, digest, FILES, COMPILE_TIME)) == []
    assert len(when(after, RecordCompilation(sid, uuid4(), digest, FILES, COMPILE_TIME))) == 1


def test_compiling_without_a_time_uses_the_time_of_the_decision() -> None:
    sid = uuid4()
    events = closed(sid)
    (event,) = when(
        given(*events), RecordCompilation(sid, uuid4(), hash_of(events), FILES), now=AFTER_DEADLINE
    )
    assert isinstance(event, StatementCompiled)
    assert event.compiled_at == AFTER_DEADLINE
    assert event.compiled_at.tzinfo is UTC


def test_compiling_needs_closed_endorsements_and_the_finalised_text() -> None:
    sid = uuid4()
    events = finalised(sid)
    digest = hash_of(events)
    with pytest.raises(NotFinalised):
        when(given(*drafted(sid)), RecordCompilation(sid, uuid4(), digest, FILES))
    with pytest.raises(EndorsementsStillOpen) as refused:
        when(given(*events), RecordCompilation(sid, uuid4(), digest, FILES))
    assert refused.value.code == "endorsements-open"
    with pytest.raises(ContentHashMismatch):
        when(given(*closed(sid)), RecordCompilation(sid, uuid4(), "0" * 64, FILES))


@pytest.mark.parametrize(
    "files",
    [{}, {"pdf": "not-a-digest"}, {"PDF": FILES["pdf"]}, {"pdf": FILES["pdf"].upper()}],
)
def test_compiling_refuses_invalid_files(files: dict[str, str]) -> None:
    sid = uuid4()
    events = closed(sid)
    with pytest.raises(InvalidValue) as refused:
        when(given(*events), RecordCompilation(sid, uuid4(), hash_of(events), files))
    assert refused.value.field == "files"


def test_publishing_the_compiled_statement() -> None:
    sid, job = uuid4(), uuid4()
    events = closed(sid)
    digest = hash_of(events)
    with pytest.raises(NotCompiled) as refused:
        when(given(*events), PublishStatement(sid, job))
    assert refused.value.code == "not-compiled"
    events.append(StatementCompiled(sid, job, digest, FILES, COMPILE_TIME))
    published = when(given(*events), PublishStatement(sid, job))
    assert published == [StatementPublished(sid, job, digest, FILES)]
    assert stored(published[0]) == published[0]
    state = given(*events, *published)
    assert status(state) == "published"
    assert state.published is not None
    assert state.published.files == FILES
    assert when(state, PublishStatement(sid, job)) == []
    with pytest.raises(AlreadyPublished) as again:
        when(state, PublishStatement(sid, uuid4()))
    assert again.value.code == "already-published"


def test_nothing_changes_once_published() -> None:
    sid, job = uuid4(), uuid4()
    events = closed(sid)
    digest = hash_of(events)
    state = given(
        *events,
        StatementCompiled(sid, job, digest, FILES, COMPILE_TIME),
        StatementPublished(sid, job, digest, FILES),
    )
    for command in (
        ReopenStatement(sid, "too late"),
        RecordCompilation(sid, uuid4(), digest, FILES),
        AddRecommendation(sid, uuid4(), CMW, "More."),
    ):
        with pytest.raises(AlreadyPublished):
            when(state, command)
    assert when(state, CloseEndorsements(sid)) == []
    with pytest.raises(EndorsementsAreClosed):
        when(state, endorse(sid, MAP), now=ENDORSING)


def test_the_whole_life_of_the_jakarta_statement() -> None:
    """Drafted in seven areas, amended, finalised, signed by 16 NGOs, closed, compiled, out."""
    sid, cid, job = uuid4(), uuid4(), uuid4()
    state = given()

    def run(command: Command, now: datetime = DRAFTING, org: UUID | None = None) -> None:
        nonlocal state
        state = STATEMENT.fold(when(state, command, now=now, organisation_id=org), state)

    run(StartDrafting(sid, cid, TITLE, "en", AREAS, PREAMBLE, (HRWG,)))
    ids = []
    for area, text, addressed_to in RECOMMENDATIONS:
        rid = uuid4()
        ids.append(rid)
        run(AddRecommendation(sid, rid, area, text, addressed_to), org=HRWG)
    aid = uuid4()
    run(
        ProposeAmendment(
            sid, aid, ids[2], HANOI_NGO.organisation_id, "Guarantee free legal aid.", "cost"
        ),
        org=HANOI_NGO.organisation_id,
    )
    run(AcceptAmendment(sid, aid), org=HRWG)
    run(FinaliseStatement(sid, DEADLINE, "Asia/Jakarta"))
    assert [s.thematic_area for s in sections_in_order(state)] == list(AREAS)
    for org in NGOS:
        run(endorse(sid, org, content_hash=state.content_hash), ENDORSING, org.organisation_id)
    run(CloseEndorsements(sid), AFTER_DEADLINE)
    assert state.content_hash is not None
    run(RecordCompilation(sid, job, state.content_hash, FILES, COMPILE_TIME), AFTER_DEADLINE)
    run(PublishStatement(sid, job), AFTER_DEADLINE)
    assert status(state) == "published"
    assert len(active_endorsements(state)) == 16
    assert len(counts_by_country(state)) == 8
    assert state.recommendations[ids[2]].text == "Guarantee free legal aid."
    assert state.version == 1 + 14 + 2 + 1 + 16 + 1 + 1 + 1


# --- the error family and the events ------------------------------------------------------


def _error_classes() -> list[type[StatementError]]:
    return [
        cls
        for _, cls in inspect.getmembers(statement_errors, inspect.isclass)
        if issubclass(cls, StatementError) and cls is not StatementError
    ]


def test_every_error_has_its_own_code_in_one_family() -> None:
    codes = [cls.code for cls in _error_classes()]
    assert len(codes) == len(set(codes))
    assert "statement-error" not in codes
    not_found = {c for c in codes if c.startswith("unknown-")}
    assert not_found == {
        "unknown-statement",
        "unknown-recommendation",
        "unknown-amendment",
        "unknown-thematic-area",
    }
    assert {c for c in codes if c.startswith("invalid-")} == {"invalid-value", "invalid-deadline"}


def test_every_statement_event_is_registered_and_round_trips() -> None:
    types = [t for t in EVENTS.types() if t.startswith("statement.")]
    assert len(types) == 16
    sid = uuid4()
    for event in closed(sid):
        assert stored(event) == event


def test_publication_is_requested_only_once_endorsements_are_closed() -> None:
    """The worker's cue: one event per job, refused while endorsements are open."""
    from services.statements.commands import RequestPublication
    from services.statements.errors import EndorsementsStillOpen
    from services.statements.events import PublicationRequested

    sid, job = uuid4(), uuid4()
    state = given(*finalised(sid))
    with pytest.raises(EndorsementsStillOpen):
        when(state, RequestPublication(sid, job))
    closed = STATEMENT.fold(when(state, CloseEndorsements(sid), now=AFTER_DEADLINE), state)
    events = when(closed, RequestPublication(sid, job), now=AFTER_DEADLINE)
    assert events == [PublicationRequested(sid, job, closed.content_hash or "")]
    requested = STATEMENT.fold(events, closed)
    assert when(requested, RequestPublication(sid, job), now=AFTER_DEADLINE) == []
