"""A statement's public page, and its live list of signatories over server-sent events."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Hashable
from typing import Annotated, Any
from uuid import UUID

import orjson
from cachetools import LRUCache
from fastapi import Depends, Header, Query, Request
from fastapi.responses import HTMLResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent

from api.deps import SystemDep, app_member
from api.freshness import CONSULTATIONS, ORGANISATIONS, kept_of
from api.pages.common import (
    HTML,
    PUBLIC,
    SECURITY_HEADERS,
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
from infra.bootstrap import System
from infra.freshness import Mark
from infra.integration import live
from services.bus import Snapshot, empty_snapshot
from services.statements.model import STATEMENT, Statement

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


#: Seconds a live list made for one position serves the followers that reach it.
LIST_TTL_S = 10.0
#: Bytes of live lists (JSON) kept per process; a list of 10,000 signatories is about 1 MB.
LIST_BYTES = 8_000_000
#: Bytes of rendered public pages kept per process.
PAGE_BYTES = 8_000_000


@router.get(
    "/s/{statement_id}",
    response_class=HTMLResponse,
    responses={404: {"description": "No finalised statement here", "content": {HTML: {}}}},
    summary="A statement's public page",
)
async def public_page(statement_id: str, request: Request, system: SystemDep) -> HTMLResponse:
    """The finalised text by thematic area with its content hash, the signatories by country
    (kept current over server-sent events where JavaScript runs) and the compiled documents.
    HTML for people; needs no key."""
    sid = parse_uuid(statement_id)
    if sid is None:
        return message(404, *NOT_PUBLIC)
    mark = await kept_of(request).mark()
    state = (await kept_statement(system, sid, mark)).state
    if not (state.exists and state.finalised):
        return _not_public(state)
    pages = pages_of(request)
    status = statement_status(state, system.bus.clock.now())
    body = pages.get(_page_key(sid, state.version, status["key"], mark))
    if body is not None:
        return HTMLResponse(body, headers={**SECURITY_HEADERS, **PUBLIC})
    loaded = await load(system, sid)
    state = loaded.state
    if not loaded.visible:  # reopened since the mark
        return _not_public(state)
    status = statement_status(state, system.bus.clock.now())
    response = page(
        "statement.html",
        language=state.language,
        private=False,
        statement=text_view(loaded),
        status=status,
        signatories=signatories(state),
        live=f"/s/{state.statement_id}/live",
        position=loaded.position,
    )
    if len(response.body) <= pages.maxsize:
        pages[_page_key(sid, state.version, status["key"], mark)] = bytes(response.body)
    return response


def _not_public(state: Statement) -> HTMLResponse:
    extra = ("It was reopened for changes; it will be back once finalised again.",)
    return message(404, *NOT_PUBLIC, *(extra if state.reopen_reasons else ()))


async def kept_statement(system: System, statement_id: UUID, mark: Mark) -> Snapshot[Any]:
    """The statement as the process's lanes keep it, current at ``mark`` (read and folded
    only by what changed since it was kept; nothing kept from before an erasure)."""
    kept = system.lanes.kept_at(STATEMENT, statement_id, mark)
    if kept is not None:
        return kept
    return await in_thread(system.lanes.load, STATEMENT, statement_id, seen=mark)


def _page_key(statement_id: UUID, version: int, status: str, mark: Mark) -> Hashable:
    """What a public page shows depends on: the statement's version, its status (which the
    clock moves), the erasure counter (an erased name is never served) and where the
    consultations' and the organisations' rows last changed (it names the consultation and
    its organiser)."""
    return (
        statement_id,
        version,
        status,
        mark.epoch,
        mark.checkpoint(CONSULTATIONS),
        mark.checkpoint(ORGANISATIONS),
    )


def pages_of(request: Request) -> LRUCache[Hashable, bytes]:
    """Public pages rendered once per :func:`_page_key` per process: during a campaign
    hundreds of visitors load the page of one statement, and each used to read and fold the
    whole statement (10,000 signatories: every one of them) and render it."""
    return app_member(request.app, "public_pages", lambda _: LRUCache(PAGE_BYTES, getsizeof=len))


async def visible_statement(statement_id: str, request: Request, system: SystemDep) -> UUID:
    """The statement's id, if it has a public page (checked before the stream starts)."""
    sid = parse_uuid(statement_id)
    if sid is not None:
        state = (await kept_statement(system, sid, await kept_of(request).mark())).state
        if state.exists and state.finalised:
            return sid
    raise ProblemError(404, "Not found", NOT_PUBLIC[1], type_="unknown-statement")


# -- the live list ------------------------------------------------------------------------------


