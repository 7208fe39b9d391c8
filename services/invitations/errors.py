"""Errors of the invitations context: one family, each with a stable ``code``."""

from __future__ import annotations

from typing import Any

from services.errors import DomainError


class InvitationError(DomainError):
    code = "invitation-error"

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        self.details: dict[str, Any] = details or {}
        super().__init__(message)


class UnknownInvitation(InvitationError):
    code = "unknown-invitation"


class InvitationAlreadyIssued(InvitationError):
    """An invitation id was reused."""

    code = "duplicate-identifier"


class InvalidValue(InvitationError):
    """A value a command carries is not acceptable; ``field`` names it."""

    code = "invalid-value"

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}", {"field": field})


class InvitationIsRevoked(InvitationError):
    code = "invitation-revoked"


class InvitationIsUsed(InvitationError):
    """The link already endorsed: it cannot be sent again (its page offers withdrawing)."""

    code = "invitation-used"


class InvitationChanged(InvitationError):
    """The invitation was resent in the meantime: the generation named is not the next one."""

    code = "invitation-changed"

    def __init__(self, expected: int, given: int) -> None:
        super().__init__(
            f"the invitation is at link generation {expected - 1}; it was resent meanwhile",
            {"generation": expected - 1},
        )
