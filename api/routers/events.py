"""The event log for integrators: the paged feed and single streams."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from api.deps import EventReader, MinPosition, SystemDep
from api.problems import ProblemError
from api.schemas import EventPage, EventPublic, Problem

router = APIRouter(prefix="/v1", tags=["events"])

MAX_PAGE = 1000


def _types(raw: str | None) -> list[str] | None:
    if not raw:
        return None
    names = [t.strip() for t in raw.split(",") if t.strip()]
    if len(names) > 50:
        raise ProblemError(422, "Validation failed", "At most 50 event types per request.")
    return names or None


@router.get(
    "/events",
    response_model=EventPage,
    responses={422: {"model": Problem}},
    summary="Read the event log in position order",
)
async def list_events(
    system: SystemDep,
    _principal: EventReader,
    after: Annotated[
        int, Query(ge=0, le=2**63 - 1, description="Return events with position > after.")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    types: Annotated[
        str | None, Query(max_length=2000, description="Comma-separated event types.")
    ] = None,
    stream_type: Annotated[str | None, Query(max_length=64)] = None,
) -> EventPage:
    """A page of events after a position; follow `next_after` to read on, never missing one."""
    names = _types(types)
    page, head = await run_in_threadpool(
        lambda: (
            system.store.read_all(after, limit, types=names, stream_type=stream_type),
            system.store.head_position(),
        )
    )
    next_after = page[-1].position or after if page else after
    return EventPage(
        data=[EventPublic.of(e) for e in page],
        next_after=next_after,
        has_more=len(page) == limit,
        head_position=head,
    )


class StreamEvents(BaseModel):
    stream_id: UUID
    stream_type: str
    version: int
    data: list[EventPublic]


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
) -> StreamEvents:
    """Every event of one stream (an aggregate's whole history)."""
    events = await run_in_threadpool(
        system.store.read_stream, stream_id, after_version=after_version
    )
    numbered = [e for e in events if e.position is not None]
    if not numbered and after_version == 0:
        raise ProblemError(404, "Not found", f"No stream {stream_id}.", type_="stream-not-found")
    last = numbered[-1] if numbered else None
    return StreamEvents(
        stream_id=stream_id,
        stream_type=last.stream_type if last else "",
        version=last.version if last else after_version,
        data=[EventPublic.of(e) for e in numbered],
    )


@router.get(
    "/streams/{stream_id}",
    responses={404: {"model": Problem}, 503: {"model": Problem}},
    summary="A stream's summary from the stream catalog projection",
    dependencies=[MinPosition],
)
async def stream_summary(stream_id: UUID, system: SystemDep, _principal: EventReader) -> Any:
    """Type, version and positions of a stream (eventually consistent; see X-Min-Position)."""
    from infra.projections.catalog import stream_catalog

    def load() -> Any:
        with system.db.read() as conn:
            return (
                conn.execute(stream_catalog.select().where(stream_catalog.c.stream_id == stream_id))
                .mappings()
                .first()
            )

    row = await run_in_threadpool(load)
    if row is None:
        raise ProblemError(404, "Not found", f"No stream {stream_id}.", type_="stream-not-found")
    return dict(row)