async def client_slot(request: Request, system: SystemDep) -> AsyncIterator[live.Lease]:
    """One of the client address's live-list slots while the stream runs, else 429."""
    settings = system.settings
    limiter = app_member(
        request.app,
        "public_stream_limiter",
        lambda s: live.limiter_for(
            s.settings,
            s.settings.public_sse_max_per_client,
            prefix=f"concord:sse-public:{s.settings.queue}:",
        ),
    )
    too_many = f"This address already follows {limiter.limit} live lists; close one first."
    async with held_slot(
        limiter, client_address(request), settings.sse_heartbeat_s, too_many
    ) as lease:
        yield lease


ClientSlot = Annotated[live.Lease, Depends(client_slot)]


class LiveLists:
    """Live lists made once per process: the followers of a statement that reach the same
    position get one list, made by the first to ask while the others wait for it, and kept
    for :data:`LIST_TTL_S`. Each follower used to read and fold the whole statement for every
    change, so a page watched by hundreds of visitors cost hundreds of folds per endorsement.
    A list is made again once anyone has been erased since it was made (the keyring's epoch
    moved), so a name is never served after its erasure.

    Each list is the statement folded exactly up to its position. The fold of the last list
    made is kept and carried forward by the events since (one short read), so a statement
    with 10,000 signatories is not read and folded whole for each change; it is folded from
    the start again only after an erasure, or for a position behind the kept one."""

    def __init__(self, system: System) -> None:
        self.system = system
        self._made: LRUCache[tuple[UUID, int], tuple[int, float, str]] = LRUCache(
            LIST_BYTES, getsizeof=lambda made: len(made[2])
        )
        #: Folds kept for the next list, within a quarter of the process's fold budget (in
        #: events; a fold of 10,000 signatories took 11 MB, measured).
        self._folds: LRUCache[UUID, tuple[int, Snapshot[Any]]] = LRUCache(
            max(1, system.settings.fold_cache_events // 4),
            getsizeof=lambda kept: max(1, kept[1].version),
        )
        self._fold_lock = threading.Lock()
        self._making: dict[
            tuple[UUID, int, int], tuple[asyncio.AbstractEventLoop, asyncio.Future[str]]
        ] = {}

    async def get(self, statement_id: UUID, position: int, epoch: int) -> str:
        """The list at ``position`` as JSON, made after the keyring was at ``epoch``."""
        made = self._made.get((statement_id, position))
        if made is not None and made[0] == epoch and time.monotonic() - made[1] < LIST_TTL_S:
            return made[2]
        loop = asyncio.get_running_loop()
        key = (statement_id, position, epoch)
        making = self._making.get(key)
        if making is None or making[0] is not loop:
            making = self._making[key] = (loop, asyncio.ensure_future(self._make(key)))
        # Shielded: a follower that hangs up does not cancel the list the others wait for.
        return await asyncio.shield(making[1])

    async def _make(self, key: tuple[UUID, int, int]) -> str:
        statement_id, position, epoch = key
        try:
            started = time.monotonic()
            body = await in_thread(self.snapshot, statement_id, position, epoch)
            made = orjson.dumps(body).decode()
            if len(made) <= LIST_BYTES:
                self._made[(statement_id, position)] = (epoch, started, made)
            return made
        finally:
            self._making.pop(key, None)

    def snapshot(self, statement_id: UUID, position: int, epoch: int) -> dict[str, Any]:
        """The list as it stood at ``position``: all the page shows of it, nothing else."""
        state = self.fold(statement_id, position, epoch).state
        return {
            "position": position,
            "status": statement_status(state, self.system.bus.clock.now()),
            "signatories": signatories(state),
        }

    def fold(self, statement_id: UUID, position: int, epoch: int) -> Snapshot[Any]:
        """The statement folded up to ``position``, from the kept fold when it may be."""
        with self._fold_lock:  # one fold at a time: they carry the kept one forward
            kept = self._folds.get(statement_id)
            if kept is not None and kept[0] == epoch and (kept[1].position or 0) <= position:
                base = kept[1]
            else:
                base = empty_snapshot(STATEMENT, statement_id)
            records = self.system.store.read_stream(
                statement_id, after_version=base.version, until_position=position
            )
            folded = base.extend(STATEMENT, self.system.registry, records)
            fits = folded.version <= self._folds.maxsize
            if fits and (kept is None or kept[0] != epoch or folded.version >= kept[1].version):
                self._folds[statement_id] = (epoch, folded)
            return folded


def lists_of(request: Request) -> LiveLists:
    """The app's :class:`LiveLists`, made on first use."""
    return app_member(request.app, "live_lists", LiveLists)


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
    request: Request,
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
        mark = await kept_of(request).mark()  # shared with every request arriving meanwhile
        made = await lists_of(request).get(statement_id, item.position, mark.epoch)
        yield ServerSentEvent(raw_data=made, event="signatories", id=str(item.position))
