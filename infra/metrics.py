"""Prometheus metrics: what the API counts in process, and what a scrape reads from the system.

Two kinds of numbers, kept apart on purpose:

* **Counted in process** — commands handled (:func:`count_command`, called by the API for
  every command), requests refused by a rate limit and rate-limit decisions taken without
  Redis (:func:`count_rate_limited`, :func:`count_rate_limit_fallback`). With several API
  processes each one counts only its own, so when ``PROMETHEUS_MULTIPROC_DIR`` is set
  prometheus_client's multiprocess mode writes every process's counts to files in that
  directory and a scrape of any process sums them. The variable must be set before the
  processes start (prometheus_client reads it on import) and the directory emptied when the
  deployment starts (``concord serve`` does it).
* **Read at scrape time** — everything that already lives in the database or the broker
  (events appended, projection lag, queue depth, mail delivery): a handful of indexed queries
  per scrape, so every process reports the same, correct numbers without counting anything.

Each scrape-time reading comes from a *source*: a function from a :class:`Scrape` to
:class:`Reading` s of the families declared in :data:`FAMILIES`. A source that fails (the
broker is down, a table is missing) is logged and leaves its series out of that scrape, with
``concord_metrics_source_up{source=…} 0``; the others are still served. To add one — say
webhook deliveries — declare any new family in ``FAMILIES`` and append ``(name, function)``
to :data:`SOURCES`; e.g. a source yielding
``Reading("concord_deliveries_failed", {"channel": "webhook"}, n)`` adds a series to the
existing deliveries-failed family.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import event, func, or_, select

from infra.db import Database
from infra.queue import broker_urls
from infra.schema import events, mail_outbox, projection_checkpoints
from infra.settings import Settings

log = structlog.get_logger("concord.metrics")

#: The exposition format served (Prometheus text format 0.0.4).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# -- counted in process -----------------------------------------------------------------------

# No ``*_created`` series: in the 0.0.4 text format they are extra gauges nobody queries, and
# multiprocess mode never has them; the two modes expose the same series this way.
disable_created_metrics()  # type: ignore[no-untyped-call]

#: Not in prometheus_client's global registry: each scrape builds its own (see ``registry``).
COMMANDS = Counter(
    "concord_commands",
    "Commands handled by the API, by command and outcome class.",
    ["command", "outcome"],
    registry=None,
)

#: The outcome classes of a command (the ``outcome`` label).
OUTCOMES = ("ok", "unchanged", "conflict", "invalid", "not_found", "forbidden", "error")


def _increment(counter: Counter, what: str, **labels: str) -> None:
    """Add one to ``counter``: counting never fails what is counted (multiprocess mode with
    an unusable directory raises OSError, which is only logged)."""
    try:
        (counter.labels(**labels) if labels else counter).inc()
    except OSError as exc:
        log.warning(f"{what} not counted", **labels, error=repr(exc))


def count_command(command: str, outcome: str) -> None:
    """Count one handled command."""
    _increment(COMMANDS, "command", command=command, outcome=outcome)


#: Requests refused with 429, by policy (``read``, ``write``, ``anonymous``, or a route's own).
RATE_LIMITED = Counter(
    "concord_rate_limited",
    "Requests refused because a rate limit was reached, by policy.",
    ["policy"],
    registry=None,
)

#: Rate-limit decisions taken in one process because the shared store (Redis) was unreachable.
RATE_LIMIT_FALLBACKS = Counter(
    "concord_rate_limit_fallbacks",
    "Rate-limit decisions taken in this process because Redis could not be reached.",
    registry=None,
)


#: Connections this service's processes opened to the database. The pool keeps the ones a
#: burst opened (``CONCORD_DB_POOL_SIZE``): a count that keeps climbing under steady load
#: means the pool is too small, and every request past it costs the server a new backend.
DB_CONNECTIONS_OPENED = Counter(
    "concord_db_connections_opened",
    "Database connections opened (a steady climb under load: raise CONCORD_DB_POOL_SIZE).",
    registry=None,
)


def count_db_connection(*_: object) -> None:
    """Count one connection opened (a SQLAlchemy ``connect`` pool event listener)."""
    _increment(DB_CONNECTIONS_OPENED, "connection")


def count_connections(db: Database) -> None:
    """Count every connection ``db`` opens from now on (once, however often it is called)."""
    if not event.contains(db.engine, "connect", count_db_connection):
        event.listen(db.engine, "connect", count_db_connection)


def count_rate_limited(policy: str) -> None:
    """Count one request refused with 429."""
    _increment(RATE_LIMITED, "refusal", policy=policy)


def count_rate_limit_fallback() -> None:
    """Count one rate-limit decision taken without Redis."""
    _increment(RATE_LIMIT_FALLBACKS, "fallback")


def prepare_multiprocess_dir(path: Path) -> None:
    """Create the multiprocess directory and drop the files of a previous run.

    Call it once, before the API processes start: counts left by processes of an earlier run
    would otherwise be added to the new ones.
    """
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink(missing_ok=True)


# -- read at scrape time -----------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    kind: Literal["counter", "gauge"]
    help: str
    labels: tuple[str, ...] = ()


#: Every scrape-time family, in exposition order. Counter names get ``_total`` when exposed.
FAMILIES: dict[str, Family] = {
    "concord_events_appended": Family(
        "counter", "Events appended to the log (the head position: positions are contiguous)."
    ),
    "concord_projection_position": Family(
        "gauge", "The last log position each projection has applied.", ("projection",)
    ),
    "concord_projection_lag_events": Family(
        "gauge", "Events in the log a projection has not applied yet.", ("projection",)
    ),
    "concord_projection_lag_seconds": Family(
        "gauge",
        "Age of the oldest event a projection has not applied yet (0 when caught up).",
        ("projection",),
    ),
    "concord_projection_last_advanced_timestamp_seconds": Family(
        "gauge",
        "When each projection's checkpoint last moved (Unix time); 'dispatch' moves only in"
        " the worker, so together with its lag it is the worker's heartbeat.",
        ("projection",),
    ),
    "concord_queue_depth": Family(
        "gauge", "Messages waiting in the Celery queue (not yet delivered to a worker).", ("queue",)
    ),
    "concord_reminders_sent": Family(
        "counter", "E-mails sent (mail outbox rows with status 'sent'), by rule.", ("rule",)
    ),
    "concord_deliveries_failed": Family(
        "counter", "Failed delivery attempts, by channel.", ("channel",)
    ),
    "concord_mail_outbox_messages": Family(
        "gauge", "Mail outbox rows by status (pending, sending, sent, failed, …).", ("status",)
    ),
    "concord_webhook_deliveries": Family(
        "gauge", "Webhook deliveries (one per subscription and event) by status.", ("status",)
    ),
    "concord_metrics_source_up": Family(
        "gauge",
        "1 if this scrape could read the source, else 0 (its series are left out).",
        ("source",),
    ),
}


@dataclass(frozen=True)
class Reading:
    """One sample: a family of :data:`FAMILIES`, its label values and the value."""

    family: str
    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True)
class Scrape:
    """What a source may use: the database, the settings and the projections to report."""

    db: Database
    settings: Settings
    projections: Sequence[str]
    now: datetime = field(default_factory=lambda: datetime.now(UTC))


Source = Callable[[Scrape], Iterable[Reading]]


def event_log(scrape: Scrape) -> Iterator[Reading]:
    """Events appended and, per projection, its position, lag and last move (3 queries)."""
    cp = projection_checkpoints
    with scrape.db.read() as conn:
        # Checkpoints first: the head is read later, so it is never behind a checkpoint.
        rows = {
            name: (int(position), updated_at)
            for name, position, updated_at in conn.execute(
                select(cp.c.name, cp.c.position, cp.c.updated_at)
            )
        }
        head = int(
            conn.execute(
                select(func.coalesce(func.max(events.c.position), 0)).where(
                    events.c.position.is_not(None)
                )
            ).scalar_one()
        )
        applied = {n: rows.get(n, (0, None))[0] for n in scrape.projections}
        oldest_needed = {p + 1 for p in applied.values() if p < head}
        recorded = (
            dict(
                conn.execute(
                    select(events.c.position, events.c.recorded_at).where(
                        events.c.position.in_(sorted(oldest_needed))
                    )
                ).all()
            )
            if oldest_needed
            else {}
        )
    yield Reading("concord_events_appended", {}, head)
    for name, position in applied.items():
        label = {"projection": name}
        yield Reading("concord_projection_position", label, position)
        yield Reading("concord_projection_lag_events", label, max(head - position, 0))
        first_unapplied = recorded.get(position + 1)
        age = (scrape.now - first_unapplied).total_seconds() if first_unapplied else 0.0
        yield Reading("concord_projection_lag_seconds", label, max(age, 0.0))
        updated_at = rows.get(name, (0, None))[1]
        if updated_at is not None:
            yield Reading(
                "concord_projection_last_advanced_timestamp_seconds", label, updated_at.timestamp()
            )


def mail(scrape: Scrape) -> Iterator[Reading]:
    """Mail sent by rule, failed attempts, rows by status (one grouped query)."""
    m = mail_outbox
    with scrape.db.read() as conn:
        rows = conn.execute(
            select(m.c.rule, m.c.status, func.count(), func.coalesce(func.sum(m.c.failures), 0))
            .group_by(m.c.rule, m.c.status)
            .order_by(m.c.rule, m.c.status)
        ).all()
    sent: dict[str, int] = {}
    by_status: dict[str, int] = {}
    failures = 0
    for rule, status, count, failed in rows:
        if status == "sent":
            sent[rule] = sent.get(rule, 0) + int(count)
        by_status[status] = by_status.get(status, 0) + int(count)
        failures += int(failed)
    for rule, count in sent.items():
        yield Reading("concord_reminders_sent", {"rule": rule}, count)
    for status, count in by_status.items():
        yield Reading("concord_mail_outbox_messages", {"status": status}, count)
    yield Reading("concord_deliveries_failed", {"channel": "mail"}, failures)


def webhooks(scrape: Scrape) -> Iterator[Reading]:
    """Webhook deliveries by status and failed attempts (anything but a 2xx answer)."""
    from infra.webhooks.tables import webhook_attempts, webhook_deliveries

    d, a = webhook_deliveries, webhook_attempts
    with scrape.db.read() as conn:
        by_status = conn.execute(select(d.c.status, func.count()).group_by(d.c.status)).all()
        failed = conn.execute(
            select(func.count())
            .select_from(a)
            .where(or_(a.c.status_code.is_(None), a.c.status_code < 200, a.c.status_code >= 300))
        ).scalar_one()
    for status, count in by_status:
        yield Reading("concord_webhook_deliveries", {"status": status}, int(count))
    yield Reading("concord_deliveries_failed", {"channel": "webhook"}, int(failed))


def queue_depth(scrape: Scrape) -> Iterator[Reading]:
    """Messages waiting in this deployment's Celery queue, asked of the broker itself."""
    queue = scrape.settings.queue
    if scrape.settings.redis_url:
        depth = redis_queue_depth(scrape.settings.redis_url, queue)
    else:
        depth = embedded_queue_depth(Path(_sqlite_path(broker_urls(scrape.settings)[0])), queue)
    yield Reading("concord_queue_depth", {"queue": queue}, depth)


