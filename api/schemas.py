"""Public JSON shapes shared by several routers."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, Field

from services.ports import RecordedEvent


class EventMetadataPublic(BaseModel):
    actor: str | None = None
    api_key_id: str | None = None
    causation_id: str | None = None
    correlation_id: str | None = None


class EventPublic(BaseModel):
    """One event of the log, as integrators see it."""

    id: UUID
    type: str
    stream_id: UUID
    stream_type: str
    version: int = Field(description="Place in its own stream: 1, 2, 3 … without gaps.")
    position: int = Field(description="Global, contiguous, strictly increasing feed order.")
    schema_version: int
    recorded_at: datetime
    data: dict[str, Any]
    metadata: EventMetadataPublic

    @classmethod
    def of(cls, event: RecordedEvent) -> EventPublic:
        return cls(
            id=event.id,
            type=event.type,
            stream_id=event.stream_id,
            stream_type=event.stream_type,
            version=event.version,
            position=event.position or 0,
            schema_version=event.schema_version,
            recorded_at=event.recorded_at,
            data=event.data,
            metadata=EventMetadataPublic(**event.metadata),
        )


class EventPage(BaseModel):
    """A page of the log in position order."""

    data: list[EventPublic]
    next_after: int = Field(description="Pass as `after` to get the next page.")
    has_more: bool = Field(description="True when a full page was returned (ask again).")
    head_position: int = Field(description="The highest position in the log right now.")


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[dict[str, Any]] | None = None
