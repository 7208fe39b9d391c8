"""Stored first responses for ``Idempotency-Key`` (Stripe's semantics, IETF draft).

Same key and same request → the stored response, nothing done twice. Same key, different
request → refused. A duplicate arriving while the first is still running → refused as in
progress. Keys are scoped to the caller's credentials and kept for at least a day.

A request that failed on our side (5xx), or whose process died, keeps no answer: its retry runs
it again, and each of its commands finds the events the earlier attempt committed (their
metadata carries the key and the command's step, services/bus.py) instead of deciding again, and
new things get the same ids (api/commands.py ``new_id``). So a command happens once, and a
request cut halfway is finished by its retry.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from infra.db import Database
from infra.schema import idempotency_keys

RETENTION = timedelta(hours=24)


@dataclass(frozen=True)
class Stored:
    request_hash: str
    status_code: int | None
    headers: dict[str, str] | None
    body: bytes | None

    @property
    def complete(self) -> bool:
        return self.status_code is not None


class IdempotencyStore:
    """Claims are leased: one still "in progress" and not renewed for ``lease`` belongs to a
    process that died (a running request renews its claim), and a retry takes it over. Taking
    over a live one by mistake does no double harm either: the retry's commands find the events
    the first attempt appended under the same key (services/bus.py) instead of deciding again.
    """

    def __init__(self, db: Database, lease: timedelta = timedelta(seconds=15)) -> None:
        self.db = db
        self.lease = lease

    def claim(self, scope: str, key: str, request_hash: str) -> Stored | None:
        """Claim the key for this request; None if claimed now, else what is stored."""
        now = datetime.now(UTC)
        table = idempotency_keys
        with self.db.write() as conn:
            conn.execute(
                delete(table).where(
                    table.c.scope == scope,
                    table.c.key == key,
                    (table.c.created_at < now - RETENTION)
                    | (table.c.status_code.is_(None) & (table.c.created_at < now - self.lease)),
                )
            )
            row = conn.execute(
                select(table).where(table.c.scope == scope, table.c.key == key)
            ).first()
            if row is None:
                try:
                    with conn.begin_nested():
                        conn.execute(
                            table.insert().values(
                                scope=scope, key=key, request_hash=request_hash, created_at=now
                            )
                        )
                    return None
                except IntegrityError:
                    row = conn.execute(
                        select(table).where(table.c.scope == scope, table.c.key == key)
                    ).first()
        assert row is not None
        return Stored(row.request_hash, row.status_code, row.headers, row.body)

    def complete(
        self, scope: str, key: str, status: int, headers: dict[str, str], body: bytes
    ) -> None:
        table = idempotency_keys
        with self.db.write() as conn:
            conn.execute(
                table.update()
                .where(table.c.scope == scope, table.c.key == key)
                .values(
                    status_code=status, headers=headers, body=body, completed_at=datetime.now(UTC)
                )
            )

    def renew(self, scope: str, key: str) -> None:
        """Keep an unfinished claim from lapsing while its request still runs."""
        table = idempotency_keys
        with self.db.write() as conn:
            conn.execute(
                table.update()
                .where(table.c.scope == scope, table.c.key == key, table.c.status_code.is_(None))
                .values(created_at=datetime.now(UTC))
            )

    def release(self, scope: str, key: str) -> None:
        """Forget a claim whose request failed on our side, so the client may retry."""
        table = idempotency_keys
        with self.db.write() as conn:
            conn.execute(delete(table).where(table.c.scope == scope, table.c.key == key))

    def purge(self, now: datetime | None = None) -> int:
        """Delete keys older than the retention period."""
        cutoff = (now or datetime.now(UTC)) - RETENTION
        with self.db.write() as conn:
            result: Any = conn.execute(
                delete(idempotency_keys).where(idempotency_keys.c.created_at < cutoff)
            )
            return int(result.rowcount or 0)
