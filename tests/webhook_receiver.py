"""A real webhook endpoint for tests: HTTP on 127.0.0.1, checking every request as a receiver
built from the standard libraries would (``standardwebhooks`` and the ``cloudevents`` SDK).

Answers are scripted per ``webhook-id``: a list of replies used one per request, then 204.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cloudevents.core.bindings.http import HTTPMessage, from_http_event
from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass(frozen=True)
class Reply:
    status: int = 204
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    #: Seconds to wait before answering (a slow or hanging endpoint).
    delay: float = 0.0


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw it, after verifying and parsing it."""

    path: str
    headers: dict[str, str]
    body: bytes
    webhook_id: str
    timestamp: int
    #: Indexes into ``Receiver.secrets`` of the secrets whose signature verified.
    verified_by: frozenset[int]
    event: Any  # the parsed CloudEvent
    at: float

    @property
    def position(self) -> int:
        return int(self.event.get_extension("position"))


class Receiver:
    def __init__(self) -> None:
        self.secrets: list[str] = []
        self.script: dict[str, list[Reply]] = {}
        #: Called with each request before it is answered (e.g. to signal a test thread).
        self.on_request: Callable[[Received], None] | None = None
        self.received: list[Received] = []
        self.problems: list[str] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                received = receiver._check(self.path, dict(self.headers.items()), body)
                if receiver.on_request is not None and received is not None:
                    receiver.on_request(received)
                reply = receiver._reply(received.webhook_id if received else "")
                if reply.delay:
                    time.sleep(reply.delay)
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the sender gave up waiting

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/concord"

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- what tests read ---------------------------------------------------------------------

    def ids(self) -> list[str]:
        with self._lock:
            return [r.webhook_id for r in self.received]

    def positions(self) -> list[int]:
        with self._lock:
            return [r.position for r in self.received]

    def unique_ids(self) -> list[str]:
        """Ids in first-seen order, as a receiver de-duplicating by ``webhook-id`` sees them."""
        return list(dict.fromkeys(self.ids()))

    # -- inside the server -------------------------------------------------------------------

    def _reply(self, webhook_id: str) -> Reply:
        with self._lock:
            queue = self.script.get(webhook_id)
            return queue.pop(0) if queue else Reply()

    def _check(self, path: str, raw_headers: dict[str, str], body: bytes) -> Received | None:
        headers = {k.lower(): v for k, v in raw_headers.items()}
        problems = []
        if headers.get("content-type") != "application/cloudevents+json":
            problems.append(f"content-type {headers.get('content-type')!r}")
        if any(k.startswith("ce-") for k in headers):
            problems.append("ce- headers in structured mode")
        verified = set()
        for index, secret in enumerate(self.secrets):
            # One signature entry per secret: verify each secret on its own, as a receiver
            # that knows only one of them would.
            try:
                Webhook(secret).verify(body, headers)
                verified.add(index)
            except WebhookVerificationError:
                pass
        if not verified:
            problems.append("no signature verified")
        event = from_http_event(HTTPMessage(headers=headers, body=body))
        if event.get_id() != headers.get("webhook-id"):
            problems.append("webhook-id is not the CloudEvent id")
        received = Received(
            path=path,
            headers=headers,
            body=body,
            webhook_id=headers.get("webhook-id", ""),
            timestamp=int(headers.get("webhook-timestamp", "0")),
            verified_by=frozenset(verified),
            event=event,
            at=time.monotonic(),
        )
        with self._lock:
            self.received.append(received)
            self.problems += [f"{received.webhook_id}: {p}" for p in problems]
        return received
