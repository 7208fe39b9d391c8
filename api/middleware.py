"""ASGI middleware: correlation ids and reads retried once (one layer); a body size limit."""

from __future__ import annotations

import re
import uuid
from typing import Any

import orjson
import structlog
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import DATABASE_LOST as LOST
from api.problems import PROBLEM, TYPE_BASE, database_unavailable

log = structlog.get_logger("concord.api")

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestContext:
    """Take ``X-Request-ID`` (or make one), bind it to logs and echo it on the response; and
    run a read that lost its database connection once more before the client hears of it.

    A database restart or ``pg_terminate_backend`` drops every pooled connection at once; the
    first request to meet a dead one fails, and the pool then replaces them all (infra/db.py).
    Reading twice changes nothing, so a GET is simply tried again; a write answers 503 and the
    client retries it with its ``Idempotency-Key``.

    Both in one layer: every layer is another call and another ``send`` wrapper per request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id")
        request_id = given if _SAFE_ID.match(given) else str(uuid.uuid4())
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        structlog.contextvars.bind_contextvars(request_id=request_id)
        stamp = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append(stamp)
            await send(message)

        try:
            if scope["method"] in ("GET", "HEAD"):
                await self._read(scope, receive, send, send_with_id, stamp, state)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            structlog.contextvars.unbind_contextvars("request_id")

    async def _read(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        send_with_id: Send,
        stamp: tuple[bytes, bytes],
        state: dict[str, Any],
    ) -> None:
        """The read, and once more if its database connection was lost before it answered."""
        held = False
        started = False

        async def first(message: Message) -> None:  # send_with_id's work too: one wrapper
            nonlocal held, started
            if message["type"] == "http.response.start" and not held:
                if state.get(LOST):
                    held = True  # the 503 of a lost connection: not sent (yet)
                    return
                started = True
                message.setdefault("headers", []).append(stamp)
            elif held:
                return
            await send(message)

        try:
            await self.app(scope, receive, first)
        except Exception as exc:  # raised outside the app's handlers (authentication)
            if started or not database_unavailable(exc):
                raise
            log.warning("read retried after a lost database connection", error=repr(exc))
        else:
            if not held:
                return
            log.warning("read retried after a lost database connection")
        state.pop(LOST, None)
        await self.app(scope, _no_body(receive), send_with_id)


def _header(scope: Scope, name: bytes) -> str:
    """The last value of header ``name`` (lowercase), or an empty string."""
    found = b""
    for key, value in scope["headers"]:
        if key == name:
            found = value
    return bytes(found).decode("latin-1")


class BodyLimit:
    """Refuse request bodies larger than ``max_bytes`` with 413, before they are parsed.

    A ``Content-Length`` over the limit is refused before a byte is read. A chunked body (no
    length) is counted as it arrives and refused once it passes the limit; the answer then says
    ``Connection: close``, so the server stops reading instead of draining the rest for the
    next request (an endless chunked body would otherwise be read forever). A length that lies
    is the server's business: uvicorn hands the app exactly the bytes announced, and what
    follows is parsed as a new request (a 400, and the connection is closed).
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = chunked = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                chunked = value
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._refuse(scope, send)
            return
        if chunked is None:
            # A body of a length within the limit (uvicorn hands the app exactly that many
            # bytes), or none at all: nothing to count, no wrappers on this request.
            await self.app(scope, receive, send)
            return
        received = 0
        exceeded = False

        async def limited_receive() -> Message:
            # Raised as an HTTPException so FastAPI's body parsing passes it through untouched.
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise HTTPException(
                        413, f"Request bodies are limited to {self.max_bytes} bytes."
                    )
            return message

        async def closing_send(message: Message) -> None:
            if exceeded and message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"connection"]
                message["headers"] = [*headers, (b"connection", b"close")]
            await send(message)

        await self.app(scope, limited_receive, closing_send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        body = orjson.dumps(
            {
                "type": TYPE_BASE + "content-too-large",
                "title": "Content too large",
                "status": 413,
                "detail": f"Request bodies are limited to {self.max_bytes} bytes.",
                "instance": scope.get("path"),
            }
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", PROBLEM.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _no_body(receive: Receive) -> Receive:
    """A receive for a second run: the (empty) body once more, then the real channel."""
    given = False

    async def again() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": b"", "more_body": False}
        return await receive()

    return again
