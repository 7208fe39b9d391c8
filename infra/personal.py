"""Each person's data in the log is encrypted with that person's own key (crypto-shredding).

Events carry personal data only inside ``$personal`` markers (:mod:`services.messages`). The
event store seals every marker before it is written::

    {"$personal": {"subject": "<person id>", "value": "Nguyễn Thị Hoa"}}
    → {"$personal": {"subject": "<person id>", "kid": "…", "ct": "<base64 nonce+ciphertext>"}}

with AES-256-GCM under the subject's key (the additional data binds the ciphertext to its
person and its event, so it cannot be moved elsewhere). Keys live in ``person_keys``, never in
events. Reading opens each marker again — or, when the key is gone, gives
``{"subject": …, "erased": true}``. Erasing a person deletes the key: the log is unchanged
(its hashes cover the ciphertext, so they stay valid) and a backup of the log alone reveals
nothing about the person.

Keys for sealing are cached for a short while (a key deleted meanwhile only makes the new data
unreadable too, which errs on the safe side); keys for opening are never cached, so an
erasure is visible to every process at once.
"""

from __future__ import annotations

import base64
import os
import secrets
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from uuid import UUID

import orjson
import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Connection, Insert, bindparam, delete, select, text

from infra.db import Database, upsert_statement
from infra.schema import keyring_epoch, person_keys
from services.messages import PERSONAL_KEY, iter_personal
from services.ports import NewEvent

log = structlog.get_logger("concord.personal")

ALGORITHM = "A256GCM"
#: Subjects looked up per query when opening a page of events.
CHUNK = 500


def _aad(subject: str, event_id: UUID) -> bytes:
    return f"{subject}|{event_id}".encode()


