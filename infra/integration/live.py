"""Following the log live: the loop behind ``GET /v1/events/stream`` and its connection cap.

:func:`follow` yields every event after a position, in position order, then waits for more.
It only ever reads with ``read_all(after, …)``, which returns numbered events only: a position
is assigned once no older transaction can still commit before it, so a late commit is never
skipped (see ``infra/eventstore/store.py``). It knows nothing of HTTP, keys or rendering, so
another stream — say, anonymous live endorsements of one public statement — reuses it with its
own :class:`Filter`, its own rendering and its own limiter owner (a client address, say).

One read of the head for every stream: each open stream wakes every ``poll_s`` to see whether
the log has grown, but the head it compares with is the process's (:class:`SharedHead`), read
at most once per half ``poll_s`` whatever the number of streams, and only by a stream that
asks when the last read is older. A stream reads events only when that head has passed its
cursor. However many followers are idle (integrators, visitors of public statement pages), the
database answers two cheap queries a second for them, not two per follower.

Ending cleanly: a stream ends after ``max_seconds`` (clients resume with ``Last-Event-ID``), and
within one poll when the process is asked to stop (:data:`DRAINING`, set from SIGTERM/SIGINT by
:func:`drain_on_signals`) — uvicorn waits for open responses before it shuts down, so an endless
stream would otherwise hold the process up. A client that goes away cancels the loop.

Connection cap: :class:`RedisLimiter` counts one key's open streams across every API process
(a sorted set of slots, each with an expiry that heartbeats push forward, so a crashed process
frees its slots within the TTL); :class:`LocalLimiter` counts in this process when there is
no Redis.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any, Final, Protocol
from uuid import UUID

import anyio.to_thread
import redis

from infra.eventstore.store import SqlEventStore
from infra.settings import Settings
from services.ports import RecordedEvent

#: Set when this process is asked to stop: every live stream ends within one poll.
DRAINING = threading.Event()


class Heartbeat:
    """Yielded by :func:`follow` every ``heartbeat_s``: time to ping, renew and re-check."""


HEARTBEAT: Final = Heartbeat()


@dataclass(frozen=True, slots=True)
class Filter:
    """Which events a stream carries (stored type names; None means any)."""

    types: tuple[str, ...] | None = None
    stream_type: str | None = None
    stream_id: UUID | None = None


class SharedHead:
    """The log's head as the live streams of one process see it: read at most once per
    ``max_age_s`` (by whichever stream asks first once the last read is older; the others
    asking meanwhile wait for that same read), so the number of open streams does not
    multiply the queries. The value is never newer than the read it came from, so a stream
    that reads events after comparing with it still misses nothing."""

    def __init__(self, read: Callable[[], int], max_age_s: float) -> None:
        self._read = read
        self.max_age_s = max_age_s
        self._value = 0
        self._read_at = -float("inf")
        self._reading: tuple[asyncio.AbstractEventLoop, asyncio.Future[int]] | None = None

    async def get(self) -> int:
        if time.monotonic() - self._read_at < self.max_age_s:
            return self._value
        loop = asyncio.get_running_loop()
        if self._reading is None or self._reading[0] is not loop:
            self._reading = (loop, asyncio.ensure_future(self._refresh()))
        # Shielded: a stream whose client goes away does not cancel the others' read.
        return await asyncio.shield(self._reading[1])

    async def _refresh(self) -> int:
        try:
            started = time.monotonic()
            value = await anyio.to_thread.run_sync(self._read)
            self._value, self._read_at = value, started
            return value
        finally:
            self._reading = None


_HEADS: weakref.WeakKeyDictionary[SqlEventStore, SharedHead] = weakref.WeakKeyDictionary()


def shared_head(store: SqlEventStore, poll_s: float) -> SharedHead:
    """The :class:`SharedHead` of ``store`` in this process, fresh to half ``poll_s``."""
    head = _HEADS.get(store)
    if head is None or head.max_age_s != poll_s / 2:
        head = _HEADS[store] = SharedHead(store.head_position, poll_s / 2)
    return head


async def follow(
    store: SqlEventStore,
    after: int,
    where: Filter,
    *,
    poll_s: float,
    heartbeat_s: float,
    max_seconds: float,
    batch: int = 100,
) -> AsyncIterator[RecordedEvent | Heartbeat]:
    """Every event after position ``after`` matching ``where``, in position order, then each
    new one as it is numbered; :data:`HEARTBEAT` every ``heartbeat_s``. Returns after
    ``max_seconds`` or when :data:`DRAINING` is set."""
    started = beat = time.monotonic()
    cursor = after  # everything matching up to here has been yielded
    shared = shared_head(store, poll_s)
    behind = False  # the last page was full: read on, whatever the shared head says
    while not DRAINING.is_set() and time.monotonic() - started < max_seconds:
        if time.monotonic() - beat >= heartbeat_s:
            beat = time.monotonic()
            yield HEARTBEAT
        head = await shared.get()
        if behind or head > cursor:
            page = await anyio.to_thread.run_sync(_read, store, cursor, where, batch)
            for event in page:
                yield event
            behind = len(page) == batch
            if behind:
                cursor = page[-1].position or cursor
                continue  # catching up: no pause
            # A short page holds every match numbered by the time ``head`` was read, so the
            # scan resumes from there (a filter matching little is not re-scanned each poll).
            last = (page[-1].position or cursor) if page else cursor
            cursor = max(last, head)
        await anyio.sleep(min(poll_s, max(0.0, beat + heartbeat_s - time.monotonic())))


def _read(store: SqlEventStore, after: int, where: Filter, batch: int) -> list[RecordedEvent]:
    return store.read_all(
        after,
        batch,
        types=where.types,
        stream_type=where.stream_type,
        stream_id=where.stream_id,
    )


def drain_on_signals() -> None:
    """Have SIGTERM and SIGINT set :data:`DRAINING` before the server's own handler runs.

    Call it once the server has installed its handlers (the app's startup). Only the main
    thread can set handlers; elsewhere (an in-process test server) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    DRAINING.clear()
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)
        if getattr(previous, "concord_drains", False):
            continue
        signal.signal(sig, _draining_handler(sig, previous))


