"""The invitation aggregate: one organisation asked, at one address, to endorse one statement.

Life cycle: issued → (opened) → used, or expired, or revoked; a resend (issued again with the
next link *generation*) renews an issued, opened or expired invitation and kills every earlier
link. Decisions worth knowing:

* A link is single-use for endorsing; once used it still shows the receipt and can withdraw
  the endorsement it made, so a used invitation neither expires nor can be sent again.
* "Opened" is recorded once per link generation, and only from a POST (the page's beacon or the
  form): mail scanners that fetch links must not change anything.
* Recording the use is idempotent, and allowed whatever happened since: the endorsement is in
  the statement's log already (the use is recorded second, and repaired from the statement's
  log if a crash came in between), so the fact is true even if the link expired meanwhile.
* Expiring is the scheduler's sweep and a no-op unless the invitation is live and past its
  time; revoking twice changes nothing.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from uuid import UUID

from services.decider import Context, Decider
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
from services.messages import DomainEvent, Personal
from services.people import person_id

STREAM_TYPE = "invitation"

#: Statuses of :attr:`Invitation.status`.
ISSUED, OPENED, USED, EXPIRED, REVOKED = "issued", "opened", "used", "expired", "revoked"
STATUSES = (ISSUED, OPENED, USED, EXPIRED, REVOKED)
LIVE = (ISSUED, OPENED)

#: How long a link works unless the organiser says otherwise, and the bounds they may choose.
DEFAULT_EXPIRY = timedelta(days=14)
MIN_EXPIRY = timedelta(hours=1)
MAX_EXPIRY = timedelta(days=90)

_SHA256 = re.compile(r"[0-9a-f]{64}")
_LANGUAGE = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


@dataclass(frozen=True)
class Use:
    """The endorsement a link made: the statement's event at ``endorsement_version``."""

    generation: int
    content_hash: str
    endorsement_version: int
    endorsement_position: int | None


@dataclass(frozen=True)
class Invitation:
    invitation_id: UUID | None = None
    statement_id: UUID | None = None
    consultation_id: UUID | None = None
    organisation_id: UUID | None = None
    email: Personal[str] | None = None
    language: str = ""
    #: The current link's generation (1 when issued, one more per resend).
    generation: int = 0
    token_hash: str = ""
    expires_at: datetime | None = None
    status: str = ""
    opened_generations: frozenset[int] = frozenset()
    use: Use | None = None
    revoke_reason: str | None = None
    version: int = 0

    @property
    def exists(self) -> bool:
        return self.invitation_id is not None


Command = (
    IssueInvitation
    | ResendInvitation
    | OpenInvitation
    | RecordInvitationUse
    | ExpireInvitation
    | RevokeInvitation
)


# -- read helpers ----------------------------------------------------------------------------

#: What a link shows: :func:`link_state`.
LINK_UNKNOWN, LINK_REPLACED, LINK_REVOKED, LINK_USED, LINK_EXPIRED, LINK_LIVE = (
    "unknown",
    "replaced",
    "revoked",
    "used",
    "expired",
    "live",
)


def link_state(state: Invitation, generation: int, now: datetime) -> str:
    """What the link of ``generation`` can do at ``now``.

    A link past its time is expired even before the sweep records it; a used link stays the
    way to its receipt (and to withdrawing) until the invitation is revoked.
    """
    if not state.exists or generation < 1 or generation > state.generation:
        return LINK_UNKNOWN
    if state.status == REVOKED:
        return LINK_REVOKED
    if state.use is not None:
        return LINK_USED if generation == state.use.generation else LINK_REPLACED
    if generation != state.generation:
        return LINK_REPLACED
    if state.status == EXPIRED or (state.expires_at is not None and now >= state.expires_at):
        return LINK_EXPIRED
    return LINK_LIVE


def is_live(state: Invitation, now: datetime) -> bool:
    """Whether the current link may still endorse at ``now``."""
    return link_state(state, state.generation, now) == LINK_LIVE


# -- evolve ------------------------------------------------------------------------------------


def evolve(state: Invitation, event: DomainEvent) -> Invitation:
    state = replace(state, version=state.version + 1)
    match event:
        case InvitationIssued():
            return replace(
                state,
                invitation_id=event.invitation_id,
                statement_id=event.statement_id,
                consultation_id=event.consultation_id,
                organisation_id=event.organisation_id,
                email=event.email,
                language=event.language,
                generation=event.generation,
                token_hash=event.token_hash,
                expires_at=event.expires_at,
                status=ISSUED,
            )
        case InvitationResent():
            return replace(
                state,
                generation=event.generation,
                token_hash=event.token_hash,
                expires_at=event.expires_at,
                status=ISSUED,
            )
        case InvitationOpened():
            return replace(
                state,
                status=OPENED if state.status == ISSUED else state.status,
                opened_generations=state.opened_generations | {event.generation},
            )
        case InvitationUsed():
            use = Use(
                event.generation,
                event.content_hash,
                event.endorsement_version,
                event.endorsement_position,
            )
            status = state.status if state.status == REVOKED else USED
            return replace(state, use=use, status=status)
        case InvitationExpired():
            return replace(state, status=EXPIRED)
        case InvitationRevoked():
            return replace(state, status=REVOKED, revoke_reason=event.reason)
    return state


