"""API keys trusted once looked up, checked for revocations every ``CONCORD_KEY_CACHE_S``,
on SQLite and PostgreSQL.

A key revoked in the same process stops working at once; one revoked through another process
(another ``ApiKeys`` on the same database) stops working once the cache time has passed. A key
nobody revoked is not looked up again, however rarely it comes back.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event

from infra.bootstrap import System
from infra.keys import ApiKeys


def test_a_revoked_key_stops_at_once_here_and_within_the_cache_time_elsewhere(
    system: System,
) -> None:
    here = ApiKeys(system.db, cache_s=3)
    elsewhere = ApiKeys(system.db, cache_s=3)
    key, secret = here.create("organiser", "cached")
    assert here.identify(secret).status == "active"
    assert elsewhere.identify(secret).status == "active"

    here.revoke(key.id)
    assert here.identify(secret).status == "revoked", "the revoking process stops at once"
    assert elsewhere.identify(secret).status == "active", "trusted until its cache time ends"
    time.sleep(3.2)
    assert elsewhere.identify(secret).status == "revoked"


def test_without_a_cache_time_every_request_looks_the_key_up(system: System) -> None:
    here = ApiKeys(system.db)
    elsewhere = ApiKeys(system.db)
    key, secret = here.create("organiser", "uncached")
    assert elsewhere.identify(secret).status == "active"
    here.revoke(key.id)
    assert elsewhere.identify(secret).status == "revoked"


@contextmanager
def lookups(system: System) -> Iterator[list[str]]:
    """The statements that look a key up by its hash, as they run."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "key_hash" in statement:
            seen.append(statement)

    event.listen(system.db.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(system.db.engine, "before_cursor_execute", record)


def test_a_key_is_looked_up_once_while_nothing_is_revoked(system: System) -> None:
    """A client that comes back less often than the cache time (an integrator polling every
    minute) is not looked up again each time: only the revocations are checked."""
    keys = ApiKeys(system.db, cache_s=0.5)
    _, secret = keys.create("integrator", "polling")
    with lookups(system) as seen:
        for _ in range(3):
            assert keys.identify(secret).status == "active"
            time.sleep(0.6)
        assert keys.identify(secret).status == "active"
    assert len(seen) == 1, seen


def test_a_revocation_elsewhere_makes_every_kept_key_looked_up_again(system: System) -> None:
    here = ApiKeys(system.db, cache_s=0.5)
    elsewhere = ApiKeys(system.db, cache_s=0.5)
    _, kept = here.create("organiser", "kept")
    other, _ = here.create("organiser", "revoked elsewhere")
    assert here.identify(kept).status == "active"
    elsewhere.revoke(other.id)
    with lookups(system) as seen:
        assert here.identify(kept).status == "active", "trusted until the next check"
        assert seen == []
        time.sleep(0.6)
        assert here.identify(kept).status == "active"
    assert len(seen) == 1, "the check saw a revocation: the kept key was looked up again"
    with lookups(system) as seen:
        assert here.identify(kept).status == "active"
    assert seen == []
