"""Rate limits: how many hits a bucket may take per window, shared across API processes.

One call, one answer::

    limiter = limiter_for(settings)          # Redis with REDIS_URL, else this process
    rate = parse_rate("10/minute")           # "N/second|minute|hour|day", "N per 5 minutes"
    decision = limiter.hit("signon:203.0.113.9", rate)
    if not decision.allowed:
        ...  # 429 with decision.headers("signon") (Retry-After, RateLimit-Policy, RateLimit)

A *bucket* is any string naming who is counted (``read:<key id>``, ``ip:<address>``, a route
and a token …); each (bucket, rate) pair has its own count. The algorithm is the `limits`
package's *sliding window counter*: two counters per bucket (this window and the last), the
last one weighted by how much of it still overlaps the sliding window — constant memory per
bucket, no burst of twice the quota at a window edge (as a fixed window allows).

* **Shared** (:class:`RedisLimiter`): the count lives in Redis, so every API process draws from
  one budget. A hit is one round trip: `limits`' own atomic acquire script and its window read,
  in one script (``limits`` itself would ask a second time for what remains). When Redis cannot be
  reached the hit is decided in this process instead (:class:`MemoryLimiter`, same rates), a
  warning is logged once per outage and ``concord_rate_limit_fallbacks_total`` counts each such
  decision: a limiter outage never fails a request, and budgets are per process until Redis is
  back (it is tried again after :data:`RETRY_AFTER_OUTAGE_S`).
* **Leases**: a large budget (:data:`LEASE_FROM` hits per window or more) is taken from Redis
  a slice at a time — 1/:data:`LEASE_FRACTION` of it, at most :data:`LEASE_MAX` hits — and the
  process hands the slice out itself: one round trip per slice instead of per hit, which under
  load was a fifth of a read's time. A slice counts as spent in Redis when it is taken (the
  ``RateLimit`` header's remaining says so, as of when it was taken); what a process has not
  handed out within :data:`LEASE_S` is dropped. A key used now and then (hundreds of
  organisations signing within a minute each use theirs every few seconds) still takes one
  slice per several hits. A client gains at most one slice per process over its budget (hits
  leased in one window and handed out in the next), and loses at most one slice per process
  and :data:`LEASE_S` to slices it never used. A slice that no longer fits is not taken: the
  last hits of a budget are counted one by one, exactly. Small budgets (every one a person
  could exhaust by hand) are never leased.
* **In process** (:class:`MemoryLimiter`): embedded mode (one API process, no Redis).

Both remember a refusal until the moment the bucket frees up again: a client hammering an
exhausted bucket costs no Redis round trip (the budget cannot free up sooner — other
processes' hits only add to the count).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Protocol

import redis
import redis.asyncio
import structlog
from limits import RateLimitItem, parse
from limits.storage import MemoryStorage, RedisStorage
from limits.strategies import SlidingWindowCounterRateLimiter
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.retry import Retry

from infra.metrics import count_rate_limit_fallback
from infra.settings import Settings

log = structlog.get_logger("concord.ratelimit")

Rate = RateLimitItem

#: After a failed Redis call, hits are decided in process for this long before Redis is tried again.
RETRY_AFTER_OUTAGE_S = 1.0
#: Seconds a hit may wait for Redis (it is on loopback or the same network: milliseconds).
REDIS_TIMEOUT_S = 0.25
#: Remembered refusals kept at most (the oldest are dropped first when full).
MAX_REMEMBERED = 50_000

OFF = ("off", "none", "unlimited")

#: Budgets of at least this many hits per window are taken from Redis in slices (leases).
LEASE_FROM = 1_000
#: A lease is this fraction of the budget …
LEASE_FRACTION = 200
#: … and at most this many hits.
LEASE_MAX = 50
#: Seconds a lease's hits may be handed out before what is left of it is dropped.
LEASE_S = 10.0

#: `limits`' two sliding-window scripts (``acquire_sliding_window.lua``, then
#: ``sliding_window.lua``) in one call, on the same keys and with the same arithmetic: take
#: ARGV[3] hits if they fit (1 or 0), then the window as the read script returns it —
#: previous count, its TTL, current count, its TTL (milliseconds; a missing key is nil, -2).
#: KEYS: previous and current window; ARGV: limit, expiry (seconds), cost.
ACQUIRE_AND_READ = """
local limit = tonumber(ARGV[1])
local expiry = tonumber(ARGV[2]) * 1000
local amount = tonumber(ARGV[3])

