"""Assemble the contenders on a scratch database, run the workloads, write JSON and a chart."""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from sqlalchemy import text
from sqlalchemy.engine import make_url

from infra.bench import runner
from infra.bench.contenders import Contender
from infra.bench.library import Library
from infra.bench.ours import Ours
from infra.bench.plain import PlainPostgres, PlainSqlite, pg_conninfo
from infra.bench.report import print_table, write_chart
from infra.bench.runner import Timing
from infra.bench.scratch import backend_of, scratch_database
from infra.bench.workload import (
    BATCH_SIZE,
    STREAM_LENGTH,
    BenchEvent,
    Fold,
    chunks,
    make_events,
    split,
)
from infra.settings import get_settings

WRITERS = 4


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    #: The ratio the target is about (a key of the workload's ``ratios``) and its minimum.
    against: str
    minimum: float


WORKLOADS = (
    Workload("append-1-writer", "1 writer, 1 event per transaction (streams of 10)", "plain", 0.7),
    Workload("append-4-writers", "4 writers, 1 event per transaction", "plain", 0.5),
    Workload("append-batch-100", "1 writer, 100 events per transaction", "plain", 0.7),
    Workload("read-all-fold", "read the whole log in order with a fold", "plain", 0.8),
    Workload(
        "rebuild-projection", "rebuild the stream catalog from the whole log", "plain_read", 0.5
    ),
)

NOTES = [
    "per_s is events per second; ratios are ours / baseline, measured in this run on this "
    "database.",
    "plain: the same rows via the bare driver (psycopg 3 / sqlite3) into a table with the "
    "columns of events, an identity key and a unique (stream_id, version) index; single events "
    "are autocommit INSERTs, batches one transaction with executemany, the read one SELECT … "
    "ORDER BY id.",
    "eventsourcing: ApplicationRecorder.insert_events / select_notifications, i.e. its storage "
    "without its domain-model layer; its state column carries data, metadata and time.",
    "Every contender folds the same events (count per type, sum of name lengths, JSON decoded); "
    "reads are the best of 3, rebuilds the best of 2.",
    "rebuild-projection: plain baseline = the same catalog fold upserted page by page through "
    "the bare driver; eventsourcing has no table-rebuild equivalent (its projections are "
    "user-written views), so it is null. Its target is against the plain read.",
    "Writes are preceded by a short untimed warm-up (connections, prepared statements). On "
    "PostgreSQL every table is VACUUM ANALYZEd before the reads.",
    "phases (ours only): driver time per statement kind, i.e. round trip plus server work, "
    "from SQLAlchemy cursor events; us_per_event minus the statements is Python, SQLAlchemy "
    "and pool pre-pings. With 4 writers statement time is summed over the threads.",
    "probes: mean latency of SELECT 1 through a bare psycopg connection and through "
    "Database.autocommit() (pool checkout with pre-ping, SQLAlchemy execute).",
]

SQLITE_NOTES = [
    "SQLite: ours and plain use WAL with synchronous=NORMAL (the store's settings); the "
    "eventsourcing library opens its own connections with SQLite's default synchronous=FULL. "
    "The plain read decodes only the data column; the driver decodes nothing else on SQLite.",
]


def run_bench(
    events: int,
    out_dir: str,
    quiet: bool,
    database_url: str | None = None,
    *,
    seed: int = 7,
) -> dict[str, Any]:
    """Run every workload on every contender; write ``bench-<time>.json`` and ``.png``."""
    _require_extra()
    if events < 10:
        raise ValueError("the bench needs at least 10 events per workload")
    url = database_url or get_settings().database_url
    backend = backend_of(url)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)
    rng = random.Random(seed)
    single = make_events(events, stream_length=STREAM_LENGTH, rng=rng)
    multi = make_events(events, stream_length=STREAM_LENGTH, rng=rng)
    batched = make_events(events, stream_length=BATCH_SIZE, rng=rng)
    err = Console(stderr=True)

    with scratch_database(url, out) as scratch, ExitStack() as stack, _progress(err) as progress:
        contenders: list[Contender] = []
        for make in _contenders(backend):
            contender = make(scratch)
            stack.callback(contender.close)
            contenders.append(contender)
        database = _describe(contenders[0], scratch)
        probes = _probes(contenders[0], scratch) if backend == "postgresql" else {}
        bench = _Bench(contenders, progress)
        results = bench.run(single, multi, batched)

    reads = {k: t.per_s for k, t in results["read-all-fold"].items() if t is not None}
    workloads = [_workload(w, backend, results[w.name], reads) for w in WORKLOADS]
    result: dict[str, Any] = {
        "workloads": workloads,
        "backend": backend,
        "events": events,
        "started_at": started.isoformat(),
        "seconds": round((datetime.now(UTC) - started).total_seconds(), 1),
        "database": database,
        "probes": probes,
        "notes": NOTES + (SQLITE_NOTES if backend == "sqlite" else []) + bench.notes,
    }
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    json_path, chart_path = out / f"bench-{stamp}.json", out / f"bench-{stamp}.png"
    result["files"] = {"json": str(json_path), "chart": str(chart_path)}
    write_chart(result, chart_path)
    json_path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    shutil.copyfile(json_path, out / "latest.json")
    shutil.copyfile(chart_path, out / "latest.png")
    if not quiet:
        print_table(result, Console())
    return result


