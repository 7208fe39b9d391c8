"""A subscription's stream in the log: which failures and disablings are already recorded.

The worker decides to give up a delivery or disable an endpoint, records the fact here, then
updates its tables. A worker killed between the two runs the same decision again with the
same ``episode`` (the delivery and attempt number): recording it twice is a no-op.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from services.decider import Context, Decider
from services.messages import DomainEvent
from services.webhooks.commands import DisableEndpoint, RecordDeliveryFailure
from services.webhooks.events import WebhookDeliveryFailed, WebhookEndpointDisabled

STREAM_TYPE = "webhook_subscription"


@dataclass(frozen=True)
class SubscriptionRecord:
    episodes: frozenset[str] = frozenset()


Command = RecordDeliveryFailure | DisableEndpoint


def evolve(state: SubscriptionRecord, event: DomainEvent) -> SubscriptionRecord:
    match event:
        case WebhookDeliveryFailed() | WebhookEndpointDisabled():
            return replace(state, episodes=state.episodes | {f"{event.type}:{event.episode}"})
    return state


def decide(state: SubscriptionRecord, command: Command, ctx: Context) -> Sequence[DomainEvent]:
    match command:
        case RecordDeliveryFailure():
            event: DomainEvent = WebhookDeliveryFailed(
                subscription_id=command.subscription_id,
                delivery_id=command.delivery_id,
                event_id=command.event_id,
                position=command.position,
                attempts=command.attempts,
                status_code=command.status_code,
                error=command.error,
                episode=command.episode,
            )
        case DisableEndpoint():
            event = WebhookEndpointDisabled(
                subscription_id=command.subscription_id,
                owner_key_id=command.owner_key_id,
                reason=command.reason,
                failing_since=command.failing_since,
                status_code=command.status_code,
                episode=command.episode,
            )
        case _:
            raise TypeError(f"not a webhook command: {command!r}")
    if f"{event.type}:{command.episode}" in state.episodes:
        return []
    return [event]


SUBSCRIPTION: Decider[SubscriptionRecord, Command] = Decider(
    STREAM_TYPE, SubscriptionRecord, evolve, decide
)
