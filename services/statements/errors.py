"""Errors of the statements context: one family, each with a stable ``code``.

Every error has ``details``: a JSON-able dict the API may put in the problem body as is.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any
from uuid import UUID

from services.errors import DomainError


class StatementError(DomainError):
    code = "statement-error"

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        self.details: dict[str, Any] = details or {}
        super().__init__(message)


class UnknownStatement(StatementError):
    """No drafting was ever started for this statement."""

    code = "unknown-statement"


class StatementAlreadyStarted(StatementError):
    code = "statement-already-started"


class InvalidValue(StatementError):
    """A value a command carries is not acceptable; ``field`` names it."""

    code = "invalid-value"

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}", {"field": field})


class DuplicateIdentifier(StatementError):
    """A new recommendation or amendment reuses an id already in use."""

    code = "duplicate-identifier"


class UnknownThematicArea(StatementError):
    """The thematic area is not one of the statement's (the consultation's)."""

    code = "unknown-thematic-area"


class UnknownRecommendation(StatementError):
    code = "unknown-recommendation"


class UnknownAmendment(StatementError):
    code = "unknown-amendment"


class RecommendationIsWithdrawn(StatementError):
    """A withdrawn recommendation can be neither revised nor amended."""

    code = "recommendation-withdrawn"


class TextFrozen(StatementError):
    """The text is finalised: changing it needs a reopening first."""

    code = "statement-finalised"


class NotFinalised(StatementError):
    """Endorsing, closing or reopening needs a finalised text."""

    code = "not-finalised"


class EmptyStatement(StatementError):
    """A statement without a single recommendation cannot be finalised."""

    code = "statement-empty"


class AmendmentsPending(StatementError):
    """Every amendment must be accepted or rejected before the text is finalised."""

    code = "amendments-pending"

    def __init__(self, amendment_ids: Iterable[UUID]) -> None:
        self.amendment_ids = tuple(amendment_ids)
        ids = [str(a) for a in self.amendment_ids]
        super().__init__(
            f"accept or reject the pending amendments first: {', '.join(ids)}",
            {"amendment_ids": ids},
        )


class AmendmentAlreadyDecided(StatementError):
    code = "amendment-already-decided"

    def __init__(self, amendment_id: UUID, status: str) -> None:
        self.amendment_id = amendment_id
        self.status = status
        super().__init__(
            f"amendment {amendment_id} was already {status}",
            {"amendment_id": str(amendment_id), "status": status},
        )


class InvalidDeadline(StatementError):
    """The endorsement deadline must lie in the future."""

    code = "invalid-deadline"


class ReasonRequired(StatementError):
    code = "reason-required"


class NotYourOrganisation(StatementError):
    """An organisation acted (endorsed, withdrew, proposed) on behalf of another."""

    code = "not-your-organisation"


class NotOnDraftingCommittee(StatementError):
    """Only organisers and organisations on the drafting committee edit and steer the text."""

    code = "not-on-drafting-committee"


class EndorsementDeadlinePassed(StatementError):
    code = "endorsement-deadline-passed"

    def __init__(self, deadline: datetime) -> None:
        self.deadline = deadline
        super().__init__(
            f"endorsements closed at the deadline {deadline.isoformat()}",
            {"endorsement_deadline": deadline.isoformat()},
        )


class EndorsementsAreClosed(StatementError):
    code = "endorsements-closed"


class EndorsementsStillOpen(StatementError):
    """Compiling needs the endorsements closed: the list of signatories must be final."""

    code = "endorsements-open"


class AlreadyEndorsed(StatementError):
    """The organisation has an active endorsement; ``details`` describes it."""

    code = "already-endorsed"

    def __init__(
        self,
        organisation_id: UUID,
        signatory_name: str,
        signatory_title: str | None,
        version: int,
        content_hash: str,
    ) -> None:
        self.organisation_id = organisation_id
        self.version = version
        self.content_hash = content_hash
        super().__init__(
            f"organisation {organisation_id} already endorsed this statement "
            f"(signed by {signatory_name} at version {version})",
            {
                "organisation_id": str(organisation_id),
                "signatory_name": signatory_name,
                "signatory_title": signatory_title,
                "version": version,
                "content_hash": content_hash,
            },
        )


class NotEndorsed(StatementError):
    """The organisation has no active endorsement to withdraw."""

    code = "not-endorsed"


class ContentHashMismatch(StatementError):
    """An endorsement or compilation named another text than the one finalised."""

    code = "content-hash-mismatch"

    def __init__(self, expected: str, given: str) -> None:
        self.expected = expected
        self.given = given
        super().__init__(
            f"the finalised text is {expected}, not {given}",
            {"expected": expected, "given": given},
        )


class NotCompiled(StatementError):
    """Publishing needs a compiled document."""

    code = "not-compiled"


class AlreadyPublished(StatementError):
    code = "already-published"