def has_marker(data: Any) -> bool:
    """True if ``data`` holds at least one ``$personal`` marker (depth-first, stops early)."""
    stack = [data]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if PERSONAL_KEY in node:
                return True
            stack.extend(v for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend(v for v in node if isinstance(v, (dict, list)))
    return False


def _rewrite(data: Any, fn: Any) -> Any:
    """A copy of ``data`` with each marker body replaced by ``fn(body)``."""
    if isinstance(data, dict):
        marker = data.get(PERSONAL_KEY)
        if isinstance(marker, dict) and len(data) == 1:
            return {PERSONAL_KEY: fn(marker)}
        return {k: _rewrite(v, fn) for k, v in data.items()}
    if isinstance(data, list):
        return [_rewrite(v, fn) for v in data]
    return data


# An upsert, so the counter also moves when its row went missing (e.g. a truncated table).
_BUMP_EPOCH = text(
    "INSERT INTO keyring_epoch (id, epoch) VALUES (1, 1) "
    "ON CONFLICT (id) DO UPDATE SET epoch = keyring_epoch.epoch + 1"
)


_KEYS_OF = select(person_keys.c.person_id, person_keys.c.kid, person_keys.c.key).where(
    person_keys.c.person_id.in_(bindparam("ids", expanding=True))
)
_EPOCH = select(keyring_epoch.c.epoch)


@lru_cache(maxsize=2)
def _claim_keys(dialect: str) -> Insert:
    """Insert new keys; where a person has one already, keep it. Either way the stored key
    comes back (the no-op update is what makes an existing row returnable)."""
    claim = upsert_statement(dialect, person_keys, "person_id", ("person_id",))
    return claim.returning(person_keys.c.person_id, person_keys.c.kid, person_keys.c.key)


class Keyring:
    """Per-person keys: seal markers for writing, open them for reading, forget a person."""

    def __init__(self, db: Database, *, cache_ttl_s: float = 30.0, cache_size: int = 10_000):
        self.db = db
        self.cache_ttl_s = cache_ttl_s
        self.cache_size = cache_size
        self._cache: dict[str, tuple[str, bytes, float]] = {}
        self._lock = threading.Lock()

    # -- sealing (writing) ------------------------------------------------------------------

    def seal(self, events: Sequence[NewEvent]) -> list[NewEvent]:
        """The events with every plain marker encrypted under its subject's key."""
        subjects = {
            str(m["subject"]) for e in events for m in iter_personal(e.data) if "value" in m
        }
        if not subjects:
            return list(events)
        keys = self._keys_for_sealing(subjects)
        sealed = []
        for e in events:
            if not has_marker(e.data):
                sealed.append(e)
                continue

            def encrypt(body: dict[str, Any], event_id: UUID = e.id) -> dict[str, Any]:
                if "value" not in body:
                    return body  # already sealed or erased
                subject = str(body["subject"])
                kid, key = keys[subject]
                nonce = os.urandom(12)
                plain = orjson.dumps(body["value"])
                ct = AESGCM(key).encrypt(nonce, plain, _aad(subject, event_id))
                return {"subject": subject, "kid": kid, "ct": base64.b64encode(nonce + ct).decode()}

            data = _rewrite(e.data, encrypt)
            sealed.append(NewEvent(e.type, data, e.schema_version, e.id))
        return sealed

    def _keys_for_sealing(self, subjects: set[str]) -> dict[str, tuple[str, bytes]]:
        now = time.monotonic()
        found: dict[str, tuple[str, bytes]] = {}
        with self._lock:
            for s in subjects:
                hit = self._cache.get(s)
                if hit is not None and now - hit[2] < self.cache_ttl_s:
                    found[s] = (hit[0], hit[1])
        missing = subjects - found.keys()
        if missing:
            fresh = [
                {
                    "person_id": UUID(s),
                    "kid": secrets.token_hex(8),
                    "key": AESGCM.generate_key(bit_length=256),
                    "created_at": datetime.now(UTC),
                }
                for s in sorted(missing)
            ]
            with self.db.autocommit() as conn:
                claim = _claim_keys(conn.dialect.name)
                # One statement per chunk (a batch of new signatories is one round trip): the
                # key each person has, made now where there was none (or a racing writer's).
                for start in range(0, len(fresh), CHUNK):
                    for person, kid, key in conn.execute(claim, fresh[start : start + CHUNK]):
                        found[str(person)] = (kid, bytes(key))
            with self._lock:
                if len(self._cache) > self.cache_size:
                    self._cache.clear()
                for s in missing:
                    self._cache[s] = (*found[s], now)
        return found

    # -- opening (reading) ------------------------------------------------------------------

    def open(self, conn: Connection, items: Sequence[tuple[UUID, Any]]) -> list[Any]:
        """Each (event id, data) with its sealed markers opened (or marked erased)."""
        subjects = {
            str(m["subject"]) for _, data in items for m in iter_personal(data) if "ct" in m
        }
        if not subjects:
            return [data for _, data in items]
        keys = self._lookup(conn, subjects)
        out = []
        for event_id, data in items:

            def decrypt(body: dict[str, Any], event_id: UUID = event_id) -> dict[str, Any]:
                if "ct" not in body:
                    return body
                subject = str(body["subject"])
                key = keys.get(subject)
                if key is None or key[0] != body.get("kid"):
                    return {"subject": subject, "erased": True}
                raw = base64.b64decode(body["ct"])
                try:
                    plain = AESGCM(key[1]).decrypt(raw[:12], raw[12:], _aad(subject, event_id))
                except InvalidTag:
                    log.error("personal data fails authentication", event_id=str(event_id))
                    return {"subject": subject, "erased": True}
                return {"subject": subject, "value": orjson.loads(plain)}

            out.append(_rewrite(data, decrypt))
        return out

    def _lookup(self, conn: Connection, subjects: Iterable[str]) -> dict[str, tuple[str, bytes]]:
        ids = sorted(UUID(s) for s in subjects)
        found: dict[str, tuple[str, bytes]] = {}
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            rows = conn.execute(_KEYS_OF, {"ids": chunk})
            for person, kid, key in rows:
                found[str(person)] = (kid, bytes(key))
        return found

    # -- erasure ----------------------------------------------------------------------------

    def forget(self, person_id: UUID, conn: Connection | None = None) -> bool:
        """Delete the person's key (True if there was one). Their data can never be read again."""
        with self._lock:
            self._cache.pop(str(person_id), None)
        if conn is not None:
            deleted = conn.execute(
                delete(person_keys).where(person_keys.c.person_id == person_id)
            ).rowcount
            if deleted:
                conn.execute(_BUMP_EPOCH)
            return bool(deleted)
        with self.db.write() as c:
            return self.forget(person_id, c)

    @staticmethod
    def epoch(conn: Connection) -> int:
        """How many keys were ever deleted: moves with every erasure (see infra/lanes.py)."""
        return int(conn.execute(_EPOCH).scalar() or 0)

    def known(self, person_id: UUID) -> bool:
        """True while the person's key exists (their data can be read)."""
        with self.db.read() as conn:
            return bool(self._lookup(conn, [str(person_id)]))

    def alive(self, conn: Connection, people: Iterable[UUID]) -> frozenset[UUID]:
        """Of ``people``, those whose key exists (read on ``conn``, never from a cache)."""
        return frozenset(UUID(s) for s in self._lookup(conn, {str(p) for p in people}))
