"""The scale-out proof: two API processes and two Celery workers share one PostgreSQL and one
Redis, lose one of each to ``kill -9`` in the middle of a mixed load, and nothing is lost,
doubled or refused that should not be.

Real processes on loopback: two ``concord serve`` (uvicorn), two ``concord worker``, one
``concord scheduler``, a private ``redis-server``, a fresh PostgreSQL database, an SMTP server
(aiosmtpd) and a webhook receiver that verifies every signature with ``standardwebhooks``.
Clients send through both APIs at once: organisations are created, people register on several
consultations, and every organisation endorses ONE hot statement at the same moment (a
barrier), then withdraws and endorses again — a few of them on purpose twice, which the domain
refuses. Meanwhile one worker and one API process are killed; the clients retry with the same
``Idempotency-Key`` on the surviving API.

Then, offline:

* every acknowledged command's events are in the log exactly once, and a refused one left none;
* no client met a conflict that was not a genuine domain refusal (``already-endorsed`` for a
  second endorsement, ``not-endorsed`` for withdrawing nothing): concurrent commands on one
  stream are serialised by the server, never answered ``concurrency-conflict``;
* the feed holds positions 1..head, each once;
* the surviving API shows every acknowledged command (organisations, each registration, the
  statement's signatories), and every projection rebuilt from scratch equals the live one;
* each public event reached the receiver (by ``webhook-id``) and every notice e-mail due was
  sent, received and recorded once.

``pytest -m scale`` runs it alone; ``SCALE_SEED`` replays the clients' choices (not the timing).
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, text

from infra.bootstrap import System
from infra.schema import mail_outbox
from infra.webhooks.tables import webhook_deliveries
from tests import backends
from tests.cluster import (
    Cluster,
    Op,
    Tally,
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
    pytest.mark.scale,
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.skipif(not _REDIS.ok, reason=_REDIS.reason),
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed"),
]

#: Organisations that endorse the hot statement, all at the same moment.
HOT_ORGANISATIONS = 32
#: Endorse/withdraw steps each of them takes (the first is the simultaneous one).
ROUNDS = 3
#: Consultations the registrations are spread over, and the clients that register people.
CONSULTATIONS = 3
REGISTRARS = 3
#: How long the registrars keep going after the hot statement's burst.
LOAD_S = 12.0
#: When the worker and then the API process are killed, in seconds after the burst.
KILL_WORKER_AT = 1.0
KILL_API_AT = 3.0
#: The refusals a client may meet on the hot statement, each only when it asked for it.
GENUINE = {"endorse": "already-endorsed", "withdraw": "not-endorsed"}
SEED = int(os.environ.get("SCALE_SEED", random.randrange(1_000_000)))


@dataclass
class Load:
    """What the set-up made, and what the clients share while the load runs."""

    admin: dict[str, str]
    organiser: dict[str, str]
    consultations: list[str]
    statement: str
    urls: list[str]  # the APIs the clients may use; the killed one is taken out
    tally: Tally
    lock: threading.Lock = field(default_factory=threading.Lock)
    ops: list[Op] = field(default_factory=list)
    #: Op id → the refusal that op must get (None: it must be acknowledged).
    expected: dict[str, str | None] = field(default_factory=dict)
    #: Organisation id → whether its last acknowledged endorse/withdraw left it endorsed.
    endorsed: dict[str, bool] = field(default_factory=dict)

    def run(self, op: Op, client: httpx.Client, rng: random.Random, expect: str | None) -> Op:
        with self.lock:
            self.expected[op.id] = expect
        send(op, self.urls, client, self.tally, rng)
        with self.lock:
            self.ops.append(op)
        return op


def client() -> httpx.Client:
    return httpx.Client(timeout=httpx.Timeout(20.0, connect=2.0))


# -- clients --------------------------------------------------------------------------------


def run_organisation(load: Load, system: System, n: int, barrier: threading.Barrier) -> None:
    """One organisation: created through either API, then — with every other one at once —
    endorses the hot statement with its own key, then withdraws and endorses again; now and
    then it asks for something the domain must refuse (endorsing twice, withdrawing nothing)."""
    rng = random.Random(SEED * 1000 + n)
    with client() as http:
        body = {
            "name": f"Organisation {n} ({uuid.uuid4().hex[:6]})",
            "kind": "ngo",
            "country": rng.choice(["ID", "VN", "PH", "TH"]),
            "email": f"org{n}-{uuid.uuid4().hex[:6]}@example.org",
        }
        made = load.run(
            Op("organisation", "POST", "/v1/organisations", body, load.organiser), http, rng, None
        )
        org: str | None = None
        key: dict[str, str] = {}
        if made.acked:
            org = made.answer.get("id") or made.answer["stream_id"]
            secret = system.keys.create("organisation", f"org {n}", uuid.UUID(org))[1]
            key = {"Authorization": f"Bearer {secret}"}
        barrier.wait(timeout=120)  # every organisation endorses at the same moment
        if org is None:
            return
        endorsements = f"/v1/statements/{load.statement}/endorsements"
        endorsed = False
        for round_ in range(ROUNDS):
            if round_:
                time.sleep(rng.uniform(0.0, 2.0))
            wrong = round_ > 0 and rng.random() < 0.15  # ask for what the domain refuses
            endorse = endorsed if wrong else not endorsed
            if endorse:
                signatory = {"organisation_id": org, "signatory_name": f"Signatory {n}.{round_}"}
                op = Op("endorse", "POST", endorsements, signatory, key)
            else:
                op = Op("withdraw", "DELETE", f"{endorsements}/{org}", None, key)
            load.run(op, http, rng, GENUINE[op.kind] if wrong else None)
            if op.acked:
                endorsed = endorse
                with load.lock:
                    load.endorsed[org] = endorsed


def run_registrar(load: Load, n: int, until: float) -> None:
    """People registering on random consultations through either API until the load ends."""
    rng = random.Random(SEED * 1000 + 500 + n)
    with client() as http:
        while time.monotonic() < until:
            tag = uuid.uuid4().hex[:10]
            body = {
                "name": f"Trần Văn Minh {tag}",
                "email": f"minh-{tag}@example.org",
                "role": "delegate",
                "country": "VN",
            }
            path = f"/v1/consultations/{rng.choice(load.consultations)}/registrations"
            load.run(Op("register", "POST", path, body, load.organiser), http, rng, None)


# -- setup ----------------------------------------------------------------------------------


def set_up(system: System, api: str, tally: Tally, urls: list[str]) -> Load:
    """A host organisation, consultations open for registration, a finalised statement."""
    admin = {"Authorization": f"Bearer {system.keys.create('admin', 'scale')[1]}"}
    organiser = {"Authorization": f"Bearer {system.keys.create('organiser', 'scale')[1]}"}
    with httpx.Client(base_url=api, headers=organiser, timeout=30) as http:
        host = ok(
            http.post(
                "/v1/organisations",
                json={"name": "Host", "kind": "ngo", "country": "ID", "email": "host@example.org"},
            )
        )["id"]
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
            "organiser_id": host,
            "capacity": 10_000,
        }
        consultations = []
        for i in range(CONSULTATIONS):
            cid = ok(http.post("/v1/consultations", json={**plan, "title": f"Consultation {i}"}))[
                "id"
            ]
            closes = {"closes_at": (starts - timedelta(days=2)).isoformat()}
            ok(http.post(f"/v1/consultations/{cid}/open-registration", json=closes), 200)
            consultations.append(cid)
        held = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)
        past = {**plan, "starts_at": held.isoformat()}
        past["ends_at"] = (held + timedelta(hours=8)).isoformat()
        del past["capacity"]
        past_id = ok(http.post("/v1/consultations", json=past))["id"]
        area = ok(http.get(f"/v1/consultations/{past_id}"), 200)["thematic_areas"][0]
        sid = ok(
            http.post(
                f"/v1/consultations/{past_id}/statements",
                json={"title": "Joint statement", "language": "en"},
            )
        )["id"]
        ok(
            http.post(
                f"/v1/statements/{sid}/recommendations",
                json={"thematic_area": area, "text": "Protect civic space."},
            )
        )
        deadline = {"endorsement_deadline": (datetime.now(UTC) + timedelta(days=20)).isoformat()}
        ok(http.post(f"/v1/statements/{sid}/finalise", json=deadline), 200)
    return Load(admin, organiser, consultations, sid, urls, tally)


# -- the proof ------------------------------------------------------------------------------


def test_two_apis_and_two_workers_share_a_mixed_load_and_survive_losing_one_of_each(
    pg_system: System, tmp_path: Path
) -> None:
    system = pg_system
    began = time.monotonic()
    print(f"scale-out seed {SEED} (SCALE_SEED={SEED} replays the client choices)")
    redis = PrivateRedis(tmp_path)
    redis.start()
    logs = tmp_path / "logs"
    logs.mkdir()
    with MailServer() as smtp, Receiver() as receiver:
        cluster = Cluster(cluster_env(system, redis.url, smtp), logs, apis=2, workers=2)
        try:
            for i in (0, 1):
                cluster.start_api(i)
                cluster.start_worker(i, concurrency=2)
            cluster.start_beat()
            for i in (0, 1):
                cluster.wait_ready(i)
            urls = cluster.urls()
            integrator = {"Authorization": f"Bearer {system.keys.create('integrator', 'scale')[1]}"}
            subscription = subscribe(urls[1], integrator, receiver)
            tally = Tally()
            load = set_up(system, urls[0], tally, list(urls))
            set_up_s = time.monotonic() - began

            # The load: organisations and their endorsements, registrations, through both APIs.
            barrier = threading.Barrier(HOT_ORGANISATIONS + 1)
            threads = [
                threading.Thread(
                    target=run_organisation, args=(load, system, n, barrier), daemon=True
                )
                for n in range(HOT_ORGANISATIONS)
            ]
            for thread in threads:
                thread.start()
            barrier.wait(timeout=120)
            burst = time.monotonic()
            registrars = [
                threading.Thread(target=run_registrar, args=(load, n, burst + LOAD_S), daemon=True)
                for n in range(REGISTRARS)
            ]
            for thread in registrars:
                thread.start()
            faults = kill_one_of_each(cluster, load, burst)
            for thread in [*threads, *registrars]:
                thread.join(timeout=180)
                assert not thread.is_alive(), "a client never finished"
            load_s = time.monotonic() - burst

            settle(system, smtp, receiver, cluster)
            settled_s = time.monotonic() - burst - load_s
            feed = read_feed(urls[0], load.admin)
            live = read_side(urls[0], load)
        finally:
            cluster.stop()
            redis.stop()

        ops = load.ops
        print(
            f"load {load_s:.0f} s: {len(ops)} commands ({dict(Counter(o.kind for o in ops))}), "
            f"acknowledged {sum(o.acked for o in ops)} (by API: "
            f"{dict(Counter(o.answered_by for o in ops if o.acked))}), refused "
            f"{dict(Counter((o.kind, o.problem_type) for o in ops if o.refused))}, "
            f"unanswered {sum(o.status is None for o in ops)}; faults: {faults}; clients met: "
            f"{dict(tally.seen)}; set up in {set_up_s:.0f} s, settled in {settled_s:.0f} s "
            f"({len(smtp.inbox.messages)} e-mails, {len(feed)} events, "
            f"{len(receiver.received)} webhook requests for "
            f"{len(set(receiver.ids()))} events); {retried_work(system)}"
        )
        checks_began = time.monotonic()
        check_both_apis_and_workers_worked(load, cluster, urls, faults)
        check_each_command_once(system, ops)
        check_the_feed(system, feed)
        check_read_side(system, load, live)
        check_webhooks(system, receiver, feed, subscription["id"])
        check_notices(system, smtp)
        check_every_notice_due(system, load)
        check_verify(system)
        check_rebuilt_projections(system)
        check_no_spurious_refusal(load)  # last: the log's invariants are known by then
    print(
        f"checks took {time.monotonic() - checks_began:.0f} s; "
        f"the scale-out proof {time.monotonic() - began:.0f} s"
    )


def kill_one_of_each(cluster: Cluster, load: Load, burst: float) -> list[str]:
    """kill -9 of worker 0 in the middle of sending an e-mail or a webhook, then of API 1
    while requests to it are in flight (its address is taken out of the clients' pool first,
    so their retries go to API 0). Neither comes back."""
    done = []

    def at(t: float) -> None:
        time.sleep(max(0.0, burst + t - time.monotonic()))

    at(KILL_WORKER_AT)
    deadline = time.monotonic() + 10
    while not (busy := sending(cluster, 0)) and time.monotonic() < deadline:
        time.sleep(0.01)
    cluster.kill_worker(0)
    done.append(f"kill -9 worker0 while running {busy or 'nothing it had logged'}")
    at(KILL_API_AT)
    victim = cluster.urls()[1]
    deadline = time.monotonic() + 10
    while load.tally.in_flight[victim] < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    in_flight = load.tally.in_flight[victim]
    load.urls.remove(victim)
    cluster.kill_api(1)
    done.append(f"kill -9 api1 with {in_flight} requests in flight")
    return done


def sending(cluster: Cluster, i: int) -> list[str]:
    """The e-mails and webhooks worker ``i`` has taken and not finished, by its log."""
    log = cluster.tail(f"worker{i}.log", 10_000_000)
    received = re.findall(
        r"Task ((?:reminders\.send|webhooks\.deliver)\[[-0-9a-f]+\]) received", log
    )
    finished = set(re.findall(r"Task (\S+\[[-0-9a-f]+\]) (?:succeeded|failed|raised)", log))
    return [task for task in received if task not in finished]


# -- reading back ---------------------------------------------------------------------------


@dataclass
class ReadSide:
    """What the surviving API shows after the load."""

    organisations: dict[str, int]  # id → status of GET /v1/organisations/{id}
    registrations: dict[str, set[str]]  # consultation → registration ids in its roster
    signatories: set[str]  # organisation ids among the hot statement's endorsements
    endorsement_count: int


def read_side(api: str, load: Load) -> ReadSide:
    with httpx.Client(base_url=api, headers=load.admin, timeout=30) as http:
        organisations = {}
        for op in load.ops:
            if op.kind == "organisation" and op.acked:
                org = op.answer.get("id") or op.answer["stream_id"]
                organisations[org] = http.get(f"/v1/organisations/{org}").status_code
        registrations: dict[str, set[str]] = {}
        for cid in load.consultations:
            ids: set[str] = set()
            while True:
                page = ok(
                    http.get(
                        f"/v1/consultations/{cid}/registrations",
                        params={"limit": 500, "offset": len(ids)},
                    ),
                    200,
                )
                ids |= {r["id"] for r in page["data"] if r["status"] == "registered"}
                if not page["data"]:
                    break
            registrations[cid] = ids
        path = f"/v1/statements/{load.statement}"
        signatories = ok(http.get(f"{path}/endorsements", params={"limit": 1000}), 200)["data"]
        count = ok(http.get(path), 200)["endorsements"]["count"]
    return ReadSide(
        organisations, registrations, {s["organisation_id"] for s in signatories}, count
    )


def retried_work(system: System) -> str:
    """Mails and webhooks that needed more than one attempt (a killed worker's claim)."""
    with system.db.read() as conn:
        mails = conn.execute(select(mail_outbox.c.attempts).where(mail_outbox.c.attempts > 1)).all()
        hooks = conn.execute(
            select(webhook_deliveries.c.attempts).where(webhook_deliveries.c.attempts > 1)
        ).all()
    return f"attempted more than once: {len(mails)} e-mails, {len(hooks)} webhooks"


# -- the invariants -------------------------------------------------------------------------


def check_no_spurious_refusal(load: Load) -> None:
    """Every command got a final answer; the only refusals are the ones asked for, each with
    the domain's reason — never a ``concurrency-conflict``, on the hot statement or elsewhere."""
    ops = load.ops
    assert all(o.status is not None for o in ops), "every command got a final answer"
    conflicts = [o for o in ops if o.problem_type == "concurrency-conflict"]
    assert not conflicts, (
        f"{len(conflicts)} commands were answered 409 concurrency-conflict — the server did not "
        f"serialise them: {dict(Counter((o.kind, o.answered_by) for o in conflicts))}; "
        f"first: {conflicts[0].answer}"
    )
    wrong = [
        (o.kind, o.status, o.problem_type, load.expected[o.id])
        for o in ops
        if (o.problem_type if o.refused else "ok" if o.acked else None)
        != (load.expected[o.id] or "ok")
    ]
    assert not wrong, f"{len(wrong)} answers other than expected: {Counter(wrong)}"
    asked = [o for o in ops if load.expected[o.id]]
    assert asked, "no genuine refusal was asked for: the check would not tell them apart"


def check_both_apis_and_workers_worked(
    load: Load, cluster: Cluster, urls: list[str], faults: list[str]
) -> None:
    ops = load.ops
    assert sum(o.acked for o in ops) >= 120, "too few commands went through to mean anything"
    for url in urls:
        hot = [o for o in ops if o.kind in GENUINE and o.acked and o.answered_by == url]
        assert len(hot) >= 5, f"{url} took {len(hot)} of the hot statement's commands"
    cut = [o for o in ops if urls[1] in o.tried and o.answered_by == urls[0]]
    assert cut and all(o.acked or o.refused for o in cut), "no command was cut by the kill"
    assert not any("500:internal" in what for what in load.tally.seen), load.tally.seen
    for i in (0, 1):
        # A task taken is a task run (or, for worker 0, one it was killed in the middle of:
        # the kill may come before it has finished its first).
        taken = re.findall(r"Task \S+ received", cluster.tail(f"worker{i}.log", 10_000_000))
        assert taken, f"worker{i} never ran a task"
    assert "while running nothing" not in faults[0], "the worker was killed idle"
    assert len(faults) == 2, faults


def check_read_side(system: System, load: Load, live: ReadSide) -> None:
    """The surviving API shows every acknowledged command, and nothing else."""
    assert live.organisations and set(live.organisations.values()) == {200}, live.organisations
    with system.db.read() as conn:
        rows = conn.execute(
            text(
                "SELECT stream_id, data->>'registration_id' AS registration "
                "FROM events WHERE event_type = 'consultation.participant_registered'"
            )
        ).all()
    by_correlation = registrations_by_command(system)
    acked = {by_correlation[o.id] for o in load.ops if o.kind == "register" and o.acked}
    assert len(acked) == sum(o.kind == "register" for o in load.ops), "a registration was lost"
    assert {r.registration for r in rows} == acked, "registrations nobody acknowledged"
    shown = set().union(*live.registrations.values())
    assert shown == acked, f"{len(acked - shown)} acknowledged registrations are not shown"
    for cid, ids in live.registrations.items():
        mine = {r.registration for r in rows if str(r.stream_id) == cid}
        assert ids == mine, f"consultation {cid} shows registrations of another"
    expected = {org for org, endorsed in load.endorsed.items() if endorsed}
    assert live.signatories == expected, (
        f"signatories shown {len(live.signatories)}, expected {len(expected)}: "
        f"missing {expected - live.signatories}, extra {live.signatories - expected}"
    )
    assert live.endorsement_count == len(expected)


def registrations_by_command(system: System) -> dict[str, str]:
    """Correlation id → the registration its command made, from the log."""
    with system.db.read() as conn:
        rows = conn.execute(
            text(
                "SELECT metadata->>'correlation_id' AS op, data->>'registration_id' AS reg "
                "FROM events WHERE event_type = 'consultation.participant_registered'"
            )
        ).all()
    return {r.op: r.reg for r in rows}


def check_every_notice_due(system: System, load: Load) -> None:
    """Each registration confirmed and each endorsement recorded by an e-mail sent once."""
    with system.db.read() as conn:
        rows = conn.execute(select(mail_outbox.c.rule, mail_outbox.c.status)).all()
        endorsed = conn.execute(
            text("SELECT count(*) FROM events WHERE event_type = 'statement.endorsed'")
        ).scalar_one()
    sent = Counter(r.rule for r in rows if r.status == "sent")
    registered = sum(o.kind == "register" and o.acked for o in load.ops)
    assert sent["registration_confirmed"] == registered, sent
    assert sent["endorsement_recorded"] == endorsed, sent
