"""API keys: created once, shown once, stored as a hash, recognisable by their prefix.

A key looks like ``concord_<prefix>_<secret>``: the 8-character prefix is stored in clear so a
leaked key can be found and revoked; the whole key is stored only as its SHA-256 (keys are
long random strings, so a fast hash is enough — there is nothing to brute-force).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID, uuid4

from sqlalchemy import select

from infra.db import Database
from infra.schema import api_keys

ROLES = ("admin", "organiser", "organisation", "integrator")
KEY_PREFIX = "concord"


class KeyError_(ValueError):
    """A key could not be created as asked."""


@dataclass(frozen=True)
class ApiKey:
    id: UUID
    name: str
    role: str
    organisation_id: UUID | None
    prefix: str
    created_at: datetime
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeys:
    """Create, find and revoke API keys."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(
        self,
        role: str,
        name: str,
        organisation_id: UUID | None = None,
        created_by: str | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key and its secret (the only time the secret exists outside the caller)."""
        if role not in ROLES:
            raise KeyError_(f"unknown role {role!r}; one of {', '.join(ROLES)}")
        if role == "organisation" and organisation_id is None:
            raise KeyError_("a key of role 'organisation' needs an organisation id")
        if role != "organisation" and organisation_id is not None:
            raise KeyError_("only keys of role 'organisation' are bound to an organisation")
        if not name.strip():
            raise KeyError_("a key needs a name")
        prefix = secrets.token_hex(4)
        secret = f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
        key = ApiKey(uuid4(), name.strip(), role, organisation_id, prefix, datetime.now(UTC))
        with self.db.write() as conn:
            conn.execute(
                api_keys.insert().values(
                    id=key.id,
                    name=key.name,
                    role=role,
                    organisation_id=organisation_id,
                    prefix=prefix,
                    key_hash=digest(secret),
                    created_at=key.created_at,
                    created_by=created_by,
                )
            )
        return key, secret

    def authenticate(self, secret: str) -> ApiKey | None:
        """The active key with this secret, or None."""
        if not secret.startswith(KEY_PREFIX + "_") or len(secret) > 200:
            return None
        with self.db.read() as conn:
            row = conn.execute(
                select(api_keys).where(api_keys.c.key_hash == digest(secret))
            ).first()
        if row is None or row.revoked_at is not None:
            return None
        return _key(row)

    def get(self, key_id: UUID) -> ApiKey | None:
        with self.db.read() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).first()
        return _key(row) if row else None

    def list(self) -> list[ApiKey]:
        with self.db.read() as conn:
            rows = conn.execute(select(api_keys).order_by(api_keys.c.created_at)).all()
        return [_key(r) for r in rows]

    def revoke(self, key_id: UUID) -> ApiKey | None:
        """Revoke a key (idempotent); None if there is no such key."""
        with self.db.write() as conn:
            conn.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
            )
        return self.get(key_id)


def _key(row: object) -> ApiKey:
    return ApiKey(
        id=row.id,  # type: ignore[attr-defined]
        name=row.name,  # type: ignore[attr-defined]
        role=row.role,  # type: ignore[attr-defined]
        organisation_id=row.organisation_id,  # type: ignore[attr-defined]
        prefix=row.prefix,  # type: ignore[attr-defined]
        created_at=row.created_at,  # type: ignore[attr-defined]
        revoked_at=row.revoked_at,  # type: ignore[attr-defined]
        last_used_at=row.last_used_at,  # type: ignore[attr-defined]
    )
