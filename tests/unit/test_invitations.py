"""Invitation rules, given events → when command → then events or error.

The story: the organiser of the Jakarta consultation invites a migrant-workers' association in
Yangon to endorse the joint statement; its coordinator opens the link on a phone a few days
later and signs; another link is resent after it expired; a third is revoked.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from services.decider import Context
from services.invitations.commands import (
    ExpireInvitation,
    IssueInvitation,
    OpenInvitation,
    RecordInvitationUse,
    ResendInvitation,
    RevokeInvitation,
)
from services.invitations.errors import (
    InvalidValue,
    InvitationAlreadyIssued,
    InvitationChanged,
    InvitationIsRevoked,
    InvitationIsUsed,
    UnknownInvitation,
)
from services.invitations.events import (
    InvitationExpired,
    InvitationIssued,
    InvitationOpened,
    InvitationResent,
    InvitationRevoked,
    InvitationUsed,
)
from services.invitations.model import (
    DEFAULT_EXPIRY,
    EXPIRED,
    INVITATION,
    ISSUED,
    LINK_EXPIRED,
    LINK_LIVE,
    LINK_REPLACED,
    LINK_REVOKED,
    LINK_UNKNOWN,
    LINK_USED,
    OPENED,
    REVOKED,
    USED,
    Command,
    Invitation,
    is_live,
    link_state,
)
from services.messages import DomainEvent, Personal, to_json
from services.people import person_id
from services.ports import RecordedEvent
from services.registry import EVENTS

ISSUED_AT = datetime(2027, 3, 1, 3, 0, tzinfo=UTC)
STATEMENT = uuid4()
CONSULTATION = uuid4()
YANGON = uuid4()  # a migrant-workers' association in Yangon
INVITATION_ID = uuid4()
EMAIL = "Coordinator@Migrant-Yangon.example.org "


def digest(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


def at(days: float = 0, hours: float = 0) -> Context:
    return Context(now=ISSUED_AT + timedelta(days=days, hours=hours), actor="organiser")


def given(*events: DomainEvent) -> Invitation:
    return INVITATION.fold(events)


def when(state: Invitation, command: Command, ctx: Context | None = None) -> list[DomainEvent]:
    return list(INVITATION.decide(state, command, ctx or at()))


def issue(**changes: object) -> IssueInvitation:
    fields: dict[str, object] = {
        "invitation_id": INVITATION_ID,
        "statement_id": STATEMENT,
        "consultation_id": CONSULTATION,
        "organisation_id": YANGON,
        "email": EMAIL,
        "language": "my",
        "token_hash": digest("token-1"),
        "expires_in": DEFAULT_EXPIRY,
    }
    fields.update(changes)
    return IssueInvitation(**fields)  # type: ignore[arg-type]


def issued() -> InvitationIssued:
    (event,) = when(Invitation(), issue())
    assert isinstance(event, InvitationIssued)
    return event


def used(generation: int = 1) -> InvitationUsed:
    return InvitationUsed(INVITATION_ID, STATEMENT, YANGON, generation, "ab" * 32, 12, 40)


# -- issuing ---------------------------------------------------------------------------------


def test_issuing_records_the_address_as_personal_data_and_only_the_token_hash() -> None:
    event = issued()
    email = "Coordinator@Migrant-Yangon.example.org"
    assert event == InvitationIssued(
        invitation_id=INVITATION_ID,
        statement_id=STATEMENT,
        consultation_id=CONSULTATION,
        organisation_id=YANGON,
        email=Personal(person_id(email), email),
        language="my",
        generation=1,
        token_hash=digest("token-1"),
        expires_at=ISSUED_AT + timedelta(days=14),
    )
    # The address is one person's, whatever its case: erasing them erases it here too.
    assert event.email.subject == person_id("coordinator@migrant-yangon.example.org")
    payload = to_json(event)
    assert payload["email"] == {"$personal": {"subject": str(event.email.subject), "value": email}}
    assert "token-1" not in str(payload)
    state = given(event)
    assert (state.status, state.generation, state.organisation_id) == (ISSUED, 1, YANGON)
    assert is_live(state, ISSUED_AT)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"email": "not an address"}, "email"),
        ({"email": "two@@example.org"}, "email"),
        ({"language": "Burmese!"}, "language"),
        ({"token_hash": "the token itself"}, "token_hash"),
        ({"expires_in": timedelta(minutes=59)}, "expires_in"),
        ({"expires_in": timedelta(days=91)}, "expires_in"),
    ],
)
def test_issuing_refuses_bad_values_naming_the_field(changes: dict, field: str) -> None:
    with pytest.raises(InvalidValue) as refused:
        when(Invitation(), issue(**changes))
    assert refused.value.field == field
    assert refused.value.code == "invalid-value"


def test_the_organiser_chooses_the_expiry_within_bounds() -> None:
    for expires_in in (timedelta(hours=1), timedelta(days=90)):
        (event,) = when(Invitation(), issue(expires_in=expires_in))
        assert isinstance(event, InvitationIssued)
        assert event.expires_at == ISSUED_AT + expires_in


def test_an_invitation_is_issued_once() -> None:
    with pytest.raises(InvitationAlreadyIssued):
        when(given(issued()), issue())


def test_commands_for_an_unknown_invitation_are_refused() -> None:
    with pytest.raises(UnknownInvitation):
        when(Invitation(), RevokeInvitation(INVITATION_ID))
    other = uuid4()
    with pytest.raises(UnknownInvitation):
        when(given(issued()), OpenInvitation(other, 1))


# -- the link ----------------------------------------------------------------------------------


def test_opening_is_recorded_once_per_link() -> None:
    state = given(issued())
    (opened,) = when(state, OpenInvitation(INVITATION_ID, 1), at(days=2))
    assert opened == InvitationOpened(INVITATION_ID, STATEMENT, 1)
    state = given(issued(), opened)
    assert state.status == OPENED
    assert when(state, OpenInvitation(INVITATION_ID, 1), at(days=3)) == []


def test_an_expired_replaced_or_revoked_link_records_no_opening() -> None:
    state = given(issued())
    assert when(state, OpenInvitation(INVITATION_ID, 1), at(days=14)) == [], "expired by time"
    assert when(state, OpenInvitation(INVITATION_ID, 2)) == [], "no such link"
    revoked = given(issued(), InvitationRevoked(INVITATION_ID, STATEMENT, None))
    assert when(revoked, OpenInvitation(INVITATION_ID, 1)) == []


def test_a_link_past_its_time_is_expired_before_the_sweep_says_so() -> None:
    state = given(issued())
    expiry = ISSUED_AT + DEFAULT_EXPIRY
    assert link_state(state, 1, expiry - timedelta(seconds=1)) == LINK_LIVE
    assert link_state(state, 1, expiry) == LINK_EXPIRED
    assert not is_live(state, expiry)
    assert link_state(state, 0, ISSUED_AT) == LINK_UNKNOWN
    assert link_state(state, 2, ISSUED_AT) == LINK_UNKNOWN
    assert link_state(Invitation(), 1, ISSUED_AT) == LINK_UNKNOWN


def test_the_sweep_expires_only_live_invitations_past_their_time() -> None:
    state = given(issued())
    assert when(state, ExpireInvitation(INVITATION_ID), at(days=13)) == []
    (expired,) = when(state, ExpireInvitation(INVITATION_ID), at(days=14))
    assert expired == InvitationExpired(INVITATION_ID, STATEMENT, ISSUED_AT + DEFAULT_EXPIRY)
    state = given(issued(), expired)
    assert state.status == EXPIRED
    assert link_state(state, 1, ISSUED_AT) == LINK_EXPIRED
    assert when(state, ExpireInvitation(INVITATION_ID), at(days=20)) == [], "twice is a no-op"
    assert when(given(issued(), used()), ExpireInvitation(INVITATION_ID), at(days=20)) == []


def test_resending_kills_the_old_link_and_renews_the_expiry() -> None:
    expired = InvitationExpired(INVITATION_ID, STATEMENT, ISSUED_AT + DEFAULT_EXPIRY)
    state = given(issued(), expired)
    command = ResendInvitation(INVITATION_ID, 2, digest("token-2"), timedelta(days=7))
    (resent,) = when(state, command, at(days=15))
    assert resent == InvitationResent(
        INVITATION_ID, STATEMENT, 2, digest("token-2"), ISSUED_AT + timedelta(days=22)
    )
    state = given(issued(), expired, resent)
    assert (state.status, state.generation, state.token_hash) == (ISSUED, 2, digest("token-2"))
    now = ISSUED_AT + timedelta(days=16)
    assert link_state(state, 1, now) == LINK_REPLACED
    assert link_state(state, 2, now) == LINK_LIVE


def test_a_resend_names_the_next_generation_or_is_refused_as_a_race() -> None:
    state = given(issued())
    with pytest.raises(InvitationChanged) as raced:
        when(state, ResendInvitation(INVITATION_ID, 3, digest("t"), DEFAULT_EXPIRY))
    assert raced.value.details == {"generation": 1}
    with pytest.raises(InvitationChanged):
        when(state, ResendInvitation(INVITATION_ID, 1, digest("t"), DEFAULT_EXPIRY))


def test_a_used_or_revoked_invitation_is_not_resent() -> None:
    resend = ResendInvitation(INVITATION_ID, 2, digest("token-2"), DEFAULT_EXPIRY)
    with pytest.raises(InvitationIsUsed):
        when(given(issued(), used()), resend)
    with pytest.raises(InvitationIsRevoked):
        when(given(issued(), InvitationRevoked(INVITATION_ID, STATEMENT, "wrong address")), resend)


# -- use ---------------------------------------------------------------------------------------


def test_the_use_names_the_endorsement_and_is_recorded_once() -> None:
    state = given(issued())
    command = RecordInvitationUse(INVITATION_ID, 1, "ab" * 32, 12, 40)
    (event,) = when(state, command, at(days=3))
    assert event == used()
    state = given(issued(), event)
    assert state.status == USED
    assert state.use is not None
    assert (state.use.endorsement_version, state.use.endorsement_position) == (12, 40)
    assert when(state, command) == [], "a retry or a repair after a crash changes nothing"
    assert link_state(state, 1, ISSUED_AT + timedelta(days=60)) == LINK_USED, "never expires"
    with pytest.raises(InvalidValue):
        when(given(issued()), RecordInvitationUse(INVITATION_ID, 2, "ab" * 32, 12))


def test_a_use_is_recorded_even_if_the_link_expired_since_the_endorsement() -> None:
    """The endorsement is in the statement's log; the use is recorded second (or repaired)."""
    expired = InvitationExpired(INVITATION_ID, STATEMENT, ISSUED_AT + DEFAULT_EXPIRY)
    command = RecordInvitationUse(INVITATION_ID, 1, "ab" * 32, 12, None)
    (event,) = when(given(issued(), expired), command, at(days=15))
    assert isinstance(event, InvitationUsed)
    assert given(issued(), expired, event).status == USED


