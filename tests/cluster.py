"""A running Concord cluster for tests (API processes, Celery workers, beat on PostgreSQL and a
private Redis), the client that drives it, and the offline checks the fault suite and the
scale-out proof share: each acknowledged command once in the log, a contiguous feed, every
notice and webhook delivered and recorded once, projections that rebuild to what was live.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from infra.bootstrap import System
from infra.projections import all_projections
from infra.projections.rebuild import rebuild
from infra.schema import mail_outbox
from infra.webhooks.tables import webhook_deliveries, webhook_subscriptions
from services.reminders.events import message_stream
from tests.mailserver import MailServer
from tests.processes import ROOT, free_port, spawn
from tests.webhook_receiver import Receiver

# -- processes ------------------------------------------------------------------------------


def signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        return
    process.wait(timeout=60)


class Cluster:
    """The system's processes: API processes, Celery workers and one beat; each can be killed
    and restarted. Logs go to ``api<i>.log``, ``worker<i>.log`` and ``beat.log``."""

    def __init__(self, env: dict[str, str], logs: Path, *, apis: int = 2, workers: int = 1) -> None:
        self.env = env
        self.logs = logs
        self.ports = [free_port() for _ in range(apis)]
        self.apis: list[subprocess.Popen[bytes] | None] = [None] * apis
        self.workers: list[subprocess.Popen[bytes] | None] = [None] * workers
        self.beat: subprocess.Popen[bytes] | None = None

    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.ports]

    def start_api(self, i: int) -> None:
        command = ["serve", "--host", "127.0.0.1", "--port", str(self.ports[i])]
        # Its connections carry its name, so a test can tell them apart in pg_stat_activity.
        url = make_url(self.env["DATABASE_URL"]).update_query_dict({"application_name": f"api{i}"})
        env = {
            **self.env,
            "CONCORD_DATA_DIR": str(self.logs / f"api{i}"),
            "DATABASE_URL": url.render_as_string(hide_password=False),
        }
        self.apis[i] = spawn(command, env, self.logs / f"api{i}.log")

    def kill_api(self, i: int) -> None:
        process = self.apis[i]
        assert process is not None
        signal_group(process, signal.SIGKILL)

    def wait_ready(self, i: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(f"{self.urls()[i]}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, self.tail(f"api{i}.log")
            time.sleep(0.1)

    def start_worker(self, i: int = 0, concurrency: int = 2) -> None:
        env = {**self.env, "CONCORD_DATA_DIR": str(self.logs / f"worker{i}")}
        command = ["worker", "--concurrency", str(concurrency)]
        self.workers[i] = spawn(command, env, self.logs / f"worker{i}.log")

    def kill_worker(self, i: int = 0) -> None:
        process = self.workers[i]
        assert process is not None
        signal_group(process, signal.SIGKILL)

    def start_beat(self) -> None:
        env = {**self.env, "CONCORD_DATA_DIR": str(self.logs / "beat")}
        self.beat = spawn(["scheduler"], env, self.logs / "beat.log")

    def stop(self) -> None:
        for process in [*self.apis, *self.workers, self.beat]:
            if process is not None and process.poll() is None:
                signal_group(process, signal.SIGTERM)

    def tail(self, name: str, chars: int = 4000) -> str:
        path = self.logs / name
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def tail_workers(self, chars: int = 4000) -> str:
        return "\n".join(
            f"-- worker{i}.log --\n{self.tail(f'worker{i}.log', chars)}"
            for i in range(len(self.workers))
        )


def cluster_env(system: System, redis_url: str, smtp: MailServer, **extra: str) -> dict[str, str]:
    """The environment of every process: the test's database, Redis and SMTP server, short
    ticks, leases and timeouts so that recovery happens within a test's time."""
    return {
        **os.environ,
        "DATABASE_URL": system.settings.database_url,
        "REDIS_URL": redis_url,
        "SMTP_URL": smtp.url,
        "CONCORD_LOG_FORMAT": "console",
        "CONCORD_SCHEDULER_TICK": "1",
        "CONCORD_MAIL_LEASE": "4",
        "CONCORD_SMTP_TIMEOUT": "3",
        "CONCORD_WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
        "CONCORD_WEBHOOK_TIMEOUT": "2",
        "CONCORD_IDEMPOTENCY_LEASE": "3",
        **extra,
    }


