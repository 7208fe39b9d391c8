"""One webhook attempt over HTTP: connect to the checked address, never follow a redirect.

The name is resolved once (:func:`infra.webhooks.guard.pin`); the request goes to that address
while ``Host`` and the TLS server name (SNI, and so certificate checking) stay the URL's host.
Proxies from the environment are ignored (they would connect elsewhere), compression is
declined, and only the first few KB of the answer are read, for the delivery log.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from infra.webhooks.guard import AllowList, Resolve, UnsafeTarget, parse, pin, system_resolve

#: Bytes of the response body kept for the delivery log.
MAX_BODY = 4096
USER_AGENT = "Concord-Webhooks/1"


@dataclass(frozen=True)
class Answer:
    """What one attempt got: a status code, or an error when there was no HTTP answer."""

    status_code: int | None
    headers: Mapping[str, str]
    body: bytes
    error: str | None
    duration_ms: int


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
        target = parse(url, allow)
        address = pin(target, allow, resolve)
    except UnsafeTarget as exc:
        return answer(None, f"refused: {exc}")
    request_url = target.url.copy_with(host=str(address))
    extensions = {"sni_hostname": target.host} if target.https else {}
    timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0))
    try:
        with (
            httpx.Client(
                transport=transport, trust_env=False, follow_redirects=False, timeout=timeout
            ) as client,
            client.stream(
                "POST",
                request_url,
                content=body,
                headers={
                    **headers,
                    "Host": target.host_header,
                    "User-Agent": USER_AGENT,
                    "Accept-Encoding": "identity",
                },
                extensions=extensions,
            ) as response,
        ):
            data = b""
            deadline = started + 2 * timeout_s
            try:
                for chunk in response.iter_raw():
                    data += chunk
                    if len(data) >= MAX_BODY or time.monotonic() > deadline:
                        break
            except httpx.HTTPError:
                pass  # the status is the answer; the body is only kept for the log
            return answer(response.status_code, None, response.headers, data[:MAX_BODY])
    except httpx.TimeoutException as exc:
        return answer(None, f"timeout ({type(exc).__name__})")
    except httpx.HTTPError as exc:
        return answer(None, f"{type(exc).__name__}: {str(exc)[:200]}")
