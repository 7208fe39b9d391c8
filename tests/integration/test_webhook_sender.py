"""One webhook attempt (``infra.webhooks.sender.post``) against real sockets on 127.0.0.1.

The endpoint here is a raw HTTP/1.1 server, so a test can make it misbehave the way real ones
do: close a kept-alive connection when the next request arrives, or answer with a large body;
or a real HTTPS server whose certificate comes from a CA made for the test (``trustme``).
"""

from __future__ import annotations

import socket
import socketserver
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import trustme

from infra.webhooks import sender
from infra.webhooks.guard import AllowList
from infra.webhooks.sender import MAX_BODY, Answer, post

ALLOW = AllowList.parse("127.0.0.1")


@contextmanager
def endpoint(answer: bytes, *, requests_per_connection: int) -> Iterator[tuple[str, list[str]]]:
    """A server answering ``answer`` to the first ``requests_per_connection`` requests of each
    connection; at the next one it closes the connection without a word. Yields its URL and
    a log of what happened ("connect", "request", "dropped")."""
    seen: list[str] = []

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            seen.append("connect")
            served = 0
            while True:
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    byte = self.rfile.read(1)
                    if not byte:
                        return
                    head += byte
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                self.rfile.read(length)
                if served == requests_per_connection:
                    seen.append("dropped")
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                seen.append("request")
                self.wfile.write(answer)
                self.wfile.flush()
                served += 1

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", seen
    finally:
        server.shutdown()
        server.server_close()


NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"


def test_a_kept_connection_the_endpoint_dropped_is_retried_once_on_a_fresh_one() -> None:
    """The endpoint serves one request per connection and drops the connection at the next:
    the second attempt finds its kept connection dead and succeeds on a new one."""
    with endpoint(NO_CONTENT, requests_per_connection=1) as (url, seen):
        first = post(url, b"{}", {}, allow=ALLOW, timeout_s=2)
        second = post(url, b"{}", {}, allow=ALLOW, timeout_s=2)
    assert (first.status_code, first.error) == (204, None)
    assert (second.status_code, second.error) == (204, None)
    assert seen == ["connect", "request", "dropped", "connect", "request"]


def test_a_connection_dropped_on_a_fresh_connection_is_the_answer() -> None:
    """No retry when the connection was new: the failure is the attempt's outcome."""
    with endpoint(NO_CONTENT, requests_per_connection=0) as (url, seen):
        got = post(url + "?fresh", b"{}", {}, allow=ALLOW, timeout_s=2)
    assert got.status_code is None
    assert got.error is not None and got.error.startswith("RemoteProtocolError")
    assert seen.count("connect") >= 1 and "request" not in seen


def test_a_large_answer_is_cut_for_the_log_and_the_next_attempt_still_goes() -> None:
    body = b"x" * (3 * MAX_BODY)
    answer = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )
    with endpoint(answer, requests_per_connection=5) as (url, _seen):
        first = post(url, b"{}", {}, allow=ALLOW, timeout_s=2)
        second = post(url, b"{}", {}, allow=ALLOW, timeout_s=2)
    assert first.status_code == 500 and first.body == body[:MAX_BODY]
    assert second.status_code == 500 and second.body == body[:MAX_BODY]


def test_https_goes_to_the_checked_address_with_the_names_sni_and_host() -> None:
    """The TLS server name (so the certificate checked) and Host stay the URL's name while
    the connection goes to the address the guard checked; a timeout rides along."""
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(204)

    got = post(
        "https://hooks.example.org/concord",
        b'{"id": "1"}',
        {"webhook-id": "1"},
        allow=AllowList(),
        timeout_s=3,
        resolve=lambda host, port: ["93.184.215.14"],
        transport=httpx.MockTransport(handler),
    )
    assert got.status_code == 204
    (request,) = requests
    assert str(request.url) == "https://93.184.215.14/concord"
    assert request.headers["host"] == "hooks.example.org"
    assert request.headers["webhook-id"] == "1"
    assert request.headers["accept-encoding"] == "identity"
    assert request.extensions["sni_hostname"] == "hooks.example.org"
    assert request.extensions["timeout"] == {"connect": 3, "read": 3, "write": 3, "pool": 3}
    assert request.content == b'{"id": "1"}'


# -- a real TLS endpoint (a certificate authority made for the test) -------------------------


@contextmanager
def tls_endpoint(ca: trustme.CA, certified: str) -> Iterator[tuple[int, list[str], list[str]]]:
    """An HTTPS server on 127.0.0.1 with a certificate for ``certified``, answering 204; yields
    its port and what it saw: the TLS server names asked for, and the Host headers."""
    names: list[str] = []
    hosts: list[str] = []
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(certified).configure_cert(context)
    context.sni_callback = lambda _sock, name, _ctx: names.append(name or "")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", "0")))
            hosts.append(self.headers.get("host", ""))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], names, hosts
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def ca(monkeypatch: pytest.MonkeyPatch) -> trustme.CA:
    """A certificate authority the sender trusts (instead of the system's) for this test."""
    authority = trustme.CA()

    def trusting() -> ssl.SSLContext:
        context = ssl.create_default_context()
        authority.configure_trust(context)
        return context

    monkeypatch.setattr(sender, "tls_context", trusting)
    return authority


PINNED = AllowList.parse("hooks.example.org")


def post_to_the_name(port: int) -> Answer:
    """A POST to https://hooks.example.org:PORT, whose name resolves to loopback."""
    return post(
        f"https://hooks.example.org:{port}/concord",
        b"{}",
        {},
        allow=PINNED,
        timeout_s=5,
        resolve=lambda _host, _port: ["127.0.0.1"],
    )


def test_https_to_the_pinned_address_checks_the_names_certificate(ca: trustme.CA) -> None:
    """The connection goes to the address the guard checked, while the TLS handshake asks for
    the URL's name (SNI) and verifies the certificate against it; Host stays the name."""
    with tls_endpoint(ca, "hooks.example.org") as (port, names, hosts):
        got = post_to_the_name(port)
    assert (got.status_code, got.error) == (204, None)
    assert names == ["hooks.example.org"]
    assert hosts == [f"hooks.example.org:{port}"]


def test_https_to_an_endpoint_certified_for_another_name_is_refused(ca: trustme.CA) -> None:
    with tls_endpoint(ca, "elsewhere.example.org") as (port, names, hosts):
        got = post_to_the_name(port)
    assert got.status_code is None
    assert got.error is not None and "CERTIFICATE_VERIFY_FAILED" in got.error, got.error
    assert names == ["hooks.example.org"] and hosts == [], "nothing was sent"