def _draining_handler(
    sig: signal.Signals, previous: Any
) -> Callable[[int, FrameType | None], None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        DRAINING.set()
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            signal.signal(sig, signal.SIG_DFL)
            signal.raise_signal(sig)

    handler.concord_drains = True  # type: ignore[attr-defined]
    return handler


# -- the connection cap --------------------------------------------------------------------


class LimiterUnavailable(RuntimeError):
    """The shared counter (Redis) cannot be reached."""


class Lease(Protocol):
    """One held stream slot."""

    async def renew(self) -> None: ...

    async def release(self) -> None: ...


class StreamLimiter(Protocol):
    """At most ``limit`` open streams per owner (an API key id, say)."""

    limit: int

    async def acquire(self, owner: str) -> Lease | None:
        """A slot, or None when the owner already holds ``limit``."""
        ...


class LocalLimiter:
    """The cap within this process (no Redis: one API process)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    async def acquire(self, owner: str) -> Lease | None:
        token = uuid.uuid4().hex
        with self._lock:
            held = self._held.setdefault(owner, set())
            if len(held) >= self.limit:
                return None
            held.add(token)
        return _LocalLease(self, owner, token)

    def held(self, owner: str) -> int:
        with self._lock:
            return len(self._held.get(owner, ()))

    def _release(self, owner: str, token: str) -> None:
        with self._lock:
            held = self._held.get(owner)
            if held is not None:
                held.discard(token)
                if not held:
                    del self._held[owner]


@dataclass
class _LocalLease:
    limiter: LocalLimiter
    owner: str
    token: str

    async def renew(self) -> None:
        return None

    async def release(self) -> None:
        self.limiter._release(self.owner, self.token)


# Slots are members of a sorted set scored by their expiry (Redis server time, ms), so every
# API process agrees on the clock; expired slots are dropped before counting.
_ACQUIRE = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""
_RENEW = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
return 1
"""


class RedisLimiter:
    """The cap across API processes: one sorted set of slots per owner, expiring slots."""

    def __init__(self, url: str, limit: int, ttl_s: float, prefix: str = "concord:sse:") -> None:
        self.limit = limit
        self.ttl_ms = max(1000, int(ttl_s * 1000))
        self.prefix = prefix
        self.client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._acquire = self.client.register_script(_ACQUIRE)
        self._renew = self.client.register_script(_RENEW)

    async def acquire(self, owner: str) -> Lease | None:
        token = uuid.uuid4().hex
        key = self.prefix + owner
        got = await self._call(self._acquire, [key], [self.limit, self.ttl_ms, token])
        return _RedisLease(self, key, token) if got == 1 else None

    def held(self, owner: str) -> int:
        return int(self.client.zcard(self.prefix + owner))

    async def _call(self, fn: Callable[..., Any], keys: list[str], args: list[Any]) -> Any:
        try:
            return await anyio.to_thread.run_sync(lambda: fn(keys=keys, args=args))
        except redis.RedisError as exc:
            raise LimiterUnavailable(str(exc)) from exc

    def close(self) -> None:
        self.client.close()


@dataclass
class _RedisLease:
    limiter: RedisLimiter
    key: str
    token: str

    async def renew(self) -> None:
        await self.limiter._call(self.limiter._renew, [self.key], [self.limiter.ttl_ms, self.token])

    async def release(self) -> None:
        # Best effort: a slot that cannot be removed now expires with its TTL.
        try:
            await anyio.to_thread.run_sync(lambda: self.limiter.client.zrem(self.key, self.token))
        except redis.RedisError:
            return


def limiter_for(
    settings: Settings, limit: int | None = None, prefix: str = "concord:sse:"
) -> LocalLimiter | RedisLimiter:
    """Redis when ``REDIS_URL`` is set (several API processes share it), else in-process;
    ``limit`` streams per owner (default: ``CONCORD_SSE_MAX_PER_KEY``).

    A slot outlives a crashed process by at most three heartbeats."""
    most = settings.sse_max_per_key if limit is None else limit
    if settings.redis_url:
        ttl = max(3 * settings.sse_heartbeat_s, 5.0)
        return RedisLimiter(settings.redis_url, most, ttl, prefix=prefix)
    return LocalLimiter(most)
