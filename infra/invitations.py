"""Invitations beyond their own stream: links, the endorsement a link made, and expiry.

Endorsing through a link is two appends: the statement's ``statement.endorsed`` (through the
command bus, with metadata naming the invitation: actor ``invitation:<id>/<generation>``,
causation id the invitation's id), then the invitation's ``invitation.used``. A crash in
between leaves the first without the second; the statement's own log says what happened, so
:func:`repair` records the use whenever the invitation is next touched by a POST or by the
expiry sweep — never by a plain GET, which must change nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from uuid import UUID

import structlog
from sqlalchemy import select

from infra.bootstrap import System
from infra.eventstore.kept import KeptRecords
from infra.projections.invitations import invitation_links, invitations
from infra.tokens import link_token, secret_key, token_hash
from services.decider import Context
from services.invitations.commands import ExpireInvitation, RecordInvitationUse
from services.invitations.model import INVITATION, LIVE, Invitation
from services.ports import Metadata, RecordedEvent

log = structlog.get_logger("concord.invitations")

ACTOR_PREFIX = "invitation:"


def actor(invitation_id: UUID, generation: int) -> str:
    """The actor of what a link does: the invitation and the link's generation."""
    return f"{ACTOR_PREFIX}{invitation_id}/{generation}"


def metadata(invitation_id: UUID, generation: int, correlation_id: str | None = None) -> Metadata:
    return Metadata(
        actor=actor(invitation_id, generation),
        causation_id=str(invitation_id),
        correlation_id=correlation_id,
    )


def hash_for(system: System, invitation_id: UUID, generation: int) -> str:
    """The hash of the link token of ``generation`` (raises SecretKeyMissing without a key)."""
    return token_hash(link_token(secret_key(system.settings), invitation_id, generation))


def find_link(system: System, token: str) -> tuple[UUID, int] | None:
    """(invitation id, generation) of a link's token, whatever its generation; None if unknown."""
    if not 20 <= len(token) <= 100:
        return None
    with system.db.read() as conn:
        row = conn.execute(
            select(invitation_links.c.invitation_id, invitation_links.c.generation).where(
                invitation_links.c.token_hash == token_hash(token)
            )
        ).first()
    return (row.invitation_id, row.generation) if row is not None else None


def made_through(records: Sequence[RecordedEvent], invitation_id: UUID) -> RecordedEvent | None:
    """The statement's endorsement made through the invitation (a link endorses once)."""
    for record in records:
        if (
            record.type == "statement.endorsed"
            and record.metadata.get("causation_id") == str(invitation_id)
            and str(record.metadata.get("actor") or "").startswith(ACTOR_PREFIX)
        ):
            return record
    return None


def record_use(
    system: System,
    state: Invitation,
    endorsement: RecordedEvent,
    correlation_id: str | None = None,
) -> Invitation:
    """Append ``invitation.used`` for ``endorsement`` (a no-op if recorded already)."""
    assert state.invitation_id is not None
    generation = generation_of(endorsement, state.generation)
    system.bus.handle(
        INVITATION,
        state.invitation_id,
        RecordInvitationUse(
            invitation_id=state.invitation_id,
            generation=generation,
            content_hash=str(endorsement.data["content_hash"]),
            endorsement_version=endorsement.version,
            endorsement_position=endorsement.position,
        ),
        metadata=metadata(state.invitation_id, generation, correlation_id),
    )
    fresh, _, _ = system.bus.load(INVITATION, state.invitation_id)
    return fresh


def repair(
    system: System,
    state: Invitation,
    correlation_id: str | None = None,
    *,
    records: Callable[[UUID], Sequence[RecordedEvent]] | None = None,
) -> Invitation:
    """Record a use the statement's log shows but the invitation's does not (a crash between
    the two appends); returns the invitation as it now is. ``records`` gives the statement's
    events (default: read from the store)."""
    if state.use is not None or state.statement_id is None or state.invitation_id is None:
        return state
    read = records if records is not None else system.store.read_stream
    endorsement = made_through(read(state.statement_id), state.invitation_id)
    if endorsement is None:
        return state
    log.warning("recording an invitation's use after the fact", invitation=str(state.invitation_id))
    return record_use(system, state, endorsement, correlation_id)


def generation_of(endorsement: RecordedEvent, default: int) -> int:
    """The generation of the link that made an endorsement (from its actor)."""
    who = str(endorsement.metadata.get("actor") or "")
    _, _, generation = who.partition("/")
    return int(generation) if generation.isdigit() else default


def expire_due(system: System, now: datetime | None = None, limit: int = 500) -> int:
    """The scheduler's sweep: expire live invitations whose time is up; returns how many.

    Each is re-read from its stream and repaired first: a link that endorsed just before a
    crash is recorded as used, not expired.
    """
    now = now or datetime.now(UTC)
    system.projector.catch_up(names=["invitations"])
    with system.db.read() as conn:
        due = list(
            conn.execute(
                select(invitations.c.invitation_id)
                .where(invitations.c.status.in_(LIVE), invitations.c.expires_at <= now)
                .order_by(invitations.c.expires_at)
                .limit(limit)
            ).scalars()
        )
    expired = 0
    # At an endorsement deadline hundreds of links of one statement fall due at once: the
    # sweep reads each statement whole once, then only what it gained since.
    statements = KeptRecords(system.store, max_events=sys.maxsize)
    for invitation_id in due:
        state, _, _ = system.bus.load(INVITATION, invitation_id)
        state = repair(system, state, records=statements.read)
        outcome = system.bus.handle(
            INVITATION,
            invitation_id,
            ExpireInvitation(invitation_id),
            metadata=Metadata(actor="concord:scheduler"),
            context=Context(now=now, actor="concord:scheduler"),
        )
        expired += int(outcome.changed)
    if expired:
        log.info("invitations expired", count=expired)
    return expired
