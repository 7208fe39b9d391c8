"""Complete the generated OpenAPI document with what every route shares.

FastAPI documents what a route declares; the conventions implemented once (problem+json for
every error, 400 for malformed input, 413 for large bodies, 401 for a bad key, 503 when a read
cannot reach ``X-Min-Position``, 429 when a rate limit is reached) are added here, for every
operation they apply to. So are which operations need a key (those depending on a role check,
``api.deps.require``; the others take one but do not need it) and the links from a created
object to the operations that act on it (``LINKS``).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, iter_route_contexts

PROBLEM = "application/problem+json"
HTML = "text/html"
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
#: Routes outside every rate limit (api/ratelimit.py).
UNLIMITED = ("/health", "/ready", "/metrics")
_FIELD = {"schema": {"type": "string"}}
RATE_LIMITED = {
    "description": "A rate limit was reached: this key's read or write budget, or the client"
    " address's budget for requests without a valid key. Wait Retry-After seconds.",
    "headers": {
        "Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}},
        "RateLimit-Policy": {
            "description": 'The quota, e.g. "read";q=1200;w=60 (draft-ietf-httpapi-ratelimit-'
            "headers); on every limited response.",
            **_FIELD,
        },
        "RateLimit": {
            "description": 'What is left, e.g. "read";r=0;t=12; on every limited response.',
            **_FIELD,
        },
    },
}


ORG = "/v1/organisations/{organisation_id}"
C = "/v1/consultations/{consultation_id}"
S = "/v1/statements/{statement_id}"
W = "/v1/subscriptions/{subscription_id}"
#: The id of the object a create answers with; the path of the request that led here.
NEW = "$response.body#/id"
SAME_C = "$request.path.consultation_id"
SAME_S = "$request.path.statement_id"
#: Adding a recommendation answers with the statement; its first recommendation exists.
FIRST_RECOMMENDATION = "$response.body#/sections/0/recommendations/0/id"


#: What a command's answer tells the next request (api/commands.py), carried by every link
#: whose target reads it: the stream's version, as If-Match for a change that must not
#: overwrite another's; the event's position, as X-Min-Position for a read that must see it.
CARRIED = {
    "If-Match": "$response.header.ETag",
    "x-min-position": "$response.header.X-Event-Position",
}
#: A read as of the creating event: the object as its creation left it.
AS_CREATED = {"as_of": "$response.header.X-Event-Position"}


def _pointer(path: str) -> str:
    return path.replace("~", "~0").replace("/", "~1")


def _link(
    method: str,
    path: str,
    body: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
    **parameters: str,
) -> dict[str, Any]:
    """An OpenAPI link to the operation at ``method path``, its path parameters (and fields of its
    body) taken from the response or the request that led here."""
    link: dict[str, Any] = {
        "operationRef": f"#/paths/{_pointer(path)}/{method}",
        "parameters": {
            **{f"path.{name}": value for name, value in parameters.items()},
            **{f"query.{name}": value for name, value in (query or {}).items()},
        },
    }
    if body is not None:
        link["requestBody"] = body  # merged into a body the client writes (Schemathesis does)
    return link


#: (method, path, status) -> links: how a client follows a created object to what acts on it.
#: Most create routes answer an untyped object, from which a tool cannot infer them; the
#: stateful fuzz run (tests/e2e/test_fuzz_stateful.py) follows these.
LINKS: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {
    ("post", "/v1/organisations", "201"): {
        "GetOrganisation": _link("get", ORG, organisation_id=NEW),
        "ChangeOrganisation": _link("patch", ORG, organisation_id=NEW),
        "PlanConsultation": _link("post", "/v1/consultations", body={"organiser_id": NEW}),
        "IssueKey": _link(
            "post", "/v1/api-keys", body={"organisation_id": NEW, "role": "organisation"}
        ),
    },
    ("post", "/v1/consultations", "201"): {
        "GetConsultation": _link("get", C, query=AS_CREATED, consultation_id=NEW),
        "ReviseConsultation": _link("patch", C, consultation_id=NEW),
        "Reschedule": _link("post", f"{C}/reschedule", consultation_id=NEW),
        "ScheduleSession": _link("post", f"{C}/sessions", consultation_id=NEW),
        "FormWorkingGroup": _link("post", f"{C}/working-groups", consultation_id=NEW),
        "OpenRegistration": _link("post", f"{C}/open-registration", consultation_id=NEW),
        "ListRegistrations": _link("get", f"{C}/registrations", consultation_id=NEW),
        "StartDrafting": _link("post", f"{C}/statements", consultation_id=NEW),
        "Cancel": _link("post", f"{C}/cancel", consultation_id=NEW),
    },
    ("post", f"{C}/open-registration", "200"): {
        "Register": _link("post", f"{C}/registrations", consultation_id=SAME_C),
    },
    ("post", f"{C}/sessions", "201"): {
        "ChangeSession": _link(
            "patch", f"{C}/sessions/{{session_id}}", consultation_id=SAME_C, session_id=NEW
        ),
        "RemoveSession": _link(
            "delete", f"{C}/sessions/{{session_id}}", consultation_id=SAME_C, session_id=NEW
        ),
    },
    ("post", f"{C}/registrations", "201"): {
        "CancelRegistration": _link(
            "post",
            f"{C}/registrations/{{registration_id}}/cancel",
            consultation_id=SAME_C,
            registration_id=NEW,
        ),
        "CheckIn": _link(
            "post",
            f"{C}/registrations/{{registration_id}}/check-in",
            consultation_id=SAME_C,
            registration_id=NEW,
        ),
    },
    ("post", f"{C}/statements", "201"): {
        "GetStatement": _link("get", S, query=AS_CREATED, statement_id=NEW),
        "AddRecommendation": _link("post", f"{S}/recommendations", statement_id=NEW),
        "Finalise": _link("post", f"{S}/finalise", statement_id=NEW),
        "ListEndorsements": _link("get", f"{S}/endorsements", statement_id=NEW),
        "ListInvitations": _link("get", f"{S}/invitations", statement_id=NEW),
    },
    ("post", f"{S}/recommendations", "201"): {
        "ReviseRecommendation": _link(
            "patch",
            f"{S}/recommendations/{{recommendation_id}}",
            statement_id=SAME_S,
            recommendation_id=FIRST_RECOMMENDATION,
        ),
        "WithdrawRecommendation": _link(
            "delete",
            f"{S}/recommendations/{{recommendation_id}}",
            statement_id=SAME_S,
            recommendation_id=FIRST_RECOMMENDATION,
        ),
        "ProposeAmendment": _link(
            "post",
            f"{S}/amendments",
            body={"recommendation_id": FIRST_RECOMMENDATION},
            statement_id=SAME_S,
        ),
        "Finalise": _link("post", f"{S}/finalise", statement_id=SAME_S),
    },
    ("post", f"{S}/amendments", "201"): {
        name: _link(
            "post",
            f"{S}/amendments/{{amendment_id}}/{verb}",
            statement_id=SAME_S,
            amendment_id="$response.body#/amendment_id",
        )
        for name, verb in (("AcceptAmendment", "accept"), ("RejectAmendment", "reject"))
    },
    ("post", f"{S}/finalise", "200"): {
        "Endorse": _link("post", f"{S}/endorsements", statement_id=SAME_S),
        "Invite": _link("post", f"{S}/invitations", statement_id=SAME_S),
        "Reopen": _link("post", f"{S}/reopen", statement_id=SAME_S),
        "CloseEndorsements": _link("post", f"{S}/close-endorsements", statement_id=SAME_S),
    },
    ("post", f"{S}/invitations", "201"): {
        name: _link(method, path, statement_id=SAME_S, invitation_id=NEW)
        for name, method, path in (
            ("GetInvitation", "get", f"{S}/invitations/{{invitation_id}}"),
            ("ResendInvitation", "post", f"{S}/invitations/{{invitation_id}}/resend"),
            ("RevokeInvitation", "post", f"{S}/invitations/{{invitation_id}}/revoke"),
        )
    },
    ("post", "/v1/series", "201"): {
        "GetSeries": _link("get", "/v1/series/{series_id}", series_id=NEW),
        "AddCountries": _link("post", "/v1/series/{series_id}/countries", series_id=NEW),
    },
    ("post", "/v1/api-keys", "201"): {
        "RevokeKey": _link("delete", "/v1/api-keys/{key_id}", key_id=NEW),
        "KeyUsage": _link("get", "/v1/api-keys/{key_id}/usage", key_id=NEW),
    },
    ("post", "/v1/subscriptions", "201"): {
        name: _link(method, path, subscription_id=NEW)
        for name, method, path in (
            ("GetSubscription", "get", W),
            ("ChangeSubscription", "patch", W),
            ("DeleteSubscription", "delete", W),
            ("RotateSecret", "post", f"{W}/rotate-secret"),
            ("ListDeliveries", "get", f"{W}/deliveries"),
            ("Replay", "post", f"{W}/replay"),
        )
    },
}


def _carrying(schema: dict[str, Any], links: dict[str, Any]) -> dict[str, Any]:
    """``links``, each also carrying ``CARRIED`` headers its target reads."""
    carrying = {}
    for name, link in links.items():
        _, _, pointer, method = link["operationRef"].split("/")
        target = schema["paths"][pointer.replace("~1", "/").replace("~0", "~")][method]
        reads = {p["name"] for p in target.get("parameters", []) if p["in"] == "header"}
        headers = {f"header.{h}": value for h, value in CARRIED.items() if h in reads}
        carrying[name] = {**link, "parameters": {**link["parameters"], **headers}}
    return carrying


def _needs_key(dependant: Dependant) -> bool:
    """Whether a route (or one of its dependencies) depends on a role check."""
    if getattr(dependant.call, "requires_key", False):
        return True
    return any(_needs_key(sub) for sub in dependant.dependencies)


def _present(schema: dict[str, Any]) -> dict[str, Any]:
    """A parameter's schema without FastAPI's ``null`` branch for an optional one: a header or
    a query parameter is left out, never sent as null (a client reading ``null`` would send the
    text "null")."""
    branches = [b for b in schema.get("anyOf", []) if b != {"type": "null"}]
    if len(branches) != 1 or len(branches) == len(schema["anyOf"]):
        return schema
    rest = {k: v for k, v in schema.items() if k != "anyOf"}
    return {**branches[0], **rest}


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            keyed = {
                (method.lower(), route.path_format)
                for route in iter_route_contexts(app.routes)  # as included, with their dependencies
                if isinstance(route.original_route, APIRoute) and _needs_key(route.dependant)
                for method in route.methods or ()
            }
            app.openapi_schema = complete(schema, keyed)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def complete(schema: dict[str, Any], keyed: set[tuple[str, str]]) -> dict[str, Any]:
    """Add the shared conventions; ``keyed`` names the (method, path) operations that need a key."""
    problem = {"schema": {"$ref": "#/components/schemas/Problem"}}
    schema.setdefault("components", {}).setdefault("securitySchemes", {})["apiKey"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "Authorization: Bearer <API key> (concord keys create …).",
    }
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            responses = operation.setdefault("responses", {})
            for parameter in operation.get("parameters", []):
                parameter["schema"] = _present(parameter["schema"])
            params = {p["name"].lower() for p in operation.get("parameters", [])}
            if "requestBody" in operation or "if-match" in params:
                responses.setdefault("400", {"description": "Malformed input"})
            if "requestBody" in operation:
                responses.setdefault("413", {"description": "Request body too large"})
            if path.startswith("/v1/"):
                responses.setdefault("401", {"description": "Missing or invalid API key"})
                # Public reads take a key (a bad one is 401) but do not need one: {} says so.
                needed = (method, path) in keyed
                operation["security"] = [{"apiKey": []}] if needed else [{"apiKey": []}, {}]
            if path not in UNLIMITED:
                limited = responses.setdefault("429", dict(RATE_LIMITED))
                limited.setdefault("headers", RATE_LIMITED["headers"])
            if path.startswith(EVENT_ROUTES):
                responses.setdefault("403", {"description": "This key's role may not"})
            if "x-min-position" in params:
                responses.setdefault(
                    "503", {"description": "The read side has not reached X-Min-Position"}
                )
            for (m, p, status), links in LINKS.items():
                if (m, p) == (method, path) and status in responses:
                    responses[status]["links"] = _carrying(schema, links)
            if path in MEDIA and "200" in responses:
                responses["200"]["content"] = MEDIA[path]
            for status, response in responses.items():
                if status[0] in "45":
                    # A page's own refusals are pages; the middleware's (429, 413) problems.
                    html = {k: v for k, v in response.get("content", {}).items() if k == HTML}
                    response["content"] = {**html, PROBLEM: problem}
    return schema