def redis_queue_depth(url: str, queue: str) -> int:
    """LLEN of the queue's list and of its priority lists, as kombu's Redis transport keeps them.

    kombu stores priority ``p`` of queue ``q`` in the list ``q`` for the lowest step and in
    ``q + Channel.sep + str(step)`` for the others (``Channel._q_for_pri``); ``_size`` sums them.
    """
    import redis
    from kombu.transport.redis import Channel

    keys = [queue] + [f"{queue}{Channel.sep}{step}" for step in Channel.priority_steps if step]
    with redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1) as client:
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.llen(key)
        return sum(int(n) for n in pipe.execute())


#: kombu's SQLAlchemy transport tables (its ``queue_tablename``/``message_tablename`` defaults;
#: infra/queue.py does not change them).
KOMBU_QUEUE_TABLE = "kombu_queue"
KOMBU_MESSAGE_TABLE = "kombu_message"


def embedded_queue_depth(path: Path, queue: str) -> int:
    """Visible messages of ``queue`` in the embedded SQLite broker (kombu's ``_size``).

    Delivered messages stay in the table with ``visible`` false until acknowledged, so only
    visible rows are waiting. No broker file or no tables yet: nothing was ever enqueued.
    """
    if not path.exists():
        return 0
    uri = f"{path.resolve().as_uri()}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=1)) as conn:
        tables = {
            name
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name IN (?, ?)",
                (KOMBU_QUEUE_TABLE, KOMBU_MESSAGE_TABLE),
            )
        }
        if len(tables) < 2:
            return 0
        row = conn.execute(
            f"SELECT count(*) FROM {KOMBU_MESSAGE_TABLE} AS m "
            f"JOIN {KOMBU_QUEUE_TABLE} AS q ON q.id = m.queue_id "
            "WHERE q.name = ? AND m.visible = 1",
            (queue,),
        ).fetchone()
        return int(row[0])


