"""Rate limits, and the audit of key use, for every request before it is routed.

Each request draws from one budget (infra/ratelimit.py; settings ``CONCORD_RATE_LIMIT_*``):

* a valid API key: its ``read`` budget (GET, HEAD, OPTIONS) or its ``write`` budget (commands);
* anything else — no key, a malformed or mistyped key, an unknown or revoked one — the
  ``anonymous`` budget of the client's address (an IPv6 client's /64), so guessing keys is
  throttled like any other anonymous traffic. A bad key is answered 401 while the address has
  budget left and 429 once it has none: the 401 check happens in the route's handler, after
  this middleware let the request through (api/routing.py).

The key is looked up here, once (``scope["state"]["auth"]``, read by ``current_principal``): on
the event loop when it was seen within ``CONCORD_KEY_CACHE_S``, else in a worker thread; the
limiter's Redis round trip is made on the event loop (an asyncio client), so a request with a
known key costs no thread hop before it is routed. Limited responses carry
``RateLimit-Policy`` and ``RateLimit`` (draft-ietf-httpapi-ratelimit-headers); a refusal is a
429 problem with ``Retry-After``. ``/health``, ``/ready`` and ``/metrics`` are not limited.

Every answer to a key is counted for that key (infra/key_usage.py: reads, writes, denied,
rate-limited, last use and address; written in batches, never per request), and every refusal
(401, 403, 429) is logged on ``concord.audit`` with the key's prefix and the client's address.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson
import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import Authentication, app_member, authenticate, authenticate_known
from api.problems import PROBLEM, TYPE_BASE
from api.threads import in_thread
from infra.bootstrap import System
from infra.key_usage import KeyUsage
from infra.metrics import count_rate_limited
from infra.ratelimit import Decision, Limiter, Rate, limiter_for, parse_rate

audit = structlog.get_logger("concord.audit")

#: Methods that only read (the ``read`` budget); every other method is a command.
READS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Paths never limited: probes and the scraper must get through an overloaded API.
EXEMPT = frozenset({"/health", "/ready", "/metrics"})
REFUSALS = frozenset({401, 403, 429})


@dataclass(frozen=True)
class Policies:
    """The three budgets (None: not limited)."""

    read: Rate | None
    write: Rate | None
    anonymous: Rate | None

    @classmethod
    def of(cls, system: System) -> Policies:
        s = system.settings
        if not s.rate_limit_enabled:
            return cls(None, None, None)
        return cls(
            parse_rate(s.rate_limit_read),
            parse_rate(s.rate_limit_write),
            parse_rate(s.rate_limit_anonymous),
        )


@dataclass(frozen=True)
class Verdict:
    auth: Authentication
    policy: str
    decision: Decision | None


class Guard:
    """One per app: the limiter, the budgets and the key-usage recorder."""

    def __init__(self, system: System, limiter: Limiter | None = None) -> None:
        self.system = system
        self.policies = Policies.of(system)
        self.limiter = limiter or limiter_for(system.settings)
        self.usage = KeyUsage(system.db)

    async def judge(self, authorization: str | None, client: str, write: bool) -> Verdict:
        """Who is calling (a lookup in a thread unless the key is known) and whether their
        budget has room (a Redis round trip on the event loop)."""
        keys = self.system.keys
        auth = authenticate_known(keys, authorization)
        if auth is None:
            auth = await in_thread(authenticate, keys, authorization)
        if auth.key is not None:
            policy = "write" if write else "read"
            bucket = f"{policy}:{auth.key.id}"
        else:
            policy, bucket = "anonymous", f"anonymous:{client}"
        rate = getattr(self.policies, policy)
        decision = await self.limiter.hit_async(bucket, rate) if rate is not None else None
        return Verdict(auth, policy, decision)

    def start(self) -> None:
        self.usage.start(self.system.settings.key_usage_flush_s)

    async def aclose(self) -> None:
        """Let go of the limiter's connections on this event loop (then :meth:`close`)."""
        await self.limiter.aclose()

    def close(self) -> None:
        """Write the usage counted so far and let go of the limiter."""
        self.usage.stop()
        self.limiter.close()


