"""``concord bench --suite e2e``: the service end to end, each workload beside its baseline.

HTTP workloads (:mod:`infra.bench.http`, PostgreSQL only: the hot statement, spread
registrations, reads, projection lag and API memory) and offline ones
(:mod:`infra.bench.offline`: compiling a statement with 10,000 signatories, webhook fan-out,
rebuilding a projection of a million events in constant memory). Each returns one workload
in the same shape — ``value`` and ``unit``, a ``baseline`` measured in the same run, a
``ratio`` (>= 1 means as good as the baseline) and ``targets`` each with ``ok`` — so the
table and the chart treat them alike.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from infra.bench.scratch import backend_of, scratch_database

Progress = Callable[[str, int, int], None]

#: The workload groups ``--only`` chooses from.
GROUPS = ("http", "compile", "fanout", "rebuild")


def run_e2e(
    url: str,
    out: Path,
    progress: Progress,
    *,
    only: tuple[str, ...] = GROUPS,
    seconds: float = 10.0,
    redis_url: str | None = None,
    signatories: int = 10_000,
    fanout_events: int = 10_000,
    rebuild_events: int = 1_000_000,
) -> tuple[list[dict[str, Any]], list[str]]:
    """The chosen workloads on scratch databases beside ``url``; (workloads, notes)."""
    from infra.bench import offline
    from infra.bench.http import run_http

    backend = backend_of(url)
    workloads: list[dict[str, Any]] = []
    notes: list[str] = []
    if "http" in only:
        if backend != "postgresql":
            notes.append("HTTP workloads skipped: they run on PostgreSQL (set DATABASE_URL)")
        else:
            with scratch_database(url, out) as scratch:
                workloads += run_http(scratch, out, progress, redis_url=redis_url, seconds=seconds)
    if "compile" in only:
        workloads.append(offline.bench_compile(url, out, progress, signatories=signatories))
    if "fanout" in only:
        workloads.append(offline.bench_fanout(url, out, progress, events=fanout_events))
    if "rebuild" in only:
        workloads.append(offline.bench_rebuild(url, out, progress, events=rebuild_events))
    return workloads, notes


def _value(value: Any, unit: str) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and value < 100:
        return f"{value:,.2f} {unit}"
    return f"{value:,.0f} {unit}"


def print_e2e_table(workloads: list[dict[str, Any]], console: Console, title: str) -> None:
    """One row per workload: ours, the baseline, the ratio, and every target with its verdict."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("workload", no_wrap=True)
    table.add_column("ours", justify="right", no_wrap=True)
    table.add_column("baseline", justify="right", no_wrap=True)
    table.add_column("ratio", justify="right", no_wrap=True)
    table.add_column("targets")
    for w in workloads:
        base = w.get("baseline")
        verdicts = "; ".join(
            f"{t['what']}: {t['actual']} "
            + ("[green]ok[/]" if t["ok"] else f"[red]missed[/] (limit {t['limit']})")
            for t in w.get("targets", [])
        )
        table.add_row(
            w["name"],
            _value(w.get("value"), w.get("unit", "")),
            f"{_value(base['value'], w.get('unit', ''))} ({base['name']})" if base else "—",
            "—" if w.get("ratio") is None else f"{w['ratio']:.2f}",
            verdicts,
        )
    console.print(table)
    console.print("ratio = ours ÷ baseline (≥ 1: as good as the baseline)", style="dim")


def attainment(target: dict[str, Any]) -> float | None:
    """How far a target is met: >= 1 met. Minimums: actual / limit; maximums: limit / actual.

    Which kind a target is follows from its verdict: met above the limit (or missed below
    it) is a minimum, the other way round a maximum.
    """
    actual, limit = target.get("actual"), target.get("limit")
    if not isinstance(actual, int | float) or not isinstance(limit, int | float):
        return None
    if actual == limit:
        return 1.0
    if limit == 0:  # "none at all" (conflicts, failures)
        return 0.0
    minimum = (actual > limit) == bool(target.get("ok"))
    if minimum:
        return float(actual) / float(limit)
    return float(limit) / float(actual) if actual else float("inf")


def write_e2e_chart(workloads: list[dict[str, Any]], path: Path, title: str) -> None:
    """Horizontal bars, one per target: how far it is met (1 = just met), log scale."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows: list[tuple[str, float, bool]] = []
    for w in workloads:
        for t in w.get("targets", []):
            share = attainment(t)
            if share is None or t.get("limit") == 0:
                continue
            rows.append((f"{w['name']}: {t['what']}", max(min(share, 100.0), 0.01), t["ok"]))
    fig = Figure(figsize=(10, 0.45 * len(rows) + 1.6), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ys = range(len(rows))
    colours = ["#2ca02c" if ok else "#d62728" for _, _, ok in rows]
    bars = ax.barh(list(ys), [v for _, v, _ in rows], color=colours)
    ax.bar_label(bars, labels=[f"{v:.2f}" for _, v, _ in rows], fontsize=8, padding=2)
    ax.axvline(1.0, color="black", linestyle="--", linewidth=1)
    ax.set_yticks(list(ys), [label for label, _, _ in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("target attainment (≥ 1 met; minimums: actual ÷ limit, maximums: limit ÷ actual)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")
