"""Public JSON shapes shared by several routers."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, Field

from infra.integration.contract import envelope
from services.ports import RecordedEvent


class EventMetadataPublic(BaseModel):
    actor: str | None = None
    api_key_id: str | None = None
    causation_id: str | None = None
    correlation_id: str | None = None


class EventPublic(BaseModel):
    """One event of the log, as integrators see it (``infra/integration/contract.py``)."""

    id: UUID
    type: str = Field(description="The event's name, e.g. `statement.endorsed`.")
    public_type: str | None = Field(
        default=None,
        description="The versioned public type (`org.concord.statement.endorsed.v1`, see "
        "`GET /v1/event-types`); null for internal events.",
    )
    stream_id: UUID
    stream_type: str
    version: int = Field(description="Place in its own stream: 1, 2, 3 … without gaps.")
    position: int = Field(description="Global, contiguous, strictly increasing feed order.")
    schema_version: int
    recorded_at: datetime
    data: dict[str, Any] = Field(description="The payload; personal data as plain values.")
    metadata: EventMetadataPublic

    @classmethod
    def of(cls, event: RecordedEvent) -> EventPublic:
        return cls.model_validate(envelope(event))


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
