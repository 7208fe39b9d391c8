"""What the Schemathesis runs share (tests/e2e/test_fuzz_*.py): the schema as the app serves it,
bounded settings, and failures collected once per operation and kind, each with a curl line.

Failures are collected rather than raised, so a run reports everything it found at once and
Hypothesis has nothing to shrink.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.openapi.checks import UndefinedContentType, UndefinedStatusCode
from schemathesis.python.asgi import shutdown_lifespans

SEED = 20_180_221
#: Nothing in process should take long; a request that hangs (an endless stream) fails instead.
REQUEST_TIMEOUT_S = 10
#: A read asked for an ``X-Min-Position`` the log has not reached answers 503, as the contract
#: says (possibly after waiting); pinned to a position every run has reached, so that "no 5xx"
#: can stay absolute (test_fuzz_openapi.py ``test_reads_with_x_min_position_document_503``).
MIN_POSITION = "1"
#: Server-sent events never end, so a request/response fuzzer cannot read them.
STREAMING = "text/event-stream"


def served_schema(client: TestClient) -> Iterator[Any]:
    """The schema as the app serves it; requests go to that app (the ``client`` fixture's
    ``create_app(system, background=False)``) in process, on the back end under test."""
    yield schemathesis.openapi.from_asgi("/openapi.json", client.app)
    # Schemathesis keeps every app it started alive for the rest of the process; not this one.
    shutdown_lifespans()


def streams(operation: Any) -> bool:
    return any(
        STREAMING in (response.definition.get("content") or {})
        for _, response in operation.responses.items()
    )


def pinned(operation: Any) -> dict[str, str] | None:
    """Headers for every request to ``operation``: ``X-Min-Position`` where it reads one."""
    if any(p.name.lower() == "x-min-position" for p in operation.headers):
        return {"X-Min-Position": MIN_POSITION}
    return None


def bounded(examples: int) -> hypothesis.settings:
    """Hypothesis settings for a run of ``examples`` cases, seeded by the caller."""
    return hypothesis.settings(
        max_examples=examples,
        deadline=None,
        database=None,
        # Failures are collected, not raised, so there is nothing to shrink.
        phases=[Phase.explicit, Phase.generate],
        # Timed, so it could fail on a busy machine: about the generator, not the app.
        suppress_health_check=[HealthCheck.too_slow],
        print_blob=False,
    )


# -- what a check objected to ---------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """One thing a check objected to: a failed check, or an exception the app raised."""

    operation: str
    sqlite: bool
    response: Any = None
    failure: Failure | None = None
    error: Exception | None = None

    @property
    def media_type(self) -> str:
        values = self.response.headers.get("content-type") or [""]
        return values[0].split(";")[0].strip()

    def undocumented_status(self, *codes: int) -> bool:
        return isinstance(self.failure, UndefinedStatusCode) and self.response.status_code in codes

    def undocumented_media_type(self, media_type: str) -> bool:
        return isinstance(self.failure, UndefinedContentType) and self.media_type == media_type


@dataclass(frozen=True)
class Known:
    """Something known to be wrong (or a false positive of the tool), tolerated one item at a
    time; ``shown_by`` names a test in the same module that shows it on its own."""

    shown_by: str
    matches: Callable[[Seen], bool]


@dataclass
class Finding:
    operation: str
    what: str
    detail: str
    reproduce: str

    def __str__(self) -> str:
        return f"{self.operation}: {self.what}\n  {self.detail}\n  {self.reproduce}"


@dataclass
class Findings:
    """What failed in a run, once per operation and kind, apart from what ``known`` tolerates."""

    auth: dict[str, str]
    sqlite: bool
    known: Mapping[str, Known] = field(default_factory=dict)
    found: dict[tuple[str, str], Finding] = field(default_factory=dict)

    def call(self, case: Any, checks: list[Any], **validate: Any) -> Any:
        """Send ``case`` and run ``checks`` on the answer; None if the app raised."""
        response = self.send(case)
        if response is not None:
            self.validate(case, response, checks, **validate)
        return response

    def send(self, case: Any, headers: dict[str, str] | None = None) -> Any:
        """Send ``case`` with this run's key; None if the app raised (Starlette answered 500
        and re-raised)."""
        try:
            return case.call(headers={**(headers or {}), **self.auth}, timeout=REQUEST_TIMEOUT_S)
        except Exception as exc:
            self.record(Seen(case.operation.label, self.sqlite, error=exc), case, exc)
            return None

    def validate(self, case: Any, response: Any, checks: list[Any], **validate: Any) -> None:
        try:
            case.validate_response(response, checks=checks, headers=self.auth, **validate)
        except FailureGroup as group:
            for failure in group.exceptions:
                seen = Seen(case.operation.label, self.sqlite, response=response, failure=failure)
                self.record(seen, case, failure)

    def record(self, seen: Seen, case: Any, what: Failure | Exception) -> None:
        if isinstance(what, Failure):
            title, detail = what.title, what.message
        else:
            title, detail = "unhandled exception (500)", repr(what)
        key = (seen.operation, f"{title} {detail.splitlines()[0] if detail else ''}")
        if key in self.found or any(known.matches(seen) for known in self.known.values()):
            return
        curl = case.as_curl_command(headers=self.auth)
        self.found[key] = Finding(seen.operation, title, detail[:400], curl)

    def __bool__(self) -> bool:
        return bool(self.found)

    def __str__(self) -> str:
        return "\n".join(map(str, self.found.values()))
