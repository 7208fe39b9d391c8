"""The event catalogue: every public event type with its JSON Schema, and the AsyncAPI document."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from api.deps import EventReader, SystemDep
from api.routing import Router
from api.schemas import Problem
from infra.integration import asyncapi
from infra.integration.contract import SCHEMA_DIALECT, data_schema, public_types

router = Router(prefix="/v1", tags=["events"])


class EventTypePublic(BaseModel):
    type: str = Field(description="Versioned public type: CloudEvents `type`, SSE `event:`.")
    name: str = Field(description="The name the feed's `type` field shows.")
    version: int = Field(description="Major version of this type's contract.")
    description: str
    schema_: dict[str, Any] = Field(
        alias="schema", description="JSON Schema (draft-07) of the event's `data`."
    )


class EventTypesPublic(BaseModel):
    data: list[EventTypePublic]


@router.get(
    "/event-types",
    response_model=EventTypesPublic,
    response_model_by_alias=True,
    responses={403: {"model": Problem, "description": "This key's role may not"}},
    summary="List every public event type with its JSON Schema",
)
async def list_event_types(_principal: EventReader) -> EventTypesPublic:
    """The public event contract: what the feed, the live stream and webhooks carry."""
    return EventTypesPublic(
        data=[
            EventTypePublic.model_validate(
                {
                    "type": entry.type,
                    "name": entry.name,
                    "version": entry.version,
                    "description": entry.description,
                    "schema": {"$schema": SCHEMA_DIALECT, **data_schema(entry.type)},
                }
            )
            for entry in public_types()
        ]
    )


@router.get(
    "/asyncapi.json",
    responses={200: {"content": {"application/json": {"schema": {"type": "object"}}}}},
    summary="The AsyncAPI 3.0 document of the webhook and live-stream channels",
)
async def asyncapi_document(system: SystemDep) -> JSONResponse:
    """Public, like `/openapi.json`: generate webhook receivers and stream clients from it."""
    return JSONResponse(asyncapi.document(system.settings.public_url))
