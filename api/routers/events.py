"""The event log for integrators: the paged feed, the live stream and single streams."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any
from uuid import UUID

import anyio.to_thread
import orjson
from fastapi import Depends, Header, Query, Request, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, Field

from api.deps import EventReader, MinPosition, Principal, SystemDep, app_member
from api.problems import ProblemError
from api.routing import Router
from api.schemas import EventPage, EventPublic, Problem
from api.threads import in_thread
from infra.bootstrap import System
from infra.integration import live
from infra.integration.contract import envelope, internal_types, public_event

router = Router(prefix="/v1", tags=["events"])

MAX_PAGE = 1000
#: A full page never changes (positions are contiguous and handed out in order), so it may be
#: kept for a year; ``private`` because what a response holds depends on the caller's key.
IMMUTABLE = "private, max-age=31536000, immutable"
#: The head page grows: keep it, but ask again (with If-None-Match) before using it.
REVALIDATE = "private, no-cache"

Position = Annotated[int, Query(ge=0, le=2**63 - 1, description="Events with position > after.")]
Types = Annotated[
    str | None,
    Query(
        max_length=2000,
        description="Comma-separated event types: names (`statement.endorsed`) or versioned "
        "public types (`org.concord.statement.endorsed.v1`).",
    ),
]
StreamType = Annotated[str | None, Query(max_length=64, description="e.g. `statement`.")]
StreamId = Annotated[UUID | None, Query(description="Only this stream's events.")]


def _types(raw: str | None) -> list[str] | None:
    if not raw:
        return None
    names = [t.strip() for t in raw.split(",") if t.strip()]
    if len(names) > 50:
        raise ProblemError(422, "Validation failed", "At most 50 event types per request.")
    return internal_types(names) or None


def _etag_matches(header: str | None, etag: str) -> bool:
    """Weak comparison (RFC 9110 13.1.2), as If-None-Match uses."""
    if header is None:
        return False
    if header.strip() == "*":
        return True
    wanted = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == wanted for tag in header.split(","))


_PAGE_HEADERS = {
    "ETag": {
        "description": "Strong on the head page; weak on a full page, whose `head_position` "
        "may be newer than a cached copy's.",
        "schema": {"type": "string"},
    },
    "Cache-Control": {
        "description": f"`{IMMUTABLE}` on a full page (it never changes), `{REVALIDATE}` on "
        "the head page.",
        "schema": {"type": "string"},
    },
}


@router.get(
    "/events",
    response_model=EventPage,
    responses={
        200: {"headers": _PAGE_HEADERS},
        304: {"description": "Not modified (If-None-Match matched the page's ETag)"},
        422: {"model": Problem},
    },
    summary="Read the event log in position order",
)
async def list_events(
    system: SystemDep,
    _principal: EventReader,
    after: Position = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    types: Types = None,
    stream_type: StreamType = None,
    stream_id: StreamId = None,
    if_none_match: Annotated[
        str | None, Header(max_length=2000, description="An ETag from an earlier read.")
    ] = None,
) -> Any:
    """A page of events after a position; follow `next_after` to read on, never missing one.

    A full page (`limit` events) never changes: it comes with a long `Cache-Control` and an
    ETag. The last, shorter page is the head: `no-cache`, revalidate with `If-None-Match`.
    """
    names = _types(types)
    page, head = await in_thread(
        lambda: (
            system.store.read_all(
                after, limit, types=names, stream_type=stream_type, stream_id=stream_id
            ),
            system.store.head_position(),
        )
    )
    next_after = page[-1].position or after if page else after
    full = len(page) == limit
    content = {"data": [envelope(e) for e in page], "next_after": next_after, "has_more": full}
    body = orjson.dumps({**content, "head_position": head})
    if full:  # the same page whatever the head: weak, as only head_position may differ
        etag = 'W/"' + hashlib.sha256(orjson.dumps(content)).hexdigest()[:32] + '"'
    else:
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = {
        "ETag": etag,
        "Cache-Control": IMMUTABLE if full else REVALIDATE,
        "Vary": "Authorization",
    }
    if _etag_matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


# -- the live stream ---------------------------------------------------------------------------


@asynccontextmanager
async def held_slot(
    limiter: live.LocalLimiter | live.RedisLimiter, owner: str, retry_s: float, too_many: str
) -> AsyncIterator[live.Lease]:
    """One of ``owner``'s stream slots while the stream runs: 503 if the limiter cannot be
    reached, 429 (``too_many``) if every slot is taken."""
    try:
        lease = await limiter.acquire(owner)
    except live.LimiterUnavailable:
        raise ProblemError(
            503,
            "Service unavailable",
            "The stream limiter cannot be reached; retry shortly.",
            type_="stream-limiter-unavailable",
            headers={"Retry-After": "5"},
        ) from None
    if lease is None:
        raise ProblemError(
            429,
            "Too many requests",
            too_many,
            type_="too-many-streams",
            headers={"Retry-After": str(max(1, round(retry_s)))},
        )
    try:
        yield lease
    finally:
        await lease.release()


async def stream_slot(
    request: Request, system: SystemDep, principal: EventReader
) -> AsyncIterator[live.Lease]:
    """One of the caller's key's stream slots for as long as the stream runs, else 429."""
    limiter = app_member(request.app, "stream_limiter", lambda s: live.limiter_for(s.settings))
    assert principal.key is not None  # EventReader admits keys only
    too_many = f"This key already holds {limiter.limit} open event streams; close one first."
    async with held_slot(
        limiter, str(principal.key.id), system.settings.sse_heartbeat_s, too_many
    ) as lease:
        yield lease


StreamSlot = Annotated[live.Lease, Depends(stream_slot)]


def stream_filter(
    types: Types = None, stream_type: StreamType = None, stream_id: StreamId = None
) -> live.Filter:
    """The stream's filter, checked before the response starts (a 422 cannot come later)."""
    names = _types(types)
    return live.Filter(
        types=tuple(names) if names else None, stream_type=stream_type, stream_id=stream_id
    )


