"""What the delivery worker asks of a subscription's record in the log."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID


@dataclass(frozen=True)
class RecordDeliveryFailure:
    subscription_id: UUID
    delivery_id: UUID
    event_id: UUID
    position: int
    attempts: int
    status_code: int | None
    error: str | None
    episode: str


@dataclass(frozen=True)
class DisableEndpoint:
    subscription_id: UUID
    owner_key_id: UUID
    reason: str
    failing_since: datetime | None
    status_code: int | None
    episode: str