# -- revoking ----------------------------------------------------------------------------------


def test_revoking_kills_every_link_and_is_idempotent() -> None:
    (revoked,) = when(
        given(issued()), RevokeInvitation(INVITATION_ID, "  sent to the wrong person ")
    )
    assert revoked == InvitationRevoked(INVITATION_ID, STATEMENT, "sent to the wrong person")
    state = given(issued(), revoked)
    assert state.status == REVOKED
    assert link_state(state, 1, ISSUED_AT) == LINK_REVOKED
    assert when(state, RevokeInvitation(INVITATION_ID)) == []
    # A used link can be revoked too (its receipt and withdraw page go with it).
    state = given(issued(), used(), InvitationRevoked(INVITATION_ID, STATEMENT, None))
    assert link_state(state, 1, ISSUED_AT) == LINK_REVOKED


# -- events ------------------------------------------------------------------------------------


def test_every_invitation_event_round_trips_through_the_registry() -> None:
    events = [
        issued(),
        InvitationResent(INVITATION_ID, STATEMENT, 2, digest("t2"), ISSUED_AT),
        InvitationOpened(INVITATION_ID, STATEMENT, 2),
        used(2),
        InvitationExpired(INVITATION_ID, STATEMENT, ISSUED_AT),
        InvitationRevoked(INVITATION_ID, STATEMENT, "spam"),
    ]
    for version, event in enumerate(events, start=1):
        new = EVENTS.to_new_event(event)
        record = RecordedEvent(
            id=uuid4(),
            stream_id=INVITATION_ID,
            stream_type="invitation",
            version=version,
            position=version,
            type=new.type,
            schema_version=new.schema_version,
            data=new.data,
            metadata={},
            recorded_at=ISSUED_AT,
        )
        assert EVENTS.decode(record) == event
        assert event.type.startswith("invitation.")