local function shift()
    -- The current window expired: it becomes the previous one.
    local current_ttl = tonumber(redis.call('pttl', KEYS[2]))
    if current_ttl > 0 and current_ttl < expiry then
        redis.call('rename', KEYS[2], KEYS[1])
        redis.call('set', KEYS[2], 0, 'PX', current_ttl + expiry)
    end
end

local function acquire()
    if amount > limit then
        return 0
    end
    shift()
    local previous_count = tonumber(redis.call('get', KEYS[1])) or 0
    local previous_ttl = tonumber(redis.call('pttl', KEYS[1])) or 0
    local current_count = tonumber(redis.call('get', KEYS[2])) or 0
    local current_ttl = tonumber(redis.call('pttl', KEYS[2])) or 0
    if previous_ttl <= 0 then
        previous_ttl = 0
    end
    if current_ttl <= 0 then
        current_ttl = 0
    end
    local weighted_count = math.floor(previous_count * previous_ttl / expiry) + current_count
    if (weighted_count + amount) > limit then
        return 0
    end
    if redis.call('exists', KEYS[2]) == 1 then
        redis.call('incrby', KEYS[2], amount)
    else
        redis.call('set', KEYS[2], amount, 'PX', expiry * 2)
    end
    return 1
end

local acquired = acquire()
shift()
return {
    acquired,
    redis.call('get', KEYS[1]),
    redis.call('pttl', KEYS[1]),
    redis.call('get', KEYS[2]),
    redis.call('pttl', KEYS[2]),
}
"""


def parse_rate(text: str) -> Rate | None:
    """``"600/minute"``, ``"10 per second"``, ``"100/5 minutes"`` → a rate; ``"off"`` → None.

    Raises ValueError for anything else."""
    cleaned = text.strip().lower()
    if cleaned in OFF:
        return None
    rate = parse(cleaned)
    if rate.amount < 1:
        raise ValueError(f"a rate needs at least one request per window: {text!r}")
    return rate


@dataclass(frozen=True, slots=True)
class Decision:
    """What a hit was told. ``reset_s`` is when one more hit fits again (0 if nothing counted
    yet); ``retry_after_s`` is that in whole seconds (at least 1) when refused, else 0."""

    allowed: bool
    limit: int
    window_s: int
    remaining: int
    reset_s: float
    retry_after_s: int = 0
    #: False when decided in this process only (embedded mode, or Redis unreachable).
    shared: bool = True

    def headers(self, policy: str) -> dict[str, str]:
        """``RateLimit-Policy`` and ``RateLimit`` (draft-ietf-httpapi-ratelimit-headers), and
        ``Retry-After`` when refused. ``policy`` names the quota (a token: letters, digits, -)."""
        headers = {
            "RateLimit-Policy": f'"{policy}";q={self.limit};w={self.window_s}',
            "RateLimit": f'"{policy}";r={self.remaining};t={math.ceil(self.reset_s)}',
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after_s)
        return headers


class Limiter(Protocol):
    """Counts hits per bucket; see the module's docstring."""

    def hit(self, bucket: str, rate: Rate, cost: int = 1) -> Decision:
        """Take ``cost`` from ``bucket``'s budget under ``rate``, if it fits."""
        ...

    async def hit_async(self, bucket: str, rate: Rate, cost: int = 1) -> Decision:
        """:meth:`hit` on the event loop: never blocks it (no thread needed)."""
        ...

    async def aclose(self) -> None:
        """Let go of what :meth:`hit_async` holds, on its event loop (before :meth:`close`)."""
        ...

    def close(self) -> None: ...