class BenchDependencyMissing(RuntimeError):
    """The optional ``bench`` extra is not installed."""


def _require_extra() -> None:
    import importlib.util

    missing = [m for m in ("eventsourcing", "matplotlib") if importlib.util.find_spec(m) is None]
    if missing:
        raise BenchDependencyMissing(
            f"the bench needs {', '.join(missing)}: install the bench extra "
            "(uv sync --extra bench, or pip install 'concord[bench]')"
        )


def _contenders(backend: str) -> list[Callable[[str], Contender]]:
    def plain(url: str) -> Contender:
        if backend == "postgresql":
            return PlainPostgres(url)
        return PlainSqlite(make_url(url).database or "")

    return [Ours, plain, Library]


class _Bench:
    def __init__(self, contenders: list[Contender], progress: Progress) -> None:
        self.contenders = contenders
        self.progress = progress
        self.notes: list[str] = []

    def _task(self, workload: str, contender: Contender, total: int) -> Callable[[int], None]:
        task: TaskID = self.progress.add_task(f"{workload:<18} {contender.name}", total=total)

        def tick(n: int) -> None:
            self.progress.advance(task, n)

        return tick

    def run(
        self, single: list[BenchEvent], multi: list[BenchEvent], batched: list[BenchEvent]
    ) -> dict[str, dict[str, Timing | None]]:
        results: dict[str, dict[str, Timing | None]] = {w.name: {} for w in WORKLOADS}
        units = [[e] for e in single]
        shares = [[[e] for e in share] for share in split(multi, WRITERS)]
        batches = list(chunks(batched, BATCH_SIZE))
        warm_single = _warmup(len(units), STREAM_LENGTH)
        warm_multi = min(_warmup(len(s), 5) for s in shares)
        warm_batch = _warmup(len(batches), 1)
        for c in self.contenders:
            total = len(units) - warm_single
            tick = self._task("append-1-writer", c, total)
            results["append-1-writer"][c.name] = runner.appends(c, units, warm_single, tick)
        for c in self.contenders:
            total = sum(len(s) - warm_multi for s in shares)
            tick = self._task("append-4-writers", c, total)
            results["append-4-writers"][c.name] = runner.concurrent_appends(
                c, shares, warm_multi, tick
            )
        for c in self.contenders:
            total = sum(len(b) for b in batches[warm_batch:])
            tick = self._task("append-batch-100", c, total)
            results["append-batch-100"][c.name] = runner.appends(c, batches, warm_batch, tick)

        for c in self.contenders:
            c.before_reads()
        expected = len(single) + len(multi) + len(batched)
        folds: dict[str, Fold] = {}
        for c in self.contenders:
            tick = self._task("read-all-fold", c, expected)
            timing, folds[c.name] = runner.read(c)
            tick(timing.events)
            results["read-all-fold"][c.name] = timing
        self._check(folds, expected)

        for c in self.contenders:
            tick = self._task("rebuild-projection", c, expected)
            timing_or_none = runner.rebuild(c)
            tick(expected)
            results["rebuild-projection"][c.name] = timing_or_none
        return results

    def _check(self, folds: dict[str, Fold], expected: int) -> None:
        """Every contender must have read back exactly what was written."""
        reference = None
        for name, fold in folds.items():
            if fold.count != expected:
                self.notes.append(f"CHECK FAILED: {name} read {fold.count} of {expected} events")
            summary = fold.summary()
            if reference is None:
                reference = summary
            elif summary != reference:
                self.notes.append(f"CHECK FAILED: {name}'s fold differs: {summary} ≠ {reference}")


