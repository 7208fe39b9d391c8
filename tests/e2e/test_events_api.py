"""The event feed, single streams and the conventions every route shares."""

from __future__ import annotations

from uuid import uuid4

import pytest
from fastapi.testclient import TestClient

from api import deps
from infra.bootstrap import System
from services.ports import NO_STREAM, Metadata, NewEvent

PROBLEM = "application/problem+json"


def seed(system: System) -> dict:
    a, b = uuid4(), uuid4()
    meta = Metadata(actor="organiser", api_key_id="k1", correlation_id="req-1")
    system.store.append(
        a,
        "test_consultation",
        NO_STREAM,
        [
            NewEvent("test.planned", {"city": "Hà Nội"}),
            NewEvent("test.registration_opened", {}),
        ],
        meta,
    )
    system.store.append(b, "organisation", NO_STREAM, [NewEvent("organisation.noted", {})])
    system.store.append(a, "test_consultation", 2, [NewEvent("test.completed", {})])
    return {"a": a, "b": b}


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["checks"]["database"]["ok"] is True


def test_the_feed_pages_in_position_order_with_next_after(
    client: TestClient, system: System, admin: dict
) -> None:
    ids = seed(system)
    first = client.get("/v1/events", headers=admin, params={"limit": 3}).json()
    assert [e["position"] for e in first["data"]] == [1, 2, 3]
    assert first["has_more"] is True
    assert first["head_position"] == 4
    second = client.get(
        "/v1/events", headers=admin, params={"after": first["next_after"], "limit": 3}
    ).json()
    assert [e["position"] for e in second["data"]] == [4]
    assert second["has_more"] is False
    assert second["next_after"] == 4
    empty = client.get("/v1/events", headers=admin, params={"after": 4}).json()
    assert empty["data"] == [] and empty["next_after"] == 4
    event = first["data"][0]
    assert event["stream_id"] == str(ids["a"])
    assert event["type"] == "test.planned"
    assert event["data"] == {"city": "Hà Nội"}
    assert event["metadata"] == {
        "actor": "organiser",
        "api_key_id": "k1",
        "causation_id": None,
        "correlation_id": "req-1",
    }
    assert {"id", "stream_type", "version", "recorded_at", "schema_version"} <= event.keys()


def test_the_feed_filters_by_type_and_stream_type(
    client: TestClient, system: System, admin: dict
) -> None:
    seed(system)
    types = client.get(
        "/v1/events",
        headers=admin,
        params={"types": "test.planned,test.completed"},
    ).json()
    assert [e["position"] for e in types["data"]] == [1, 4]
    orgs = client.get("/v1/events", headers=admin, params={"stream_type": "organisation"}).json()
    assert [e["type"] for e in orgs["data"]] == ["organisation.noted"]


@pytest.mark.parametrize(
    "params",
    [{"after": -1}, {"limit": 0}, {"limit": 1001}, {"after": "x"}, {"types": "a," * 60}],
)
def test_bad_feed_parameters_are_problems_not_crashes(
    client: TestClient, params: dict, admin: dict
) -> None:
    response = client.get("/v1/events", headers=admin, params=params)
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == 422 and body["type"].endswith("validation-failed")


def test_a_stream_reads_in_version_order(client: TestClient, system: System, admin: dict) -> None:
    ids = seed(system)
    body = client.get(f"/v1/streams/{ids['a']}/events", headers=admin).json()
    assert body["stream_type"] == "test_consultation"
    assert body["version"] == 3
    assert [e["version"] for e in body["data"]] == [1, 2, 3]
    later = client.get(
        f"/v1/streams/{ids['a']}/events", headers=admin, params={"after_version": 2}
    ).json()
    assert [e["version"] for e in later["data"]] == [3]


def test_unknown_and_malformed_stream_ids(client: TestClient, admin: dict) -> None:
    missing = client.get(f"/v1/streams/{uuid4()}/events", headers=admin)
    assert missing.status_code == 404
    assert missing.headers["content-type"] == PROBLEM
    bad = client.get("/v1/streams/not-a-uuid/events", headers=admin)
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "stream_id"


def test_a_projection_read_waits_for_x_min_position(
    client: TestClient, system: System, monkeypatch: pytest.MonkeyPatch, admin: dict
) -> None:
    ids = seed(system)
    summary = client.get(f"/v1/streams/{ids['b']}", headers={**admin, "X-Min-Position": "4"})
    assert summary.status_code == 200
    assert summary.json()["version"] == 1
    monkeypatch.setattr(deps, "MIN_POSITION_WAIT_S", 0.05)
    future = client.get(f"/v1/streams/{ids['b']}", headers={**admin, "X-Min-Position": "99"})
    assert future.status_code == 503
    assert future.headers["content-type"] == PROBLEM
    assert future.headers["retry-after"] == "1"
    bad = client.get(f"/v1/streams/{ids['b']}", headers={**admin, "X-Min-Position": "-3"})
    assert bad.status_code == 422


def test_request_ids_are_echoed_or_made(client: TestClient) -> None:
    assert (
        client.get("/health", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"]
        == "abc-123"
    )
    made = client.get("/health", headers={"X-Request-ID": "bad id with spaces"}).headers[
        "x-request-id"
    ]
    assert made != "bad id with spaces" and len(made) == 36


def test_oversized_bodies_are_refused_with_413(client: TestClient, system: System) -> None:
    too_big = "x" * (system.settings.max_body_bytes + 1)
    response = client.post("/v1/events", content=too_big)
    assert response.status_code == 413
    assert response.headers["content-type"] == PROBLEM


def test_unknown_routes_and_methods_are_problems(client: TestClient) -> None:
    assert client.get("/v1/nothing-here").headers["content-type"] == PROBLEM
    assert client.delete("/v1/events").status_code == 405


def test_an_unexpected_error_is_a_500_problem_without_internals(system: System) -> None:
    from api.main import create_app

    app = create_app(system, background=False)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    with TestClient(app, raise_server_exceptions=False) as c:
        response = c.get("/boom")
    assert response.status_code == 500
    assert response.headers["content-type"] == PROBLEM
    assert "secret" not in response.text


def test_openapi_and_docs_are_served(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert "/v1/events" in schema["paths"]
    assert client.get("/docs").status_code == 200
