"""What happens to an invitation, as past-tense facts.

One stream per invitation. The e-mail address is :class:`~services.messages.Personal` with the
person id of that address as subject. The link's token is never recorded: only its SHA-256
(``token_hash``), which the public contract leaves out as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from services.messages import DomainEvent, Personal
from services.registry import EVENTS


@EVENTS.register
@dataclass(frozen=True)
class InvitationIssued(DomainEvent):
    """An organisation was invited, at ``email``, to endorse a statement through a link."""

    type = "invitation.issued"
    invitation_id: UUID
    statement_id: UUID
    consultation_id: UUID
    organisation_id: UUID
    email: Personal[str]
    language: str
    generation: int
    token_hash: str
    expires_at: datetime


@EVENTS.register
@dataclass(frozen=True)
class InvitationResent(DomainEvent):
    """A fresh link (``generation``) was sent; links of earlier generations stop working."""

    type = "invitation.resent"
    invitation_id: UUID
    statement_id: UUID
    generation: int
    token_hash: str
    expires_at: datetime


@EVENTS.register
@dataclass(frozen=True)
class InvitationOpened(DomainEvent):
    """Someone acted on the link's page (a plain GET, as a mail scanner makes, records nothing)."""

    type = "invitation.opened"
    invitation_id: UUID
    statement_id: UUID
    generation: int


@EVENTS.register
@dataclass(frozen=True)
class InvitationUsed(DomainEvent):
    """The link endorsed the text ``content_hash``: the statement's event at that version."""

    type = "invitation.used"
    invitation_id: UUID
    statement_id: UUID
    organisation_id: UUID
    generation: int
    content_hash: str
    endorsement_version: int
    endorsement_position: int | None


@EVENTS.register
@dataclass(frozen=True)
class InvitationExpired(DomainEvent):
    type = "invitation.expired"
    invitation_id: UUID
    statement_id: UUID
    expires_at: datetime


@EVENTS.register
@dataclass(frozen=True)
class InvitationRevoked(DomainEvent):
    type = "invitation.revoked"
    invitation_id: UUID
    statement_id: UUID
    reason: str | None