@contextmanager
def admin_connection(system: System) -> Iterator[psycopg.Connection]:
    url = system.db.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url, autocommit=True) as conn:
        yield conn


# -- clients --------------------------------------------------------------------------------


@dataclass
class Op:
    """One command as a client sends it: the same key and request id on every attempt."""

    kind: str
    method: str
    path: str
    body: dict[str, Any] | None
    headers: dict[str, str]
    id: str = field(default_factory=lambda: f"op-{uuid.uuid4().hex}")
    status: int | None = None  # the final answer; None if the client gave up
    answer: Any = None
    attempts: int = 0
    started: float = 0.0
    acked_at: float | None = None
    #: Set on the commands whose API process was killed under them on purpose.
    cut: str | None = None
    #: The base URL of every attempt, and the one that gave the final answer.
    tried: list[str] = field(default_factory=list)
    answered_by: str | None = None

    @property
    def acked(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def refused(self) -> bool:
        return self.status is not None and self.status >= 400

    @property
    def problem_type(self) -> str | None:
        """The last segment of a refusal's problem type (``already-endorsed``…)."""
        if not self.refused or not isinstance(self.answer, dict):
            return None
        return str(self.answer.get("type", "")).rsplit("/", 1)[-1] or None


@dataclass
class Tally:
    """What the clients met on the way: proof the faults hit requests in flight."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    seen: Counter[str] = field(default_factory=Counter)
    #: Requests sent to each base URL and not answered yet.
    in_flight: Counter[str] = field(default_factory=Counter)

    def add(self, what: str) -> None:
        with self.lock:
            self.seen[what] += 1

    def begin(self, url: str) -> None:
        with self.lock:
            self.in_flight[url] += 1

    def end(self, url: str) -> None:
        with self.lock:
            self.in_flight[url] -= 1


def send(op: Op, urls: Sequence[str], client: httpx.Client, tally: Tally, rng: random.Random) -> Op:
    """Send until a final answer: retried on connection errors, 5xx, 429 and "in progress".
    ``urls`` may shrink while the client runs (an API process taken out of the pool)."""
    op.started = time.monotonic()
    headers = {**op.headers, "Idempotency-Key": op.id, "X-Request-ID": op.id}
    deadline = op.started + 120
    while time.monotonic() < deadline:
        op.attempts += 1
        base = rng.choice(list(urls))
        op.tried.append(base)
        tally.begin(base)
        try:
            response = client.request(op.method, base + op.path, json=op.body, headers=headers)
        except httpx.TransportError as exc:
            tally.add(f"transport:{type(exc).__name__}")
            time.sleep(0.2)
            continue
        finally:
            tally.end(base)
        status = response.status_code
        problem = response.json() if "json" in response.headers.get("content-type", "") else {}
        in_progress = status == 409 and str(problem.get("type", "")).endswith("-in-progress")
        if status >= 500 or status == 429 or in_progress:
            tally.add(f"{status}:{str(problem.get('type', '')).rsplit('/', 1)[-1]}")
            time.sleep(min(float(response.headers.get("retry-after", "0.3")), 1.0))
            continue
        op.status, op.answer = status, response.json() if response.content else None
        op.answered_by = base
        if op.acked:
            op.acked_at = time.monotonic()
        return op
    return op


def ok(response: httpx.Response, status: int = 201) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def subscribe(api: str, integrator: dict[str, str], receiver: Receiver) -> dict[str, Any]:
    """A webhook subscription of every public event to the receiver, which learns its secret."""
    subscription: dict[str, Any] = ok(
        httpx.post(
            f"{api}/v1/subscriptions", headers=integrator, json={"url": receiver.url}, timeout=30
        )
    )
    receiver.secrets.append(subscription["secret"])
    return subscription


# -- settling -------------------------------------------------------------------------------


def settle(
    system: System, smtp: MailServer, receiver: Receiver, cluster: Cluster, timeout_s: float = 120
) -> None:
    """Wait (bounded) until the workers have caught up with everything the history caused."""
    names = [*system.projector.projections, *system.dispatcher.projections]
    deadline = time.monotonic() + timeout_s
    while True:
        head = system.store.sequence_pending()  # the beat does this too; it is idempotent
        checkpoints = system.projector.checkpoints(names)
        with system.db.read() as conn:
            outbox = Counter(r.status for r in conn.execute(select(mail_outbox.c.status)))
            deliveries = Counter(
                r.status for r in conn.execute(select(webhook_deliveries.c.status))
            )
        behind = {n: checkpoints.get(n, 0) for n in names if checkpoints.get(n, 0) < head}
        busy = {s: n for s, n in outbox.items() if s in ("pending", "sending")}
        waiting = {s: n for s, n in deliveries.items() if s != "delivered"}
        if not behind and not busy and not waiting:
            return
        assert time.monotonic() < deadline, (
            f"not settled: head {head}, behind {behind}, outbox {dict(outbox)}, "
            f"deliveries {dict(deliveries)}\n" + cluster.tail_workers()
        )
        time.sleep(0.5)


def read_feed(api: str, admin: dict[str, str]) -> list[dict[str, Any]]:
    """The whole feed as a client pages through it."""
    events: list[dict[str, Any]] = []
    after = 0
    with httpx.Client(base_url=api, headers=admin, timeout=30) as http:
        while True:
            page = ok(http.get("/v1/events", params={"after": after, "limit": 1000}), 200)
            events += page["data"]
            if not page["has_more"]:
                return events
            after = page["next_after"]


# -- the invariants -------------------------------------------------------------------------


def appends_by_command(system: System) -> dict[str, dict[int, set[tuple[str, str]]]]:
    """Correlation id (= a client's request id) → step → the (stream, time stamp) of each
    append that carried it."""
    with system.db.read() as conn:
        rows = conn.execute(text("SELECT stream_id, recorded_at, metadata FROM events")).all()
    appends: dict[str, dict[int, set[tuple[str, str]]]] = defaultdict(lambda: defaultdict(set))
    for row in rows:
        correlation = row.metadata.get("correlation_id") or ""
        if correlation.startswith("op-"):
            step = row.metadata["step"]
            appends[correlation][step].add((str(row.stream_id), row.recorded_at.isoformat()))
    return appends


def check_each_command_once(system: System, ops: list[Op]) -> None:
    """By correlation id (= the command's request id): each step of an acknowledged command
    is one append in the log — not none, not two — and a refused command left nothing. (The
    events of one append share their stream and time stamp; a command decided twice would
    show a second time stamp or a second stream.)"""
    appends = appends_by_command(system)
    by_id = {o.id: o for o in ops}
    assert set(appends) <= set(by_id), "events of a command nobody sent"
    for op in ops:
        steps = appends.get(op.id, {})
        if op.acked:
            assert steps, f"{op.kind} {op.id} was acknowledged ({op.status}) but left no event"
        if op.refused:
            assert not steps, f"{op.kind} {op.id} was refused ({op.status}) but left events"
        for step, where in steps.items():
            assert len(where) == 1, f"{op.kind} {op.id} step {step} was appended twice: {where}"


def check_the_feed(system: System, feed: list[dict[str, Any]]) -> None:
    positions = [e["position"] for e in feed]
    head = system.store.head_position()
    assert positions == list(range(1, head + 1)), "the feed has a gap, a duplicate or a swap"
    with system.db.read() as conn:
        total = conn.execute(text("SELECT count(*) FROM events")).scalar()
        unnumbered = conn.execute(text("SELECT count(*) FROM events WHERE position IS NULL"))
    assert total == head and unnumbered.scalar() == 0, "every event is numbered and in the feed"


def check_notices(system: System, smtp: MailServer) -> None:
    """Every notice due was sent, arrived and was recorded once; none was sent twice."""
    with system.db.read() as conn:
        rows = conn.execute(select(mail_outbox)).all()
    statuses = Counter(r.status for r in rows)
    assert statuses["sent"] > 0, statuses
    assert set(statuses) <= {"sent", "skipped", "dropped"}, statuses
    received = smtp.inbox.by_id()
    for row in rows:
        recorded = system.store.read_stream(message_stream(row.key))
        if row.status == "sent":
            assert [e.type for e in recorded] == ["reminder.sent"], row.key
            assert row.message_id in received, f"{row.key} was never received"
        else:
            assert recorded == [], f"{row.key} is {row.status} yet recorded as sent"
    # A worker killed after the mail server took a message and before it was recorded leaves
    # a mail that may be unwanted by the time the send is retried (its person erased, its
    # registration cancelled). Only such a row may stand behind a mail not recorded as sent,
    # and the row must say so.
    cut_off = {
        r.message_id
        for r in rows
        if r.status != "sent" and r.attempts > r.failures + 1 and "cut off" in r.last_error
    }
    sent = {r.message_id for r in rows if r.status == "sent"}
    assert set(received) <= sent | cut_off, "a stray mail"


def check_webhooks(
    system: System, receiver: Receiver, feed: list[dict[str, Any]], subscription: str
) -> None:
    """One delivery row per public event, each delivered; the receiver, de-duplicating by
    ``webhook-id``, saw every one of them in position order, each with a verified signature."""
    assert receiver.problems == [], receiver.problems[:5]
    with system.db.read() as conn:
        start_after = conn.execute(
            select(webhook_subscriptions.c.start_after).where(
                webhook_subscriptions.c.id == uuid.UUID(subscription)
            )
        ).scalar_one()
        rows = conn.execute(
            select(webhook_deliveries).order_by(webhook_deliveries.c.position)
        ).all()
    public = [e["id"] for e in feed if e["public_type"] and e["position"] > start_after]
    assert [str(r.event_id) for r in rows] == public, "one delivery row per public event"
    assert {r.status for r in rows} == {"delivered"}
    assert receiver.unique_ids()[: len(public)] == public, "each event seen, in order"


def check_verify(system: System) -> None:
    env = {**os.environ, "DATABASE_URL": system.settings.database_url}
    done = subprocess.run(
        [sys.executable, "-m", "infra.cli", "verify"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def check_rebuilt_projections(system: System) -> None:
    """Each projection rebuilt from the whole log equals what was kept live through faults."""
    for projection in all_projections(system.store, system.store.keyring):
        if not projection.tables:
            continue
        live = snapshot(system, projection.tables)
        rebuild(system.db, system.store, projection)
        rebuilt = snapshot(system, projection.tables)
        for table, rows in live.items():
            differ = [
                (key, row, rebuilt[table].get(key))
                for key, row in rows.items()
                if rebuilt[table].get(key) != row
            ]
            assert not differ and rebuilt[table].keys() == rows.keys(), (
                f"{projection.name}: {len(differ)} rows of {table} differ after a rebuild; "
                f"the first (key, live, rebuilt): {differ[:1]}"
            )


def snapshot(system: System, tables: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """Each table's rows by primary key, as column → value."""
    with system.db.read() as conn:
        return {
            t.name: {
                repr(tuple(row._mapping[c.name] for c in t.primary_key)): dict(row._mapping)
                for row in conn.execute(select(t))
            }
            for t in tables
        }
