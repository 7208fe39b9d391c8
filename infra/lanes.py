"""Commands on one stream, batched; long streams folded once and kept.

The hot statement — hundreds of organisations endorsing one statement in the same minute — is
one stream, and every endorsement must be decided on that stream's latest state. Deciding each
command on its own and letting the losers of the append race retry turns into a storm of
conflicts. Instead each process funnels the commands for a stream through a *lane*:

* The first caller to find the lane idle leads. It takes everything queued for the stream (up
  to :data:`MAX_BATCH`), decides each command on the state the one before it left, and appends
  all their events in one transaction with the expected version
  (:meth:`services.bus.CommandBus.handle_batch`). Callers arriving meanwhile queue up; when the
  leader's batch is done it hands the lane to the first of them, whose batch holds everyone
  queued by then. One transaction commits many commands: the group commit of a database.
* Processes meet at the append's expected version. A process that loses the race catches up
  and decides its batch again; no caller sees that conflict. Each caller still gets its own
  answer: a refused command refuses only itself. A stream that lost such a race lately is then
  decided under a lock shared by the processes (:mod:`infra.streamlocks`), so their leaders
  take turns instead of deciding batches bound to be thrown away.
* The folded stream (:class:`services.bus.Snapshot`) is kept between batches and reads, in a
  small LRU per process; each use reads only the events appended since (by any process), so a
  statement with 10,000 endorsements is not read and folded again for every command or page.
  The LRU is bounded in streams and in the events folded into them together, so a process
  holding many long streams forgets the least recently used ones instead of growing without
  bound; the stream used last is always kept, however long.

Erased people: a snapshot holds the personal data it opened. Each erasure bumps a counter in
the same transaction that deletes the key (``keyring_epoch``); every use of a snapshot reads
that counter first and folds the stream afresh if it moved, so a name is never served from
memory after its erasure committed.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any
from uuid import UUID

from infra.freshness import Mark
from infra.streamlocks import StreamLocks
from services.bus import CommandBus, Job, Outcome, Snapshot
from services.decider import Decider

#: Commands decided and appended together at most (one append statement).
MAX_BATCH = 256
#: Locks that single-flight the readers' catch-ups (streams share them by hash).
FOLD_STRIPES = 64
#: Folded streams kept per process.
CACHE_SIZE = 128
#: Events folded into the kept streams, together, at most (``CONCORD_FOLD_CACHE_EVENTS``; a
#: 10,000-endorsement statement holds about 16 MB): beyond it the least recently used streams
#: are forgotten.
CACHE_EVENTS = 40_000


@dataclass(eq=False)
class _Ticket:
    decider: Decider[Any, Any]
    job: Job[Any]
    woken: threading.Event = field(default_factory=threading.Event)
    lead: bool = False
    result: Outcome | Exception | None = None


@dataclass(frozen=True)
class _Cached:
    snapshot: Snapshot[Any]
    #: The erasure counter read before any of the snapshot's personal data was opened.
    epoch: int
    #: A head of the log up to which the snapshot holds every event of its stream (0: none
    #: known): while the head has not moved past it, the stream has nothing new to read.
    checked: int = 0


class Lanes:
    """Per-stream command lanes and the folded-stream cache of one process."""

    def __init__(
        self,
        bus: CommandBus,
        epoch: Callable[[], int],
        *,
        max_batch: int = MAX_BATCH,
        cache_size: int = CACHE_SIZE,
        cache_events: int = CACHE_EVENTS,
        locks: StreamLocks | None = None,
    ) -> None:
        self.bus = bus
        self._epoch = epoch
        #: Streams other processes contend for are decided under their lock (see there).
        self.locks = locks
        self.max_batch = max_batch
        self.cache_size = cache_size
        self.cache_events = cache_events
        #: Events folded into the kept snapshots (their versions), together.
        self._weight = 0
        self._lock = threading.Lock()
        self._queues: dict[UUID, deque[_Ticket]] = {}
        self._cache: OrderedDict[UUID, _Cached] = OrderedDict()
        #: Readers of one stream catch it up one at a time (striped: a bounded set of locks).
        self._folding = [threading.Lock() for _ in range(FOLD_STRIPES)]

    # -- commands --------------------------------------------------------------------------

    def handle(self, decider: Decider[Any, Any], stream_id: UUID, job: Job[Any]) -> Outcome:
        """Run ``job`` on ``stream_id`` with whatever else is queued for it; its own outcome
        (or its own error, raised)."""
        ticket = _Ticket(decider, job)
        with self._lock:
            queue = self._queues.get(stream_id)
            if queue is None:  # the lane is idle: lead it
                queue = self._queues[stream_id] = deque()
                ticket.lead = True
            queue.append(ticket)
        if not ticket.lead:
            ticket.woken.wait()
        if ticket.result is None:  # handed the lane
            self._lead(stream_id, ticket)
        result = ticket.result
        if isinstance(result, Exception):
            raise result
        assert result is not None
        return result

    def _lead(self, stream_id: UUID, me: _Ticket) -> None:
        while me.result is None:
            with self._lock:
                queue = self._queues[stream_id]
                first = queue[0].decider
                batch: list[_Ticket] = []
                while queue and len(batch) < self.max_batch and queue[0].decider is first:
                    batch.append(queue.popleft())
            self._run(stream_id, batch)
        with self._lock:
            queue = self._queues[stream_id]
            if not queue:
                del self._queues[stream_id]
                return
            following = queue[0]
            following.lead = True
        following.woken.set()

    def _run(self, stream_id: UUID, batch: list[_Ticket]) -> None:
        decider = batch[0].decider
        results: list[Outcome | Exception]
        locks = self.locks
        try:
            with locks.held(stream_id) if locks is not None else nullcontext():
                cached, epoch = self._cached(stream_id, decider)
                results, after = self.bus.handle_batch(
                    decider,
                    stream_id,
                    [t.job for t in batch],
                    cached,
                    conflicted=partial(locks.conflicted, stream_id) if locks is not None else None,
                )
            self._keep(after, epoch)
        except Exception as failure:  # the stream could not be read: nobody was decided
            self._drop(stream_id)
            results = [failure] * len(batch)
        for ticket, result in zip(batch, results, strict=True):
            ticket.result = result
            ticket.woken.set()

    # -- folded streams --------------------------------------------------------------------

    def load(
        self,
        decider: Decider[Any, Any],
        stream_id: UUID,
        *,
        at_least: int | None = None,
        seen: Mark | None = None,
    ) -> Snapshot[Any]:
        """The stream folded up to its committed head (from the cache, caught up); with
        ``at_least``, what this process keeps will do if it is at that version or later (the
        answer to a command just run here, as of that command or later): no stream read, no
        wait for the fold lock. Either way nothing kept from before an erasure is used.

        Readers of a stream catch it up one at a time, each from what the one before it kept:
        a long stream, or a long run of events another process appended since this one kept
        it, is folded once, not once per concurrent reader (eight first readers of a
        10,000-endorsement statement had folded it four times over per process). The others
        then read only what was appended meanwhile.

        With ``seen`` (the log's head and the erasure counter, read after the caller's request
        arrived: api/freshness.py), the counter is not read again, and a kept snapshot known
        to hold its stream up to that head answers without reading the stream; one caught up
        here is known to from then on.
        """
        # Outside the lock: one round trip fewer while others wait.
        epoch = seen.epoch if seen is not None else self._epoch()
        if at_least is not None or seen is not None:
            kept = self._kept(decider, stream_id, epoch, at_least, seen)
            if kept is not None:
                return kept
        with self._folding[hash(stream_id) % FOLD_STRIPES]:
            if seen is not None:
                # A reader that held this lock before us may have caught the stream up to our
                # head or later: then its snapshot answers us too (one stream read per head
                # the log moves to, not one per reader waiting here).
                kept = self._kept(decider, stream_id, epoch, None, seen)
                if kept is not None:
                    return kept
            cached, _ = self._cached(stream_id, decider, epoch)
            snapshot = self.bus.catch_up(decider, stream_id, cached)
            # Read after ``seen``: every event numbered up to its head is in the snapshot.
            self._keep(snapshot, epoch, seen.head if seen is not None else 0)
            return snapshot

    def kept_at(
        self,
        decider: Decider[Any, Any],
        stream_id: UUID,
        seen: Mark,
        *,
        at_least: int | None = None,
    ) -> Snapshot[Any] | None:
        """What :meth:`load` with ``seen`` (and ``at_least``) answers without reading
        anything, else None: no I/O and no fold lock, so an event loop may ask it before
        handing the load to a thread."""
        return self._kept(decider, stream_id, seen.epoch, at_least, seen)

    def _kept(
        self,
        decider: Decider[Any, Any],
        stream_id: UUID,
        epoch: int,
        at_least: int | None,
        seen: Mark | None,
    ) -> Snapshot[Any] | None:
        with self._lock:
            entry = self._entry(stream_id, decider, epoch)
        if entry is not None and (
            (at_least is not None and entry.snapshot.version >= at_least)
            or (seen is not None and entry.checked >= seen.head)
        ):
            return entry.snapshot
        return None

    def _cached(
        self, stream_id: UUID, decider: Decider[Any, Any], epoch: int | None = None
    ) -> tuple[Snapshot[Any] | None, int]:
        """The kept snapshot (if its erasure counter is ``epoch``, read now if not given)."""
        if epoch is None:
            epoch = self._epoch()
        with self._lock:
            entry = self._entry(stream_id, decider, epoch)
            return (entry.snapshot if entry is not None else None), epoch

    def _entry(self, stream_id: UUID, decider: Decider[Any, Any], epoch: int) -> _Cached | None:
        """The kept entry if it is of ``epoch`` (the caller holds the lock)."""
        entry = self._cache.get(stream_id)
        if entry is None:
            return None
        if entry.epoch != epoch or entry.snapshot.stream_type != decider.stream_type:
            self._forget(stream_id)
            return None
        self._cache.move_to_end(stream_id)
        return entry

    def _keep(self, snapshot: Snapshot[Any], epoch: int, checked: int = 0) -> None:
        """Keep ``snapshot`` unless a later one is kept; either way the kept one is known to
        hold its stream up to the higher of the two heads (the later holds the earlier)."""
        if snapshot.version == 0:
            return
        with self._lock:
            entry = self._cache.get(snapshot.stream_id)
            if entry is not None and entry.epoch == epoch:
                checked = max(checked, entry.checked)
                if entry.snapshot.version >= snapshot.version:
                    if checked > entry.checked:
                        self._cache[snapshot.stream_id] = replace(entry, checked=checked)
                    return
            self._forget(snapshot.stream_id)
            self._cache[snapshot.stream_id] = _Cached(snapshot, epoch, checked)
            self._weight += snapshot.version
            while len(self._cache) > 1 and (
                len(self._cache) > self.cache_size or self._weight > self.cache_events
            ):
                self._forget(next(iter(self._cache)))

    def _forget(self, stream_id: UUID) -> None:
        """Drop a kept stream (the caller holds the lock)."""
        entry = self._cache.pop(stream_id, None)
        if entry is not None:
            self._weight -= entry.snapshot.version

    def _drop(self, stream_id: UUID) -> None:
        with self._lock:
            self._forget(stream_id)

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()
            self._weight = 0

    def kept(self) -> dict[UUID, int]:
        """The streams kept, least recently used first, with the events folded into each."""
        with self._lock:
            return {sid: entry.snapshot.version for sid, entry in self._cache.items()}
