"""One way to run any command: load the stream, decide, append with the expected version.

A concurrent writer that appended in between makes the append fail with ConcurrencyError; the
command is then decided again on the fresh state (deciding is pure, so that is safe) — unless
the caller pinned a version with ``If-Match``, in which case the mismatch is reported as
:class:`PreconditionFailed`. A conflict is never turned into a lost event.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar
from uuid import UUID

from services.decider import Context, Decider
from services.errors import ConcurrencyError, DomainError
from services.messages import DomainEvent, EventRegistry
from services.ports import Clock, EventStore, Metadata, RecordedEvent

S = TypeVar("S")
C = TypeVar("C")

#: Times a command is re-decided after losing a race before the conflict is reported.
RETRIES = 5


class PreconditionFailed(DomainError):
    """``If-Match`` named a version the stream is no longer (or not yet) at."""

    code = "precondition-failed"

    def __init__(self, stream_id: UUID, expected: int, actual: int) -> None:
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual
        super().__init__(f"stream {stream_id} is at version {actual}, not {expected}")


class NotFound(DomainError):
    """The stream a command addresses does not exist."""

    code = "not-found"


@dataclass(frozen=True)
class Outcome:
    """What a command did: the stream's version and position after it, and its events."""

    stream_id: UUID
    version: int
    position: int | None
    events: tuple[DomainEvent, ...]
    recorded: tuple[RecordedEvent, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.events)


@dataclass(frozen=True)
class Job(Generic[C]):
    """One command for :meth:`CommandBus.handle_batch`, with everything it is decided by."""

    command: C
    context: Context
    metadata: Metadata | None = None
    if_match: int | None = None


#: (idempotency key, API key id, step): what :meth:`Metadata.made` matches events by.
MadeKey = tuple[str, str | None, int]

#: Events read and folded at a time when a stream is brought up to date.
CATCH_UP_PAGE = 500


def made_key(metadata: Metadata | None) -> MadeKey | None:
    if metadata is None or metadata.idempotency_key is None:
        return None
    return (metadata.idempotency_key, metadata.api_key_id, metadata.step)


def _recorded_key(record: RecordedEvent) -> MadeKey | None:
    meta = record.metadata
    key = meta.get("idempotency_key")
    if key is None:
        return None
    return (key, meta.get("api_key_id"), meta.get("step", 0))


@dataclass(frozen=True)
class Snapshot(Generic[S]):
    """A stream folded up to ``version``: what a long stream's next command starts from
    instead of reading and folding the whole stream again (a cached aggregate).

    ``times`` (recorded-at by version, index ``version - 1``) and ``made`` (events appended
    under an idempotency key) are shared by the snapshots of one stream and only ever
    extended with committed events, which never change: a snapshot reads only what is at or
    below its own version.
    """

    stream_id: UUID
    stream_type: str
    state: S
    version: int
    position: int | None
    times: list[datetime]
    made: dict[MadeKey, tuple[RecordedEvent, ...]]
    #: Views derived from this very snapshot, computed once by whoever reads them.
    memo: dict[str, Any] = field(default_factory=dict, compare=False)

    def recorded_at(self, version: int) -> datetime | None:
        return self.times[version - 1] if 0 < version <= self.version else None

    def extend(
        self, decider: Decider[S, Any], registry: EventRegistry, records: Sequence[RecordedEvent]
    ) -> Snapshot[S]:
        """This snapshot with ``records`` (the stream's next committed events) applied."""
        if not records:
            return self
        if records[0].version != self.version + 1:
            raise ValueError(f"records start at {records[0].version}, not {self.version + 1}")
        times, made = self.times, self.made
        for record in records:
            if record.version > len(times):
                times.append(record.recorded_at)
            key = _recorded_key(record)
            if key is not None:
                earlier = made.get(key, ())
                if record not in earlier:
                    made[key] = (*earlier, record)
        state = decider.fold((registry.decode(r) for r in records), self.state)
        last = records[-1]
        return Snapshot(
            self.stream_id,
            self.stream_type,
            state,
            last.version,
            last.position if last.position is not None else self.position,
            times,
            made,
        )


def empty_snapshot(decider: Decider[S, Any], stream_id: UUID) -> Snapshot[S]:
    return Snapshot(stream_id, decider.stream_type, decider.initial(), 0, None, [], {})


#: Times a batch is decided again after another process appended to its stream first. Each
#: such conflict means that process made progress; it is never reported to clients unless
#: this many happen in a row.
BATCH_RETRIES = 50


