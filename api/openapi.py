"""Complete the generated OpenAPI document with what every route shares.

FastAPI documents what a route declares; the conventions implemented once (problem+json for
every error, 400 for malformed input, 413 for large bodies, 401 for a bad key, 503 when a read
cannot reach ``X-Min-Position``) are added here, for every operation they apply to.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

PROBLEM = "application/problem+json"
#: Routes whose success is not JSON.
MEDIA = {
    "/v1/consultations/{consultation_id}/calendar.ics": {"text/calendar": {}},
    "/v1/statements/{statement_id}/document.{kind}": {
        "text/markdown": {},
        "text/html": {},
        "application/pdf": {},
    },
    "/metrics": {"text/plain; version=0.0.4": {"schema": {"type": "string"}}},
}
EVENT_ROUTES = ("/v1/events", "/v1/streams/")


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            app.openapi_schema = complete(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def complete(schema: dict[str, Any]) -> dict[str, Any]:
    problem = {"schema": {"$ref": "#/components/schemas/Problem"}}
    schema.setdefault("components", {}).setdefault("securitySchemes", {})["apiKey"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "Authorization: Bearer <API key> (concord keys create …).",
    }
    for path, item in schema["paths"].items():
        for operation in item.values():
            responses = operation.setdefault("responses", {})
            params = {p["name"].lower() for p in operation.get("parameters", [])}
            if "requestBody" in operation or "if-match" in params:
                responses.setdefault("400", {"description": "Malformed input"})
            if "requestBody" in operation:
                responses.setdefault("413", {"description": "Request body too large"})
            if path.startswith("/v1/"):
                responses.setdefault("401", {"description": "Missing or invalid API key"})
                operation["security"] = [{"apiKey": []}, {}]
            if path.startswith(EVENT_ROUTES):
                responses.setdefault("403", {"description": "This key's role may not"})
            if "x-min-position" in params:
                responses.setdefault(
                    "503", {"description": "The read side has not reached X-Min-Position"}
                )
            if path in MEDIA and "200" in responses:
                responses["200"]["content"] = MEDIA[path]
            for status, response in responses.items():
                if status[0] in "45":
                    response["content"] = {PROBLEM: problem}
    return schema