def _decide(
    acquired: bool,
    rate: Rate,
    window: tuple[int, float, int, float],
    shared: bool,
) -> Decision:
    """A decision from the window after the hit: (previous count, seconds the previous window
    still weighs, current count, seconds the current counter lives). The arithmetic is
    ``SlidingWindowCounterRateLimiter.get_window_stats`` of `limits`, on values in hand."""
    previous, previous_ttl, current, current_ttl = window
    expiry = rate.get_expiry()
    weighted = previous * previous_ttl / expiry + current
    remaining = max(0, rate.amount - math.floor(weighted))
    reset = math.inf
    if previous:
        reset = previous_ttl % (expiry / previous)
    if current:
        # The current counter lives between one and two windows; it becomes the previous one
        # when less than a window is left (a fresh counter: a whole window from now).
        reset = min(reset, current_ttl % expiry or float(expiry))
    if reset == math.inf:
        reset = 0.0
    return Decision(
        allowed=acquired,
        limit=rate.amount,
        window_s=expiry,
        remaining=remaining if acquired else 0,
        reset_s=reset,
        retry_after_s=0 if acquired else max(1, math.ceil(reset)),
        shared=shared,
    )


class _Refusals:
    """Refusals remembered until their bucket frees up (monotonic deadlines)."""

    def __init__(self) -> None:
        self._until: dict[str, tuple[float, Decision]] = {}
        self._lock = threading.Lock()

    def check(self, key: str) -> Decision | None:
        found = self._until.get(key)
        if found is None:
            return None
        deadline, decision = found
        left = deadline - time.monotonic()
        if left <= 0:
            with self._lock:
                self._until.pop(key, None)
            return None
        return replace(decision, reset_s=left, retry_after_s=max(1, math.ceil(left)))

    def remember(self, key: str, decision: Decision) -> None:
        if decision.allowed or decision.reset_s <= 0:
            return
        with self._lock:
            if len(self._until) >= MAX_REMEMBERED:
                now = time.monotonic()
                for stale in [k for k, (d, _) in self._until.items() if d <= now]:
                    del self._until[stale]
                while len(self._until) >= MAX_REMEMBERED:
                    del self._until[next(iter(self._until))]
            self._until[key] = (time.monotonic() + decision.reset_s, decision)


class MemoryLimiter:
    """Counts in this process (`limits`' memory storage): embedded mode, and the fallback."""

    def __init__(self) -> None:
        self.storage = MemoryStorage()
        self.strategy = SlidingWindowCounterRateLimiter(self.storage)
        self._refusals = _Refusals()

    def hit(self, bucket: str, rate: Rate, cost: int = 1) -> Decision:
        return self._hit(bucket, rate, cost, shared=False)

    async def hit_async(self, bucket: str, rate: Rate, cost: int = 1) -> Decision:
        return self._hit(bucket, rate, cost, shared=False)

    async def aclose(self) -> None:
        pass

    def _hit(self, bucket: str, rate: Rate, cost: int, *, shared: bool) -> Decision:
        key = rate.key_for(bucket)
        remembered = self._refusals.check(key)
        if remembered is not None:
            return replace(remembered, shared=shared)
        acquired = self.strategy.hit(rate, bucket, cost=cost)
        window = self.storage.get_sliding_window(key, rate.get_expiry())
        decision = _decide(acquired, rate, window, shared)
        self._refusals.remember(key, decision)
        return decision

    def close(self) -> None:
        self.storage.timer.cancel()


@dataclass(slots=True)
class _Lease:
    """Hits taken from Redis together and not handed out yet."""

    left: int
    #: The decision told when the lease was taken (its remaining already counts the lease).
    decision: Decision
    taken: float


