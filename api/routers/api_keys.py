"""API keys, managed by admins. A key's secret is shown once, at creation."""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from api.deps import Admin, SystemDep
from api.fields import Text
from api.problems import ProblemError
from api.schemas import Problem
from infra.keys import ApiKey, KeyError_

router = APIRouter(prefix="/v1/api-keys", tags=["api keys"])


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
        key, secret = await run_in_threadpool(
            system.keys.create, body.role, body.name, body.organisation_id, principal.actor
        )
    except KeyError_ as exc:
        raise ProblemError(422, "Validation failed", str(exc), type_="invalid-api-key") from None
    return ApiKeyCreated(**ApiKeyPublic.of(key).model_dump(), key=secret)


@router.get("", response_model=list[ApiKeyPublic], responses=ERRORS)
async def list_api_keys(system: SystemDep, _principal: Admin) -> list[ApiKeyPublic]:
    """Every key, active and revoked (never their secrets)."""
    return [ApiKeyPublic.of(k) for k in await run_in_threadpool(system.keys.list)]


@router.delete(
    "/{key_id}", response_model=ApiKeyPublic, responses={**ERRORS, 404: {"model": Problem}}
)
async def revoke_api_key(key_id: UUID, system: SystemDep, _principal: Admin) -> ApiKeyPublic:
    """Revoke a key at once (idempotent)."""
    key = await run_in_threadpool(system.keys.revoke, key_id)
    if key is None:
        raise ProblemError(404, "Not found", f"No API key {key_id}.", type_="unknown-api-key")
    return ApiKeyPublic.of(key)
