"""A server prepares every route before its first request; a short-lived app need not."""

from __future__ import annotations

from fastapi.testclient import TestClient

from api.main import create_app
from infra.bootstrap import System


def test_a_server_prepares_its_routes_at_startup(system: System) -> None:
    app = create_app(system)
    assert app.openapi_schema is None
    with TestClient(app) as client:
        # Startup walked every route (the OpenAPI document is built from them): the first
        # requests do not wait for FastAPI to prepare their routers.
        assert app.openapi_schema is not None
        assert "/v1/consultations/{consultation_id}" in app.openapi_schema["paths"]
        assert client.get("/health").status_code == 200


def test_an_app_built_with_prepare_off_prepares_routes_on_first_use(system: System) -> None:
    app = create_app(system, prepare=False)
    with TestClient(app) as client:
        assert app.openapi_schema is None
        assert client.get("/health").status_code == 200
        assert client.get("/v1/consultations").status_code == 200
        assert app.openapi_schema is None  # nothing built the whole document
        # … and the document is still there for whoever asks.
        assert "/v1/consultations" in client.get("/openapi.json").json()["paths"]
