"""Rate limits as a client meets them: budgets per key for reads and for writes, per address for
everyone else (bad keys included), 429 problems with Retry-After and the RateLimit headers.

Each test serves the app with tiny budgets of its own (the suite's are out of reach); without
REDIS_URL the limiter counts in process, as in embedded mode. Redis-backed budgets shared by
several API processes are in tests/integration/test_rate_limits_redis.py.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event
from structlog.testing import capture_logs

from api.main import create_app
from infra.bootstrap import System
from infra.keys import checksum
from infra.metrics import RATE_LIMITED
from tests.conftest import clear_of_window_edge
from tests.e2e.conftest import Keys

PROBLEM = "application/problem+json"
POLICY = re.compile(r'^"(?P<name>[a-z]+)";q=(?P<q>\d+);w=(?P<w>\d+)$')
STATE = re.compile(r'^"(?P<name>[a-z]+)";r=(?P<r>\d+);t=(?P<t>\d+)$')

pytestmark = pytest.mark.usefixtures("whole_minute_ahead")


@contextmanager
def limited(system: System, **budgets: Any) -> Iterator[TestClient]:
    """The app with these settings (``rate_limit_read="3/minute"`` …) over ``system``."""
    tuned = dataclasses.replace(system, settings=system.settings.model_copy(update=budgets))
    with TestClient(create_app(tuned), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def tight(system: System) -> Iterator[TestClient]:
    with limited(
        system,
        rate_limit_read="3/minute",
        rate_limit_write="2/minute",
        rate_limit_anonymous="2/minute",
    ) as client:
        yield client


def policy(response: Any) -> dict[str, Any]:
    """The RateLimit-Policy and RateLimit fields of a response, parsed."""
    quota = POLICY.match(response.headers["ratelimit-policy"])
    state = STATE.match(response.headers["ratelimit"])
    assert quota and state, response.headers
    assert quota["name"] == state["name"]
    return {
        "name": quota["name"],
        "quota": int(quota["q"]),
        "window": int(quota["w"]),
        "remaining": int(state["r"]),
        "reset": int(state["t"]),
    }


def assert_too_many(response: Any, name: str, window: int) -> int:
    """A 429 problem for policy ``name``; the Retry-After it gives."""
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["type"].endswith("/rate-limited")
    assert body["status"] == 429 and body["policy"] == name
    retry_after = int(response.headers["retry-after"])
    assert 1 <= retry_after <= window
    assert body["retry_after"] == retry_after
    state = policy(response)
    assert (state["name"], state["window"], state["remaining"]) == (name, window, 0)
    return retry_after


def org(n: int) -> dict[str, str]:
    return {"name": f"Organisation {n} {time.time_ns()}", "kind": "ngo", "country": "ID"}


def test_a_keys_reads_have_a_budget_and_the_headers_count_it_down(
    tight: TestClient, keys: Keys
) -> None:
    key = keys.organiser
    seen = []
    for _ in range(3):
        response = tight.get("/v1/organisations", headers=key)
        assert response.status_code == 200, response.text
        seen.append(policy(response))
    assert [(p["name"], p["quota"], p["window"]) for p in seen] == [("read", 3, 60)] * 3
    assert [p["remaining"] for p in seen] == [2, 1, 0]
    assert all(0 <= p["reset"] <= 60 for p in seen)
    assert_too_many(tight.get("/v1/organisations", headers=key), "read", 60)
    # another key has a budget of its own
    assert tight.get("/v1/organisations", headers=keys.organiser).status_code == 200


def test_writes_have_their_own_budget(tight: TestClient, keys: Keys) -> None:
    key = keys.organiser
    for _ in range(3):
        assert tight.get("/v1/organisations", headers=key).status_code == 200
    assert tight.get("/v1/organisations", headers=key).status_code == 429
    for n in range(2):  # reads are used up; commands are not
        created = tight.post("/v1/organisations", json=org(n), headers=key)
        assert created.status_code == 201, created.text
        assert policy(created)["name"] == "write"
    refused = tight.post("/v1/organisations", json=org(3), headers=key)
    assert_too_many(refused, "write", 60)
    listed = tight.get("/v1/organisations", headers=keys.admin).json()
    assert len(listed["data"]) == 2, "a refused command did nothing"


def test_requests_without_a_valid_key_share_their_address_budget(
    tight: TestClient, keys: Keys
) -> None:
    assert policy(tight.get("/v1/consultations"))["name"] == "anonymous"
    bad = {"Authorization": "Bearer concord_00000000_" + "x" * 43}
    first = tight.get("/v1/consultations", headers=bad)
    assert first.status_code == 401, "a bad key is a 401 while the address has budget left"
    assert (policy(first)["name"], policy(first)["remaining"]) == ("anonymous", 0)
    # Now the address is out of budget: key guessing gets 429, not 401, and so does everyone
    # else without a key from this address …
    guess = {"Authorization": "Bearer concord_00000001_" + "y" * 43}
    assert_too_many(tight.get("/v1/consultations", headers=guess), "anonymous", 60)
    assert_too_many(tight.get("/v1/consultations"), "anonymous", 60)
    assert_too_many(tight.post("/v1/organisations", json=org(1), headers=bad), "anonymous", 60)
    # … but a valid key from the same address draws on its own budget.
    ok = tight.get("/v1/consultations", headers=keys.organiser)
    assert ok.status_code == 200 and policy(ok)["name"] == "read"


def test_a_revoked_key_counts_against_the_address(
    tight: TestClient, keys: Keys, system: System
) -> None:
    key, secret = system.keys.create("integrator", "soon revoked")
    system.keys.revoke(key.id)
    revoked = {"Authorization": f"Bearer {secret}"}
    assert tight.get("/v1/events", headers=revoked).status_code == 401
    assert tight.get("/v1/events", headers=revoked).status_code == 401
    assert_too_many(tight.get("/v1/events", headers=revoked), "anonymous", 60)


def test_a_mistyped_key_is_refused_without_a_database_lookup(
    tight: TestClient, keys: Keys, system: System
) -> None:
    secret = keys.integrator["Authorization"].removeprefix("Bearer ")
    body = secret[:-6]
    wrong_char = body[:-1] + ("A" if body[-1] != "A" else "B")
    # two neighbours that differ (a random secret may repeat a character)
    i = next(i for i in range(20, len(body) - 1) if body[i] != body[i + 1])
    mistyped = [
        wrong_char + secret[-6:],  # one character of the secret changed
        body[:i] + body[i + 1] + body[i] + body[i + 2 :] + secret[-6:],  # two swapped
        secret[:-1],  # cut short
    ]
    assert all(s != secret for s in mistyped)
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(system.db.engine, "before_cursor_execute", seen)
    try:
        for wrong in mistyped[:2]:
            response = tight.get("/v1/events", headers={"Authorization": f"Bearer {wrong}"})
            assert response.status_code == 401, response.text
            assert "well-formed" in response.json()["detail"]
    finally:
        event.remove(system.db.engine, "before_cursor_execute", seen)
    assert not [s for s in statements if "api_keys" in s], statements
    # and the real key does get looked up
    assert tight.get("/v1/events", headers=keys.integrator).status_code == 200


def test_keys_made_before_the_checksum_still_work(
    tight: TestClient, system: System, keys: Keys
) -> None:
    """A key in the old form (no checksum) stored by an earlier version is accepted."""
    import secrets as random
    from uuid import uuid4

    from infra.keys import digest
    from infra.schema import api_keys

    legacy = f"concord_0123abcd_{random.token_urlsafe(32)}"
    with system.db.write() as conn:
        conn.execute(
            api_keys.insert().values(
                id=uuid4(),
                name="from 2026",
                role="integrator",
                organisation_id=None,
                prefix="0123abcd",
                key_hash=digest(legacy),
                created_at=datetime.now(UTC),
            )
        )
    response = tight.get("/v1/events", headers={"Authorization": f"Bearer {legacy}"})
    assert response.status_code == 200, response.text


def test_new_keys_carry_a_checksum(keys: Keys, client: TestClient) -> None:
    created = client.post(
        "/v1/api-keys", json={"name": "scanner test", "role": "integrator"}, headers=keys.admin
    ).json()
    secret = created["key"]
    assert re.fullmatch(r"concord_[0-9a-f]{8}_[0-9A-Za-z]{49}", secret), secret
    assert secret.split("_")[1] == created["prefix"]
    assert checksum(secret[:-6]) == secret[-6:]


def test_probes_and_the_scraper_are_never_limited(tight: TestClient) -> None:
    for _ in range(3):
        tight.get("/v1/consultations")
    assert tight.get("/v1/consultations").status_code == 429
    for _ in range(10):
        for path in ("/health", "/ready"):
            response = tight.get(path)
            assert response.status_code == 200, (path, response.text)
            assert "ratelimit" not in response.headers
        assert tight.get("/metrics").status_code == 401  # its own rule, not the budget


def test_the_budget_comes_back_after_retry_after(system: System) -> None:
    # A window of a few seconds: three requests fit in it even on a loaded machine.
    with limited(system, rate_limit_anonymous="2 per 4 seconds") as client:
        clear_of_window_edge(4, 2)
        statuses = [client.get("/v1/consultations").status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        refused = client.get("/v1/consultations")
        wait = assert_too_many(refused, "anonymous", 4)
        time.sleep(wait + 0.05)
        again = client.get("/v1/consultations")
        assert again.status_code == 200, again.text


def test_limits_can_be_turned_off(system: System) -> None:
    with limited(system, rate_limit_enabled=False, rate_limit_anonymous="1/minute") as client:
        for _ in range(5):
            response = client.get("/v1/consultations")
            assert response.status_code == 200
            assert "ratelimit" not in response.headers
    with limited(system, rate_limit_anonymous="off", rate_limit_read="1/minute") as client:
        assert [client.get("/v1/consultations").status_code for _ in range(5)] == [200] * 5


def test_refusals_are_logged_and_counted(tight: TestClient, keys: Keys) -> None:
    key = keys.integrator
    prefix = key["Authorization"].split("_")[1]
    before = _counted("read")
    with capture_logs() as logs:
        for _ in range(4):
            tight.get("/v1/events", headers=key)
        tight.post("/v1/organisations", json=org(1), headers=key)  # 403: integrators may not
        tight.get("/v1/events")  # 401: no key
    refused = [e for e in logs if e["event"] == "request refused"]
    assert [(e["status"], e["api_key"], e["reason"]) for e in refused] == [
        (429, prefix, "rate limit (read)"),
        (403, prefix, "not allowed for this key"),
        (401, None, "no key"),
    ]
    assert all(e["client"] == "testclient" and e["log_level"] == "warning" for e in refused)
    assert refused[0]["path"] == "/v1/events" and refused[0]["method"] == "GET"
    assert _counted("read") == before + 1


def test_the_schema_documents_429_on_limited_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path, item in paths.items():
        for method, operation in item.items():
            documented = "429" in operation["responses"]
            assert documented == (path not in ("/health", "/ready", "/metrics")), (method, path)
            if documented:
                headers = operation["responses"]["429"]["headers"]
                assert {"Retry-After", "RateLimit", "RateLimit-Policy"} <= headers.keys()


def _counted(policy_name: str) -> float:
    return sum(
        sample.value
        for metric in RATE_LIMITED.collect()
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.labels.get("policy") == policy_name
    )
