"""The live event stream over a real HTTP server, read with a real SSE client (httpx-sse).

Each test serves the app with uvicorn on a free loopback port, in a thread (the shutdown test
runs it as a process and sends it SIGTERM). Writes go through the HTTP API too, so events are
numbered exactly as in production — on PostgreSQL by the sequencer, after commit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import httpx
import pytest
import uvicorn
from httpx_sse import EventSource, ServerSentEvent, connect_sse
from structlog.testing import capture_logs

from api.main import create_app
from infra.bootstrap import System
from infra.integration.live import LocalLimiter, RedisLimiter
from tests import backends
from tests.e2e.conftest import Keys
from tests.processes import free_port

PROBLEM = "application/problem+json"
REGISTERED = "org.concord.organisation.registered.v1"
_REDIS = backends.redis()


@contextlib.contextmanager
def serving(system: System, **settings: Any) -> Iterator[str]:
    """The app on a real uvicorn server in a thread; ``settings`` override the system's."""
    tuned = dataclasses.replace(
        system,
        settings=system.settings.model_copy(
            update={"sse_max_seconds": 30.0, "sse_poll_s": 0.05, **settings}
        ),
    )
    config = uvicorn.Config(
        create_app(tuned),
        host="127.0.0.1",
        port=0,
        log_config=None,
        ws="none",
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        assert not thread.is_alive(), "the server did not stop"


def http(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=httpx.Timeout(10.0))


def register(client: httpx.Client, headers: dict[str, str], name: str | None = None) -> str:
    response = client.post(
        "/v1/organisations",
        json={"name": name or f"Org {uuid4().hex[:8]}", "kind": "ngo", "country": "ID"},
        headers=headers,
    )
    assert response.status_code == 201, response.text
    organisation_id: str = response.json()["id"]
    return organisation_id


def take(events: Iterator[ServerSentEvent], count: int, within: float = 10.0) -> list[Any]:
    """The next ``count`` events (comments are not events), failing after ``within`` seconds."""
    got: list[ServerSentEvent] = []
    deadline = time.monotonic() + within
    for event in events:
        got.append(event)
        if len(got) == count:
            return got
        assert time.monotonic() < deadline, f"only {len(got)} of {count} events in {within}s"
    raise AssertionError(f"the stream ended after {len(got)} of {count} events")


def stream(
    client: httpx.Client, headers: dict[str, str], **params: Any
) -> contextlib.AbstractContextManager[EventSource]:
    return connect_sse(client, "GET", "/v1/events/stream", headers=headers, params=params)


# -- reading, live and resumed ------------------------------------------------------------------


def test_history_then_live_events_as_the_feed_shows_them(system: System, keys: Keys) -> None:
    admin, integrator = keys.admin, keys.integrator
    with serving(system) as url, http(url) as client:
        for name in ("Hà Nội Women's Union", "KSBSI", "Migrant CARE"):
            register(client, admin, name)
        feed = client.get("/v1/events", headers=integrator).json()["data"]
        with stream(client, integrator) as source:
            assert source.response.status_code == 200
            assert source.response.headers["content-type"].startswith("text/event-stream")
            events = source.iter_sse()
            history = take(events, 3)
            assert [e.id for e in history] == ["1", "2", "3"]
            assert {e.event for e in history} == {REGISTERED}
            assert [json.loads(e.data) for e in history] == feed
            assert json.loads(history[0].data)["data"]["name"] == "Hà Nội Women's Union"
            # Written while the client is connected: it arrives within seconds.
            written = time.monotonic()
            new_id = register(client, admin)
            (live,) = take(events, 1, within=5)
            assert time.monotonic() - written < 5
            assert live.id == "4" and json.loads(live.data)["stream_id"] == new_id


def test_open_streams_share_one_read_of_the_head(
    system: System, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight idle streams of one process read the log's head no more often than one stream
    would (once per half poll at most), and a new event still reaches each of them."""
    reads: list[float] = []
    real = system.store.head_position

    def counted() -> int:
        reads.append(time.monotonic())
        return real()

    monkeypatch.setattr(system.store, "head_position", counted)
    poll, integrator = 0.05, keys.integrator
    with (
        serving(system, sse_poll_s=poll, sse_max_per_key=10) as url,
        http(url) as client,
        contextlib.ExitStack() as stack,
    ):
        sources = [open_stream(stack, client, integrator) for _ in range(8)]
        time.sleep(0.5)  # every stream open and waiting
        before, started = len(reads), time.monotonic()
        time.sleep(2.0)
        idle, elapsed = len(reads) - before, time.monotonic() - started
        # Each stream reading for itself would be 8 x 2 s / 0.05 s = 320 reads.
        assert 1 <= idle <= elapsed / (poll / 2) + 2, idle
        new_id = register(client, keys.admin)
        for source in sources:
            (event,) = take(source.iter_sse(), 1, within=5)
            assert json.loads(event.data)["stream_id"] == new_id


def test_resuming_with_last_event_id_while_writes_continue_misses_and_repeats_nothing(
    system: System, keys: Keys
) -> None:
    admin, integrator = keys.admin, keys.integrator
    writers, each = 2, 12
    with serving(system) as url:

        def write() -> None:
            with http(url) as own:
                for _ in range(each):
                    register(own, admin)
                    time.sleep(0.01)

        threads = [threading.Thread(target=write) for _ in range(writers)]
        for thread in threads:
            thread.start()
        seen: list[int] = []
        reconnects = 0
        with http(url) as client:
            while len(seen) < writers * each:
                headers = dict(integrator)
                if seen:
                    headers["Last-Event-ID"] = str(seen[-1])
                with stream(client, headers) as source:
                    # Read a few events, then drop the connection mid-stream.
                    for event in take(source.iter_sse(), min(5, writers * each - len(seen))):
                        seen.append(int(event.id))
                reconnects += 1
        for thread in threads:
            thread.join()
        assert seen == list(range(1, writers * each + 1)), "no gap, no duplicate, in order"
        assert reconnects >= 4
        with http(url) as client, stream(client, integrator, after=20) as source:
            assert [e.id for e in take(source.iter_sse(), 4)] == ["21", "22", "23", "24"]
        with (
            http(url) as client,
            stream(client, {**integrator, "Last-Event-ID": "22"}, after=3) as source,
        ):
            assert take(source.iter_sse(), 1)[0].id == "23", "Last-Event-ID wins over ?after="


def test_keep_alive_comments_arrive_while_nothing_happens(system: System, keys: Keys) -> None:
    with (
        serving(system, sse_heartbeat_s=0.2) as url,
        http(url) as client,
        client.stream(
            "GET",
            "/v1/events/stream",
            params={"types": "org.concord.statement.endorsed.v1"},
            headers=keys.integrator,
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-cache"
        beats, started = 0, time.monotonic()
        for line in response.iter_lines():
            if line == ": keep-alive":
                beats += 1
                if beats == 3:
                    break
            assert time.monotonic() - started < 3, "no keep-alive in time"
        assert time.monotonic() - started < 3


def test_filters_by_type_stream_type_and_stream(system: System, keys: Keys) -> None:
    admin = keys.admin
    # Streams end after a second here, so each read below collects everything it will get.
    with serving(system, sse_max_seconds=1.0) as url, http(url) as client:
        org_a = register(client, admin, "A")
        register(client, admin, "B")
        revised = client.patch(f"/v1/organisations/{org_a}", json={"acronym": "AA"}, headers=admin)
        assert revised.status_code == 200, revised.text
        series = client.post(
            "/v1/series", json={"title": "S", "planned_countries": ["ID"]}, headers=admin
        )
        assert series.status_code == 201, series.text

        def read(**params: Any) -> list[tuple[str, str]]:
            with stream(client, admin, **params) as source:
                return [(e.event, json.loads(e.data)["stream_id"]) for e in source.iter_sse()]

        revised_type = "org.concord.organisation.revised.v1"
        assert read(stream_id=org_a) == [(REGISTERED, org_a), (revised_type, org_a)]
        assert read(types=revised_type) == [(revised_type, org_a)]
        assert read(types="organisation.revised,series.launched") == [
            (revised_type, org_a),
            ("org.concord.series.launched.v1", series.json()["id"]),
        ]
        assert [event for event, _ in read(stream_type="series")] == [
            "org.concord.series.launched.v1"
        ]
        assert len(read()) == 4, "a stream ends cleanly after its maximum time"


# -- who may, and how many ---------------------------------------------------------------------


def test_only_event_readers_may_stream(system: System, keys: Keys) -> None:
    with serving(system, sse_max_seconds=0.5) as url, http(url) as client:
        organisation = keys.make("organisation", uuid4())
        for headers, status in (({}, 401), (organisation, 403), (keys.organiser, 200)):
            response = client.get("/v1/events/stream", headers=headers)
            assert response.status_code == status, response.text
            if status != 200:
                assert response.headers["content-type"] == PROBLEM
        for headers, params in (
            ({**keys.admin, "Last-Event-ID": "x"}, {}),
            (keys.admin, {"types": "a," * 60}),
            (keys.admin, {"stream_id": "not-a-uuid"}),
        ):
            bad = client.get("/v1/events/stream", headers=headers, params=params)
            assert bad.status_code == 422, bad.text
            assert bad.headers["content-type"] == PROBLEM


def assert_too_many(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == PROBLEM
    assert int(response.headers["retry-after"]) >= 1
    assert response.json()["status"] == 429


def open_stream(stack: contextlib.ExitStack, client: httpx.Client, headers: dict) -> EventSource:
    source = stack.enter_context(stream(client, headers))
    assert source.response.status_code == 200, source.response.read()
    return source


def wait_for_a_slot(client: httpx.Client, key: dict[str, str]) -> None:
    deadline = time.monotonic() + 5
    while True:
        with stream(client, key) as again:
            if again.response.status_code == 200:
                return
            again.response.read()  # a refusal is a short problem body, read in full
            assert_too_many(again.response)
        assert time.monotonic() < deadline, "the slot was not released"
        time.sleep(0.1)


def test_a_key_may_hold_only_so_many_streams(system: System, keys: Keys) -> None:
    key, other = keys.integrator, keys.integrator
    with (
        serving(system, sse_max_per_key=2) as url,
        http(url) as client,
        contextlib.ExitStack() as stack,
    ):
        first = open_stream(stack, client, key)
        open_stream(stack, client, key)
        with capture_logs() as logs:
            assert_too_many(client.get("/v1/events/stream", headers=key))
        # The audit names the cap, not a budget (the key's read budget is far from used up).
        (refused,) = [e for e in logs if e["event"] == "request refused"]
        assert refused["status"] == 429
        assert refused["reason"] == "limit of the route (e.g. open streams)"
        open_stream(stack, client, other)  # the cap is per key
        first.response.close()  # hang up one stream: its slot comes back
        wait_for_a_slot(client, key)


def test_a_revoked_key_loses_its_stream_at_the_next_heartbeat(system: System, keys: Keys) -> None:
    key = keys.integrator
    key_id = next(k.id for k in system.keys.list() if k.name == "test integrator")
    with serving(system, sse_heartbeat_s=0.2) as url, http(url) as client:
        with stream(client, key) as source:
            started = time.monotonic()
            system.keys.revoke(key_id)
            assert list(source.iter_sse()) == []  # the stream ends, no error
            assert time.monotonic() - started < 3
        assert client.get("/v1/events/stream", headers=key).status_code == 401


@pytest.mark.redis
@pytest.mark.skipif(not _REDIS.ok, reason=_REDIS.reason)
def test_the_cap_holds_across_api_processes_with_redis(system: System, keys: Keys) -> None:
    """Two API servers, each its own limiter, share one count per key through Redis."""
    key = keys.integrator
    shared = {"redis_url": os.environ["REDIS_URL"], "sse_max_per_key": 2}
    with (
        serving(system, **shared) as one,
        serving(system, **shared) as two,
        http(one) as a,
        http(two) as b,
        contextlib.ExitStack() as stack,
    ):
        first = open_stream(stack, a, key)
        open_stream(stack, b, key)
        assert_too_many(a.get("/v1/events/stream", headers=key))
        assert_too_many(b.get("/v1/events/stream", headers=key))
        first.response.close()  # on server one: server two sees the slot come back
        wait_for_a_slot(b, key)


@pytest.mark.redis
@pytest.mark.skipif(not _REDIS.ok, reason=_REDIS.reason)
def test_a_crashed_process_slots_expire_and_renewed_ones_do_not() -> None:
    import anyio

    owner = f"test-{uuid4().hex}"
    limiter = RedisLimiter(os.environ["REDIS_URL"], limit=1, ttl_s=1.0)

    async def scenario() -> None:
        crashed = await limiter.acquire(owner)  # never renewed nor released
        assert crashed is not None
        assert await limiter.acquire(owner) is None
        await anyio.sleep(1.3)
        alive = await limiter.acquire(owner)
        assert alive is not None, "an expired slot is free again"
        for _ in range(3):
            await anyio.sleep(0.5)
            await alive.renew()
        assert await limiter.acquire(owner) is None, "a renewed slot is kept"
        await alive.release()
        assert limiter.held(owner) == 0
        released = await limiter.acquire(owner)
        assert released is not None
        await released.release()

    try:
        anyio.run(scenario)
    finally:
        limiter.close()


def test_the_in_process_cap_counts_and_releases() -> None:
    import anyio

    limiter = LocalLimiter(limit=2)

    async def scenario() -> None:
        one, two = await limiter.acquire("k"), await limiter.acquire("k")
        assert one is not None and two is not None
        assert await limiter.acquire("k") is None
        assert await limiter.acquire("other") is not None
        await one.release()
        assert limiter.held("k") == 1
        assert await limiter.acquire("k") is not None

    anyio.run(scenario)


# -- shutdown -------------------------------------------------------------------------------------


def test_sigterm_ends_open_streams_cleanly_and_the_server_stops(system: System, keys: Keys) -> None:
    """uvicorn waits for open responses before stopping; a stream must end on its own."""
    key = keys.integrator
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k != "REDIS_URL"},
        "DATABASE_URL": system.settings.database_url,
        "CONCORD_DATA_DIR": str(system.settings.data_dir),
        "CONCORD_SSE_MAX_SECONDS": "120",
        "CONCORD_SSE_HEARTBEAT": "0.5",
        "CONCORD_LOG_FORMAT": "console",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "api.main:create_app", "--factory", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        with http(url) as client:
            deadline = time.monotonic() + 20
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if client.get("/health").status_code == 200:
                        break
                assert process.poll() is None and time.monotonic() < deadline, "no server"
                time.sleep(0.1)
            register(client, keys.admin)
            with stream(client, key) as source:
                events = source.iter_sse()
                assert next(events).event == REGISTERED
                stopping = time.monotonic()
                process.send_signal(signal.SIGTERM)
                assert list(events) == [], "the stream ends cleanly (no error, nothing more)"
                assert time.monotonic() - stopping < 5
        process.wait(timeout=15)
        assert process.returncode in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout:
            process.stdout.close()
