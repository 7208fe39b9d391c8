"""``concord``: the one command-line front door (serve, migrate, projections, verify, bench)."""

from __future__ import annotations

import json
import logging
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from infra.runtime import tune_process
from infra.settings import get_settings

app = typer.Typer(
    help="Concord: event-sourced consultations and joint statements.", no_args_is_help=True
)
projections_app = typer.Typer(help="Inspect and rebuild read models.", no_args_is_help=True)
app.add_typer(projections_app, name="projections")
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
err = Console(stderr=True)


@app.command()
def migrate(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Bring the database schema up to date (Alembic)."""
    from infra.migrate import upgrade

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url, revision)
    err.print(f"database at {_redacted(settings.database_url)} is at revision {revision}")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface (env HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (env PORT).")] = None,
    workers: Annotated[int, typer.Option(help="API processes (env WEB_CONCURRENCY).")] = 1,
) -> None:
    """Serve the HTTP API (and, in embedded mode, the worker and the scheduler)."""
    import uvicorn

    from infra.supervise import Supervisor

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.metrics_multiproc_dir is not None:
        from infra.metrics import prepare_multiprocess_dir

        # The API processes count commands there; an earlier run's counts must not add up.
        prepare_multiprocess_dir(settings.metrics_multiproc_dir)
    children = Supervisor()
    # uvicorn restores the previous SIGTERM handler and re-raises the signal after a graceful
    # shutdown; make that an exit that runs the ``finally`` below, so children stop with us.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if settings.embedded:
        # No external broker: this one command runs the whole system.
        children.start("worker", [sys.executable, "-m", "infra.cli", "worker"])
        children.start("scheduler", [sys.executable, "-m", "infra.cli", "scheduler"])
    try:
        uvicorn.run(
            "api.main:create_app",
            factory=True,
            host=host or settings.host,
            port=port or settings.port,
            workers=workers,
            log_config=None,
            proxy_headers=True,
        )
    finally:
        children.stop()


@app.command()
def worker(
    concurrency: Annotated[
        int | None, typer.Option(help="Worker processes (default: one per core; 1 embedded).")
    ] = None,
) -> None:
    """Run a Celery worker (it also keeps the projections caught up)."""
    settings = get_settings()
    argv = ["worker", "--queues", settings.queue, "--loglevel", settings.log_level]
    if settings.embedded:
        # The embedded SQLite broker is polled by one process; prefork gains nothing there.
        argv += ["--pool", "solo"]
    elif concurrency:
        argv += ["--concurrency", str(concurrency)]
    _celery(argv)


@app.command()
def scheduler() -> None:
    """Run the Celery beat scheduler (periodic ticks; due times live in the database)."""
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    schedule = settings.data_dir.resolve() / "celerybeat-schedule"
    _celery(["beat", "--schedule", str(schedule), "--loglevel", settings.log_level])


def _celery(argv: list[str]) -> None:
    """Replace this process with Celery, started by import string (no import arrow to workers)."""
    import os

    command = [sys.executable, "-m", "celery", "--app", "workers.celery_app:app", *argv]
    os.execv(sys.executable, command)  # noqa: S606


@projections_app.command("status")
def projections_status() -> None:
    """Show each projection's checkpoint against the head of the log."""
    from infra.bootstrap import bootstrap

    system = bootstrap()
    try:
        head = system.store.head_position()
        for name, position in system.projector.checkpoints().items():
            typer.echo(f"{name}\t{position}\t(lag {head - position})")
    finally:
        system.close()


@projections_app.command("rebuild")
def projections_rebuild(
    name: Annotated[
        str | None, typer.Argument(help="Projection to rebuild (default: all).")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=100, max=100_000)] = 5000,
) -> None:
    """Rebuild projections from the whole log into fresh tables, then swap them in."""
    from infra.bootstrap import bootstrap
    from infra.projections.rebuild import rebuild

    system = bootstrap()
    try:
        known = system.projector.projections
        if name is not None and name not in known:
            err.print(f"unknown projection {name!r}; known: {', '.join(sorted(known))}")
            raise typer.Exit(2)
        for projection in [known[name]] if name else list(known.values()):
            with _progress() as progress:
                task = progress.add_task(projection.name, total=None)

                def report(
                    done: int, head: int, task: TaskID = task, p: Progress = progress
                ) -> None:
                    p.update(task, completed=done, total=head)

                position = rebuild(
                    system.db, system.store, projection, batch_size=batch_size, progress=report
                )
            err.print(f"{projection.name}: rebuilt up to position {position}")
    finally:
        system.close()


