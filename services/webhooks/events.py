"""What happens to a webhook subscription that the log records, as past-tense facts.

Subscriptions themselves are configuration owned by an API key (a table, not the log); what
the log records are the outcomes that matter later: a delivery given up after the whole retry
schedule, and an endpoint disabled (gone, or failing for days) — the cue to tell its owner.
Successful deliveries are recorded in the delivery table, one row per (subscription, event).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from services.messages import DomainEvent
from services.registry import EVENTS


@EVENTS.register
@dataclass(frozen=True)
class WebhookDeliveryFailed(DomainEvent):
    """Every scheduled attempt to deliver one event to one endpoint failed; it was given up."""

    type = "webhook.delivery_failed"
    subscription_id: UUID
    delivery_id: UUID
    event_id: UUID
    position: int
    attempts: int
    status_code: int | None
    error: str | None
    #: What makes this fact unique (the delivery and the attempt that ended it).
    episode: str


@EVENTS.register
@dataclass(frozen=True)
class WebhookEndpointDisabled(DomainEvent):
    """Deliveries to an endpoint stopped: it answered 410 Gone, or kept failing for too long."""

    type = "webhook.endpoint_disabled"
    subscription_id: UUID
    owner_key_id: UUID
    reason: str
    failing_since: datetime | None
    status_code: int | None
    episode: str