def lease_size(rate: Rate, cost: int) -> int:
    """How many hits to take from Redis at once for a hit of ``cost`` (1: no lease)."""
    if cost != 1 or rate.amount < LEASE_FROM:
        return 1
    return min(LEASE_MAX, rate.amount // LEASE_FRACTION)


class RedisLimiter:
    """Counts in Redis, shared by every API process; decides in process while Redis is down."""

    def __init__(
        self, url: str, *, prefix: str = "concord:ratelimit", timeout_s: float = REDIS_TIMEOUT_S
    ) -> None:
        # No retries inside redis-py: a hit must not wait through a back-off for a dead server.
        pool = redis.ConnectionPool.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self.client = redis.Redis(connection_pool=pool)
        self.storage = RedisStorage(url, connection_pool=pool, key_prefix=prefix)
        self._url = url
        self._timeout_s = timeout_s
        self._script = self.client.register_script(ACQUIRE_AND_READ)
        #: The asyncio client of :meth:`hit_async` (and its script), for the event loop it was
        #: made on (an asyncio connection belongs to one loop).
        self._async: tuple[asyncio.AbstractEventLoop, redis.asyncio.Redis, AsyncScript] | None
        self._async = None
        self.fallback = MemoryLimiter()
        self._refusals = _Refusals()
        self._down_until = 0.0
        self._down = False
        self._lock = threading.Lock()
        self._leases: dict[str, _Lease] = {}

    def hit(self, bucket: str, rate: Rate, cost: int = 1) -> Decision:
        key = rate.key_for(bucket)
        early = self._before(key, bucket, rate, cost)
        if early is not None:
            return early
        size = lease_size(rate, cost)
        try:
            acquired, window = self._acquire(key, rate, size)
            if not acquired and size > 1:  # the slice no longer fits: this hit alone
                size = 1
                acquired, window = self._acquire(key, rate, cost)
        except redis.RedisError as exc:
            self._went_down(exc)
            return self._in_process(bucket, rate, cost)
        return self._after(key, rate, acquired, window, size)

    async def hit_async(self, bucket: str, rate: Rate, cost: int = 1) -> Decision:
        """:meth:`hit` through an asyncio Redis client: the same round trip, the same
        scripts and keys, the same fallback; no thread hop for the caller."""
        key = rate.key_for(bucket)
        early = self._before(key, bucket, rate, cost)
        if early is not None:
            return early
        size = lease_size(rate, cost)
        try:
            acquired, window = await self._acquire_async(key, rate, size)
            if not acquired and size > 1:  # the slice no longer fits: this hit alone
                size = 1
                acquired, window = await self._acquire_async(key, rate, cost)
        except (TimeoutError, redis.RedisError, OSError) as exc:
            self._went_down(exc)
            return self._in_process(bucket, rate, cost)
        return self._after(key, rate, acquired, window, size)

    def _before(self, key: str, bucket: str, rate: Rate, cost: int) -> Decision | None:
        """A decision without Redis: a remembered refusal, a hit of a lease, or Redis known
        to be down."""
        remembered = self._refusals.check(key)
        if remembered is not None:
            return remembered
        if cost == 1 and key in self._leases:
            leased = self._from_lease(key)
            if leased is not None:
                return leased
        if time.monotonic() < self._down_until:
            return self._in_process(bucket, rate, cost)
        return None

    def _from_lease(self, key: str) -> Decision | None:
        """One hit of ``key``'s lease, if it has one left and is not too old."""
        now = time.monotonic()
        with self._lock:
            lease = self._leases.get(key)
            if lease is None:
                return None
            elapsed = now - lease.taken
            if lease.left <= 0 or elapsed >= LEASE_S:
                del self._leases[key]
                return None
            lease.left -= 1
            decision = lease.decision
        return replace(decision, reset_s=max(0.0, decision.reset_s - elapsed))

    def _after(
        self,
        key: str,
        rate: Rate,
        acquired: bool,
        window: tuple[int, float, int, float],
        size: int = 1,
    ) -> Decision:
        if self._down:
            with self._lock:
                if self._down:
                    self._down = False
                    log.warning("rate limiter: Redis is reachable again; budgets are shared")
        decision = _decide(acquired, rate, window, shared=True)
        self._refusals.remember(key, decision)
        if acquired and size > 1:
            with self._lock:  # what concurrent hits leased meanwhile is kept too
                lease = self._leases.get(key)
                left = size - 1 + (lease.left if lease is not None else 0)
                now = time.monotonic()
                if lease is None and len(self._leases) >= MAX_REMEMBERED:
                    for old in [k for k, v in self._leases.items() if now - v.taken >= LEASE_S]:
                        del self._leases[old]
                self._leases[key] = _Lease(left, decision, now)
        return decision

    def _script_args(self, key: str, rate: Rate, cost: int) -> tuple[list[str], list[int]]:
        """The keys and arguments of :data:`ACQUIRE_AND_READ`: `limits`' own keys."""
        storage = self.storage
        keys = [
            storage.prefixed_key(storage._previous_window_key(key)),
            storage.prefixed_key(storage._current_window_key(key)),
        ]
        return keys, [rate.amount, rate.get_expiry(), cost]

    def _acquire(
        self, key: str, rate: Rate, cost: int
    ) -> tuple[bool, tuple[int, float, int, float]]:
        """Take from the window and read it back: one EVALSHA (the script is loaded again if
        Redis forgot it)."""
        keys, args = self._script_args(key, rate, cost)
        return _window(self._script(keys=keys, args=args))

    async def _acquire_async(
        self, key: str, rate: Rate, cost: int
    ) -> tuple[bool, tuple[int, float, int, float]]:
        """:meth:`_acquire` on the event loop."""
        client, script = self._async_client()
        keys, args = self._script_args(key, rate, cost)
        return _window(await script(keys=keys, args=args, client=client))

    def _async_client(self) -> tuple[redis.asyncio.Redis, AsyncScript]:
        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:
            # A client made on another loop (closed by now: one app, started again) is dropped.
            # The same settings as the blocking client: short timeouts, no retries.
            pool = redis.asyncio.ConnectionPool.from_url(
                self._url,
                socket_timeout=self._timeout_s,
                socket_connect_timeout=self._timeout_s,
                retry=AsyncRetry(NoBackoff(), 0),
            )
            client = redis.asyncio.Redis(connection_pool=pool)
            self._async = (loop, client, client.register_script(ACQUIRE_AND_READ))
        return self._async[1], self._async[2]

    def _in_process(self, bucket: str, rate: Rate, cost: int) -> Decision:
        count_rate_limit_fallback()
        return self.fallback._hit(bucket, rate, cost, shared=False)

    def _went_down(self, exc: Exception) -> None:
        with self._lock:
            self._down_until = time.monotonic() + RETRY_AFTER_OUTAGE_S
            if not self._down:
                self._down = True
                log.warning(
                    "rate limiter: Redis unreachable; limiting in each process until it is back",
                    error=repr(exc),
                )

    async def aclose(self) -> None:
        made, self._async = self._async, None
        if made is not None and made[0] is asyncio.get_running_loop():
            await made[1].aclose(close_connection_pool=True)

    def close(self) -> None:
        self.fallback.close()
        self.client.close()
        self._async = None  # its sockets are closed by aclose(), on their loop


def _window(answer: Any) -> tuple[bool, tuple[int, float, int, float]]:
    """:data:`ACQUIRE_AND_READ`'s answer as numbers (TTLs in seconds)."""
    acquired, previous, previous_ttl, current, current_ttl = answer
    return bool(acquired), (
        int(previous or 0),
        max(0.0, float(previous_ttl or 0)) / 1000,
        int(current or 0),
        max(0.0, float(current_ttl or 0)) / 1000,
    )


def limiter_for(settings: Settings) -> Limiter:
    """Redis when ``REDIS_URL`` is set (several API processes share it), else in process.

    Keys are namespaced by ``CONCORD_QUEUE`` so deployments sharing one Redis count apart."""
    if settings.redis_url:
        return RedisLimiter(settings.redis_url, prefix=f"concord:ratelimit:{settings.queue}")
    return MemoryLimiter()
