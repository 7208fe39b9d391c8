"""API keys trusted for ``CONCORD_KEY_CACHE_S`` once looked up, on SQLite and PostgreSQL.

A key revoked in the same process stops working at once; one revoked through another process
(another ``ApiKeys`` on the same database) stops working once the cache time has passed.
"""

from __future__ import annotations

import time

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
