"""Time each workload on each contender, the same events in the same order."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from infra.bench.contenders import Contender
from infra.bench.workload import BenchEvent, Fold

Tick = Callable[[int], None]
#: How often (in events) a writer reports progress: rarely enough to cost nothing measurable.
TICK_EVERY = 200
READ_REPEATS = 3
REBUILD_REPEATS = 2


@dataclass
class Timing:
    """One contender's run of one workload."""

    events: int
    seconds: float
    phases: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


class _Ticker:
    """Batches progress updates so that reporting never shows up in the timings."""

    def __init__(self, tick: Tick) -> None:
        self.tick = tick
        self.pending = 0

    def __call__(self, n: int) -> None:
        self.pending += n
        if self.pending >= TICK_EVERY:
            self.tick(self.pending)
            self.pending = 0

    def flush(self) -> None:
        if self.pending:
            self.tick(self.pending)
            self.pending = 0


def appends(
    contender: Contender, units: Sequence[Sequence[BenchEvent]], warmup: int, tick: Tick
) -> Timing:
    """One writer appends ``units`` one transaction each; the first ``warmup`` are untimed."""
    ticker = _Ticker(tick)
    with contender.writer() as writer:
        for unit in units[:warmup]:
            writer.append(unit)
        contender.phases()
        started = time.perf_counter()
        for unit in units[warmup:]:
            writer.append(unit)
            ticker(len(unit))
        seconds = time.perf_counter() - started
    ticker.flush()
    timed = sum(len(u) for u in units[warmup:])
    return Timing(timed, seconds, contender.phases())


def concurrent_appends(
    contender: Contender,
    shares: Sequence[Sequence[Sequence[BenchEvent]]],
    warmup: int,
    tick: Tick,
) -> Timing:
    """One thread (own connection) per share; the clock runs from a common start to the last."""
    barrier = threading.Barrier(len(shares) + 1)
    errors: list[BaseException] = []

    def work(units: Sequence[Sequence[BenchEvent]]) -> None:
        ticker = _Ticker(tick)
        try:
            with contender.writer() as writer:
                for unit in units[:warmup]:
                    writer.append(unit)
                barrier.wait()
                for unit in units[warmup:]:
                    writer.append(unit)
                    ticker(len(unit))
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()
        finally:
            ticker.flush()

    threads = [
        threading.Thread(target=work, args=(units,), name=f"bench-writer-{i}", daemon=True)
        for i, units in enumerate(shares)
    ]
    for thread in threads:
        thread.start()
    with suppress(threading.BrokenBarrierError):  # a writer failed: its error is raised below
        barrier.wait()
    contender.phases()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    if errors:
        raise errors[0]
    timed = sum(len(u) for units in shares for u in units[warmup:])
    return Timing(timed, seconds, contender.phases())


def read(contender: Contender, repeats: int = READ_REPEATS) -> tuple[Timing, Fold]:
    """The best of ``repeats`` full-log reads with the fold."""
    best: Timing | None = None
    fold = Fold()
    for _ in range(repeats):
        fold = Fold()
        contender.phases()
        started = time.perf_counter()
        contender.read(fold)
        timing = Timing(fold.count, time.perf_counter() - started, contender.phases())
        if best is None or timing.seconds < best.seconds:
            best = timing
    assert best is not None
    return best, fold


def rebuild(contender: Contender, repeats: int = REBUILD_REPEATS) -> Timing | None:
    """The best of ``repeats`` rebuilds, or None when the contender has no equivalent."""
    best: Timing | None = None
    for _ in range(repeats):
        contender.phases()
        started = time.perf_counter()
        count = contender.rebuild()
        seconds = time.perf_counter() - started
        if count is None:
            return None
        timing = Timing(count, seconds, contender.phases())
        if best is None or timing.seconds < best.seconds:
            best = timing
    return best