@keys_app.command("create")
def keys_create(
    role: Annotated[str, typer.Option(help="admin, organiser, organisation or integrator.")],
    name: Annotated[str, typer.Option(help="Who or what the key is for.")],
    organisation: Annotated[
        str | None, typer.Option(help="Organisation id (role organisation only).")
    ] = None,
) -> None:
    """Create a key and print it on stdout — the only time it is shown."""
    from uuid import UUID

    from infra.bootstrap import bootstrap
    from infra.keys import KeyError_

    system = bootstrap()
    try:
        try:
            org = UUID(organisation) if organisation else None
        except ValueError:
            err.print(f"not an organisation id: {organisation!r}")
            raise typer.Exit(2) from None
        try:
            key, secret = system.keys.create(role, name, org, created_by="cli")
        except KeyError_ as exc:
            err.print(str(exc))
            raise typer.Exit(2) from None
        err.print(f"created {key.role} key {key.prefix} ({key.name}), id {key.id}")
        typer.echo(secret)
    finally:
        system.close()


@keys_app.command("list")
def keys_list(
    days: Annotated[int, typer.Option(min=1, max=90, help="Usage counted over these days.")] = 1,
) -> None:
    """List keys — never their secrets — and how each was used.

    Tab-separated: id, prefix, role, organisation, state, name, last used (UTC), last client
    address, then over the last ``--days``: reads, writes, denied (401 once revoked, 403) and
    rate-limited (429). Counts reach the database every few seconds (CONCORD_KEY_USAGE_FLUSH).
    """
    from infra import key_usage
    from infra.bootstrap import bootstrap

    system = bootstrap()
    try:
        usage = key_usage.summary(system.db, key_usage.since_days(days))
        for k in system.keys.list():
            state = "revoked" if k.revoked_at else "active"
            used = usage.get(k.id, key_usage.UsageTotals())
            last = k.last_used_at.strftime("%Y-%m-%dT%H:%M:%SZ") if k.last_used_at else "never"
            typer.echo(
                "\t".join(
                    str(v)
                    for v in (
                        k.id,
                        k.prefix,
                        k.role,
                        k.organisation_id or "-",
                        state,
                        k.name,
                        last,
                        used.last_client or "-",
                        used.reads,
                        used.writes,
                        used.denied,
                        used.rate_limited,
                    )
                )
            )
    finally:
        system.close()


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (see keys list).")],
) -> None:
    """Revoke a key at once."""
    from uuid import UUID

    from infra.bootstrap import bootstrap

    system = bootstrap()
    try:
        try:
            key = system.keys.revoke(UUID(key_id), revoked_by="cli")
        except ValueError:
            key = None
        if key is None:
            err.print(f"no key {key_id}")
            raise typer.Exit(2)
        err.print(f"revoked {key.prefix} ({key.name})")
    finally:
        system.close()


