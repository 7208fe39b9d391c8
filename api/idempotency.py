"""ASGI middleware applying ``Idempotency-Key`` to every POST, and to a PATCH or DELETE that
sends one (see infra/idempotency.py)."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import timedelta
from typing import Any

import orjson
import structlog
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import authenticate
from api.problems import PROBLEM, TYPE_BASE
from api.threads import in_thread
from infra.idempotency import IdempotencyStore

#: Response headers replayed with a stored response.
KEPT = ("content-type", "etag", "location", "x-event-position")
MAX_KEY = 255
#: Methods whose requests may carry a key: a withdrawal (DELETE) retried after a lost answer
#: must get that answer again, not "there is nothing to withdraw".
METHODS = ("POST", "PATCH", "DELETE")
log = structlog.get_logger("concord.api")


class Idempotency:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in METHODS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        raw_key = headers.get(b"idempotency-key")
        if raw_key is None:
            await self.app(scope, receive, send)
            return
        key = raw_key.decode("latin-1").strip()
        if not key or len(key) > MAX_KEY:
            await _problem(
                send,
                400,
                "Bad Idempotency-Key",
                "bad-idempotency-key",
                f"Idempotency-Key must be 1 to {MAX_KEY} characters.",
            )
            return
        try:
            body = await _read_body(receive)
        except HTTPException as exc:
            await _problem(
                send, exc.status_code, "Content too large", "content-too-large", str(exc.detail)
            )
            return
        credentials = headers.get(b"authorization", b"anonymous")
        system = scope["app"].state.system
        if credentials != b"anonymous" and not await _valid(scope, system, credentials):
            # A revoked or unknown key must not get stored responses back: let the app
            # answer (401) without touching the key.
            await self.app(scope, _replay(body, receive), send)
            return
        scope_id = hashlib.sha256(credentials).hexdigest()
        request_hash = hashlib.sha256(
            scope["method"].encode()
            + b" "
            + scope["path"].encode()
            + b"?"
            + scope.get("query_string", b"")
            + b"\n"
            + body
        ).hexdigest()
        store = IdempotencyStore(system.db, timedelta(seconds=system.settings.idempotency_lease_s))
        stored = await in_thread(store.claim, scope_id, key, request_hash)
        if stored is not None:
            if stored.request_hash != request_hash:
                await _problem(
                    send,
                    422,
                    "Idempotency-Key reused",
                    "idempotency-key-reused",
                    "This Idempotency-Key was used with a different request.",
                )
            elif not stored.complete:
                await _problem(
                    send,
                    409,
                    "Request in progress",
                    "idempotency-key-in-progress",
                    "A request with this Idempotency-Key is still being processed.",
                    retry_after=True,
                )
            else:
                replay_headers = [
                    (k.encode(), v.encode()) for k, v in (stored.headers or {}).items()
                ]
                replay_headers.append((b"idempotent-replayed", b"true"))
                await send(
                    {
                        "type": "http.response.start",
                        "status": stored.status_code,
                        "headers": replay_headers,
                    }
                )
                await send({"type": "http.response.body", "body": stored.body or b""})
            return

        # What the route's commands carry in their metadata and derive new ids from, so a
        # retry recognises what an attempt that died made (services/bus.py, api/commands.py).
        state = scope.setdefault("state", {})
        state["idempotency_key"] = key
        state["idempotency"] = f"{scope_id}:{key}:{request_hash}"
        replay_receive = _replay(body, receive)
        status = 500
        kept: dict[str, str] = {}
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", []):
                    if name.decode("latin-1").lower() in KEPT:
                        kept[name.decode("latin-1").lower()] = value.decode("latin-1")
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
            await send(message)

        heartbeat = asyncio.create_task(_hold(store, scope_id, key))
        try:
            await self.app(scope, replay_receive, capture)
        except BaseException:
            await _release(store, scope_id, key)
            raise
        finally:
            heartbeat.cancel()
        if status >= 500:
            # Our failure: let the client retry with the same key. Whatever the request did
            # before it failed (a command committed, a lost connection hiding a commit) is not
            # done again: the retry's commands find their events (services/bus.py) and it
            # finishes the rest.
            await _release(store, scope_id, key)
        else:
            # Any other answer is final, whatever it is: a retry replays it.
            stored_body = _redact(scope["path"], b"".join(chunks))
            await in_thread(store.complete, scope_id, key, status, kept, stored_body)


#: Response fields never kept for replay: secrets are shown once.
SECRET_FIELDS = {"/v1/api-keys": "key", "/v1/subscriptions": "secret"}
#: The same, for paths that end so (an id comes before them).
SECRET_SUFFIXES = {"/rotate-secret": "secret"}


def _redact(path: str, body: bytes) -> bytes:
    field = SECRET_FIELDS.get(path) or next(
        (f for suffix, f in SECRET_SUFFIXES.items() if path.endswith(suffix)), None
    )
    if field is None or not body:
        return body
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if isinstance(data, dict) and field in data:
        data[field] = None
        data["replay_note"] = f"'{field}' was shown only in the first response"
    return orjson.dumps(data)


async def _hold(store: IdempotencyStore, scope_id: str, key: str) -> None:
    """Renew the claim while the request runs: a claim left to lapse is one whose process
    died, and a retry may take it over (see infra/idempotency.py)."""
    while True:
        await asyncio.sleep(store.lease.total_seconds() / 3)
        try:
            await in_thread(store.renew, scope_id, key)
        except Exception as exc:  # the request itself will meet the same trouble and say so
            log.warning("idempotency claim not renewed", error=repr(exc))


async def _release(store: IdempotencyStore, scope_id: str, key: str) -> None:
    try:
        await in_thread(store.release, scope_id, key)
    except Exception as exc:  # the database is away: the claim lapses after its lease instead
        log.warning("idempotency claim not released", error=repr(exc))


async def _valid(scope: Scope, system: Any, credentials: bytes) -> bool:
    # The rate limiter (api/ratelimit.py) has looked the key up already.
    auth = scope.get("state", {}).get("auth")
    if auth is None:
        auth = await in_thread(authenticate, system.keys, credentials.decode("latin-1"))
    return auth.key is not None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app the body we already read."""
    delivered = False

    async def replay_receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay_receive


async def _read_body(receive: Receive) -> bytes:
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.request":
            parts.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(parts)
        elif message["type"] == "http.disconnect":
            return b"".join(parts)


async def _problem(
    send: Send, status: int, title: str, type_: str, detail: str, *, retry_after: bool = False
) -> None:
    body = orjson.dumps(
        {"type": TYPE_BASE + type_, "title": title, "status": status, "detail": detail}
    )
    headers = [(b"content-type", PROBLEM.encode()), (b"content-length", str(len(body)).encode())]
    if retry_after:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
