"""Schemathesis over the served OpenAPI schema: generated requests, in process, on each back end.

Every operation in ``/openapi.json`` gets valid and invalid requests (Schemathesis' positive and
negative modes), some of the valid ones aimed at real objects. Each response must not be a 5xx
and must be what the schema documents: the status code, the content type and the body; an
invalid request must be refused with a 4xx (``negative_data_rejection``). Sequences of requests,
and whether a key is enforced, are tests/e2e/test_fuzz_stateful.py.

Anything known to be wrong would be tolerated one item at a time in ``KNOWN`` (empty today),
each entry naming a test below that shows it on its own. Every other failure is reported with
a curl line that reproduces it.

Bounded and reproducible: a fixed seed, a few examples per operation, no example database.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import hypothesis
import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from structlog.testing import capture_logs

from api.deps import ETAG_PATTERN
from api.main import create_app
from api.openapi import LINKS
from infra.bootstrap import System, bootstrap
from infra.settings import Settings
from tests.e2e.conftest import Keys
from tests.e2e.fuzzing import SEED, Findings, Known, bounded, pinned, served_schema, streams
from tests.e2e.test_authorization_matrix import ACCESS, ADMIN, ANONYMOUS, World, build_world

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    # Invalid input (negative mode) must be refused with a 4xx, not done.
    negative_data_rejection,
]
#: Generated requests per operation (valid, invalid and aimed at real objects together).
ADMIN_EXAMPLES = 12
ANONYMOUS_EXAMPLES = 5
PROBLEM = "application/problem+json"


# -- what is known to be wrong ----------------------------------------------------------------


#: A timestamp without a UTC offset, as a JSON string.
NAIVE_TIMESTAMP = re.compile(r'"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?"')

KNOWN: dict[str, Known] = {}


# -- the run ------------------------------------------------------------------------------------


@pytest.fixture
def world(client: TestClient, keys: Keys) -> World:
    return build_world(client, keys)


@pytest.fixture
def api_schema(client: TestClient) -> Iterator[Any]:
    yield from served_schema(client)


def _cases(operation: Any, world: World) -> st.SearchStrategy[Any]:
    """Valid and invalid requests, and valid ones whose path names real objects."""
    headers = pinned(operation)
    real = {p.name: world.ids[p.name] for p in operation.path_parameters if p.name in world.ids}
    options = [
        operation.as_strategy(generation_mode=mode, headers=headers) for mode in GenerationMode
    ]
    if real:
        options.append(
            operation.as_strategy(
                generation_mode=GenerationMode.POSITIVE, headers=headers, path_parameters=real
            )
        )
    return st.one_of(options)


def fuzz(schema: Any, world: World, auth: dict[str, str], examples: int, sqlite: bool) -> Findings:
    """Run every operation; return what failed (once per kind), apart from ``KNOWN``."""
    findings = Findings(auth, sqlite, KNOWN)
    # A run with a key sends it with every request, over any Authorization generated (or left
    # out by a negative case, which the key would then turn valid): so none is generated.
    schema.config.generation.with_security_parameters = not auth
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        if streams(operation):
            continue

        @hypothesis.seed(SEED)
        @bounded(examples)
        @given(case=_cases(operation, world))
        def run(case: Any) -> None:
            findings.call(case, CHECKS)

        # A 500 is logged with its traceback; capturing skips rendering it (slow and noisy).
        with capture_logs():
            run()
    return findings


def test_generated_requests_as_admin(api_schema: Any, world: World, system: System) -> None:
    findings = fuzz(api_schema, world, world.headers[ADMIN], ADMIN_EXAMPLES, system.db.is_sqlite)
    assert not findings, str(findings)


def test_generated_requests_without_a_key(api_schema: Any, world: World, system: System) -> None:
    findings = fuzz(api_schema, world, {}, ANONYMOUS_EXAMPLES, system.db.is_sqlite)
    assert not findings, str(findings)


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


def test_operations_that_need_a_key_say_so(openapi: dict[str, Any]) -> None:
    """Only those: a public read takes a key but needs none (``ignored_auth`` probes the others,
    test_fuzz_stateful.py). Who may call what is the authorization matrix's table."""
    # Public once published: a draft needs a key (the matrix's world holds a draft).
    sometimes = {
        "GET /v1/statements/{statement_id}",
        "GET /v1/statements/{statement_id}/endorsements",
    }
    wrong = [
        name
        for name, operation in _operations(openapi)
        if name.split()[1].startswith("/v1/")
        and (operation["security"] == [{"apiKey": []}])
        != (ANONYMOUS not in ACCESS[tuple(name.split())] and name not in sometimes)  # type: ignore[index]
    ]
    assert not wrong, wrong


def test_no_parameter_is_documented_as_null(openapi: dict[str, Any]) -> None:
    """A header or query parameter is left out, never null (a client would send "null")."""
    nullable = [
        (name, parameter["name"])
        for name, operation in _operations(openapi)
        for parameter in operation.get("parameters", [])
        if {"type": "null"} in parameter["schema"].get("anyOf", [])
        or parameter["schema"].get("type") == "null"
    ]
    assert not nullable, nullable


def test_if_match_documents_the_etags_it_takes(openapi: dict[str, Any]) -> None:
    documented = {
        parameter["schema"].get("pattern")
        for _, operation in _operations(openapi)
        for parameter in operation.get("parameters", [])
        if parameter["name"] == "If-Match"
    }
    assert documented == {ETAG_PATTERN}


def test_every_link_is_in_the_schema(openapi: dict[str, Any]) -> None:
    """A link on a status the operation does not document would be dropped without a word."""
    missing = [
        (method, path, status, name)
        for (method, path, status), links in LINKS.items()
        for name, link in links.items()
        if not link["parameters"].items()
        <= openapi["paths"][path][method]["responses"]
        .get(status, {})
        .get("links", {})
        .get(name, {"parameters": {}})["parameters"]
        .items()
    ]
    assert not missing, missing


def test_links_carry_the_version_and_the_position(openapi: dict[str, Any]) -> None:
    """A change follows a create with its ETag in If-Match, a read with its X-Event-Position in
    X-Min-Position: what a client must send not to overwrite, and to see its own write."""
    links = openapi["paths"]["/v1/consultations"]["post"]["responses"]["201"]["links"]
    assert links["ReviseConsultation"]["parameters"]["header.If-Match"] == "$response.header.ETag"
    assert (
        links["GetConsultation"]["parameters"]["header.x-min-position"]
        == "$response.header.X-Event-Position"
    )


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