@app.command()
def verify(
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check the whole log: every stream's hash chain, versions and the feed's positions.

    Exits 0 when the log is intact, 1 with the first broken link otherwise.
    """
    from infra.db import Database
    from infra.eventstore.verify import verify as check

    settings = get_settings()
    db = Database(settings.database_url, pool_size=2)
    try:
        with _progress() as progress:
            task = progress.add_task("events checked", total=None)
            report = check(db, lambda done: progress.update(task, completed=done))
            progress.update(task, completed=report.events)
    finally:
        db.dispose()
    if as_json:
        typer.echo(json.dumps(report.as_dict()))
    elif report.broken is None:
        err.print(
            f"ok: {report.events} events in {report.streams} streams, chains intact, "
            f"positions 1..{report.head} each once"
            + (f" ({report.unnumbered} awaiting a position)" if report.unnumbered else "")
        )
    else:
        err.print(f"BROKEN at {report.broken.describe()}")
    if report.broken is not None:
        raise typer.Exit(1)


@app.command()
def demo() -> None:
    """Load a realistic data set built from the sources (safe to run again)."""
    from infra import demo as data
    from infra.bootstrap import bootstrap

    system = bootstrap()
    try:
        with _progress() as progress:
            task = progress.add_task("demo data", total=data.steps())
            loader = data.load(system, lambda _: progress.advance(task))
        err.print(f"demo: {loader.applied} commands applied, {loader.skipped} already there")
        if not any(k.name == "demo admin" for k in system.keys.list()):
            key, secret = system.keys.create("admin", "demo admin", created_by="concord demo")
            err.print(
                f"demo admin key {key.prefix} (shown once; use it as a Bearer token in /docs):"
            )
            typer.echo(secret)
    finally:
        system.close()


@app.command()
def bench(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print only the JSON object on stdout.")
    ] = False,
    suite: Annotated[
        str,
        typer.Option(
            help="store: the event store against plain SQL and the eventsourcing library; "
            "e2e: the service end to end (HTTP with wrk, compile, fan-out, rebuild); all: both."
        ),
    ] = "store",
    events: Annotated[
        int, typer.Option(min=10, help="Events per write workload (the log holds 3 times that).")
    ] = 5000,
    only: Annotated[
        str,
        typer.Option(help="e2e workload groups, comma-separated: http,compile,fanout,rebuild."),
    ] = "http,compile,fanout,rebuild",
    seconds: Annotated[float, typer.Option(min=1, help="Seconds of load per HTTP workload.")] = 10,
    signatories: Annotated[int, typer.Option(min=1, help="Signatories to compile.")] = 10_000,
    fanout_events: Annotated[int, typer.Option(min=1, help="Events to fan out.")] = 10_000,
    rebuild_events: Annotated[
        int, typer.Option(min=1, help="Events in the log of the rebuild.")
    ] = 1_000_000,
    out: Annotated[str, typer.Option(help="Directory for the JSON and the chart.")] = "var/bench",
    database_url: Annotated[
        str | None,
        typer.Option(
            help="Server to bench on (default DATABASE_URL). A scratch database is created "
            "beside it and dropped afterwards; existing data is never touched."
        ),
    ] = None,
) -> None:
    """Measure the event store (--suite store) or the whole service (--suite e2e).

    Every figure stands beside a baseline measured in the same run. Writes
    bench-<time>.json and a chart (.png) to --out (e2e: bench-e2e-<time>.*); progress goes
    to stderr.
    """
    from infra.bench import run_bench
    from infra.bench.run import BenchDependencyMissing
    from infra.settings import normalise_database_url

    if suite not in ("store", "e2e", "all"):
        raise typer.BadParameter("one of store, e2e, all", param_hint="--suite")
    url = normalise_database_url(database_url) if database_url else None
    result: dict[str, Any] = {}
    try:
        if suite in ("store", "all"):
            result = run_bench(events=events, out_dir=out, quiet=as_json, database_url=url)
    except BenchDependencyMissing as exc:
        err.print(str(exc))
        raise typer.Exit(2) from None
    if suite in ("e2e", "all"):
        groups = tuple(g.strip() for g in only.split(",") if g.strip())
        result.update(
            _bench_e2e(
                url or get_settings().database_url,
                Path(out),
                quiet=as_json,
                only=groups,
                seconds=seconds,
                signatories=signatories,
                fanout_events=fanout_events,
                rebuild_events=rebuild_events,
            )
        )
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")


def _bench_e2e(url: str, out: Path, *, quiet: bool, **options: Any) -> dict[str, Any]:
    from rich.console import Console

    from infra.bench.e2e import GROUPS, print_e2e_table, run_e2e, write_e2e_chart
    from infra.bench.http import WrkMissing
    from infra.bench.scratch import backend_of

    unknown = set(options["only"]) - set(GROUPS)
    if unknown:
        raise typer.BadParameter(f"unknown: {', '.join(sorted(unknown))}", param_hint="--only")
    out.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)
    with _progress() as progress:
        tasks: dict[str, Any] = {}

        def report(description: str, done: int, total: int) -> None:
            if description not in tasks:
                tasks[description] = progress.add_task(description, total=total)
            progress.update(tasks[description], completed=done, total=total)

        try:
            workloads, notes = run_e2e(
                url, out, report, redis_url=get_settings().redis_url, **options
            )
        except WrkMissing as exc:
            err.print(str(exc))
            raise typer.Exit(2) from None
    title = f"concord bench e2e — {backend_of(url)}, {started.strftime('%Y-%m-%d %H:%M')} UTC"
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    json_path, chart_path = out / f"bench-e2e-{stamp}.json", out / f"bench-e2e-{stamp}.png"
    result = {
        "end_to_end": workloads,
        "end_to_end_notes": notes,
        "end_to_end_started_at": started.isoformat(),
        "end_to_end_files": {"json": str(json_path), "chart": str(chart_path)},
    }
    write_e2e_chart(workloads, chart_path, title)
    json_path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    if not quiet:
        console = Console()
        print_e2e_table(workloads, console, title)
        for note in notes:
            console.print(note, style="yellow")
        console.print(f"JSON: {json_path}\nchart: {chart_path}", style="dim")
    return result


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
    )


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def main() -> None:
    """The ``concord`` program. Every command logs to stderr, so stdout carries only what a
    command prints (a key, ``--json`` output) and scripts can read it. (Configured here, not in
    a Typer callback: a test invoking ``app`` in-process keeps its own logging set-up.)"""
    from infra.logging import configure

    settings = get_settings()
    level = settings.log_level
    if sys.argv[1:2] == ["bench"] and logging.getLevelName(level) < logging.WARNING:
        # The bench shows progress bars and a report; a line per key and consultation its
        # set-up creates would only push them off the screen (its servers log at WARNING).
        level = "WARNING"
    configure(settings.log_format, level)
    tune_process()
    app()


if __name__ == "__main__":
    main()
