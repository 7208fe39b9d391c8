"""What the runner needs from each contender: a writer per thread, a folding read, a rebuild."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from infra.bench.workload import BenchEvent, Fold


class Writer(Protocol):
    def append(self, events: Sequence[BenchEvent]) -> None:
        """Write ``events`` (consecutive versions of one stream) in one transaction."""
        ...


class Contender(Protocol):
    """One way of storing the log: ours, plain SQL or the eventsourcing library."""

    name: str

    def writer(self) -> AbstractContextManager[Writer]:
        """A writer for one thread, with its connection set up before the clock starts."""
        ...

    def read(self, fold: Fold) -> None:
        """Read the whole log in order, folding every event into ``fold``."""
        ...

    def rebuild(self) -> int | None:
        """Rebuild a per-stream read model from the whole log; the events read (None: n/a)."""
        ...

    def before_reads(self) -> None:
        """Settle the log before reading (PostgreSQL: number stragglers, vacuum)."""
        ...

    def phases(self) -> dict[str, Any] | None:
        """Where time went since the last call (only ours is instrumented)."""
        ...

    def close(self) -> None: ...
