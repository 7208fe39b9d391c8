"""A statement's public page, and its live list of signatories over server-sent events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any
from uuid import UUID

import orjson
from fastapi import Depends, Header, Query, Request
from fastapi.responses import HTMLResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent

from api.deps import SystemDep
from api.pages.common import (
    HTML,
    client_address,
    load,
    message,
    page,
    parse_uuid,
    signatories,
    statement_status,
    text_view,
)
from api.problems import ProblemError
from api.routers.events import held_slot
from api.routing import Router
from api.schemas import Problem
from api.threads import in_thread
from infra.integration import live
from services.registry import EVENTS
from services.statements.model import STATEMENT

router = Router(keyed=False)

#: What changes the list (or whether the page may show one).
LIVE_TYPES = (
    "statement.endorsed",
    "statement.endorsement_withdrawn",
    "statement.reopened",
    "statement.finalised",
    "statement.endorsements_closed",
    "statement.published",
)
NOT_PUBLIC = (
    "This statement is not public",
    "There is no finalised statement at this address. A statement becomes public when its "
    "text is finalised for endorsement.",
)


@router.get(
    "/s/{statement_id}",
    response_class=HTMLResponse,
    responses={404: {"description": "No finalised statement here", "content": {HTML: {}}}},
    summary="A statement's public page",
)
async def public_page(statement_id: str, system: SystemDep) -> HTMLResponse:
    """The finalised text by thematic area with its content hash, the signatories by country
    (kept current over server-sent events where JavaScript runs) and the compiled documents.
    HTML for people; needs no key."""
    sid = parse_uuid(statement_id)
    loaded = await load(system, sid) if sid is not None else None
    if loaded is None or not loaded.visible:
        reopened = loaded is not None and loaded.state.reopen_reasons
        extra = ("It was reopened for changes; it will be back once finalised again.",)
        return message(404, *NOT_PUBLIC, *(extra if reopened else ()))
    state = loaded.state
    return page(
        "statement.html",
        language=state.language,
        private=False,
        statement=text_view(loaded),
        status=statement_status(state, system.bus.clock.now()),
        signatories=signatories(state),
        live=f"/s/{state.statement_id}/live",
        position=loaded.position,
    )


# -- the live list ------------------------------------------------------------------------------


async def client_slot(request: Request, system: SystemDep) -> AsyncIterator[live.Lease]:
    """One of the client address's live-list slots while the stream runs, else 429."""
    limiter = getattr(request.app.state, "public_stream_limiter", None)
    settings = system.settings
    if limiter is None:
        limiter = request.app.state.public_stream_limiter = live.limiter_for(
            settings,
            settings.public_sse_max_per_client,
            prefix=f"concord:sse-public:{settings.queue}:",
        )
    too_many = f"This address already follows {limiter.limit} live lists; close one first."
    async with held_slot(
        limiter, client_address(request), settings.sse_heartbeat_s, too_many
    ) as lease:
        yield lease


ClientSlot = Annotated[live.Lease, Depends(client_slot)]


async def visible_statement(statement_id: str, system: SystemDep) -> UUID:
    """The statement's id, if it has a public page (checked before the stream starts)."""
    sid = parse_uuid(statement_id)
    loaded = await load(system, sid) if sid is not None else None
    if sid is None or loaded is None or not loaded.visible:
        raise ProblemError(404, "Not found", NOT_PUBLIC[1], type_="unknown-statement")
    return sid


def snapshot(system: Any, statement_id: UUID, position: int) -> dict[str, Any]:
    """The list as it stood at ``position``: all the page shows of it, nothing else."""
    records = system.store.read_stream(statement_id, until_position=position)
    state = STATEMENT.fold(EVENTS.decode_known(records))
    return {
        "position": position,
        "status": statement_status(state, system.bus.clock.now()),
        "signatories": signatories(state),
    }


@router.get(
    "/s/{statement_id}/live",
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": "`text/event-stream`: an event `signatories` (`id:` its position) "
            "each time the list changes, with the whole list as the page shows it — "
            "organisations, signatories' names and titles, countries and counts."
        },
        404: {"model": Problem},
        422: {"model": Problem},
        429: {"model": Problem, "description": "This address follows too many live lists"},
        503: {"model": Problem},
    },
    summary="A statement's signatories, live (server-sent events)",
)
async def live_list(
    system: SystemDep,
    statement_id: Annotated[UUID, Depends(visible_statement)],
    lease: ClientSlot,
    after: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
    last_event_id: Annotated[int | None, Header(alias="Last-Event-ID", ge=0, le=2**63 - 1)] = None,
) -> AsyncIterator[ServerSentEvent]:
    """The public page's list, each time it changes after `after` (or `Last-Event-ID`). Needs
    no key; carries nothing the page does not show."""
    settings = system.settings
    start = last_event_id if last_event_id is not None else after
    yield ServerSentEvent(comment="stream open")
    where = live.Filter(types=LIVE_TYPES, stream_id=statement_id)
    async for item in live.follow(
        system.store,
        start,
        where,
        poll_s=settings.sse_poll_s,
        heartbeat_s=settings.sse_heartbeat_s,
        max_seconds=settings.sse_max_seconds,
    ):
        if isinstance(item, live.Heartbeat):
            try:
                await lease.renew()
            except live.LimiterUnavailable:
                return
            yield ServerSentEvent(comment="keep-alive")
            continue
        assert item.position is not None
        body = await in_thread(snapshot, system, statement_id, item.position)
        yield ServerSentEvent(
            raw_data=orjson.dumps(body).decode(), event="signatories", id=str(item.position)
        )