# -- decide ------------------------------------------------------------------------------------


def decide(state: Invitation, command: Command, ctx: Context) -> Sequence[DomainEvent]:
    if isinstance(command, IssueInvitation):
        return _issue(state, command, ctx)
    if not state.exists or state.invitation_id != command.invitation_id:
        raise UnknownInvitation(f"no invitation {command.invitation_id}")
    assert state.statement_id is not None
    assert state.organisation_id is not None
    match command:
        case ResendInvitation():
            return _resend(state, command, ctx)
        case OpenInvitation():
            fresh = command.generation not in state.opened_generations
            if fresh and link_state(state, command.generation, ctx.now) == LINK_LIVE:
                return [
                    InvitationOpened(command.invitation_id, state.statement_id, state.generation)
                ]
            return []
        case RecordInvitationUse():
            if state.use is not None:
                return []
            if not 1 <= command.generation <= state.generation:
                raise InvalidValue("generation", f"no link generation {command.generation}")
            return [
                InvitationUsed(
                    invitation_id=command.invitation_id,
                    statement_id=state.statement_id,
                    organisation_id=state.organisation_id,
                    generation=command.generation,
                    content_hash=_hash("content_hash", command.content_hash),
                    endorsement_version=command.endorsement_version,
                    endorsement_position=command.endorsement_position,
                )
            ]
        case ExpireInvitation():
            due = state.expires_at is not None and ctx.now >= state.expires_at
            if state.status in LIVE and state.use is None and due:
                assert state.expires_at is not None
                return [
                    InvitationExpired(command.invitation_id, state.statement_id, state.expires_at)
                ]
            return []
        case RevokeInvitation():
            if state.status == REVOKED:
                return []
            reason = _optional_text(command.reason)
            return [InvitationRevoked(command.invitation_id, state.statement_id, reason)]
    raise TypeError(f"not an invitation command: {command!r}")


def _issue(state: Invitation, command: IssueInvitation, ctx: Context) -> Sequence[DomainEvent]:
    if state.exists:
        raise InvitationAlreadyIssued(f"invitation {command.invitation_id} exists already")
    email = check_email(command.email)
    return [
        InvitationIssued(
            invitation_id=command.invitation_id,
            statement_id=command.statement_id,
            consultation_id=command.consultation_id,
            organisation_id=command.organisation_id,
            email=Personal(person_id(email), email),
            language=_language(command.language),
            generation=1,
            token_hash=_hash("token_hash", command.token_hash),
            expires_at=ctx.now + check_expiry(command.expires_in),
        )
    ]


def _resend(state: Invitation, command: ResendInvitation, ctx: Context) -> Sequence[DomainEvent]:
    assert state.statement_id is not None
    if state.status == REVOKED:
        raise InvitationIsRevoked(f"invitation {command.invitation_id} was revoked")
    if state.use is not None:
        raise InvitationIsUsed(
            f"invitation {command.invitation_id} was used to endorse; its link shows the receipt"
        )
    if command.generation != state.generation + 1:
        raise InvitationChanged(state.generation + 1, command.generation)
    return [
        InvitationResent(
            invitation_id=command.invitation_id,
            statement_id=state.statement_id,
            generation=command.generation,
            token_hash=_hash("token_hash", command.token_hash),
            expires_at=ctx.now + check_expiry(command.expires_in),
        )
    ]


# -- values ------------------------------------------------------------------------------------


def check_expiry(expires_in: timedelta) -> timedelta:
    """How long a link works: between :data:`MIN_EXPIRY` and :data:`MAX_EXPIRY`."""
    if not MIN_EXPIRY <= expires_in <= MAX_EXPIRY:
        raise InvalidValue("expires_in", "must be between 1 hour and 90 days")
    return expires_in


def check_email(value: str) -> str:
    email = unicodedata.normalize("NFC", value).strip()
    if len(email) > 320 or not _EMAIL.fullmatch(email):
        raise InvalidValue("email", f"is not an e-mail address: {value!r}")
    return email


def _language(value: str) -> str:
    language = value.strip()
    if not _LANGUAGE.fullmatch(language):
        raise InvalidValue("language", f"must be a BCP 47 tag such as en or vi, not {value!r}")
    return language


def _hash(name: str, value: str) -> str:
    if not _SHA256.fullmatch(value):
        raise InvalidValue(name, "must be a lowercase hex SHA-256 digest")
    return value


def _optional_text(value: str | None) -> str | None:
    return unicodedata.normalize("NFC", value or "").strip() or None


INVITATION: Decider[Invitation, Command] = Decider(STREAM_TYPE, Invitation, evolve, decide)