StreamFilter = Annotated[live.Filter, Depends(stream_filter)]


@router.get(
    "/events/stream",
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": "`text/event-stream`: per event `id:` (its position), `event:` (its "
            "public type) and `data:` (the event as in `GET /v1/events`); `: keep-alive` "
            "comments in between. Only public event types are sent."
        },
        422: {"model": Problem},
        429: {"model": Problem, "description": "This key holds too many open streams"},
        503: {"model": Problem, "description": "The stream limiter cannot be reached"},
    },
    summary="Follow the event log live (server-sent events)",
)
async def event_stream(
    system: SystemDep,
    principal: EventReader,
    where: StreamFilter,
    lease: StreamSlot,
    after: Position = 0,
    last_event_id: Annotated[
        int | None,
        Header(
            alias="Last-Event-ID",
            ge=0,
            le=2**63 - 1,
            description="Resume after this position (sent by EventSource on reconnect); "
            "wins over `after`.",
        ),
    ] = None,
) -> AsyncIterator[ServerSentEvent]:
    """Every public event after `after` (or `Last-Event-ID`), then each new one as it commits.

    Positions are handed out only once no earlier transaction can still commit, so a stream
    never skips a late commit. The stream ends after a while (and when the server stops);
    reconnect with `Last-Event-ID` to carry on. A key may hold a few streams at once.
    """
    settings = system.settings
    start = last_event_id if last_event_id is not None else after
    # An early byte, so the client sees the stream open even when nothing is due yet.
    yield ServerSentEvent(comment="stream open")
    async for item in live.follow(
        system.store,
        start,
        where,
        poll_s=settings.sse_poll_s,
        heartbeat_s=settings.sse_heartbeat_s,
        max_seconds=settings.sse_max_seconds,
    ):
        if isinstance(item, live.Heartbeat):
            if not await _key_still_valid(system, principal):
                return
            try:
                await lease.renew()
            except live.LimiterUnavailable:
                return  # end cleanly: the client reconnects (and hears 503 until it is back)
            yield ServerSentEvent(comment="keep-alive")
            continue
        body = public_event(item)
        if body is not None:
            yield ServerSentEvent(
                raw_data=orjson.dumps(body).decode(),
                event=body["public_type"],
                id=str(item.position),
            )


async def _key_still_valid(system: System, principal: Principal) -> bool:
    """A key revoked mid-stream ends the stream at the next heartbeat."""
    if principal.key is None:
        return False
    key = await anyio.to_thread.run_sync(system.keys.get, principal.key.id)
    return key is not None and key.active


class StreamEvents(BaseModel):
    stream_id: UUID
    stream_type: str
    version: int = Field(description="The version of the last event in this page.")
    data: list[EventPublic]
    has_more: bool = Field(False, description="More events follow: ask again with after_version.")
    next_after_version: int | None = Field(
        None, description="The after_version of the next page, when there is one."
    )


@router.get(
    "/streams/{stream_id}/events",
    response_model=StreamEvents,
    responses={404: {"model": Problem}},
    summary="Read one stream's events in version order",
)
async def stream_events(
    stream_id: UUID,
    system: SystemDep,
    _principal: EventReader,
    after_version: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = MAX_PAGE,
) -> StreamEvents:
    """One stream's events (an aggregate's history) in version order, a page at a time."""
    events = await in_thread(
        lambda: system.store.read_stream(stream_id, after_version=after_version, limit=limit)
    )
    full = len(events) == limit
    numbered = [e for e in events if e.position is not None]
    if not numbered and after_version == 0:
        raise ProblemError(404, "Not found", f"No stream {stream_id}.", type_="stream-not-found")
    last = numbered[-1] if numbered else None
    return StreamEvents(
        stream_id=stream_id,
        stream_type=last.stream_type if last else "",
        version=last.version if last else after_version,
        data=[EventPublic.of(e) for e in numbered],
        # A page cut short by an event not yet numbered ends there: the rest follows later.
        has_more=full and len(numbered) == len(events),
        next_after_version=last.version if full and last and len(numbered) == len(events) else None,
    )


@router.get(
    "/streams/{stream_id}",
    responses={404: {"model": Problem}, 503: {"model": Problem}},
    summary="A stream's summary from the stream catalog projection",
    dependencies=[MinPosition],
)
async def stream_summary(stream_id: UUID, system: SystemDep, _principal: EventReader) -> Any:
    """Type, version and positions of a stream (the catalog is caught up before reading)."""
    from infra.projections.catalog import stream_catalog

    def load() -> Any:
        system.projector.catch_up(names=["stream_catalog"])  # off the command path
        with system.db.read() as conn:
            return (
                conn.execute(stream_catalog.select().where(stream_catalog.c.stream_id == stream_id))
                .mappings()
                .first()
            )

    row = await in_thread(load)
    if row is None:
        raise ProblemError(404, "Not found", f"No stream {stream_id}.", type_="stream-not-found")
    return dict(row)