class CommandBus:
    """Runs commands against aggregates stored in an event store."""

    def __init__(self, store: EventStore, registry: EventRegistry, clock: Clock) -> None:
        self.store = store
        self.registry = registry
        self.clock = clock

    def load(
        self,
        decider: Decider[S, Any],
        stream_id: UUID,
        *,
        until_position: int | None = None,
        until_time: datetime | None = None,
    ) -> tuple[S, int, int | None]:
        """(state, version, last position) of one stream, now or as it stood then."""
        records = self.store.read_stream(
            stream_id, until_position=until_position, until_time=until_time
        )
        state = decider.fold(self.registry.decode(r) for r in records)
        if not records:
            return state, 0, None
        return state, records[-1].version, records[-1].position

    def handle(
        self,
        decider: Decider[S, C],
        stream_id: UUID,
        command: C,
        *,
        metadata: Metadata | None = None,
        if_match: int | None = None,
        context: Context | None = None,
    ) -> Outcome:
        """Decide ``command`` on the stream's current state and append the resulting events.

        A command retried under the same idempotency key (``metadata``) whose events are in
        the stream already is not decided again: its earlier outcome is returned. So a client
        that never heard the answer (a dropped connection, a server killed after the commit)
        can send it again and get it once.
        """
        job = Job(command, context or Context(now=self.clock.now()), metadata, if_match)
        [result], _ = self.handle_batch(decider, stream_id, [job], retries=RETRIES)
        if isinstance(result, BaseException):
            raise result
        return result

    def catch_up(
        self, decider: Decider[S, Any], stream_id: UUID, snapshot: Snapshot[S] | None = None
    ) -> Snapshot[S]:
        """``snapshot`` (or the empty stream) brought up to the stream's committed head."""
        snap = snapshot if snapshot is not None else empty_snapshot(decider, stream_id)
        # Page by page: a statement with 10,000 endorsements is folded without holding all
        # its records (rows, opened personal data, decoded events) at once.
        while True:
            records = self.store.read_stream(
                stream_id, after_version=snap.version, limit=CATCH_UP_PAGE
            )
            snap = snap.extend(decider, self.registry, records)
            if len(records) < CATCH_UP_PAGE:
                return snap

    def handle_batch(
        self,
        decider: Decider[S, C],
        stream_id: UUID,
        jobs: Sequence[Job[C]],
        snapshot: Snapshot[S] | None = None,
        *,
        retries: int = BATCH_RETRIES,
        conflicted: Callable[[], None] | None = None,
    ) -> tuple[list[Outcome | Exception], Snapshot[S]]:
        """Decide ``jobs`` one after another, each on the state the ones before it left, and
        append all their events in one append (one transaction) with the expected version.
        ``conflicted`` is told each time another writer appended first.

        Each job gets its own outcome or its own error (a refused command does not stop the
        others). Losing the race to another writer decides the whole batch again on the
        fresh state, so a conflict reaches no caller unless ``retries`` are used up; a
        caller's ``If-Match`` is checked against the version its own job sees. Also returns
        the snapshot after the batch, to start the next one from.
        """
        for attempt in range(retries + 1):
            snap = self.catch_up(decider, stream_id, snapshot)
            results, pending = self._decide(decider, snap, jobs)
            if not pending:
                return self._settle(results, [], snap, ()), snap
            try:
                appended = self.store.append_batch(
                    stream_id,
                    decider.stream_type,
                    snap.version,
                    [
                        ([self.registry.to_new_event(e) for e in events], jobs[i].metadata)
                        for i, events in pending
                    ],
                )
            except ConcurrencyError as conflict:
                if conflicted is not None:
                    conflicted()
                if attempt == retries:
                    for i, _ in pending:
                        results[i] = conflict
                    return results, snap
                snapshot = snap
                continue
            except Exception as failure:  # nothing of the batch was written
                for i, _ in pending:
                    results[i] = failure
                return results, snap
            settled = self._settle(results, pending, snap, appended.events)
            return settled, snap.extend(decider, self.registry, appended.events)
        raise AssertionError("unreachable")  # pragma: no cover

    def _decide(
        self, decider: Decider[S, C], snap: Snapshot[S], jobs: Sequence[Job[C]]
    ) -> tuple[list[Any], list[tuple[int, tuple[DomainEvent, ...]]]]:
        """Each job's outcome so far (an Outcome, an error, an index of a job it repeats, or
        an int count of events before it for an unchanged job) and the events to append."""
        results: list[Any] = [None] * len(jobs)
        pending: list[tuple[int, tuple[DomainEvent, ...]]] = []
        in_batch: dict[MadeKey, int] = {}
        state, version, queued = snap.state, snap.version, 0
        for i, job in enumerate(jobs):
            key = made_key(job.metadata)
            if key is not None and key in snap.made:
                earlier = snap.made[key]
                results[i] = Outcome(
                    snap.stream_id,
                    earlier[-1].version,
                    earlier[-1].position,
                    tuple(self.registry.decode(r) for r in earlier),
                    earlier,
                )
                continue
            if key is not None and key in in_batch:  # the same request twice at once
                results[i] = _Repeat(in_batch[key])
                continue
            if job.if_match is not None and job.if_match != version:
                results[i] = PreconditionFailed(snap.stream_id, job.if_match, version)
                continue
            try:
                events = tuple(decider.decide(state, job.command, job.context))
                after = decider.fold(events, state)
            except Exception as refused:  # each job gets its own error
                results[i] = refused
                continue
            if key is not None:
                in_batch[key] = i
            if not events:
                results[i] = _Unchanged(version, queued)
                continue
            state, version, queued = after, version + len(events), queued + len(events)
            pending.append((i, events))
        return results, pending

    @staticmethod
    def _settle(
        results: list[Any],
        pending: list[tuple[int, tuple[DomainEvent, ...]]],
        snap: Snapshot[S],
        recorded: Sequence[RecordedEvent],
    ) -> list[Outcome | Exception]:
        offset = 0
        for i, events in pending:
            mine = recorded[offset : offset + len(events)]
            offset += len(events)
            results[i] = Outcome(
                snap.stream_id, mine[-1].version, mine[-1].position, events, tuple(mine)
            )
        for i, result in enumerate(results):
            if isinstance(result, _Unchanged):
                before = recorded[result.queued - 1].position if result.queued else snap.position
                results[i] = Outcome(snap.stream_id, result.version, before, ())
        for i, result in enumerate(results):
            if isinstance(result, _Repeat):
                results[i] = results[result.index]
        return results


@dataclass(frozen=True)
class _Unchanged:
    version: int
    queued: int  # events of earlier jobs in the batch before this one


@dataclass(frozen=True)
class _Repeat:
    index: int
