"""One webhook attempt over HTTP: connect to the checked address, never follow a redirect.

The name is resolved once (:func:`infra.webhooks.guard.pin`); the request goes to that address
while ``Host`` and the TLS server name (SNI, and so certificate checking) stay the URL's host.
Proxies from the environment are ignored (they would connect elsewhere), compression is
declined, and only the first few KB of the answer are read, for the delivery log.

Connections are kept alive per (checked address, port, scheme, host), so a burst to one
endpoint does not pay a TCP and TLS handshake per event, and a connection is only ever reused
for the host whose certificate it checked. The TLS context is built once per process (building
one loads the CA bundle: tens of milliseconds).
"""

from __future__ import annotations

import os
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache, lru_cache

import httpx

from infra.webhooks.guard import AllowList, Resolve, UnsafeTarget, parse, pin, system_resolve

#: Bytes of the response body kept for the delivery log.
MAX_BODY = 4096
USER_AGENT = "Concord-Webhooks/1"
#: Endpoints with a kept-alive client per process (least recently used ones are closed).
KEPT_CLIENTS = 64


@dataclass(frozen=True)
class Answer:
    """What one attempt got: a status code, or an error when there was no HTTP answer."""

    status_code: int | None
    headers: Mapping[str, str]
    body: bytes
    error: str | None
    duration_ms: int


@cache
def tls_context() -> ssl.SSLContext:
    """The default TLS context (certificate checks on), built once per process."""
    return httpx.create_ssl_context()


_Key = tuple[str, int, str, str]


class _Clients:
    """Kept-alive clients by (address, port, scheme, host); thread-safe, bounded, per process
    (a forked pool process never shares its parent's sockets)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._clients: OrderedDict[_Key, httpx.Client] = OrderedDict()

    def get(self, key: _Key) -> httpx.Client:
        evicted: list[httpx.Client] = []
        with self._lock:
            if self._pid != os.getpid():
                self._pid, self._clients = os.getpid(), OrderedDict()
            client = self._clients.get(key)
            if client is None:
                client = _client()
                self._clients[key] = client
                while len(self._clients) > self.size:
                    evicted.append(self._clients.popitem(last=False)[1])
            else:
                self._clients.move_to_end(key)
        for old in evicted:
            old.close()
        return client

    def drop(self, key: _Key) -> None:
        with self._lock:
            client = self._clients.pop(key, None)
        if client is not None:
            client.close()


def _client(transport: httpx.BaseTransport | None = None) -> httpx.Client:
    return httpx.Client(
        transport=transport, verify=tls_context(), trust_env=False, follow_redirects=False
    )


_CLIENTS = _Clients(KEPT_CLIENTS)


def post(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    allow: AllowList,
    timeout_s: float,
    resolve: Resolve = system_resolve,
    transport: httpx.BaseTransport | None = None,
) -> Answer:
    """POST ``body`` to ``url`` once; any outcome is an :class:`Answer`, never an exception."""
    started = time.monotonic()

    def answer(
        status: int | None, error: str | None, got: httpx.Headers | None = None, data: bytes = b""
    ) -> Answer:
        elapsed = int((time.monotonic() - started) * 1000)
        return Answer(status, dict(got or {}), data, error, elapsed)

    try:
        target = _parse(url, allow)
        address = pin(target, allow, resolve)  # at every attempt: DNS may have changed
    except UnsafeTarget as exc:
        return answer(None, f"refused: {exc}")
    request_url = _at(target.url, str(address))
    request = _Request(
        request_url,
        body,
        {**headers, "Host": target.host_header, "User-Agent": USER_AGENT,
         "Accept-Encoding": "identity"},
        {"sni_hostname": target.host} if target.https else {},
        httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
        started + 2 * timeout_s,
    )  # fmt: skip
    if transport is not None:
        with _client(transport) as client:
            return _attempt(client, request, answer, stale=False)
    kept = (str(address), request_url.port or 0, request_url.scheme, target.host_header)
    try:
        return _attempt(_CLIENTS.get(kept), request, answer, stale=True)
    except _Stale:
        # A kept-alive connection the endpoint had closed meanwhile: once more, afresh.
        _CLIENTS.drop(kept)
        return _attempt(_CLIENTS.get(kept), request, answer, stale=False)


# A URL's form is checked and parsed once per process (httpx parses a URL in a tenth of a
# millisecond, a good part of an attempt on loopback); where its name points is not cached.
_parse = lru_cache(maxsize=1024)(parse)


@lru_cache(maxsize=1024)
def _at(url: httpx.URL, address: str) -> httpx.URL:
    """``url`` with its host replaced by the address checked for it."""
    return url.copy_with(host=address)


@dataclass(frozen=True)
class _Request:
    url: httpx.URL
    body: bytes
    headers: dict[str, str]
    extensions: dict[str, str]
    timeout: httpx.Timeout
    deadline: float  # monotonic: stop reading the answer's body by then


class _Stale(Exception):
    """The connection broke before any answer (perhaps closed by the endpoint while idle)."""


def _attempt(
    client: httpx.Client,
    request: _Request,
    answer: Callable[..., Answer],
    *,
    stale: bool,
) -> Answer:
    """One POST on ``client``; with ``stale``, a connection broken before any answer raises
    :class:`_Stale` (the caller tries once more) instead of being the answer."""
    try:
        with client.stream(
            "POST",
            request.url,
            content=request.body,
            headers=request.headers,
            extensions=request.extensions,
            timeout=request.timeout,
        ) as response:
            data = b""
            try:
                for chunk in response.iter_raw():
                    data += chunk
                    if len(data) >= MAX_BODY or time.monotonic() > request.deadline:
                        break
            except httpx.HTTPError:
                pass  # the status is the answer; the body is only kept for the log
            return answer(response.status_code, None, response.headers, data[:MAX_BODY])
    except httpx.TimeoutException as exc:
        return answer(None, f"timeout ({type(exc).__name__})")
    except (httpx.RemoteProtocolError, httpx.WriteError) as exc:
        if stale:
            raise _Stale from exc
        return answer(None, f"{type(exc).__name__}: {str(exc)[:200]}")
    except httpx.HTTPError as exc:
        return answer(None, f"{type(exc).__name__}: {str(exc)[:200]}")
