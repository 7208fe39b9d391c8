"""Rate limits shared through Redis: one budget for every API process, one round trip per hit,
and no refused request when Redis is gone (each process limits on its own until it is back).

Real servers only: two ``concord serve`` processes on loopback, the shared Redis of the test run
(keys namespaced by this run's queue name) and a private ``redis-server`` that is stopped and
started again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest
import redis
import redis.asyncio
from fastapi.testclient import TestClient
from limits.strategies import SlidingWindowCounterRateLimiter
from structlog.testing import capture_logs

from api.main import create_app
from infra import ratelimit
from infra.bootstrap import System
from infra.metrics import RATE_LIMIT_FALLBACKS
from infra.ratelimit import Decision, RedisLimiter, lease_size, parse_rate
from tests import backends
from tests.e2e.conftest import Keys
from tests.integration.test_reminders_faults import REDIS_SERVER, PrivateRedis
from tests.processes import free_port, spawn

_REDIS = backends.redis()
pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(not _REDIS.ok, reason=_REDIS.reason),
    pytest.mark.usefixtures("whole_minute_ahead"),
]


@pytest.fixture
def keys(system: System) -> Keys:
    return Keys(system)


@pytest.fixture
def limiter() -> Iterator[RedisLimiter]:
    shared = RedisLimiter(os.environ["REDIS_URL"], prefix=f"concord:test:{uuid4().hex}")
    yield shared
    shared.close()


def test_a_hit_is_one_round_trip_and_agrees_with_limits_own_accounting(
    limiter: RedisLimiter, monkeypatch: pytest.MonkeyPatch
) -> None:
    rate = parse_rate("5/minute")
    assert rate is not None
    trips: list[str] = []
    pipeline_execute = redis.client.Pipeline.execute
    command = redis.Redis.execute_command

    def counted_pipeline(self: Any, *args: Any, **kwargs: Any) -> Any:
        trips.append("pipeline")
        return pipeline_execute(self, *args, **kwargs)

    def counted_command(self: Any, *args: Any, **kwargs: Any) -> Any:
        trips.append(str(args[0]))
        return command(self, *args, **kwargs)

    limiter.hit("warm-up", rate)  # a process's first hit loads the script into Redis, once
    monkeypatch.setattr(redis.client.Pipeline, "execute", counted_pipeline)
    monkeypatch.setattr(redis.Redis, "execute_command", counted_command)
    decisions = [limiter.hit("bucket", rate) for _ in range(7)]
    monkeypatch.undo()
    # five allowed, one refused from Redis, and the seventh refused from memory (no trip)
    assert trips == ["EVALSHA"] * 6, trips
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 2
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0, 0, 0]
    assert all(d.shared for d in decisions)
    assert 1 <= decisions[5].retry_after_s <= 60
    # limits' own two-trip API reads the same keys and agrees
    stats = SlidingWindowCounterRateLimiter(limiter.storage).get_window_stats(rate, "bucket")
    assert stats.remaining == 0
    other = limiter.hit("another bucket", rate)
    assert other.remaining == 4
    assert SlidingWindowCounterRateLimiter(limiter.storage).test(rate, "another bucket")


def _counted(limiter: RedisLimiter, rate: Any, bucket: str) -> int:
    """The hits Redis counts for ``bucket`` (limits' own reading of the window)."""
    stats = SlidingWindowCounterRateLimiter(limiter.storage).get_window_stats(rate, bucket)
    return int(rate.amount - stats.remaining)


def test_a_large_budget_is_taken_from_redis_a_slice_at_a_time(
    limiter: RedisLimiter, monkeypatch: pytest.MonkeyPatch
) -> None:
    rate = parse_rate("10000/minute")
    assert rate is not None and lease_size(rate, 1) == 50
    limiter.hit("warm-up", rate)
    trips: list[str] = []
    command = redis.Redis.execute_command

    def counted_command(self: Any, *args: Any, **kwargs: Any) -> Any:
        trips.append(str(args[0]))
        return command(self, *args, **kwargs)

    monkeypatch.setattr(redis.Redis, "execute_command", counted_command)
    decisions = [limiter.hit("bucket", rate) for _ in range(120)]
    monkeypatch.undo()
    assert trips == ["EVALSHA"] * 3, "one round trip per slice of 50"
    assert _counted(limiter, rate, "bucket") == 150, "a slice counts as spent once taken"
    assert all(d.allowed and d.shared for d in decisions)
    assert [d.remaining for d in decisions[:51:50]] == [9950, 9900], "remaining counts it"
    assert _counted(limiter, rate, "warm-up") == 50


def test_the_last_hits_of_a_leased_budget_are_exact_across_processes(
    limiter: RedisLimiter,
) -> None:
    """Two processes leasing from one budget of 1,000 (slices of 5) share it to the hit:
    slices that no longer fit are not taken, and every slice taken is handed out."""
    rate = parse_rate("1000/minute")
    assert rate is not None and lease_size(rate, 1) == 5
    other = RedisLimiter(os.environ["REDIS_URL"], prefix=limiter.storage.key_prefix)
    try:
        allowed = refused = 0
        while refused < 4:
            for process in (limiter, other, other):
                if process.hit("shared", rate).allowed:
                    allowed += 1
                else:
                    refused += 1
        assert allowed == 1000
    finally:
        other.close()


def test_small_budgets_are_never_leased_and_a_lease_lapses(
    limiter: RedisLimiter, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = parse_rate("999/minute")
    assert small is not None and lease_size(small, 1) == 1
    for _ in range(3):
        limiter.hit("small", small)
    assert _counted(limiter, small, "small") == 3
    large = parse_rate("1000/minute")
    assert large is not None
    monkeypatch.setattr(ratelimit, "LEASE_S", 0.05)
    limiter.hit("large", large)
    limiter.hit("large", large)
    assert _counted(limiter, large, "large") == 5
    time.sleep(0.1)
    limiter.hit("large", large)
    assert _counted(limiter, large, "large") == 10, "what was left of the old slice lapsed"


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
def test_scripts_are_loaded_again_after_redis_forgets_them(tmp_path: Path) -> None:
    # SCRIPT FLUSH empties the script cache of the whole server: a private one, so that other
    # runs sharing the run's Redis (counting their round trips) never see it.
    rate = parse_rate("3/minute")
    assert rate is not None
    server = PrivateRedis(tmp_path)
    server.start()
    limiter = RedisLimiter(server.url, prefix="concord:test")
    try:
        assert limiter.hit("b", rate).remaining == 2
        limiter.client.script_flush()
        assert limiter.hit("b", rate).remaining == 1
    finally:
        limiter.close()
        server.stop()


def test_a_hit_on_the_event_loop_draws_from_the_same_budget_in_one_round_trip(
    limiter: RedisLimiter, monkeypatch: pytest.MonkeyPatch
) -> None:
    rate = parse_rate("4/minute")
    assert rate is not None
    trips: list[str] = []
    command = redis.asyncio.Redis.execute_command

    async def counted_command(self: Any, *args: Any, **kwargs: Any) -> Any:
        trips.append(str(args[0]))
        return await command(self, *args, **kwargs)

    async def hits() -> list[Decision]:
        await limiter.hit_async("warm-up", rate)  # the script is loaded (once) if need be
        monkeypatch.setattr(redis.asyncio.Redis, "execute_command", counted_command)
        on_loop = [await limiter.hit_async("bucket", rate) for _ in range(2)]
        monkeypatch.undo()
        limiter.client.script_flush()  # forgotten scripts are loaded again, as by hit()
        on_loop.append(await limiter.hit_async("bucket", rate))
        await limiter.aclose()
        return on_loop

    decisions = [*asyncio.run(hits()), limiter.hit("bucket", rate), limiter.hit("bucket", rate)]
    assert trips == ["EVALSHA"] * 2, trips
    assert [d.remaining for d in decisions] == [3, 2, 1, 0, 0]
    assert [d.allowed for d in decisions] == [True] * 4 + [False]
    assert all(d.shared for d in decisions)
    # another loop (a second TestClient, say) gets a client of its own
    assert [d.remaining for d in asyncio.run(_hits(limiter, rate, 1, "another"))] == [3]


def test_a_hit_on_the_event_loop_falls_back_to_this_process_when_redis_is_gone() -> None:
    rate = parse_rate("2/minute")
    assert rate is not None
    gone = RedisLimiter(f"redis://127.0.0.1:{free_port()}/0", prefix=f"concord:test:{uuid4().hex}")
    try:
        before = fallbacks()
        decisions = asyncio.run(_hits(gone, rate, 3))
    finally:
        gone.close()
    assert [d.allowed for d in decisions] == [True, True, False]
    assert not any(d.shared for d in decisions)
    assert fallbacks() - before == 3


async def _hits(limiter: RedisLimiter, rate: Any, n: int, bucket: str = "bucket") -> list[Decision]:
    try:
        return [await limiter.hit_async(bucket, rate) for _ in range(n)]
    finally:
        await limiter.aclose()


@contextmanager
def api_process(system: System, tmp_path: Path, env: dict[str, str]) -> Iterator[str]:
    """``concord serve`` in a process of its own; its base URL once it answers."""
    port = free_port()
    full = {
        **os.environ,
        "DATABASE_URL": system.settings.database_url,
        "CONCORD_DATA_DIR": str(system.settings.data_dir),
        "CONCORD_LOG_FORMAT": "console",
        "PORT": str(port),
        **env,
    }
    process = spawn(["serve"], full, tmp_path / f"api-{port}.log")
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, (tmp_path / f"api-{port}.log").read_text()
            assert time.monotonic() < deadline, "the API did not start"
            time.sleep(0.1)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def test_two_api_processes_draw_from_one_budget(system: System, keys: Keys, tmp_path: Path) -> None:
    key = keys.integrator
    budgets = {
        "REDIS_URL": os.environ["REDIS_URL"],
        "CONCORD_QUEUE": f"ratelimit-{uuid4().hex[:8]}",  # a budget namespace of this test's own
        "CONCORD_RATE_LIMIT_READ": "4/minute",
        "CONCORD_RATE_LIMIT_ANONYMOUS": "3/minute",
    }
    with (
        api_process(system, tmp_path, budgets) as one,
        api_process(system, tmp_path, budgets) as two,
        httpx.Client(timeout=10) as http,
    ):
        remaining = []
        for url in (one, two, one, two):
            response = http.get(f"{url}/v1/events", headers=key)
            assert response.status_code == 200, response.text
            remaining.append(response.headers["ratelimit"])
        assert [int(r.split(";r=")[1].split(";")[0]) for r in remaining] == [3, 2, 1, 0]
        for url in (one, two):
            refused = http.get(f"{url}/v1/events", headers=key)
            assert refused.status_code == 429, refused.text
            assert int(refused.headers["retry-after"]) >= 1
        # the address's anonymous budget is shared the same way, bad keys included
        bad = {"Authorization": "Bearer concord_00000000_" + "x" * 43}
        assert http.get(f"{one}/v1/consultations").status_code == 200
        assert http.get(f"{two}/v1/consultations", headers=bad).status_code == 401
        assert http.get(f"{one}/v1/consultations").status_code == 200
        assert http.get(f"{two}/v1/consultations").status_code == 429
        assert http.get(f"{one}/v1/consultations", headers=bad).status_code == 429


@contextmanager
def app_on(system: System, **settings: Any) -> Iterator[TestClient]:
    tuned = dataclasses.replace(system, settings=system.settings.model_copy(update=settings))
    with TestClient(create_app(tuned), raise_server_exceptions=False) as client:
        yield client


def fallbacks() -> float:
    return sum(
        s.value
        for m in RATE_LIMIT_FALLBACKS.collect()
        for s in m.samples
        if s.name.endswith("_total")
    )


def test_an_unreachable_redis_fails_open_to_limits_in_this_process(
    system: System, keys: Keys
) -> None:
    key = keys.organiser
    before = fallbacks()
    nobody = f"redis://127.0.0.1:{free_port()}/0"
    with (
        capture_logs() as logs,
        app_on(system, redis_url=nobody, rate_limit_write="3/minute") as client,
    ):
        started = time.monotonic()
        statuses = [
            client.post(
                "/v1/organisations",
                json={"name": f"Org {n}", "kind": "ngo", "country": "PH"},
                headers=key,
            ).status_code
            for n in range(4)
        ]
        assert time.monotonic() - started < 5, "a dead Redis must not hold requests up"
    assert statuses == [201, 201, 201, 429], "accepted, and still limited in this process"
    assert fallbacks() - before == 4
    warnings = [e for e in logs if "Redis unreachable" in e["event"]]
    assert len(warnings) == 1, "one warning per outage, not one per request"


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
def test_commands_are_accepted_while_redis_is_down_and_budgets_are_shared_again_after(
    system: System, keys: Keys, tmp_path: Path
) -> None:
    key = keys.organiser
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        # Under the lease threshold: every hit meets Redis (or its absence) itself.
        with app_on(system, redis_url=server.url, rate_limit_write="999/minute") as client:

            def command(n: int) -> int:
                return client.post(
                    "/v1/organisations",
                    json={"name": f"Outage {n}", "kind": "ngo", "country": "VN"},
                    headers=key,
                ).status_code

            assert command(0) == 201
            stored = redis.Redis.from_url(server.url)
            assert stored.keys("concord:ratelimit:*"), "the budget lives in Redis"
            server.stop()
            before = fallbacks()
            down_until = time.monotonic() + 3
            accepted = []
            while time.monotonic() < down_until:
                accepted.append(command(len(accepted) + 1))
                time.sleep(0.1)
            assert set(accepted) == {201}, accepted
            assert fallbacks() - before == len(accepted)
            server.start()  # a fresh, empty Redis on the same port
            time.sleep(1.2)  # the limiter tries Redis again after a second
            assert command(999) == 201
            stored = redis.Redis.from_url(server.url)
            assert stored.keys("concord:ratelimit:*"), "back to the shared budget"
            assert fallbacks() - before == len(accepted)
    finally:
        server.stop()
