"""Invitations as the organiser lists them, and the index from a link's token hash to its
invitation (every generation's, so a replaced link is recognised as such).

The address is kept only because the mail worker sends to it and the organiser's list shows
it; an erased person's address reads as NULL after a rebuild.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Index,
    Integer,
    String,
    Table,
    Uuid,
)

from infra.db import insert_or_skip
from infra.projections.base import Tables
from infra.schema import UtcDateTime, metadata
from services.messages import PERSONAL_KEY
from services.ports import RecordedEvent

invitations = Table(
    "invitations",
    metadata,
    Column("invitation_id", Uuid, primary_key=True),
    Column("statement_id", Uuid, nullable=False),
    Column("consultation_id", Uuid, nullable=False),
    Column("organisation_id", Uuid, nullable=False),
    Column("email", String(320), nullable=True),
    Column("language", String(35), nullable=False),
    #: issued | opened | used | expired | revoked
    Column("status", String(16), nullable=False),
    Column("generation", Integer, nullable=False),
    Column("token_hash", String(64), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
    Column("issued_at", UtcDateTime(), nullable=False),
    Column("resent_at", UtcDateTime(), nullable=True),
    Column("opened_at", UtcDateTime(), nullable=True),
    Column("used_at", UtcDateTime(), nullable=True),
    Column("expired_at", UtcDateTime(), nullable=True),
    Column("revoked_at", UtcDateTime(), nullable=True),
    Column("endorsement_position", BigInteger, nullable=True),
    Column("version", Integer, nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    Index("ix_invitations_statement_id", "statement_id"),
    Index("ix_invitations_status_expires_at", "status", "expires_at"),
)

#: Every link ever sent: its token's hash, its invitation and its generation.
invitation_links = Table(
    "invitation_links",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("invitation_id", Uuid, nullable=False),
    Column("generation", Integer, nullable=False),
)


def _plain(value: Any) -> Any:
    """A personal marker's value (None when erased)."""
    if isinstance(value, dict) and PERSONAL_KEY in value:
        return value[PERSONAL_KEY].get("value")
    return value


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value)


class InvitationViews:
    """Projection ``invitations``."""

    name = "invitations"
    tables = (invitations, invitation_links)
    streams = frozenset({"invitation"})

    def apply(self, conn: Connection, tables: Tables, events: Sequence[RecordedEvent]) -> None:
        rows, links = tables["invitations"], tables["invitation_links"]
        for e in events:
            if e.stream_type != "invitation":
                continue
            data = e.data
            if e.type == "invitation.issued":
                conn.execute(
                    insert_or_skip(conn, rows).values(
                        invitation_id=e.stream_id,
                        statement_id=UUID(data["statement_id"]),
                        consultation_id=UUID(data["consultation_id"]),
                        organisation_id=UUID(data["organisation_id"]),
                        email=_plain(data["email"]),
                        language=data["language"],
                        status="issued",
                        generation=data["generation"],
                        token_hash=data["token_hash"],
                        expires_at=_time(data["expires_at"]),
                        issued_at=e.recorded_at,
                        version=e.version,
                        updated_at=e.recorded_at,
                    )
                )
                self._link(conn, links, e)
                continue
            changes: dict[str, Any] = {}
            status: str | None = None
            #: Statuses the new one must not replace (an opening does not undo a use …).
            keep: tuple[str, ...] = ()
            match e.type:
                case "invitation.resent":
                    status = "issued"
                    changes = {
                        "generation": data["generation"],
                        "token_hash": data["token_hash"],
                        "expires_at": _time(data["expires_at"]),
                        "resent_at": e.recorded_at,
                        "expired_at": None,
                    }
                    self._link(conn, links, e)
                case "invitation.opened":
                    status, keep = "opened", ("used", "expired", "revoked")
                    changes = {"opened_at": e.recorded_at}
                case "invitation.used":
                    status, keep = "used", ("revoked",)
                    changes = {
                        "used_at": e.recorded_at,
                        "endorsement_position": data.get("endorsement_position"),
                    }
                case "invitation.expired":
                    status, changes = "expired", {"expired_at": e.recorded_at}
                case "invitation.revoked":
                    status, changes = "revoked", {"revoked_at": e.recorded_at}
                case _:
                    continue
            this = rows.c.invitation_id == e.stream_id
            conn.execute(
                rows.update()
                .where(this)
                .values(**changes, version=e.version, updated_at=e.recorded_at)
            )
            conn.execute(
                rows.update().where(this, rows.c.status.not_in(keep)).values(status=status)
            )

    def _link(self, conn: Connection, links: Any, e: RecordedEvent) -> None:
        conn.execute(
            insert_or_skip(conn, links).values(
                token_hash=e.data["token_hash"],
                invitation_id=e.stream_id,
                generation=e.data["generation"],
            )
        )
