"""API keys: created once, shown once, stored as a hash, recognisable by their form.

A key looks like ``concord_<prefix>_<secret><checksum>`` (66 characters, e.g.
``concord_1f0c9a2b_4kP0yXq2…``):

* ``<prefix>``: 8 lowercase hex digits, stored in clear, so a leaked key can be found
  (``concord keys list``) and revoked;
* ``<secret>``: 43 base62 characters (256 random bits);
* ``<checksum>``: 6 base62 characters, the CRC32 of everything before it (GitHub's token
  scheme): a secret scanner can tell a real key from a look-alike without asking us, and the
  API refuses a mistyped key without a database lookup.

As a regular expression: ``\bconcord_[0-9a-f]{8}_[0-9A-Za-z]{49}\b``. Keys made before the
checksum (``concord_<prefix>_<43 characters of [A-Za-z0-9_-]>``) keep working.

Only the SHA-256 of the whole key is stored (keys are long random strings, so a fast hash is
enough — there is nothing to brute-force).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal
from uuid import UUID, uuid4

import structlog
from sqlalchemy import func, select

from infra.db import Database
from infra.schema import api_keys

ROLES = ("admin", "organiser", "organisation", "integrator")
KEY_PREFIX = "concord"
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
SECRET_LENGTH = 43
CHECKSUM_LENGTH = 6
#: Keys with a checksum (what :meth:`ApiKeys.create` makes), for secret scanners too.
KEY_PATTERN = re.compile(r"concord_([0-9a-f]{8})_([0-9A-Za-z]{43})([0-9A-Za-z]{6})")
#: Keys made before the checksum existed.
LEGACY_PATTERN = re.compile(r"concord_([0-9a-f]{8})_[A-Za-z0-9_-]{43}")

audit = structlog.get_logger("concord.audit")

#: Active keys kept per process at most (beyond it they are all forgotten and looked up again).
CACHED_KEYS = 10_000
_REVOCATIONS = select(func.count(api_keys.c.revoked_at), func.max(api_keys.c.revoked_at))


def checksum(body: str) -> str:
    """The CRC32 of ``body`` in 6 base62 characters."""
    value = zlib.crc32(body.encode())
    digits = []
    for _ in range(CHECKSUM_LENGTH):
        value, digit = divmod(value, 62)
        digits.append(BASE62[digit])
    return "".join(reversed(digits))


def new_secret(prefix: str) -> str:
    """A fresh key for ``prefix``: 256 random bits and the checksum."""
    body = f"{KEY_PREFIX}_{prefix}_" + "".join(secrets.choice(BASE62) for _ in range(SECRET_LENGTH))
    return body + checksum(body)


KeyForm = Literal["checked", "legacy", "malformed"]


def key_form(secret: str) -> tuple[KeyForm, str | None]:
    """Whether ``secret`` can be a key, without a lookup, and its prefix if it has one.

    ``checked``: the current form with a valid checksum; ``legacy``: the form before checksums;
    ``malformed``: anything else, a mistyped key included (it has a prefix then)."""
    if (match := KEY_PATTERN.fullmatch(secret)) is not None:
        body = secret[:-CHECKSUM_LENGTH]
        if checksum(body) == match.group(3):
            return "checked", match.group(1)
        return "malformed", match.group(1)
    if (match := LEGACY_PATTERN.fullmatch(secret)) is not None:
        return "legacy", match.group(1)
    loose = re.match(r"concord_([0-9a-f]{8})_", secret)
    return "malformed", loose.group(1) if loose else None


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

    def __init__(self, db: Database, *, cache_s: float = 0.0) -> None:
        self.db = db
        #: How often the revocations are checked; between checks an active key found once is
        #: trusted without a lookup (0: always look up). A key revoked through another process
        #: stops working within this time.
        self.cache_s = cache_s
        #: Active keys looked up once, by hash: trusted while the revocations are known to be
        #: as they were when they were looked up (checked at most every ``cache_s``).
        self._active: dict[str, Identified] = {}
        #: What the revocations looked like when last checked, and until when that check holds.
        self._revocations: tuple[int, datetime | None] | None = None
        self._trusted_until = 0.0
        self._lock = threading.Lock()
        self._checking = threading.Lock()

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
        secret = new_secret(prefix)
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
        audit.info(
            "api key created",
            key_id=str(key.id),
            api_key=prefix,
            role=role,
            organisation_id=str(organisation_id) if organisation_id else None,
            name=key.name,
            by=created_by,
        )
        return key, secret

    def known(self, secret: str) -> Identified | None:
        """What :meth:`identify` says when it can say it without the database (a malformed
        key, or an active one found within ``cache_s``); None when it would look it up."""
        form, prefix = key_form(secret)
        if form == "malformed":
            return Identified(None, "malformed", prefix)
        return self._cached(digest(secret))

    def identify(self, secret: str) -> Identified:
        """Which key this is (revoked ones too), or why it is none; a malformed or mistyped
        key is refused without a lookup."""
        form, prefix = key_form(secret)
        if form == "malformed":
            return Identified(None, "malformed", prefix)
        hashed = digest(secret)
        if self.cache_s > 0:
            self._check_revocations()
            hit = self._cached(hashed)
            if hit is not None:
                return hit
        with self.db.read() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.key_hash == hashed)).first()
        if row is None:
            return Identified(None, "unknown", prefix)
        key = _key(row)
        found = Identified(key, "revoked" if key.revoked_at else "active", prefix)
        if self.cache_s > 0 and found.status == "active":
            with self._lock:
                if len(self._active) > CACHED_KEYS:
                    self._active.clear()
                self._active[hashed] = found
        return found

    def _cached(self, hashed: str) -> Identified | None:
        """The active key with this hash, if it is kept and the check of the revocations
        still holds (no database: the event loop asks this too)."""
        if self.cache_s <= 0 or time.monotonic() >= self._trusted_until:
            return None
        with self._lock:
            return self._active.get(hashed)

    def _check_revocations(self) -> None:
        """Once the last check is ``cache_s`` old: read how many keys are revoked (and the
        latest revocation). Unchanged, the kept keys are trusted for ``cache_s`` more from
        when the read began; changed, they are all forgotten. Keys are never un-revoked or
        deleted, so any revocation changes what is read: one committed through another
        process is noticed within ``cache_s``."""
        if time.monotonic() < self._trusted_until:
            return
        with self._checking:  # one check at a time; those waiting find it done
            began = time.monotonic()
            if began < self._trusted_until:
                return
            with self.db.read() as conn:
                count, latest = conn.execute(_REVOCATIONS).one()
            with self._lock:
                if (count, latest) != self._revocations:
                    self._active.clear()
                    self._revocations = (count, latest)
                self._trusted_until = began + self.cache_s

    def authenticate(self, secret: str) -> ApiKey | None:
        """The active key with this secret, or None."""
        found = self.identify(secret)
        return found.key if found.status == "active" else None

    def get(self, key_id: UUID) -> ApiKey | None:
        with self.db.read() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).first()
        return _key(row) if row else None

    def list(self) -> list[ApiKey]:
        with self.db.read() as conn:
            rows = conn.execute(select(api_keys).order_by(api_keys.c.created_at)).all()
        return [_key(r) for r in rows]

    def revoke(self, key_id: UUID, revoked_by: str | None = None) -> ApiKey | None:
        """Revoke a key (idempotent); None if there is no such key."""
        with self.db.write() as conn:
            changed = conn.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
            ).rowcount
        with self._lock:  # this process stops trusting it at once
            self._active = {
                h: v for h, v in self._active.items() if v.key is None or v.key.id != key_id
            }
        key = self.get(key_id)
        if key is not None and changed:
            audit.info("api key revoked", key_id=str(key.id), api_key=key.prefix, by=revoked_by)
        return key


@dataclass(frozen=True)
class Identified:
    """What a presented key turned out to be. ``key`` is set for active and revoked keys."""

    key: ApiKey | None
    status: Literal["active", "revoked", "unknown", "malformed"]
    #: The prefix the presented key shows (for logs), if it has one.
    prefix: str | None


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
