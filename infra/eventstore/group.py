"""Group commit: the appends of one process that arrive together are written together.

Under load many threads of an API process append at once, each to its own stream (people
registering for a hundred consultations). Each append used to be a statement, a commit and a
sequencing step of its own; most of the server's time went to those steps. Now the first
thread to find the store idle *leads*: it takes every append queued at that moment (one per
stream, up to a bound) and hands them to the store's writer as one group — one statement, one
commit, one sequencing step. Threads arriving meanwhile queue up; once the leader's group is
written and numbered it hands the lead to the first of them, whose group holds everyone queued
by then. Should the numbering take longer than a moment (an old transaction holding the
horizon back), the lead passes on first and the group waits for its positions on its own.
Nobody waits for a group to fill: an append that finds the store idle is written at once.

Each append in a group still succeeds or fails on its own (the writer sees to that: a stream
not at its expected version fails only its own append), and each waiting thread gets its own
answer. Appends to the same stream never share a group, so each is checked against the
stream as the one before it left it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from services.ports import NewEvent

#: Appends written together at most, and events in them together at most (one statement).
MAX_APPENDS = 64
MAX_EVENTS = 2000

#: What the writer gives each append: (versions, positions, chain hashes).
Written = tuple[list[int], list[int | None], list[str]]


@dataclass(eq=False)
class Pending:
    """One append waiting for its group."""

    stream_id: UUID
    stream_type: str
    expected: int | None
    events: Sequence[NewEvent]
    metas: Sequence[dict[str, Any]]
    recorded_at: datetime
    woken: threading.Event = field(default_factory=threading.Event)
    lead: bool = False
    result: Written | BaseException | None = None


class Groups:
    """Leads appends into groups. ``write`` writes a group, giving each append its result or
    exception, or returns what still has to finish (the wait for positions that are slow to
    come), which runs after the lead has passed on: a slow sequencing step never holds the
    process's other appends."""

    def __init__(
        self,
        write: Callable[[list[Pending]], Callable[[], None] | None],
        *,
        max_appends: int = MAX_APPENDS,
        max_events: int = MAX_EVENTS,
    ) -> None:
        self._write = write
        self.max_appends = max_appends
        self.max_events = max_events
        self._lock = threading.Lock()
        self._queue: deque[Pending] = deque()
        self._busy = False

    def append(self, pending: Pending) -> Written:
        """Write ``pending`` with whatever else is queued; its own result, or its own error
        raised."""
        with self._lock:
            self._queue.append(pending)
            if not self._busy:
                self._busy = pending.lead = True
        if not pending.lead:
            pending.woken.wait()
        if pending.result is None:  # handed the lead
            self._lead(pending)
        result = pending.result
        if isinstance(result, BaseException):
            raise result
        assert result is not None
        return result

    def _lead(self, me: Pending) -> None:
        with self._lock:
            group = self._take()  # ``me`` first: the leader is always at the queue's head
        finish = None
        try:
            finish = self._write(group)
        except BaseException as failure:  # the writer broke: nobody's append is known
            _fail(group, failure)
        self._hand_off()
        if finish is not None:
            try:
                finish()
            except BaseException as failure:
                _fail(group, failure)
        for pending in group:
            if pending.result is None:
                pending.result = RuntimeError("the group's writer gave this append no result")
            if pending is not me:
                pending.woken.set()

    def _hand_off(self) -> None:
        """The lead to the first append waiting, or the store idle."""
        with self._lock:
            if not self._queue:
                self._busy = False
                return
            following = self._queue[0]
            following.lead = True
        following.woken.set()

    def _take(self) -> list[Pending]:
        """The next group, in arrival order: the first append always, then each later one on
        a stream not in the group yet, within the bounds. The rest stay queued, in order."""
        group: list[Pending] = []
        streams: set[UUID] = set()
        events = 0
        left: deque[Pending] = deque()
        while self._queue:
            pending = self._queue.popleft()
            fits = len(group) < self.max_appends and events + len(pending.events) <= self.max_events
            if group and (pending.stream_id in streams or not fits):
                left.append(pending)
                continue
            group.append(pending)
            streams.add(pending.stream_id)
            events += len(pending.events)
        self._queue = left
        return group


def _fail(group: list[Pending], failure: BaseException) -> None:
    for pending in group:
        if pending.result is None:
            pending.result = failure
