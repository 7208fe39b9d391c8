"""Schemathesis over the served OpenAPI schema: generated requests, in process, on each back end.

Every operation in ``/openapi.json`` gets valid and invalid requests (Schemathesis' positive and
negative modes), some of the valid ones aimed at real objects. Each response must not be a 5xx
and must be what the schema documents: the status code, the content type and the body.

Anything known to be wrong would be tolerated one item at a time in ``KNOWN`` (empty today),
each entry naming a test below that shows it on its own. Every other failure is reported with
a curl line that reproduces it.

Bounded and reproducible: a fixed seed, a few examples per operation, no example database.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

import hypothesis
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.openapi.checks import (
    UndefinedContentType,
    UndefinedStatusCode,
)
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from structlog.testing import capture_logs

from api.main import create_app
from infra.bootstrap import System, bootstrap
from infra.settings import Settings
from tests.e2e.conftest import Keys
from tests.e2e.test_authorization_matrix import ADMIN, World, build_world

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
SEED = 20_180_221
#: Generated requests per operation (valid, invalid and aimed at real objects together).
ADMIN_EXAMPLES = 12
ANONYMOUS_EXAMPLES = 5
#: Nothing in process should take long; a request that hangs (an endless stream) fails instead.
REQUEST_TIMEOUT_S = 10
#: A read asked for an ``X-Min-Position`` the log has not reached answers 503, as the contract
#: says (possibly after waiting); pinned to a position the world has reached, so that "no 5xx"
#: can stay absolute. Its missing documentation is ``test_reads_with_x_min_position_document_503``.
MIN_POSITION = "1"
#: Server-sent events never end, so a request/response fuzzer cannot read them.
STREAMING = "text/event-stream"
PROBLEM = "application/problem+json"


# -- what is known to be wrong ----------------------------------------------------------------


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
    shown_by: str
    matches: Callable[[Seen], bool]


#: A timestamp without a UTC offset, as a JSON string.
NAIVE_TIMESTAMP = re.compile(r'"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?"')

KNOWN: dict[str, Known] = {}


def is_known(seen: Seen) -> bool:
    return any(known.matches(seen) for known in KNOWN.values())


# -- the run ------------------------------------------------------------------------------------


@dataclass
class Finding:
    operation: str
    what: str
    detail: str
    reproduce: str

    def __str__(self) -> str:
        return f"{self.operation}: {self.what}\n  {self.detail}\n  {self.reproduce}"


@pytest.fixture
def world(client: TestClient, keys: Keys) -> World:
    return build_world(client, keys)


@pytest.fixture
def api_schema(client: TestClient) -> Iterator[Any]:
    """The schema as the app serves it; requests go to that app (the ``client`` fixture's
    ``create_app(system, background=False)``) in process, on the back end under test."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    yield schema
    # Schemathesis keeps every app it started alive for the rest of the process; not this one.
    shutdown_lifespans()


def _streams(operation: Any) -> bool:
    return any(
        STREAMING in (response.definition.get("content") or {})
        for _, response in operation.responses.items()
    )


def _cases(operation: Any, world: World) -> st.SearchStrategy[Any]:
    """Valid and invalid requests, and valid ones whose path names real objects."""
    pinned = (
        {"X-Min-Position": MIN_POSITION}
        if any(p.name.lower() == "x-min-position" for p in operation.headers)
        else None
    )
    real = {p.name: world.ids[p.name] for p in operation.path_parameters if p.name in world.ids}
    options = [
        operation.as_strategy(generation_mode=mode, headers=pinned) for mode in GenerationMode
    ]
    if real:
        options.append(
            operation.as_strategy(
                generation_mode=GenerationMode.POSITIVE, headers=pinned, path_parameters=real
            )
        )
    return st.one_of(options)


def fuzz(
    schema: Any, world: World, auth: dict[str, str], examples: int, sqlite: bool
) -> list[Finding]:
    """Run every operation; return what failed (once per kind), apart from ``KNOWN``."""
    findings: dict[tuple[str, str], Finding] = {}

    def record(seen: Seen, what: str, detail: str, case: Any) -> None:
        key = (seen.operation, f"{what} {detail.splitlines()[0] if detail else ''}")
        if key not in findings and not is_known(seen):
            curl = case.as_curl_command(headers=auth)
            findings[key] = Finding(seen.operation, what, detail[:400], curl)

    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        if _streams(operation):
            continue

        @hypothesis.seed(SEED)
        @hypothesis.settings(
            max_examples=examples,
            deadline=None,
            database=None,
            # Failures are collected, not raised, so there is nothing to shrink.
            phases=[Phase.explicit, Phase.generate],
            # Timed, so it could fail on a busy machine: about the generator, not the app.
            suppress_health_check=[HealthCheck.too_slow],
            print_blob=False,
        )
        @given(case=_cases(operation, world))
        def run(case: Any) -> None:
            label = case.operation.label
            try:
                response = case.call(headers=auth, timeout=REQUEST_TIMEOUT_S)
            except Exception as exc:  # the app raised: Starlette answered 500 and re-raised
                seen = Seen(label, sqlite, error=exc)
                record(seen, "unhandled exception (500)", repr(exc), case)
                return
            try:
                case.validate_response(response, checks=CHECKS, headers=auth)
            except FailureGroup as group:
                for failure in group.exceptions:
                    seen = Seen(label, sqlite, response=response, failure=failure)
                    record(seen, failure.title, failure.message, case)

        # A 500 is logged with its traceback; capturing skips rendering it (slow and noisy).
        with capture_logs():
            run()
    return list(findings.values())


