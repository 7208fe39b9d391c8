"""The fault suite: real processes on loopback, a history of concurrent random commands while
faults are injected, then an offline check that nothing was lost, doubled or leaked.

Two API processes (``concord serve``), a Celery worker and beat on a private ``redis-server``, a
fresh PostgreSQL database, an SMTP server and a webhook receiver that verifies signatures. A few
client threads register participants, endorse, withdraw, reschedule and erase people, each
command with an ``Idempotency-Key`` (and the same ``X-Request-ID``, which the log keeps as the
correlation id), retried on connection errors and 5xx like any careful client. Meanwhile: kill -9
of each API process in the middle of a command — once while its append waits, once after the
append committed and before the answer — (restarted), kill -9 of the worker twice (restarted),
Redis stopped for 10 s, and ``pg_terminate_backend`` of every connection to the database twice,
with appends caught waiting.

Afterwards, with the system left to settle:

* every acknowledged command's events are in the log exactly once, and a refused one left none;
* the feed (``GET /v1/events`` paged by ``next_after``) holds positions 1..head, each once;
* every projection rebuilt from scratch equals the live one, table by table;
* every notice in the outbox was sent, received by the SMTP server and recorded once
  (``reminder.sent``); every webhook delivery is ``delivered`` and the receiver, de-duplicating
  by ``webhook-id``, saw each public event;
* ``concord verify`` exits 0;
* no erased person's name or address is in the events table, the projection tables, the feed,
  a webhook body or an e-mail that arrived after the erasure, or a replay of every webhook.

``pytest -m faults`` runs it alone; ``FAULT_SEED`` replays a history.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import pytest
from sqlalchemy import select, text

from infra.bootstrap import System
from infra.projections import all_projections
from tests import backends
from tests.cluster import (
    Cluster,
    Op,
    Tally,
    admin_connection,
    check_each_command_once,
    check_notices,
    check_rebuilt_projections,
    check_the_feed,
    check_verify,
    check_webhooks,
    cluster_env,
    ok,
    read_feed,
    send,
    settle,
    subscribe,
)
from tests.mailserver import MailServer
from tests.processes import REDIS_SERVER, PrivateRedis
from tests.webhook_receiver import Receiver

_REDIS = backends.redis()

pytestmark = [
    pytest.mark.faults,
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.skipif(not _REDIS.ok, reason=_REDIS.reason),
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed"),
]

#: How long the clients keep sending commands while faults are injected.
HISTORY_S = 25.0
#: The sequencer's advisory lock (migrations/versions/0001_event_store.py).
SEQUENCER_LOCK = 0x434F_4E43_4F52
#: Every append holds it shared (migration 0013): held exclusively, it stops appends before
#: they write a row, and nothing else (the sequencer and the projections carry on).
WRITER_LOCK = 0x434F_4E43_5752
CLIENTS = 4
#: A message or webhook body may have been rendered just before an erasure was acknowledged
#: and arrive just after it; anything arriving later than this must not name the person.
GRACE_S = 2.0
SEED = int(os.environ.get("FAULT_SEED", random.randrange(1_000_000)))


# -- clients --------------------------------------------------------------------------------


@dataclass
class World:
    """What the setup made and what the clients share while the history runs."""

    admin: dict[str, str]
    organiser: dict[str, str]
    consultation: str
    starts_at: datetime
    statement: str
    organisations: list[str]
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: (name, email) of people whose registration was acknowledged and who are not erased.
    people: list[tuple[str, str]] = field(default_factory=list)
    #: (name, email, monotonic time the erasure was acknowledged).
    erased: list[tuple[str, str, float]] = field(default_factory=list)
    reschedules: int = 0
    ops: list[Op] = field(default_factory=list)


def next_op(world: World, rng: random.Random) -> tuple[Op, Callable[[Op], None]]:
    """A random command and what to remember once it is answered."""
    roll = rng.random()
    organiser = world.organiser
    if roll < 0.15:
        with world.lock:
            person = world.people.pop(rng.randrange(len(world.people))) if world.people else None
        if person is not None:
            name, email = person
            op = Op("erase", "POST", "/v1/people/erase", {"email": email}, world.admin)

            def erased(op: Op) -> None:
                if op.acked:  # otherwise the person is simply not used again
                    assert op.acked_at is not None
                    with world.lock:
                        world.erased.append((name, email, op.acked_at))

            return op, erased
    if roll < 0.25:
        with world.lock:
            world.reschedules += 1
            n = world.reschedules
        if n <= 3:  # every reschedule mails everyone registered: keep the mail bounded
            starts = world.starts_at + timedelta(days=n)
            body = {
                "starts_at": starts.isoformat(),
                "ends_at": (starts + timedelta(hours=8)).isoformat(),
                "reason": f"venue change {n}",
            }
            path = f"/v1/consultations/{world.consultation}/reschedule"
            return Op("reschedule", "POST", path, body, organiser), lambda op: None
    statement = f"/v1/statements/{world.statement}/endorsements"
    organisation = rng.choice(world.organisations)
    if roll < 0.45:
        body = {"organisation_id": organisation, "signatory_name": f"Signatory {rng.random()}"}
        return Op("endorse", "POST", statement, body, organiser), lambda op: None
    if roll < 0.55:
        path = f"{statement}/{organisation}"
        return Op("withdraw", "DELETE", path, None, organiser), lambda op: None
    return registration(world)


def registration(world: World) -> tuple[Op, Callable[[Op], None]]:
    tag = uuid.uuid4().hex[:10]
    name, email = f"Nguyễn Thị Hoà {tag}", f"hoa-{tag}@example.org"
    body = {"name": name, "email": email, "role": "delegate", "country": "VN"}
    path = f"/v1/consultations/{world.consultation}/registrations"

    def registered(op: Op) -> None:
        if op.acked:
            with world.lock:
                world.people.append((name, email))

    return Op("register", "POST", path, body, world.organiser), registered


def run_client(world: World, urls: list[str], tally: Tally, seed: int, until: float) -> None:
    rng = random.Random(seed)
    timeout = httpx.Timeout(20.0, connect=2.0)
    with httpx.Client(timeout=timeout) as client:
        while time.monotonic() < until:
            op, remember = next_op(world, rng)
            send(op, urls, client, tally, rng)
            remember(op)
            with world.lock:
                world.ops.append(op)


# -- setup ----------------------------------------------------------------------------------


def set_up(system: System, api: str) -> World:
    """Organisations, a consultation open for registration, a finalised statement."""
    admin = {"Authorization": f"Bearer {system.keys.create('admin', 'fault suite')[1]}"}
    organiser = {"Authorization": f"Bearer {system.keys.create('organiser', 'fault suite')[1]}"}
    with httpx.Client(base_url=api, timeout=30) as http:
        orgs = [
            ok(
                http.post(
                    "/v1/organisations",
                    headers=organiser,
                    json={
                        "name": f"Organisation {i}",
                        "kind": "ngo",
                        "country": "ID",
                        "email": f"org{i}@example.org",
                    },
                )
            )["id"]
            for i in range(5)
        ]
        starts = datetime.now(UTC).replace(microsecond=0) + timedelta(days=40)
        plan = {
            "title": "Regional CSO Consultation",
            "scope": "regional",
            "host_country": "ID",
            "city": "Jakarta",
            "mode": "in_person",
            "timezone": "Asia/Jakarta",
            "starts_at": starts.isoformat(),
            "ends_at": (starts + timedelta(hours=8)).isoformat(),
            "organiser_id": orgs[0],
            "capacity": 10_000,
        }
        cid = ok(http.post("/v1/consultations", headers=organiser, json=plan))["id"]
        closes = {"closes_at": (starts - timedelta(days=2)).isoformat()}
        ok(
            http.post(f"/v1/consultations/{cid}/open-registration", headers=organiser, json=closes),
            200,
        )
        held = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)
        past = {
            **plan,
            "starts_at": held.isoformat(),
            "ends_at": (held + timedelta(hours=8)).isoformat(),
        }
        del past["capacity"]
        past_id = ok(http.post("/v1/consultations", headers=organiser, json=past))["id"]
        sid = ok(
            http.post(
                f"/v1/consultations/{past_id}/statements",
                headers=organiser,
                json={"title": "Joint statement", "language": "en"},
            )
        )["id"]
        ok(
            http.post(
                f"/v1/statements/{sid}/recommendations",
                headers=organiser,
                json={"thematic_area": plan_area(http, past_id, organiser), "text": "Protect."},
            )
        )
        deadline = {"endorsement_deadline": (datetime.now(UTC) + timedelta(days=20)).isoformat()}
        ok(http.post(f"/v1/statements/{sid}/finalise", headers=organiser, json=deadline), 200)
    return World(admin, organiser, cid, starts, sid, orgs)


def plan_area(http: httpx.Client, consultation: str, headers: dict[str, str]) -> str:
    areas: list[str] = ok(http.get(f"/v1/consultations/{consultation}", headers=headers), 200)[
        "thematic_areas"
    ]
    return areas[0]


# -- faults ---------------------------------------------------------------------------------


def terminate_connections(system: System) -> int:
    """``pg_terminate_backend`` of every other connection to the database (APIs, worker, beat),
    with appends caught in the middle: for half a second before, writers wait on our lock."""
    with admin_connection(system) as conn, conn.transaction():
        conn.execute("LOCK TABLE events IN SHARE MODE")
        time.sleep(0.5)
        row = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    return int(row[0]) if row else 0


def cut_api(
    cluster: Cluster, i: int, system: System, world: World, tally: Tally, *, committed: bool
) -> threading.Thread:
    """kill -9 of API process ``i`` while it is in the middle of a registration: blocked in
    its append (``committed=False``: we hold the writers' lock, so appends wait before they
    write a row while sequencing carries on), or with the append committed and its position
    not yet known (``committed=True``: we hold the sequencer).
    The client then retries the command with its key on the other process, in a thread."""
    op, remember = registration(world)
    op.cut = "after its commit" if committed else "before its commit"
    answered: list[httpx.Response | Exception] = []
    headers = {**op.headers, "Idempotency-Key": op.id, "X-Request-ID": op.id}

    def first_attempt() -> None:
        try:
            url = cluster.urls()[i] + op.path
            answered.append(httpx.post(url, json=op.body, headers=headers, timeout=30))
        except httpx.TransportError as exc:
            tally.add(f"cut:{type(exc).__name__}")
            answered.append(exc)

    attempt = threading.Thread(target=first_attempt, daemon=True)
    with admin_connection(system) as conn, conn.transaction():
        if committed:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SEQUENCER_LOCK,))
        else:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITER_LOCK,))
        attempt.start()
        deadline = time.monotonic() + 30
        while not reached(conn, op, i, committed):
            assert not answered, f"api{i} answered before it could be killed: {answered}"
            assert time.monotonic() < deadline, f"api{i} never reached the append"
            time.sleep(0.02)
        op.attempts = 1
        cluster.kill_api(i)
    attempt.join(timeout=30)
    assert answered and isinstance(answered[0], Exception), "the client lost its answer"
    cluster.start_api(i)

    def settle_it() -> None:
        with httpx.Client(timeout=httpx.Timeout(20.0, connect=2.0)) as client:
            send(op, cluster.urls(), client, tally, random.Random(SEED))
        remember(op)
        with world.lock:
            world.ops.append(op)

    retry = threading.Thread(target=settle_it, daemon=True)
    retry.start()
    return retry


def reached(conn: psycopg.Connection, op: Op, i: int, committed: bool) -> bool:
    """Has API ``i`` got as far as it may: its append committed, or waiting to append?"""
    conn.execute("SELECT pg_stat_clear_snapshot()")  # kept for the transaction otherwise
    if committed:
        sql = "SELECT 1 FROM events WHERE metadata->>'correlation_id' = %s"
        return conn.execute(sql, (op.id,)).fetchone() is not None
    sql = (
        "SELECT 1 FROM pg_stat_activity WHERE application_name = %s "
        "AND wait_event_type = 'Lock' AND query LIKE '%%INSERT INTO events%%'"
    )
    return conn.execute(sql, (f"api{i}",)).fetchone() is not None


def inject(
    cluster: Cluster,
    redis: PrivateRedis,
    system: System,
    world: World,
    tally: Tally,
    start: float,
    redis_down: list[float],
) -> tuple[list[str], list[threading.Thread]]:
    """The fault schedule, in seconds from the start of the history."""
    done: list[str] = []
    retries: list[threading.Thread] = []

    def at(t: float) -> None:
        time.sleep(max(0.0, start + t - time.monotonic()))

    at(3)
    retries.append(cut_api(cluster, 0, system, world, tally, committed=False))
    done.append("kill -9 api0 mid-append")
    at(6)
    cluster.kill_worker()
    cluster.start_worker()
    done.append("kill -9 worker")
    at(8)
    redis.stop()
    redis_down.append(time.monotonic())
    done.append("redis stopped")
    at(11)
    done.append(f"pg_terminate_backend x{terminate_connections(system)}")
    at(14)
    retries.append(cut_api(cluster, 1, system, world, tally, committed=True))
    done.append("kill -9 api1 after its commit")
    at(18)
    redis_down.append(time.monotonic())
    redis.start()
    done.append("redis started (down 10 s)")
    at(20)
    done.append(f"pg_terminate_backend x{terminate_connections(system)}")
    at(22)
    cluster.kill_worker()
    cluster.start_worker()
    done.append("kill -9 worker")
    return done, retries


# -- the suite ------------------------------------------------------------------------------


def test_a_history_of_concurrent_commands_through_faults_loses_doubles_and_leaks_nothing(
    pg_system: System, tmp_path: Path
) -> None:
    system = pg_system
    began = time.monotonic()
    print(f"fault suite seed {SEED} (FAULT_SEED={SEED} replays the client choices)")
    redis = PrivateRedis(tmp_path)
    redis.start()
    logs = tmp_path / "logs"
    logs.mkdir()
    with MailServer() as smtp, Receiver() as receiver:
        cluster = Cluster(cluster_env(system, redis.url, smtp), logs)
        try:
            for i in (0, 1):
                cluster.start_api(i)
            cluster.start_worker()
            cluster.start_beat()
            for i in (0, 1):
                cluster.wait_ready(i)
            urls = cluster.urls()
            world = set_up(system, urls[0])
            integrator = {"Authorization": f"Bearer {system.keys.create('integrator', 'suite')[1]}"}
            subscription = subscribe(urls[1], integrator, receiver)

            # The history, with faults injected meanwhile.
            tally = Tally()
            start = time.monotonic()
            until = start + HISTORY_S
            clients = [
                threading.Thread(
                    target=run_client, args=(world, urls, tally, SEED + n, until), daemon=True
                )
                for n in range(CLIENTS)
            ]
            for client in clients:
                client.start()
            redis_down: list[float] = []
            faults, retries = inject(cluster, redis, system, world, tally, start, redis_down)
            for client in [*clients, *retries]:
                client.join(timeout=180)
                assert not client.is_alive(), "a client never finished"
            for i in (0, 1):
                cluster.wait_ready(i)
            history_s = time.monotonic() - start
            system.db.dispose()  # our own pooled connections were terminated too

            settle(system, smtp, receiver, cluster)
            settled_s = time.monotonic() - start - history_s
            feed = read_feed(urls[0], world.admin)
            check_webhooks(system, receiver, feed, subscription["id"])
            replay_began = time.monotonic()
            replayed = replay_webhooks(urls[0], integrator, subscription["id"], receiver)
            replay_s = time.monotonic() - replay_began
        finally:
            cluster.stop()
            redis.stop()

        ops = world.ops
        print(
            f"history {history_s:.0f} s: {len(ops)} commands "
            f"({Counter(o.kind for o in ops)}), acknowledged {sum(o.acked for o in ops)}, "
            f"refused {Counter(o.status for o in ops if o.refused)}, "
            f"unanswered {sum(o.status is None for o in ops)}; faults: {faults}; "
            f"clients met: {dict(tally.seen)}; set up in {start - began:.0f} s, settled in "
            f"{settled_s:.0f} s ({len(smtp.inbox.messages)} e-mails, {len(feed)} events), "
            f"{len(replayed)} webhooks replayed in {replay_s:.0f} s"
        )
        checks_began = time.monotonic()
        check_the_faults_hit(ops, tally)
        while_down = [
            o
            for o in ops
            if o.acked_at and redis_down[0] < o.started and o.acked_at < redis_down[1]
        ]
        assert len(while_down) >= 10, "commands were accepted while Redis was down"
        check_each_command_once(system, ops)
        check_the_feed(system, feed)
        check_notices(system, smtp)
        check_no_erased_name(system, world, feed, smtp, receiver, replayed)
        check_verify(system)
        check_rebuilt_projections(system)
    print(
        f"checks took {time.monotonic() - checks_began:.0f} s; "
        f"the fault suite {time.monotonic() - began:.0f} s"
    )


# -- webhooks -------------------------------------------------------------------------------


def replay_webhooks(
    api: str, integrator: dict[str, str], subscription: str, receiver: Receiver
) -> list[bytes]:
    """Every webhook sent again from the start: the bodies as rendered now."""
    before = len(receiver.received)
    answer = ok(
        httpx.post(
            f"{api}/v1/subscriptions/{subscription}/replay",
            headers=integrator,
            json={"after": 0},
            timeout=30,
        ),
        202,
    )
    assert answer["complete"], answer
    deadline = time.monotonic() + 90
    while len(receiver.received) - before < answer["scheduled"]:
        assert time.monotonic() < deadline, "the replay did not arrive"
        time.sleep(0.2)
    return [r.body for r in receiver.received[before:]]


# -- the invariants -------------------------------------------------------------------------


def check_the_faults_hit(ops: list[Op], tally: Tally) -> None:
    assert sum(o.acked for o in ops) >= 50, "too few commands went through to mean anything"
    cut = [o for o in ops if o.cut]
    assert len(cut) == 2 and all(o.acked and o.attempts > 1 for o in cut), cut
    # Only conflicts of the random choices may be refused (endorsing twice, withdrawing what
    # is not endorsed); a registration, an erasure or a reschedule retried must still succeed.
    wrongly = [o for o in ops if not o.acked and o.kind in ("register", "erase", "reschedule")]
    assert not wrongly, wrongly
    assert {o.status for o in ops if o.refused} <= {409}, Counter(o.status for o in ops)
    assert any(what.startswith("503") for what in tally.seen), "no request met a lost database"
    assert all(o.status is not None for o in ops), "every command got a final answer"
    server_errors = [o for o in ops if o.status is not None and o.status >= 500]
    assert not server_errors, server_errors
    assert "500:internal" not in tally.seen, "an unexpected server error on the way"


def check_no_erased_name(
    system: System,
    world: World,
    feed: list[dict[str, Any]],
    smtp: MailServer,
    receiver: Receiver,
    replayed: list[bytes],
) -> None:
    assert world.erased, "no erasure was acknowledged"
    with system.db.read() as conn:
        log = conn.execute(text("SELECT data::text || metadata::text FROM events")).scalars()
        raw_log = "\n".join(log)
        tables = "\n".join(
            repr(tuple(row))
            for projection in all_projections(system.store)
            for table in projection.tables
            for row in conn.execute(select(table))
        )
    feed_text = orjson.dumps(feed).decode()
    hooks = [(r.at, r.body.decode()) for r in receiver.received]
    mails = [
        (at, mail_text(m)) for m, at in zip(smtp.inbox.messages, smtp.inbox.arrived, strict=True)
    ]
    replay_text = "\n".join(b.decode() for b in replayed)
    for name, email, acked_at in world.erased:
        after = acked_at + GRACE_S
        for place, content in [
            ("the events table", raw_log),
            ("a projection table", tables),
            ("the feed", feed_text),
            ("a webhook replay", replay_text),
            ("a later webhook", "\n".join(body for at, body in hooks if at > after)),
            ("a later e-mail", "\n".join(mail for at, mail in mails if at > after)),
        ]:
            assert name not in content, f"{name} (erased) is in {place}"
            assert email not in content, f"{email} (erased) is in {place}"
    kept = world.people[0][0] if world.people else None
    assert kept is None or kept in replay_text, "the check sees names that were not erased"


def mail_text(message: EmailMessage) -> str:
    parts = [f"{k}: {v}" for k, v in message.items()]
    for part in message.walk():
        if part.get_content_maintype() == "text":
            parts.append(str(part.get_content()))
    return "\n".join(parts)
