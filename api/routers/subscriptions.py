"""Webhook subscriptions: integrators manage their own, admins see and manage all.

Who may: ``admin`` keys, and ``integrator`` keys for the subscriptions they created. Another
key's subscription answers 404 (not 403), so ids of other integrators' subscriptions cannot be
probed. Organiser and organisation keys get 403: webhooks are an integration concern; an
organiser who wants them asks an admin for an integrator key. Revoking the key that owns a
subscription stops its deliveries (they wait; an admin may delete the subscription).
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Literal
from uuid import UUID

from fastapi import Depends, Query, Response
from pydantic import BaseModel, ConfigDict, EmailStr, Field, StringConstraints

from api.deps import Principal, SystemDep, require
from api.fields import Text
from api.problems import ProblemError
from api.routing import Router
from api.schemas import Problem
from api.threads import in_thread
from infra.bootstrap import System
from infra.integration.contract import for_internal
from infra.webhooks.subscriptions import (
    UNSET,
    Delivery,
    Subscription,
    SubscriptionError,
    Subscriptions,
    subscriptions,
)

router = Router(prefix="/v1/subscriptions", tags=["webhooks"])

Integrator = Annotated[Principal, Depends(require("admin", "integrator"))]
Url = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2048)]
EventType = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
EventTypes = Annotated[list[EventType], Field(min_length=1, max_length=100)]
MAX_PAGE = 200
CONTACT = (
    "Who is told by e-mail when the endpoint is disabled (gone, or failing for days); "
    "without one, nobody is mailed (the subscription's status still shows it)."
)


class SubscriptionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: Url = Field(description="An https URL on a public address.")
    event_types: EventTypes | None = Field(
        default=None,
        description="Public event types (`statement.endorsed` or "
        "`org.concord.statement.endorsed.v1`); omit for every public type.",
    )
    description: Text(500) | None = None  # type: ignore[valid-type]
    contact_email: EmailStr | None = Field(default=None, description=CONTACT)


class SubscriptionUpdate(BaseModel):
    """Fields to change; `status` pauses or resumes (resuming also re-enables a disabled one)."""

    model_config = ConfigDict(extra="forbid")
    url: Url | None = None
    event_types: EventTypes | None = Field(default=None, description="null: every public type.")
    description: Text(500) | None = None  # type: ignore[valid-type]
    contact_email: EmailStr | None = Field(default=None, description=CONTACT)
    status: Literal["active", "paused"] | None = None


class SubscriptionPublic(BaseModel):
    id: UUID
    owner_key_id: UUID
    url: str
    event_types: list[str] | None = Field(description="null: every public event type.")
    description: str | None
    contact_email: str | None = Field(description=CONTACT)
    status: Literal["active", "paused", "disabled"]
    disabled_at: datetime | None
    disabled_reason: str | None
    failing_since: datetime | None = Field(description="First failure since the last success.")
    start_after: int = Field(description="Events after this position are delivered.")
    previous_secret_expires_at: datetime | None = Field(
        description="Until then deliveries are also signed with the previous secret."
    )
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, sub: Subscription) -> SubscriptionPublic:
        grace = sub.previous_secret_expires_at
        return cls(
            id=sub.id,
            owner_key_id=sub.owner_key_id,
            url=sub.url,
            event_types=list(sub.event_types) if sub.event_types is not None else None,
            description=sub.description,
            contact_email=sub.contact_email,
            status=sub.status,  # type: ignore[arg-type]
            disabled_at=sub.disabled_at,
            disabled_reason=sub.disabled_reason,
            failing_since=sub.failing_since,
            start_after=sub.start_after,
            previous_secret_expires_at=grace if grace and grace > datetime.now(UTC) else None,
            created_at=sub.created_at,
            updated_at=sub.updated_at,
        )


class SubscriptionCreated(SubscriptionPublic):
    secret: str = Field(description="The signing secret (`whsec_…`), shown only in this response.")


class SecretRotated(SubscriptionPublic):
    secret: str = Field(description="The new signing secret, shown only in this response.")


class SubscriptionsPublic(BaseModel):
    data: list[SubscriptionPublic]


class AttemptPublic(BaseModel):
    number: int
    round: int = Field(description="0 for the first delivery; each replay or resume adds one.")
    started_at: datetime
    duration_ms: int
    status_code: int | None
    error: str | None
    response_body: str | None = Field(description="The first bytes the endpoint answered.")


class DeliveryPublic(BaseModel):
    id: UUID
    event_id: UUID = Field(description="Also the `webhook-id` header and the CloudEvent `id`.")
    position: int
    type: str
    public_type: str | None
    status: Literal["pending", "sending", "delivered", "failed"]
    attempts: int = Field(description="Attempts in the current round.")
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    attempt_log: list[AttemptPublic] = Field(description="The most recent attempts, oldest first.")

    @classmethod
    def of(cls, d: Delivery) -> DeliveryPublic:
        entry = for_internal(d.event_type)
        return cls(
            id=d.id,
            event_id=d.event_id,
            position=d.position,
            type=d.event_type,
            public_type=entry.type if entry else None,
            status=d.status,  # type: ignore[arg-type]
            attempts=d.attempts,
            next_attempt_at=d.next_attempt_at,
            last_status_code=d.last_status_code,
            last_error=d.last_error,
            created_at=d.created_at,
            delivered_at=d.delivered_at,
            attempt_log=[AttemptPublic(**asdict(a)) for a in d.attempt_log],
        )


class DeliveriesPublic(BaseModel):
    data: list[DeliveryPublic]
    next_after: int = Field(description="Pass as `after` for the next page.")
    has_more: bool


class ReplayRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    after: int = Field(ge=0, le=2**63 - 1, description="Re-send events after this position.")


class ReplayAccepted(BaseModel):
    after: int
    until: int = Field(description="Events up to here are scheduled again.")
    scheduled: int
    complete: bool = Field(description="False: call again with `after` = `until` for the rest.")


ERRORS = {401: {"model": Problem}, 403: {"model": Problem}}
FOUND = {**ERRORS, 404: {"model": Problem}}


def _subs(system: System) -> Subscriptions:
    return subscriptions(system)


def _invalid(exc: SubscriptionError) -> ProblemError:
    return ProblemError(
        422,
        "Validation failed",
        str(exc),
        type_="validation-failed",
        errors=[{"field": exc.field, "in": "body", "message": str(exc), "type": "invalid"}],
    )


async def _owned(system: System, principal: Principal, subscription_id: UUID) -> Subscription:
    """The subscription if the caller may see it; 404 otherwise (another key's is not found)."""
    sub = await in_thread(_subs(system).get, subscription_id)
    mine = sub is not None and (
        principal.role == "admin"
        or (principal.key is not None and sub.owner_key_id == principal.key.id)
    )
    if sub is None or not mine:
        raise ProblemError(
            404, "Not found", f"No subscription {subscription_id}.", type_="unknown-subscription"
        )
    return sub


@router.post(
    "",
    status_code=201,
    response_model=SubscriptionCreated,
    responses={**ERRORS, 422: {"model": Problem}},
)
async def create_subscription(
    body: SubscriptionCreate, system: SystemDep, principal: Integrator, response: Response
) -> SubscriptionCreated:
    """Subscribe a URL to events from now on; the response carries the signing secret once."""
    assert principal.key is not None
    try:
        sub, secret = await in_thread(
            _subs(system).create,
            principal.key.id,
            body.url,
            body.event_types,
            body.description,
            principal.actor,
            str(body.contact_email) if body.contact_email else None,
        )
    except SubscriptionError as exc:
        raise _invalid(exc) from None
    response.headers["Location"] = f"/v1/subscriptions/{sub.id}"
    return SubscriptionCreated(**SubscriptionPublic.of(sub).model_dump(), secret=secret)


@router.get("", response_model=SubscriptionsPublic, responses=ERRORS)
async def list_subscriptions(system: SystemDep, principal: Integrator) -> SubscriptionsPublic:
    """The caller's subscriptions (an admin sees every key's)."""
    owner = None if principal.role == "admin" or principal.key is None else principal.key.id
    found = await in_thread(_subs(system).all, owner)
    return SubscriptionsPublic(data=[SubscriptionPublic.of(s) for s in found])


@router.get("/{subscription_id}", response_model=SubscriptionPublic, responses=FOUND)
async def get_subscription(
    subscription_id: UUID, system: SystemDep, principal: Integrator
) -> SubscriptionPublic:
    """One subscription (never its secret)."""
    return SubscriptionPublic.of(await _owned(system, principal, subscription_id))


@router.patch(
    "/{subscription_id}",
    response_model=SubscriptionPublic,
    responses={**FOUND, 422: {"model": Problem}},
)
async def update_subscription(
    subscription_id: UUID, body: SubscriptionUpdate, system: SystemDep, principal: Integrator
) -> SubscriptionPublic:
    """Change the URL, event types, description or contact; pause or resume deliveries."""
    await _owned(system, principal, subscription_id)
    given = body.model_fields_set
    if "url" in given and body.url is None:
        raise _invalid(SubscriptionError("url", "url cannot be null"))
    try:
        sub = await in_thread(
            lambda: _subs(system).update(
                subscription_id,
                url=body.url if "url" in given else UNSET,
                event_types=body.event_types if "event_types" in given else UNSET,
                description=body.description if "description" in given else UNSET,
                contact_email=(str(body.contact_email) if body.contact_email else None)
                if "contact_email" in given
                else UNSET,
                status=body.status,
            )
        )
    except SubscriptionError as exc:
        raise _invalid(exc) from None
    if sub is None:
        raise ProblemError(404, "Not found", f"No subscription {subscription_id}.")
    return SubscriptionPublic.of(sub)


@router.delete("/{subscription_id}", status_code=204, responses=FOUND)
async def delete_subscription(
    subscription_id: UUID, system: SystemDep, principal: Integrator
) -> Response:
    """Stop and remove a subscription with its delivery log."""
    await _owned(system, principal, subscription_id)
    await in_thread(_subs(system).delete, subscription_id)
    return Response(status_code=204)


@router.post("/{subscription_id}/rotate-secret", response_model=SecretRotated, responses=FOUND)
async def rotate_secret(
    subscription_id: UUID, system: SystemDep, principal: Integrator
) -> SecretRotated:
    """A new signing secret; the previous one also signs for a grace period (both signatures)."""
    await _owned(system, principal, subscription_id)
    rotated = await in_thread(_subs(system).rotate, subscription_id)
    if rotated is None:
        raise ProblemError(404, "Not found", f"No subscription {subscription_id}.")
    sub, secret = rotated
    return SecretRotated(**SubscriptionPublic.of(sub).model_dump(), secret=secret)


@router.get(
    "/{subscription_id}/deliveries",
    response_model=DeliveriesPublic,
    responses={**FOUND, 422: {"model": Problem}},
)
async def list_deliveries(
    subscription_id: UUID,
    system: SystemDep,
    principal: Integrator,
    after: Annotated[int, Query(ge=0, le=2**63 - 1, description="Deliveries of events after.")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    status: Literal["pending", "sending", "delivered", "failed"] | None = None,
) -> DeliveriesPublic:
    """The delivery log in position order: attempts, status codes, the next retry."""
    await _owned(system, principal, subscription_id)
    page = await in_thread(
        lambda: _subs(system).deliveries(subscription_id, after=after, limit=limit, status=status)
    )
    return DeliveriesPublic(
        data=[DeliveryPublic.of(d) for d in page],
        next_after=page[-1].position if page else after,
        has_more=len(page) == limit,
    )


@router.post(
    "/{subscription_id}/replay",
    status_code=202,
    response_model=ReplayAccepted,
    responses={**FOUND, 422: {"model": Problem}},
)
async def replay(
    subscription_id: UUID, body: ReplayRequest, system: SystemDep, principal: Integrator
) -> ReplayAccepted:
    """Send every wanted event after a position again, in order (same `webhook-id`s)."""
    await _owned(system, principal, subscription_id)
    done = await in_thread(_subs(system).replay, subscription_id, body.after)
    if done is None:
        raise ProblemError(404, "Not found", f"No subscription {subscription_id}.")
    return ReplayAccepted(
        after=done.after, until=done.until, scheduled=done.scheduled, complete=done.complete
    )