def test_generated_requests_as_admin(api_schema: Any, world: World, system: System) -> None:
    findings = fuzz(api_schema, world, world.headers[ADMIN], ADMIN_EXAMPLES, system.db.is_sqlite)
    assert not findings, "\n".join(map(str, findings))


def test_generated_requests_without_a_key(api_schema: Any, world: World, system: System) -> None:
    findings = fuzz(api_schema, world, {}, ANONYMOUS_EXAMPLES, system.db.is_sqlite)
    assert not findings, "\n".join(map(str, findings))


def test_every_known_item_names_a_test_here() -> None:
    names = {known.shown_by for known in KNOWN.values()}
    assert names <= set(globals()), names - set(globals())


# -- what the schema documents, each checked on its own -----------------------------------


@pytest.fixture(scope="module")
def openapi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The schema document; the same on every back end, so built once and never served."""
    where = tmp_path_factory.mktemp("openapi")
    system = bootstrap(
        Settings(
            DATABASE_URL=f"sqlite:///{where / 'never-opened.sqlite3'}",
            CONCORD_DATA_DIR=where,
            REDIS_URL=None,
        )
    )
    yield create_app(system).openapi()
    system.close()


def _operations(openapi: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, item in openapi["paths"].items():
        for method, operation in item.items():
            yield f"{method.upper()} {path}", operation


def test_error_responses_are_documented_as_problem_json(openapi: dict[str, Any]) -> None:
    wrong = [
        f"{name} {status}"
        for name, operation in _operations(openapi)
        for status, response in operation["responses"].items()
        if status.startswith("4") and PROBLEM not in response.get("content", {PROBLEM: None})
    ]
    assert not wrong, wrong


def test_the_calendar_is_documented_as_text_calendar(openapi: dict[str, Any]) -> None:
    calendar = openapi["paths"]["/v1/consultations/{consultation_id}/calendar.ics"]["get"]
    assert "text/calendar" in calendar["responses"]["200"]["content"]


def test_operations_document_400_for_malformed_input(openapi: dict[str, Any]) -> None:
    """A body that is not JSON and an If-Match that is not an ETag are a 400 (problems.py)."""
    takes_input = [
        (name, operation)
        for name, operation in _operations(openapi)
        if "requestBody" in operation
        or any(p["name"].lower() == "if-match" for p in operation.get("parameters", []))
    ]
    assert takes_input
    missing = [name for name, operation in takes_input if "400" not in operation["responses"]]
    assert not missing, missing


def test_event_routes_document_401_and_403(openapi: dict[str, Any]) -> None:
    missing = [
        (name, status)
        for name, operation in _operations(openapi)
        if name.startswith(("GET /v1/events", "GET /v1/streams/"))
        for status in ("401", "403")
        if status not in operation["responses"]
    ]
    assert not missing, missing


def test_api_keys_document_what_an_unknown_organisation_gets(
    client: TestClient, keys: Keys, openapi: dict[str, Any]
) -> None:
    response = client.post(
        "/v1/api-keys",
        json={"name": "x", "role": "organisation", "organisation_id": str(uuid4())},
        headers=keys.admin,
    )
    documented = openapi["paths"]["/v1/api-keys"]["post"]["responses"]
    assert str(response.status_code) in documented, response.status_code


def test_reads_with_x_min_position_document_503(openapi: dict[str, Any]) -> None:
    missing = [
        name
        for name, operation in _operations(openapi)
        if any(p["name"].lower() == "x-min-position" for p in operation.get("parameters", []))
        and "503" not in operation["responses"]
    ]
    assert not missing, missing


def test_timestamps_carry_an_offset(
    client: TestClient, keys: Keys, world: World, system: System, request: pytest.FixtureRequest
) -> None:
    """RFC 3339 with an offset, as the contract says (SQLite stores none: read back as UTC)."""
    admin = world.headers[ADMIN]
    c = f"/v1/consultations/{world.consultation_id}"
    bodies = [
        client.get(f"/v1/organisations/{world.org_a}", headers=admin).text,
        client.get("/v1/organisations", headers=admin).text,
        client.get(f"{c}/registrations", headers=admin).text,
        client.get("/v1/api-keys", headers=admin).text,
    ]
    naive = [match.group(0) for body in bodies for match in NAIVE_TIMESTAMP.finditer(body)]
    assert not naive, naive


@pytest.mark.parametrize(
    "path",
    [
        "/v1/events?after=9223372036854775808",
        "/v1/streams/{stream_id}/events?after_version=9223372036854775808",
    ],
)
def test_positions_beyond_64_bits_are_not_a_server_error(
    client: TestClient, world: World, path: str
) -> None:
    """Found by this fuzzer: SQLite's driver raised OverflowError past 2**63-1 (a 500)."""
    with capture_logs() as logs:
        response = client.get(path.format(**world.ids), headers=world.headers[ADMIN])
    assert response.status_code in (200, 422), response.text
    assert not [entry for entry in logs if entry["log_level"] == "error"], logs
