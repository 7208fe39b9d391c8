"""Page-size caps: no request can ask for an unbounded page.

Walks the served OpenAPI document, so a new list route without a capped page size fails here
until someone caps it (or says below why its size is bounded anyway).
"""

from __future__ import annotations

from typing import Any
from uuid import uuid4

from fastapi.testclient import TestClient

from infra.bootstrap import System
from services.ports import NO_STREAM, NewEvent
from tests.e2e.conftest import Keys
from tests.e2e.test_authorization_matrix import ADMIN, build_world

PROBLEM = "application/problem+json"
#: Query parameters that size a page (or a window of rows).
PAGE_SIZES = {"limit", "page_size", "per_page", "size", "days"}
#: Lists without a page size, and why they are bounded anyway.
BOUNDED = {
    "/v1/api-keys": "admins only; as many as the operator made",
    "/v1/subscriptions": "a key's own webhook subscriptions (admins: every key's)",
    "/v1/event-types": "the published catalogue, fixed in code",
}


def operations(client: TestClient) -> list[tuple[str, str, dict[str, Any]]]:
    paths = client.get("/openapi.json").json()["paths"]
    return [(m, p, op) for p, item in paths.items() for m, op in item.items()]


def page_params(operation: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        p for p in operation.get("parameters", []) if p["in"] == "query" and p["name"] in PAGE_SIZES
    ]


def is_list(schema: dict[str, Any], components: dict[str, Any]) -> bool:
    """An array, or an object whose ``data`` is an array (our page envelopes)."""
    if "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[1]]
    if schema.get("type") == "array":
        return True
    data = schema.get("properties", {}).get("data", {})
    return data.get("type") == "array"


def test_every_page_size_parameter_has_a_maximum(client: TestClient) -> None:
    uncapped = [
        f"{method.upper()} {path} ?{p['name']}"
        for method, path, op in operations(client)
        for p in page_params(op)
        if "maximum" not in p["schema"] or p["schema"].get("minimum", 0) < 1
    ]
    assert not uncapped, f"page sizes without a minimum of 1 and a maximum: {uncapped}"


def test_every_list_has_a_page_size(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    unpaged = []
    for method, path, op in operations(client):
        content = op["responses"].get("200", {}).get("content", {})
        body = content.get("application/json", {}).get("schema")
        if method != "get" or body is None or not is_list(body, components):
            continue
        if not page_params(op) and path not in BOUNDED:
            unpaged.append(path)
    assert not unpaged, f"lists with no page size: {unpaged}"


def test_over_the_cap_is_a_422_problem_and_the_cap_itself_is_fine(
    client: TestClient, keys: Keys
) -> None:
    world = build_world(client, keys)
    admin = world.headers[ADMIN]
    checked = []
    for method, path, op in operations(client):
        for param in page_params(op):
            cap = param["schema"]["maximum"]
            url = path.format(**world.ids)
            over = client.request(method, url, params={param["name"]: cap + 1}, headers=admin)
            assert over.status_code == 422, (path, param["name"], over.text)
            assert over.headers["content-type"] == PROBLEM
            fields = [(e["in"], e["field"]) for e in over.json()["errors"]]
            assert ("query", param["name"]) in fields, (path, fields)
            at_cap = client.request(method, url, params={param["name"]: cap}, headers=admin)
            assert at_cap.status_code != 422, (path, param["name"], at_cap.text)
            checked.append(path)
    assert len(checked) >= 8, checked  # the walk did find the lists


def test_a_long_stream_is_read_a_page_at_a_time(
    client: TestClient, system: System, admin: dict[str, str]
) -> None:
    stream = uuid4()
    system.store.append(
        stream, "consultation", NO_STREAM, [NewEvent("x.happened", {"n": n}) for n in range(5)]
    )
    seen: list[int] = []
    after, pages = 0, 0
    while True:
        page = client.get(
            f"/v1/streams/{stream}/events",
            params={"after_version": after, "limit": 2},
            headers=admin,
        )
        assert page.status_code == 200, page.text
        body = page.json()
        pages += 1
        seen += [e["version"] for e in body["data"]]
        assert len(body["data"]) <= 2
        if not body["has_more"]:
            assert body["next_after_version"] is None
            break
        after = body["next_after_version"]
        assert after == body["version"]
    assert seen == [1, 2, 3, 4, 5]
    assert pages == 3
    whole = client.get(f"/v1/streams/{stream}/events", headers=admin).json()
    assert [e["version"] for e in whole["data"]] == seen and whole["has_more"] is False
