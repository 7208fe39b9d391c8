"""Request body limits over raw sockets against a real uvicorn server (the production HTTP
parser): bodies with a length over the limit, chunked bodies without one, endless chunked
bodies, and lengths that lie. Nothing over the limit reaches a handler; the server stays up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import threading
import time
from collections.abc import Iterable, Iterator

import pytest
import uvicorn
from sqlalchemy import func, select

from api.main import create_app
from infra.bootstrap import System
from infra.schema import events
from tests.e2e.conftest import Keys

LIMIT = 1000


@pytest.fixture
def server(system: System) -> Iterator[int]:
    """The app on a real uvicorn server in a thread, bodies limited to ``LIMIT`` bytes."""
    tuned = dataclasses.replace(
        system, settings=system.settings.model_copy(update={"max_body_bytes": LIMIT})
    )
    config = uvicorn.Config(
        create_app(tuned), host="127.0.0.1", port=0, log_config=None, lifespan="on", ws="none"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    yield server.servers[0].sockets[0].getsockname()[1]
    server.should_exit = True
    thread.join(15)


@dataclasses.dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    closed: bool  # the server closed the connection after answering


def exchange(
    port: int, head: bytes, parts: Iterable[bytes] = (), *, finish: bool = False
) -> Answer | None:
    """Send ``head`` then each of ``parts`` (stopping if the server hangs up), read what comes
    back within a few seconds; None if the server closed without answering."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(3)
    data = b""
    with contextlib.closing(sock):
        sock.sendall(head)
        for part in parts:
            try:
                sock.sendall(part)
            except OSError:  # reset or broken pipe: the server stopped reading
                break
        if finish:
            sock.shutdown(socket.SHUT_WR)
        closed = False
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    closed = True
                    break
                data += chunk
                if _complete(data):
                    # Is the connection closed after this answer?
                    sock.settimeout(1)
                    try:
                        closed = sock.recv(1) == b""
                    except TimeoutError:
                        closed = False
                    except ConnectionResetError:
                        closed = True
                    break
        except ConnectionResetError:
            closed = True
        except TimeoutError:
            pass
    if not data:
        return None
    head_part, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head_part.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines)
    return Answer(int(status_line.split()[1]), headers, body, closed)


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(": ")
        if name.lower() == "content-length":
            return len(body) >= int(value)
    return False


def request_head(key: dict[str, str], *extra: str) -> bytes:
    lines = [
        "POST /v1/organisations HTTP/1.1",
        "Host: concord.test",
        f"Authorization: {key['Authorization']}",
        "Content-Type: application/json",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def organisation(name: str) -> bytes:
    return json.dumps({"name": name, "kind": "ngo", "country": "ID"}).encode()


def logged(system: System) -> int:
    with system.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(events)).scalar_one())


def assert_healthy(port: int) -> None:
    answer = exchange(port, b"GET /health HTTP/1.1\r\nHost: concord.test\r\n\r\n")
    assert answer is not None and answer.status == 200


def assert_too_large(answer: Answer | None) -> None:
    assert answer is not None, "no answer"
    assert answer.status == 413, answer
    assert answer.headers["content-type"] == "application/problem+json"
    assert json.loads(answer.body)["type"].endswith("/content-too-large")
    assert answer.headers["connection"] == "close" and answer.closed, answer


def test_a_length_over_the_limit_is_refused_before_the_body_is_read(
    server: int, keys: Keys, system: System
) -> None:
    big = organisation("A" * 3 * LIMIT)
    head = request_head(keys.admin, f"Content-Length: {len(big)}")
    assert_too_large(exchange(server, head, [big]))
    assert logged(system) == 0
    assert_healthy(server)


def test_a_chunked_body_without_a_length_is_counted_and_refused(
    server: int, keys: Keys, system: System
) -> None:
    big = organisation("B" * 3 * LIMIT)
    parts = [chunk(big[i : i + 300]) for i in range(0, len(big), 300)] + [b"0\r\n\r\n"]
    assert_too_large(
        exchange(server, request_head(keys.admin, "Transfer-Encoding: chunked"), parts)
    )
    assert logged(system) == 0
    small = organisation("Small enough")
    parts = [chunk(small[:10]), chunk(small[10:]), b"0\r\n\r\n"]
    ok = exchange(server, request_head(keys.admin, "Transfer-Encoding: chunked"), parts)
    assert ok is not None and ok.status == 201, ok
    assert logged(system) == 1


def test_an_endless_chunked_body_is_cut_off(server: int, keys: Keys) -> None:
    """The server answers 413 and hangs up instead of reading on for the next request."""

    def endless() -> Iterator[bytes]:
        started = time.monotonic()
        while time.monotonic() - started < 10:  # bounded: 10 s of sending at most
            yield chunk(b"x" * 4096)

    started = time.monotonic()
    answer = exchange(server, request_head(keys.admin, "Transfer-Encoding: chunked"), endless())
    assert_too_large(answer)
    assert time.monotonic() - started < 8, "the server kept reading the body"
    assert_healthy(server)


def test_a_length_that_lies_low_lets_only_that_many_bytes_in(
    server: int, keys: Keys, system: System
) -> None:
    big = organisation("C" * 3 * LIMIT)
    answer = exchange(server, request_head(keys.admin, "Content-Length: 20"), [big])
    assert answer is not None and 400 <= answer.status < 500, answer
    assert answer.closed
    assert logged(system) == 0
    assert_healthy(server)


def test_a_length_that_lies_high_never_completes_a_request(
    server: int, keys: Keys, system: System
) -> None:
    small = organisation("Short")
    answer = exchange(server, request_head(keys.admin, "Content-Length: 900"), [small], finish=True)
    assert answer is None or answer.status >= 400, answer
    assert logged(system) == 0
    assert_healthy(server)


@pytest.mark.parametrize(
    "framing",
    [
        ["Content-Length: abc"],
        ["Content-Length: -5"],
        ["Content-Length: 5", "Content-Length: 5000"],
        ["Content-Length: 5", "Transfer-Encoding: chunked"],
    ],
    ids=["not a number", "negative", "two lengths", "length and chunked"],
)
def test_ambiguous_framing_is_refused(
    server: int, keys: Keys, system: System, framing: list[str]
) -> None:
    body = organisation("D" * 2 * LIMIT)
    parts = [chunk(body), b"0\r\n\r\n"] if "chunked" in framing[-1] else [body]
    answer = exchange(server, request_head(keys.admin, *framing), parts)
    assert answer is not None and answer.status in (400, 413), answer
    assert answer.closed
    assert logged(system) == 0
    assert_healthy(server)
