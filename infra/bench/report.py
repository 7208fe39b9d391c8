"""The bench result for people: a table on the terminal and a bar chart beside the JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

CONTENDERS = (("ours", "#1f77b4"), ("plain", "#7f7f7f"), ("eventsourcing", "#ff7f0e"))


def _rate(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


def print_table(result: dict[str, Any], console: Console) -> None:
    """Events per second per contender, ours as a share of each baseline, and the targets."""
    table = Table(
        title=f"concord bench — {result['backend']}, {result['events']:,} events per workload",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("workload", no_wrap=True)
    for header in ("ours/s", "plain/s", "es/s", "÷plain", "÷es"):
        table.add_column(header, justify="right", no_wrap=True)
    table.add_column("target", no_wrap=True)
    table.add_column("met", justify="center", no_wrap=True)
    footnotes: list[str] = []
    for w in result["workloads"]:
        target = w["target"]
        wanted = f"≥{target['min']:.0%}"
        if target["against"] != "plain":
            wanted += "*" * (len(footnotes) + 1)
            footnotes.append(
                f"{'*' * (len(footnotes) + 1)} {w['name']}: the target is against "
                f"{target['against'].replace('_', ' ')}; "
                f"ours is {_pct(w['ratios'].get(target['against']))} of it"
            )
        table.add_row(
            w["name"],
            _rate(w["per_s"]),
            _rate(w["baselines"]["plain"]),
            _rate(w["baselines"]["eventsourcing"]),
            _pct(w["ratios"]["plain"]),
            _pct(w["ratios"]["eventsourcing"]),
            wanted,
            "[green]yes[/]" if w["meets_target"] else "[red]no[/]",
        )
    console.print(table)
    for footnote in footnotes:
        console.print(footnote)
    console.print("es = the eventsourcing library; ÷ = ours as a share of it", style="dim")
    db = result.get("database") or {}
    console.print(", ".join(f"{k}={v}" for k, v in db.items()), style="dim")
    for note in result.get("notes", []):
        if note.startswith("CHECK FAILED"):
            console.print(note, style="bold red")
    files = result.get("files") or {}
    if files:
        console.print(f"JSON: {files['json']}\nchart: {files['chart']}", style="dim")


def _target_base(w: dict[str, Any], workloads: list[dict[str, Any]]) -> float | None:
    """The events/s the workload's target is a share of."""
    against = w["target"]["against"]
    if against == "plain":
        return w["baselines"]["plain"]  # type: ignore[no-any-return]
    ratio = w["ratios"].get(against)
    return w["per_s"] / ratio if ratio else None


def write_chart(result: dict[str, Any], path: Path) -> None:
    """Grouped bars per workload (ours, plain, eventsourcing), events/s on a log scale."""
    # The object API with the Agg canvas: no pyplot, no GUI backend, no global state.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    workloads = result["workloads"]
    fig = Figure(figsize=(10, 5.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.26
    for i, (name, colour) in enumerate(CONTENDERS):
        xs, ys = [], []
        for j, w in enumerate(workloads):
            value = w["per_s"] if name == "ours" else w["baselines"][name]
            if value:
                xs.append(j + (i - 1) * width)
                ys.append(value)
        bars = ax.bar(xs, ys, width, label=name, color=colour)
        if name == "ours":
            labels = [
                _pct(w["ratios"]["plain"]) + " of plain" if w["ratios"]["plain"] else ""
                for w in workloads
                if w["per_s"]
            ]
            ax.bar_label(bars, labels=labels, fontsize=8, padding=2)
    for j, w in enumerate(workloads):
        base = _target_base(w, workloads)
        if base:
            level = w["target"]["min"] * base
            ax.hlines(level, j - 1.5 * width, j - 0.5 * width, colors="black", linestyles="--")
    ax.plot([], [], "k--", label="target for ours")
    ax.set_yscale("log")
    ax.set_ylabel("events per second (log scale)")
    ax.set_xticks(range(len(workloads)), [w["name"] for w in workloads], fontsize=9)
    ax.set_title(
        f"concord bench — {result['backend']}, {result['events']:,} events per workload, "
        f"{result['started_at'][:16].replace('T', ' ')} UTC",
        fontsize=10,
    )
    ax.legend(loc="upper left", fontsize=9)
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")