def _warmup(units: int, wanted: int) -> int:
    """Untimed units before the clock starts; none when that would leave too few to time."""
    return wanted if units >= 3 * wanted else 0


def _workload(
    w: Workload, backend: str, timings: dict[str, Timing | None], reads: dict[str, float]
) -> dict[str, Any]:
    ours, plain, library = (timings.get(k) for k in ("ours", "plain", "eventsourcing"))
    assert ours is not None
    ratios: dict[str, float | None] = {
        "plain": _ratio(ours, plain),
        "eventsourcing": _ratio(ours, library),
    }
    entry: dict[str, Any] = {
        "name": w.name,
        "description": w.description,
        "backend": backend,
        "per_s": round(ours.per_s, 1),
        "baselines": {
            "plain": _per_s(plain),
            "eventsourcing": _per_s(library),
        },
        "ratios": ratios,
        "events": ours.events,
        "seconds": {k: round(t.seconds, 4) for k, t in timings.items() if t is not None},
    }
    if w.name == "rebuild-projection":
        # The rebuild's target compares it with the read of the same log.
        ratios["plain_read"] = _ratio_value(ours.per_s, reads.get("plain"))
        ratios["ours_read"] = _ratio_value(ours.per_s, reads.get("ours"))
    actual = ratios.get(w.against)
    entry["target"] = {"against": w.against, "min": w.minimum}
    entry["meets_target"] = actual is not None and actual >= w.minimum
    if ours.phases and ours.events:
        entry["phases"] = _per_event(ours)
    return entry


def _per_event(t: Timing) -> dict[str, Any]:
    """Our time per event, split into driver time per statement kind and the rest."""
    assert t.phases is not None
    per = 1e6 / t.events
    statements = {
        kind: {**v, "us_per_event": round(v["seconds"] * per, 1)}
        for kind, v in t.phases["statements"].items()
    }
    return {
        "us_per_event": round(t.seconds * per, 1),
        "statements": statements,
        "pool_checkouts": t.phases["pool_checkouts"],
    }


def _per_s(t: Timing | None) -> float | None:
    return None if t is None else round(t.per_s, 1)


def _ratio(ours: Timing, base: Timing | None) -> float | None:
    return None if base is None else _ratio_value(ours.per_s, base.per_s)


def _ratio_value(ours: float, base: float | None) -> float | None:
    return None if not base else round(ours / base, 3)


def _describe(ours: Contender, url: str) -> dict[str, Any]:
    """The settings that decide write speed, as the server reports them."""
    assert isinstance(ours, Ours)
    with ours.db.read() as conn:
        if ours.db.is_postgres:
            names = ("server_version", "fsync", "synchronous_commit", "wal_sync_method")
            return {n: conn.execute(text(f"SHOW {n}")).scalar() for n in names}
        synchronous = int(conn.execute(text("PRAGMA synchronous")).scalar_one())
        return {
            "sqlite_version": conn.execute(text("SELECT sqlite_version()")).scalar(),
            "journal_mode": conn.execute(text("PRAGMA journal_mode")).scalar(),
            "synchronous": _SQLITE_SYNCHRONOUS.get(synchronous, synchronous),
        }


_SQLITE_SYNCHRONOUS = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


def _probes(ours: Contender, url: str, n: int = 300) -> dict[str, float]:
    """Round-trip costs (µs) that explain the write figures: driver vs SQLAlchemy."""
    import psycopg

    assert isinstance(ours, Ours)
    out: dict[str, float] = {}
    with psycopg.connect(pg_conninfo(url), autocommit=True) as conn:
        out["psycopg_select_1_us"] = _mean_us(n, lambda: conn.execute("SELECT 1").fetchone())
    stmt = text("SELECT 1")

    def via_sqlalchemy() -> None:
        with ours.db.autocommit() as c:
            c.execute(stmt).scalar()

    out["sqlalchemy_autocommit_select_1_us"] = _mean_us(n, via_sqlalchemy)
    ours.phases()
    return out


def _mean_us(n: int, fn: Callable[[], object]) -> float:
    for _ in range(20):
        fn()
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return round((time.perf_counter() - started) / n * 1e6, 1)


@contextmanager
def _progress(console: Console) -> Iterator[Progress]:
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        yield progress
