"""RFC 9457 problem details: every error the API returns, mapped in one place."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.bus import Outcome, PreconditionFailed
from services.errors import ConcurrencyError, DomainError

PROBLEM = "application/problem+json"
TYPE_BASE = "https://concord.example/problems/"
log = structlog.get_logger("concord.api")


class ProblemError(Exception):
    """Raise from a route to answer with a problem document."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        type_: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type_ or title.lower().replace(" ", "-")
        self.headers = headers
        self.extra = extra


def problem(
    status: int,
    title: str,
    detail: str | None = None,
    *,
    type_: str | None = None,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": TYPE_BASE + (type_ or title.lower().replace(" ", "-")),
        "title": title,
        "status": status,
    }
    if detail:
        body["detail"] = detail
    if instance:
        body["instance"] = instance
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


class Accepted(Exception):
    """The command is committed but its position (and so the read side) is still pending:
    an older transaction holds the log's horizon. Answered as 202 from the outcome."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__("accepted")
        self.outcome = outcome


_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    406: "Not acceptable",
    409: "Conflict",
    412: "Precondition failed",
    413: "Content too large",
    415: "Unsupported media type",
    422: "Validation failed",
    429: "Too many requests",
    503: "Service unavailable",
}


def install(app: FastAPI) -> None:
    """Register the exception handlers that turn every error into problem+json."""

    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> Response:
        return problem(
            exc.status,
            exc.title,
            exc.detail,
            type_=exc.type,
            instance=request.url.path,
            headers=exc.headers,
            **exc.extra,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        title = _TITLES.get(exc.status_code, "Error")
        detail = exc.detail if isinstance(exc.detail, str) and exc.detail != title else None
        return problem(
            exc.status_code,
            title,
            detail,
            instance=request.url.path,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        errors = [_field_error(e) for e in exc.errors()]
        if any(e["type"] in ("json_invalid", "json_type") for e in errors):
            return problem(
                400,
                "Malformed JSON",
                "The request body is not valid JSON.",
                type_="malformed-json",
                instance=request.url.path,
                errors=errors,
            )
        return problem(
            422,
            "Validation failed",
            "One or more fields are invalid.",
            type_="validation-failed",
            instance=request.url.path,
            errors=errors,
        )

    @app.exception_handler(ConcurrencyError)
    async def _conflict(request: Request, exc: ConcurrencyError) -> Response:
        return problem(
            409,
            "Concurrent modification",
            str(exc),
            type_="concurrency-conflict",
            instance=request.url.path,
            stream_id=str(exc.stream_id),
            expected_version=exc.expected,
            actual_version=exc.actual,
        )

    @app.exception_handler(Accepted)
    async def _accepted(request: Request, exc: Accepted) -> Response:
        outcome = exc.outcome
        return JSONResponse(
            {
                "status": "accepted",
                "stream_id": str(outcome.stream_id),
                "version": outcome.version,
                "detail": "The change is committed; it will appear in reads shortly.",
            },
            status_code=202,
            headers={
                "ETag": f'"{outcome.version}"',
                "Retry-After": "1",
                **({"X-Event-Position": str(outcome.position)} if outcome.position else {}),
            },
        )

    @app.exception_handler(PreconditionFailed)
    async def _precondition(request: Request, exc: PreconditionFailed) -> Response:
        return problem(
            412,
            "Precondition failed",
            str(exc),
            type_=exc.code,
            instance=request.url.path,
            current_version=exc.actual,
        )

    @app.exception_handler(DomainError)
    async def _domain(request: Request, exc: DomainError) -> Response:
        status, title = domain_status(exc)
        extra: dict[str, Any] = {
            k: jsonable_encoder(v)
            for k, v in (getattr(exc, "details", None) or {}).items()
            if k not in ("type", "title", "status", "detail", "instance", "errors")
        }
        field = getattr(exc, "field", None)
        if isinstance(field, str):
            where = "body"
            extra["errors"] = [{"field": field, "in": where, "message": str(exc), "type": exc.code}]
        return problem(status, title, str(exc), type_=exc.code, instance=request.url.path, **extra)

    @app.exception_handler(DBAPIError)
    async def _database(request: Request, exc: DBAPIError) -> Response:
        return await _unexpected(request, exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        # Also reached by errors raised in middleware (authentication, idempotency claims).
        if database_unavailable(exc):
            log.warning("database unavailable", path=request.url.path, error=repr(exc))
            request.scope.setdefault("state", {})[DATABASE_LOST] = True  # api/middleware.py
            return problem(
                503,
                "Service unavailable",
                "The database connection was lost. Retry shortly; with the same "
                "Idempotency-Key a command takes effect once, however often it is sent.",
                type_="database-unavailable",
                instance=request.url.path,
                headers={"Retry-After": "1"},
            )
        log.exception("unhandled error", path=request.url.path)
        return problem(
            500,
            "Internal server error",
            "An unexpected error occurred; it has been logged.",
            type_="internal",
            instance=request.url.path,
        )


#: Marks a request answered 503 for a lost database connection (reads are retried once).
DATABASE_LOST = "concord_database_unavailable"


def database_unavailable(exc: BaseException) -> bool:
    """A lost or refused database connection (killed, restarting, unreachable), or a
    transaction the database gave up (deadlock, serialisation): worth a retry, not a bug."""
    return isinstance(exc, OperationalError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    )


#: Refusals that are about the input, not the state: 422 even though the domain decided them.
UNPROCESSABLE = {"unknown-thematic-area", "reason-required", "duplicate-identifier"}
#: Refusals about who is acting.
FORBIDDEN = {"not-your-organisation", "not-on-drafting-committee"}


def domain_status(exc: DomainError) -> tuple[int, str]:
    """A refused command's HTTP status: unknown things 404, invalid input 422, else 409."""
    code = exc.code
    if code in FORBIDDEN:
        return 403, "Forbidden"
    if code in UNPROCESSABLE or code.startswith("invalid-"):
        return 422, "Validation failed"
    if code.startswith("unknown-") or code == "not-found":
        return 404, "Not found"
    return 409, "Conflict"


def _field_error(error: Any) -> dict[str, Any]:
    loc = [str(p) for p in error.get("loc", ())]
    return {
        "field": ".".join(
            loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc
        ),
        "in": loc[0] if loc else None,
        "message": error.get("msg"),
        "type": error.get("type"),
    }
