"""Reads answered from what this process kept, checked by one query shared among requests.

A read of a consultation or of a statement's endorsements used to cost a database round trip
of its own, and under load that round trip (with its thread hop) was most of the request. Now
each process keeps what it read, and a read asks only whether anything it depends on has moved
since: :class:`Freshness` reads a :class:`~infra.freshness.Mark` (the log's head, the erasure
counter, the projections' checkpoints) in one small query, and every request that arrived
before that query began shares its answer. So the reads of a busy process cost one query
between them per round trip instead of one each, and none is answered from state older than
the moment it arrived: a client that heard back from a command on any process, then reads on
this one, gets a mark read after that command answered, which shows what it did.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from fastapi import Request
from sqlalchemy import Select

from api.deps import app_member
from api.threads import in_thread
from infra.bootstrap import System
from infra.freshness import Checkpoint, Mark, checkpoint_of, current, read_mark
from infra.projections.consultations import ConsultationViews
from infra.projections.organisations import OrganisationDirectory

V = TypeVar("V")

#: The projection a consultation's document is kept from.
CONSULTATIONS = ConsultationViews.name
#: The projection an organisation's details are kept from (an endorsement copies them).
ORGANISATIONS = OrganisationDirectory.name
#: The projections whose rows the API keeps (their checkpoints are read with every mark).
KEPT_PROJECTIONS = (CONSULTATIONS, ORGANISATIONS)
#: Documents kept per projection and process.
VIEW_SIZE = 1024


class Freshness:
    """One :func:`~infra.freshness.read_mark` at a time per process, shared by every request
    that arrived before it started; a request arriving while one runs waits for the next."""

    def __init__(self, read: Callable[[], Mark]) -> None:
        self._read = read
        self._loop: asyncio.AbstractEventLoop | None = None
        #: The read under way, and the one that starts when it ends (for those arriving now).
        self._running: asyncio.Future[Mark] | None = None
        self._next: asyncio.Future[Mark] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def mark(self) -> Mark:
        """A mark read after this call began."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (a test's client): nothing carries over
            self._loop, self._running, self._next = loop, None, None
        if self._running is None:
            future = self._running = self._start(loop.create_future())
        else:
            if self._next is None:
                self._next = loop.create_future()
            future = self._next
        return await asyncio.shield(future)

    def _start(self, future: asyncio.Future[Mark]) -> asyncio.Future[Mark]:
        task = asyncio.get_running_loop().create_task(self._poll(future))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return future

    async def _poll(self, future: asyncio.Future[Mark]) -> None:
        try:
            mark = await in_thread(self._read)
        except Exception as exc:  # every waiter hears of it (a lost database is a 503)
            future.set_exception(exc)
            future.add_done_callback(_retrieved)
        else:
            future.set_result(mark)
        finally:
            waiting, self._next = self._next, None
            self._running = self._start(waiting) if waiting is not None else None


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Mark a failed read's error as seen (its waiters may all have gone)."""
    future.exception()


class View(Generic[V]):
    """Values read from one projection's rows, each kept with the checkpoint it was read at
    (least recently used forgotten beyond ``size``)."""

    def __init__(self, projection: str, size: int = VIEW_SIZE) -> None:
        self.projection = projection
        self.size = size
        self._kept: OrderedDict[Hashable, tuple[Checkpoint, V]] = OrderedDict()

    def get(self, key: Hashable, mark: Mark) -> V | None:
        """The value kept for ``key`` if the projection has not moved past it by ``mark``."""
        kept = self._kept.get(key)
        if kept is None:
            return None
        if not current(kept[0], mark.checkpoint(self.projection)):
            del self._kept[key]
            return None
        self._kept.move_to_end(key)
        return kept[1]

    def keep(self, key: Hashable, read_at: Checkpoint, value: V) -> None:
        """Keep ``value``, read at checkpoint ``read_at`` (a later one kept meanwhile stays)."""
        kept = self._kept.get(key)
        if kept is not None and kept[0][0] > read_at[0]:
            return
        self._kept[key] = (read_at, value)
        self._kept.move_to_end(key)
        while len(self._kept) > self.size:
            self._kept.popitem(last=False)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._kept


class Kept:
    """What one API process keeps for its reads: the shared mark and one view per projection."""

    def __init__(self, system: System) -> None:
        self.freshness = Freshness(lambda: read_mark(system.db, KEPT_PROJECTIONS))
        self.views: dict[str, View[Any]] = {name: View(name) for name in KEPT_PROJECTIONS}

    async def mark(self) -> Mark:
        """A mark read after this call began (one read shared with the requests around it)."""
        return await self.freshness.mark()

    async def read(
        self,
        system: System,
        projection: str,
        key: Hashable,
        query: Select[Any],
        convert: Callable[[Any], V],
    ) -> V | None:
        """``convert`` of the row ``query`` finds for ``key`` (its ``:key`` parameter) in
        ``projection``'s tables: what this process kept, unless the projection's rows changed
        since (one check shared with the requests around it), else read (in a thread, with
        the checkpoint it was read at) and kept. None if there is no such row.

        ``query`` is a module's constant made with
        :func:`~infra.freshness.with_checkpoint`: building it per request was a tenth of a
        kept read's time."""
        view: View[V] = self.views[projection]
        if key in view:
            found = view.get(key, await self.mark())
            if found is not None:
                return found

        def load() -> Any:
            with system.db.read() as conn:
                return conn.execute(query, {"key": key}).first()

        row = await in_thread(load)
        if row is None:
            return None
        value = convert(row)
        view.keep(key, checkpoint_of(row), value)
        return value


def kept_of(request: Request) -> Kept:
    """The app's :class:`Kept`, made on first use."""
    return app_member(request.app, "kept", Kept)