def client_address(scope: Scope) -> str:
    """The client's address as uvicorn reports it (after ``--proxy-headers`` from trusted
    proxies); an IPv6 client is counted by its /64, which one subscriber usually holds whole."""
    client = scope.get("client")
    return _counted_as(str(client[0]) if client else "unknown")


@lru_cache(maxsize=4096)
def _counted_as(host: str) -> str:
    """What :func:`client_address` counts ``host`` as (parsed once per address, not per request)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{address}/64", strict=False))
    return str(address)


class Throttle:
    """ASGI middleware: authenticate once, take from a budget, answer 429 or pass on."""

    def __init__(self, app: ASGIApp, exempt: frozenset[str] = EXEMPT) -> None:
        self.app = app
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        guard = _guard(scope)
        raw = _header(scope, b"authorization")
        authorization = raw.decode("latin-1") if raw is not None else None
        client = client_address(scope)
        write = scope["method"] not in READS
        verdict = await guard.judge(authorization, client, write)
        scope.setdefault("state", {})["auth"] = verdict.auth
        decision = verdict.decision
        headers = decision.headers(verdict.policy) if decision is not None else {}
        if decision is not None and not decision.allowed:
            count_rate_limited(verdict.policy)
            _account(guard, scope, verdict, client, 429, throttled=True)
            await _too_many(scope, send, verdict.policy, decision, headers)
            return
        extra = [(k.lower().encode(), v.encode()) for k, v in headers.items()]

        async def send_counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                if extra:
                    message.setdefault("headers", []).extend(extra)
                _account(guard, scope, verdict, client, message["status"])
            await send(message)

        await self.app(scope, receive, send_counted)


def guard_of(app: Any) -> Guard:
    """The app's guard, made on first use (the system exists only once the app has started)."""
    return app_member(app, "rate_guard", Guard)


def _guard(scope: Scope) -> Guard:
    return guard_of(scope["app"])


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _account(
    guard: Guard,
    scope: Scope,
    verdict: Verdict,
    client: str,
    status: int,
    *,
    throttled: bool = False,
) -> None:
    """Count the answer against the key that asked, and log refusals. ``throttled``: this
    middleware refused it (a 429 from a route — every stream slot taken — is not a budget)."""
    auth = verdict.auth
    key = auth.key or auth.revoked
    if key is not None:
        if status == 429:
            kind = "rate_limited"
        elif status in (401, 403):
            kind = "denied"
        else:
            kind = "write" if scope["method"] not in READS else "read"
        guard.usage.record(key.id, kind, client, datetime.now(UTC))
    if status in REFUSALS:
        audit.warning(
            "request refused",
            status=status,
            method=scope["method"],
            path=scope["path"],
            client=client,
            api_key=key.prefix if key is not None else auth.prefix,
            reason=_reason(auth, verdict.policy, status, throttled),
        )


def _reason(auth: Authentication, policy: str, status: int, throttled: bool) -> str:
    if status == 429:
        return f"rate limit ({policy})" if throttled else "limit of the route (e.g. open streams)"
    if status == 403:
        return "not allowed for this key"
    return {"anonymous": "no key", "active": "refused"}.get(auth.status, f"{auth.status} key")


async def _too_many(
    scope: Scope, send: Send, policy: str, decision: Decision, headers: dict[str, str]
) -> None:
    whose = "This address's" if policy == "anonymous" else f"This key's {policy}"
    body = orjson.dumps(
        {
            "type": TYPE_BASE + "rate-limited",
            "title": "Too many requests",
            "status": 429,
            "detail": (
                f"{whose} budget of {decision.limit} requests per {decision.window_s} s is used"
                f" up; retry in {decision.retry_after_s} s."
            ),
            "instance": scope["path"],
            "policy": policy,
            "retry_after": decision.retry_after_s,
        }
    )
    await send(
        {
            "type": "http.response.start",
            "status": 429,
            "headers": [
                (b"content-type", PROBLEM.encode()),
                (b"content-length", str(len(body)).encode()),
                *((k.lower().encode(), v.encode()) for k, v in headers.items()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
