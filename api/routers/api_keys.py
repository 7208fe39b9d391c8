"""API keys, managed by admins. A key's secret is shown once, at creation.

How a key is used (``GET /v1/api-keys/{id}/usage``) may also be read by the organisation the
key belongs to."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from fastapi import Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from api.deps import Admin, Principal, SystemDep, require
from api.fields import Text
from api.problems import ProblemError
from api.ratelimit import guard_of
from api.routing import Router
from api.schemas import Problem
from api.threads import in_thread
from infra import key_usage
from infra.keys import ApiKey, KeyError_

router = Router(prefix="/v1/api-keys", tags=["api keys"])


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Text(200)  # type: ignore[valid-type]
    role: Literal["admin", "organiser", "organisation", "integrator"]
    organisation_id: UUID | None = None


class ApiKeyPublic(BaseModel):
    id: UUID
    name: str
    role: str
    organisation_id: UUID | None
    prefix: str = Field(description="Shown in clear so a leaked key can be recognised.")
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None = Field(
        None, description="When the key was last used (updated every few seconds)."
    )

    @classmethod
    def of(cls, key: ApiKey) -> ApiKeyPublic:
        return cls(
            id=key.id,
            name=key.name,
            role=key.role,
            organisation_id=key.organisation_id,
            prefix=key.prefix,
            created_at=key.created_at,
            revoked_at=key.revoked_at,
            last_used_at=key.last_used_at,
        )


class ApiKeyCreated(ApiKeyPublic):
    key: str = Field(description="The secret. It is shown only in this response.")


ERRORS = {401: {"model": Problem}, 403: {"model": Problem}}


@router.post(
    "", status_code=201, response_model=ApiKeyCreated, responses={**ERRORS, 422: {"model": Problem}}
)
async def create_api_key(body: ApiKeyCreate, system: SystemDep, principal: Admin) -> ApiKeyCreated:
    """Create a key; the response carries its secret, which is never shown again."""
    if body.organisation_id is not None:
        from api.routers.organisations import load_organisation

        try:
            await load_organisation(system, body.organisation_id)
        except ProblemError:
            raise ProblemError(
                422,
                "Validation failed",
                f"Unknown organisation {body.organisation_id}.",
                type_="validation-failed",
                errors=[
                    {
                        "field": "organisation_id",
                        "in": "body",
                        "message": "unknown organisation",
                        "type": "unknown",
                    }
                ],
            ) from None
    try:
        key, secret = await in_thread(
            system.keys.create, body.role, body.name, body.organisation_id, principal.actor
        )
    except KeyError_ as exc:
        raise ProblemError(422, "Validation failed", str(exc), type_="invalid-api-key") from None
    return ApiKeyCreated(**ApiKeyPublic.of(key).model_dump(), key=secret)


@router.get("", response_model=list[ApiKeyPublic], responses=ERRORS)
async def list_api_keys(system: SystemDep, _principal: Admin) -> list[ApiKeyPublic]:
    """Every key, active and revoked (never their secrets)."""
    return [ApiKeyPublic.of(k) for k in await in_thread(system.keys.list)]


@router.delete(
    "/{key_id}", response_model=ApiKeyPublic, responses={**ERRORS, 404: {"model": Problem}}
)
async def revoke_api_key(key_id: UUID, system: SystemDep, principal: Admin) -> ApiKeyPublic:
    """Revoke a key at once (idempotent)."""
    key = await in_thread(system.keys.revoke, key_id, principal.actor)
    if key is None:
        raise ProblemError(404, "Not found", f"No API key {key_id}.", type_="unknown-api-key")
    return ApiKeyPublic.of(key)


class UsageCounts(BaseModel):
    reads: int = Field(description="Reads answered (GET, HEAD, OPTIONS).")
    writes: int = Field(description="Commands answered (any other method).")
    denied: int = Field(description="Refused for the key itself: 403, or 401 once revoked.")
    rate_limited: int = Field(description="Refused with 429: the key's budget was used up.")


class UsageHourPublic(UsageCounts):
    hour: datetime = Field(description="The hour (UTC) these counts are for.")
    last_used_at: datetime
    last_client: str = Field(description="Client address of the last use that hour (IPv6: /64).")


class ApiKeyUsagePublic(BaseModel):
    key: ApiKeyPublic
    since: datetime = Field(description="Start of the first hour counted.")
    totals: UsageCounts
    last_used_at: datetime | None
    last_client: str | None
    data: list[UsageHourPublic] = Field(
        description="One entry per hour with any use, oldest first."
    )


Usage = Annotated[Principal, Depends(require("admin", "organisation"))]


@router.get(
    "/{key_id}/usage",
    response_model=ApiKeyUsagePublic,
    responses={**ERRORS, 404: {"model": Problem}},
)
async def api_key_usage(
    key_id: UUID,
    request: Request,
    system: SystemDep,
    principal: Usage,
    days: Annotated[int, Query(ge=1, le=90, description="How many days back.")] = 7,
) -> ApiKeyUsagePublic:
    """How a key was used, hour by hour: reads, writes, refusals, last use and address.

    Admins see every key; an organisation key sees the keys of its own organisation. Counts
    from other API processes arrive within ``CONCORD_KEY_USAGE_FLUSH`` seconds."""
    key = await in_thread(system.keys.get, key_id)
    if principal.role != "admin" and (
        key is None
        or key.organisation_id is None
        or key.organisation_id != principal.organisation_id
    ):
        raise ProblemError(
            403,
            "Forbidden",
            "An organisation key sees only its own organisation's keys.",
            type_="forbidden",
        )
    if key is None:
        raise ProblemError(404, "Not found", f"No API key {key_id}.", type_="unknown-api-key")
    since = key_usage.since_days(days)

    def load() -> tuple[ApiKey | None, list[key_usage.UsageHour]]:
        guard_of(request.app).usage.flush()  # this process's counts, up to this request
        return system.keys.get(key_id), key_usage.hours(system.db, key_id, since)

    fresh, rows = await in_thread(load)
    totals = key_usage.totals(rows)
    return ApiKeyUsagePublic(
        key=ApiKeyPublic.of(fresh or key),
        since=since,
        totals=UsageCounts(
            reads=totals.reads,
            writes=totals.writes,
            denied=totals.denied,
            rate_limited=totals.rate_limited,
        ),
        last_used_at=(fresh or key).last_used_at,
        last_client=totals.last_client,
        data=[
            UsageHourPublic(
                hour=r.hour,
                reads=r.reads,
                writes=r.writes,
                denied=r.denied,
                rate_limited=r.rate_limited,
                last_used_at=r.last_used_at,
                last_client=r.last_client,
            )
            for r in rows
        ],
    )