def _sqlite_path(broker_url: str) -> str:
    prefix = "sqla+sqlite:///"
    if not broker_url.startswith(prefix):
        raise ValueError(f"not an embedded SQLite broker: {broker_url.split(':', 1)[0]}")
    return broker_url[len(prefix) :]


#: Scrape-time sources, in order. Append ``(name, function)`` to add one.
SOURCES: list[tuple[str, Source]] = [
    ("event_log", event_log),
    ("mail", mail),
    ("webhooks", webhooks),
    ("queue", queue_depth),
]


class SystemCollector:
    """A prometheus_client collector that runs every source on each scrape."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        projections: Sequence[str],
        sources: Sequence[tuple[str, Source]] | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.projections = list(projections)
        self.sources = list(SOURCES if sources is None else sources)

    def collect(self) -> Iterator[Metric]:
        scrape = Scrape(self.db, self.settings, self.projections)
        readings: list[Reading] = []
        for name, source in self.sources:
            try:
                got = list(source(scrape))
            except Exception as exc:  # one unreachable source must not cost the others
                log.warning("metrics source unavailable", source=name, error=repr(exc))
                up = 0
            else:
                readings.extend(got)
                up = 1
            readings.append(Reading("concord_metrics_source_up", {"source": name}, up))
        yield from families(readings)


def families(readings: Iterable[Reading]) -> Iterator[Metric]:
    """Group readings into the metric families of :data:`FAMILIES`."""
    built: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
    for name, family in FAMILIES.items():
        kind = CounterMetricFamily if family.kind == "counter" else GaugeMetricFamily
        built[name] = kind(name, family.help, labels=family.labels)
    for reading in readings:
        family = FAMILIES[reading.family]
        metric = built[reading.family]
        metric.add_metric([reading.labels[label] for label in family.labels], reading.value)
    yield from built.values()


def registry(db: Database, settings: Settings, projections: Sequence[str]) -> CollectorRegistry:
    """A registry for one scrape: the command counts (of every process in multiprocess mode)
    and the system's readings."""
    reg = CollectorRegistry(auto_describe=False)
    multiproc_dir = settings.metrics_multiproc_dir
    if multiproc_dir is not None:
        multiproc_dir.mkdir(parents=True, exist_ok=True)
        MultiProcessCollector(reg, path=os.fspath(multiproc_dir))  # type: ignore[no-untyped-call]
    else:
        for counter in (COMMANDS, RATE_LIMITED, RATE_LIMIT_FALLBACKS, DB_CONNECTIONS_OPENED):
            reg.register(counter)
    reg.register(SystemCollector(db, settings, projections))
    return reg


def render(db: Database, settings: Settings, projections: Sequence[str]) -> bytes:
    """The exposition text for one scrape."""
    return generate_latest(registry(db, settings, projections))
