"""What can be asked of an invitation.

The core never sees a token or the secret it is derived from: the caller (the API) derives the
link's token for a generation and passes only its SHA-256, which is all the log keeps. The
caller also checks what lies outside this aggregate first: the statement is open for
endorsement and the organisation exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from uuid import UUID


@dataclass(frozen=True)
class IssueInvitation:
    """Invite an organisation, at ``email``, to endorse a statement through a link."""

    invitation_id: UUID
    statement_id: UUID
    consultation_id: UUID
    organisation_id: UUID
    email: str
    language: str
    #: SHA-256 (hex) of the link's token for generation 1.
    token_hash: str
    expires_in: timedelta


@dataclass(frozen=True)
class ResendInvitation:
    """Send a fresh link (``generation`` is the next one): the old link stops working."""

    invitation_id: UUID
    generation: int
    token_hash: str
    expires_in: timedelta


@dataclass(frozen=True)
class OpenInvitation:
    """The invitee acted on the page of link ``generation`` (never a plain GET)."""

    invitation_id: UUID
    generation: int


@dataclass(frozen=True)
class RecordInvitationUse:
    """The link endorsed the statement: the endorsement event's version (and position)."""

    invitation_id: UUID
    generation: int
    content_hash: str
    endorsement_version: int
    endorsement_position: int | None = None


@dataclass(frozen=True)
class ExpireInvitation:
    """The scheduler's sweep: the link's time is up (a no-op if it is not, or no longer live)."""

    invitation_id: UUID


@dataclass(frozen=True)
class RevokeInvitation:
    invitation_id: UUID
    reason: str | None = None
