"""Offline workloads for ``concord bench``: compiling a statement, webhook fan-out, a rebuild.

Each function builds its data through the real domain on a scratch database beside the given
URL (:func:`~infra.bench.scratch.scratch_database`), runs the real code path, reports progress
through a callback ``(task, done, total)`` and returns one workload dict::

    {"name", "description", "backend", "unit", "value", "baseline", "ratio", "targets",
     "details"}

``ratio`` is ours against the baseline measured in the same run; 1.0 or more means as good as
the baseline (for times: baseline seconds / our seconds; for rates: ours / baseline).

- ``compile-statement``: a statement with N signatories, endorsed through the statement
  decider and appended through the event store (names sealed per person, as in production),
  compiled to Markdown, HTML and PDF by :func:`infra.compile.compile_statement` in a fresh
  child process, so its peak RSS (``VmHWM``) is the compile's own.
- ``webhook-fanout``: N public events to S subscribers on one loopback receiver, through the
  real relay and deliverer (delivery rows, claims, Standard Webhooks signing, CloudEvents
  bodies, order per subscription): a real Celery worker on Redis (``celery``), or, without
  Redis, the same task functions in a child process with a thread per pool slot
  (``threads``). Baseline: plain ``httpx`` POSTs of the same signed bodies to the same
  receiver with the same concurrency.
- ``rebuild-projection-1m``: a log of consultations (plan, agenda, registrations, waitlist,
  cancellations, check-ins, working groups) appended through the store, the projection kept
  live by the projector, then :func:`infra.projections.rebuild.rebuild` (what
  ``concord projections rebuild`` runs) in a child process whose RSS is sampled per page;
  the rebuilt tables must equal the live ones.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import multiprocessing
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import orjson
from sqlalchemy import func, select

from infra.bench.scratch import backend_of, scratch_database
from infra.bootstrap import System, bootstrap
from infra.settings import Settings
from services.decider import Context
from services.ports import Metadata

Progress = Callable[[str, int, int], None]
META = Metadata(actor="bench")
MB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[2]


def _workload(
    name: str,
    description: str,
    backend: str,
    unit: str,
    value: float,
    baseline: tuple[str, float] | None,
    ratio: float | None,
    targets: list[dict[str, Any]],
    details: dict[str, Any],
) -> dict[str, Any]:
    return {
        "name": name,
        "description": description,
        "backend": backend,
        "unit": unit,
        "value": value,
        "baseline": None if baseline is None else {"name": baseline[0], "value": baseline[1]},
        "ratio": ratio,
        "targets": targets,
        "details": details,
    }


def _target(what: str, limit: float, actual: float, *, at_least: bool = False) -> dict[str, Any]:
    ok = actual >= limit if at_least else actual < limit
    return {"what": what, "limit": limit, "actual": actual, "ok": ok}


def _settings_kwargs(url: str, data_dir: Path, **extra: Any) -> dict[str, Any]:
    """Settings for a scratch system, as keyword arguments (they travel to child processes)."""
    return {
        "DATABASE_URL": url,
        "CONCORD_DATA_DIR": data_dir,
        "REDIS_URL": None,
        "CONCORD_LOG_FORMAT": "console",
        "CONCORD_LOG_LEVEL": "WARNING",
        **extra,
    }


def _rss_kb(pid: int | str = "self", field_name: str = "VmRSS") -> int:
    """A process's resident set (or ``VmHWM``, its peak) in kB, from /proc; 0 if gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _mb(kb: int | float) -> float:
    return round(kb / 1024, 1)


def _quiet_logs() -> None:
    from infra.logging import configure

    configure("console", "WARNING")


@contextmanager
def _child(target: Callable[..., None], *args: Any) -> Iterator[tuple[Any, Pipe]]:
    """Run ``target(pipe, *args)`` in a fresh interpreter (spawn); yields (process, pipe)."""
    ctx = multiprocessing.get_context("spawn")
    receiving, sending = ctx.Pipe(duplex=False)
    process = ctx.Process(target=target, args=(sending, *args), daemon=True)
    process.start()
    sending.close()
    try:
        yield process, receiving
    finally:
        if process.is_alive():
            process.terminate()
        process.join(timeout=30)
        receiving.close()


def _receive(process: Any, pipe: Pipe, timeout_s: float) -> Any:
    """The next message from a child, or an error if it died or took too long."""
    deadline = time.monotonic() + timeout_s
    while not pipe.poll(0.2):
        if not process.is_alive() and not pipe.poll(0):
            raise RuntimeError(f"the bench child process died (exit code {process.exitcode})")
        if time.monotonic() > deadline:
            raise TimeoutError("the bench child process did not answer in time")
    try:
        message = pipe.recv()
    except EOFError:
        raise RuntimeError(f"the bench child process died (exit code {process.exitcode})") from None
    if isinstance(message, dict) and "error" in message:
        raise RuntimeError(f"bench child process failed: {message['error']}")
    return message


def _report_errors(pipe: Pipe, fn: Callable[[], None]) -> None:
    try:
        fn()
    except BaseException as exc:  # the parent must hear about it, whatever it is
        import traceback

        pipe.send({"error": f"{exc!r}\n{traceback.format_exc()}"})
        raise


# ============================================================================================
# 1. compile-statement


_COUNTRIES = ("ID", "MY", "PH", "SG", "TH", "VN", "KH", "MM", "LA", "BN", "TL")
_KINDS = ("ngo", "network", "union", "academic", "faith-based", "community")
_GIVEN = (
    "Anis", "Dinda", "Glorene", "Adrian", "Ellene", "Sheena", "Alex", "Jackie", "Lê Quang",
    "Hà Thị Minh", "Nguyễn Thị", "Trần Văn", "Phạm Ngọc", "Ya", "Khun", "Htoo", "Aung San",
    "Maria Lourdes", "José", "Siti Nur", "Muhammad", "Zoë", "Søren", "Łukasz",
)  # fmt: skip
_FAMILY = (
    "Hidayah", "Yura", "Das", "Pereira", "Sana", "Kanwar", "Au", "Pollock", "Bình", "Đức",
    "Hằng", "Navuth", "Tharo", "Chit", "Suu", "Santos", "Rizal", "Rahman", "Abdullah",
    "Ødegård", "Żółkiewski", "Nguyễn", "Phan", "Ramos",
)  # fmt: skip
_ORG_WORDS = (
    ("Migrant", "Workers'", "Women's", "Domestic Workers", "Fishers'", "Youth", "Legal Aid"),
    ("Solidarity", "Rights", "Advocacy", "Support", "Action", "Justice", "Welfare"),
    ("Network", "Center", "Foundation", "Alliance", "Forum", "Initiative", "Association"),
)
_THAI_ORGS = ("มูลนิธิเพื่อสิทธิแรงงานข้ามชาติ", "เครือข่ายแรงงานข้ามชาติ", "สมาคมช่วยเหลือแรงงาน")
_THAI_NAMES = ("สมชาย ใจดี", "สมศรี รักไทย", "วิชัย ทองดี")
_KHMER_ORGS = ("សមាគមការពារសិទ្ធិពលករ", "មជ្ឈមណ្ឌលសិទ្ធិមនុស្ស")
_TITLES = (None, "Executive Director", "Coordinator", "Director", "Giám đốc", "Programme Manager")

_RECOMMENDATIONS = (
    "Guarantee minimum wages, weekly rest days and social security for all migrant workers, "
    "including domestic workers, on equal terms with nationals.",
    "Protect the rights of undocumented migrant workers and their families, whatever their status.",
    "Give migrant workers access to courts, legal aid and interpreters, and let them stay to "
    "pursue their claims.",
    "Ban recruitment fees charged to workers and regulate recruitment agencies.",
    "Ensure safe, dignified and voluntary return.",
    "Adopt the ASEAN Consensus action plan with civil society at the table.",
    "Ratify the 1990 UN Convention on the Protection of the Rights of All Migrant Workers and "
    "Members of Their Families.",
)


def _signatory(rng: random.Random, i: int) -> tuple[str, str, str, str, str | None]:
    """(organisation, country, kind, signatory, title): mostly Latin with diacritics, some
    Thai and Khmer script, as the ASEAN statements have."""
    country = _COUNTRIES[i % len(_COUNTRIES)]
    words = " ".join(rng.choice(w) for w in _ORG_WORDS)
    organisation = f"{words} {i + 1}"
    name = f"{rng.choice(_GIVEN)} {rng.choice(_FAMILY)}"
    if country == "TH" and i % 4 == 0:
        organisation, name = f"{rng.choice(_THAI_ORGS)} {i + 1}", rng.choice(_THAI_NAMES)
    elif country == "KH" and i % 6 == 0:
        organisation = f"{rng.choice(_KHMER_ORGS)} {i + 1}"
    return organisation, country, rng.choice(_KINDS), name, rng.choice(_TITLES)


def _signed_statement(
    system: System, signatories: int, progress: Progress, rng: random.Random
) -> tuple[UUID, UUID]:
    """A consultation and its statement, finalised, endorsed ``signatories`` times, closed and
    with publication requested; returns (statement id, job id)."""
    from services.consultations.commands import DEFAULT_THEMATIC_AREAS, PlanConsultation
    from services.consultations.model import CONSULTATION
    from services.statements.commands import (
        AddRecommendation,
        CloseEndorsements,
        EndorseStatement,
        FinaliseStatement,
        RequestPublication,
        StartDrafting,
    )
    from services.statements.model import STATEMENT

    bus, store = system.bus, system.store
    now = datetime.now(UTC)
    cid, sid, job = uuid4(), uuid4(), uuid4()
    bus.handle(
        CONSULTATION,
        cid,
        PlanConsultation(
            consultation_id=cid,
            title="Regional consultation on the rights of migrant workers",
            scope="regional",
            host_country="ID",
            mode="in_person",
            timezone="Asia/Jakarta",
            starts_at=now - timedelta(days=3),
            ends_at=now - timedelta(days=2),
            organiser_id=uuid4(),
            city="Jakarta",
            thematic_areas=DEFAULT_THEMATIC_AREAS,
        ),
        metadata=META,
    )
    bus.handle(
        STATEMENT,
        sid,
        StartDrafting(
            sid,
            cid,
            "Joint statement of civil society on the rights of migrant workers",
            "en",
            DEFAULT_THEMATIC_AREAS,
            preamble="We, the undersigned organisations, met in Jakarta.\n\nWe call on the "
            "member states to act on the recommendations below.",
        ),
        metadata=META,
    )
    for area, text in zip(DEFAULT_THEMATIC_AREAS, _RECOMMENDATIONS, strict=True):
        for j in range(2):
            bus.handle(
                STATEMENT,
                sid,
                AddRecommendation(sid, uuid4(), area, f"{text} ({j + 1})", ("ASEAN", "ACMW")),
                metadata=META,
            )
    bus.handle(
        STATEMENT,
        sid,
        FinaliseStatement(sid, now + timedelta(days=30), "Asia/Jakarta"),
        metadata=META,
    )
    # Endorsements: decided one by one by the statement's own decider on the state folded so
    # far, appended in chunks with the expected version (the bus would re-read the whole
    # stream for each one: quadratic in N, and not what is measured here). The store seals
    # each signatory's name and title with that person's key, as in production.
    state, version, _ = bus.load(STATEMENT, sid)
    ctx = Context(now=datetime.now(UTC), actor="bench")
    pending: list[Any] = []
    task = f"compile: endorse ({signatories:,} signatories)"
    for i in range(signatories):
        organisation, country, kind, name, title = _signatory(rng, i)
        command = EndorseStatement(
            sid, uuid4(), uuid4(), name, organisation, country, kind, signatory_title=title
        )
        for event in STATEMENT.decide(state, command, ctx):
            state = STATEMENT.evolve(state, event)
            pending.append(event)
        if len(pending) >= 500 or i == signatories - 1:
            new = [system.registry.to_new_event(e) for e in pending]
            version = store.append(sid, STATEMENT.stream_type, version, new, META).version
            pending = []
            progress(task, i + 1, signatories)
    bus.handle(STATEMENT, sid, CloseEndorsements(sid), metadata=META)
    bus.handle(STATEMENT, sid, RequestPublication(sid, job), metadata=META)
    # A running system has its projections caught up when the worker compiles.
    system.projector.catch_up()
    return sid, job


def _compile_child(pipe: Pipe, settings: dict[str, Any], sid: UUID, job: UUID) -> None:
    def run() -> None:
        _quiet_logs()
        from infra.compile import build, compile_statement
        from infra.documents.render import build_view, render_html, render_markdown, render_pdf
        from infra.documents.storage import file_path

        system = bootstrap(Settings(**settings))
        try:
            system.db.dispose()
            before = _rss_kb()
            started = time.perf_counter()
            files = compile_statement(system, sid, job)
            seconds = time.perf_counter() - started
            peak = _rss_kb(field_name="VmHWM")
            # A second, instrumented pass for the breakdown (after the peak was read).
            phases: dict[str, float] = {}
            t = time.perf_counter()
            _, document = build(system, sid, job)
            phases["build_from_log"] = time.perf_counter() - t
            t = time.perf_counter()
            view = build_view(document)
            phases["view"] = time.perf_counter() - t
            for kind, render in (
                ("md", render_markdown),
                ("html", render_html),
                ("pdf", render_pdf),
            ):
                t = time.perf_counter()
                render(view)
                phases[kind] = time.perf_counter() - t
            paths = {
                k: str(file_path(system.settings.data_dir, sha, k)) for k, sha in files.items()
            }
            pipe.send(
                {
                    "seconds": seconds,
                    "rss_before_kb": before,
                    "peak_kb": peak,
                    "files": paths,
                    "sizes": {k: os.path.getsize(p) for k, p in paths.items()},
                    "phases": {k: round(v, 3) for k, v in phases.items()},
                    "signatories": len(document.signatories),
                }
            )
        finally:
            system.close()

    _report_errors(pipe, run)


def bench_compile(
    url: str, out_dir: Path, progress: Progress, signatories: int = 10_000
) -> dict[str, Any]:
    """A statement with ``signatories`` signatories compiled to MD, HTML and PDF."""
    backend = backend_of(url)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_dir = (out_dir / f"compile-{secrets.token_hex(4)}").resolve()
    rng = random.Random(11)
    with scratch_database(url, out_dir) as scratch:
        settings = _settings_kwargs(scratch, data_dir)
        system = bootstrap(Settings(**settings))
        try:
            started = time.perf_counter()
            sid, job = _signed_statement(system, signatories, progress, rng)
            setup_s = time.perf_counter() - started
        finally:
            system.close()
        task = "compile: render MD, HTML, PDF"
        progress(task, 0, 1)
        with _child(_compile_child, settings, sid, job) as (process, pipe):
            result = _receive(process, pipe, timeout_s=1800)
        progress(task, 1, 1)
    seconds = round(result["seconds"], 3)
    peak_mb = _mb(result["peak_kb"])
    return _workload(
        "compile-statement",
        f"a statement with {signatories:,} signatories compiled to Markdown, HTML and PDF",
        backend,
        "s",
        seconds,
        None,
        None,
        [
            _target("seconds to compile", 10.0, seconds),
            _target("peak RSS of the compiling process (MB)", 300.0, peak_mb),
        ],
        {
            "signatories": signatories,
            "signatories_compiled": result["signatories"],
            "peak_rss_mb": peak_mb,
            "rss_before_mb": _mb(result["rss_before_kb"]),
            "phases_s": result["phases"],
            "files": result["files"],
            "bytes": result["sizes"],
            "setup_s": round(setup_s, 1),
            "statement_id": str(sid),
            "notes": "seconds: compile_statement() in a fresh process (read and fold the log, "
            "render, store, record and publish); peak RSS: that process's VmHWM, imports "
            "included; phases: a second, instrumented pass.",
        },
    )


# ============================================================================================
# 2. webhook-fanout


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class _Inbox:
    """What the receiver saw on each path."""

    secrets: dict[str, str]
    ids: dict[str, list[str]] = field(default_factory=dict)
    bad: list[str] = field(default_factory=list)

    def verify(self, path: str, headers: dict[bytes, bytes], body: bytes) -> None:
        msg_id = headers.get(b"webhook-id", b"").decode()
        self.ids.setdefault(path, []).append(msg_id)
        secret = self.secrets.get(path.split("/")[-1])
        if secret is None:
            self.bad.append(f"{path}: unknown path")
            return
        timestamp = headers.get(b"webhook-timestamp", b"").decode()
        key = base64.b64decode(secret.removeprefix("whsec_"))
        mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
        expected = "v1," + base64.b64encode(mac).decode()
        signatures = headers.get(b"webhook-signature", b"").decode().split()
        if not any(hmac.compare_digest(expected, s) for s in signatures):
            self.bad.append(f"{path} {msg_id}: bad signature")
        elif orjson.loads(body).get("id") != msg_id:
            self.bad.append(f"{path} {msg_id}: the CloudEvent id is not the webhook-id")


class _Http(asyncio.Protocol):
    """A minimal HTTP/1.1 keep-alive server: 204 for a POST, the inbox as JSON on GET."""

    def __init__(self, inbox: _Inbox) -> None:
        self.inbox = inbox
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            lines = bytes(self.buffer[:end]).split(b"\r\n")
            method, path, _ = lines[0].split(b" ", 2)
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get(b"content-length", b"0"))
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            assert self.transport is not None
            if method == b"POST":
                self.inbox.verify(path.decode(), headers, body)
                self.transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            else:
                payload = orjson.dumps({"ids": self.inbox.ids, "bad": self.inbox.bad[:20]})
                self.transport.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
                )


def _receiver_child(pipe: Pipe, port: int, secrets_by_index: dict[str, str]) -> None:
    async def serve() -> None:
        inbox = _Inbox(secrets_by_index)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Http(inbox), "127.0.0.1", port, backlog=512)
        pipe.send({"ready": port})
        async with server:
            await server.serve_forever()

    _report_errors(pipe, lambda: asyncio.run(serve()))


def _inbox(port: int) -> dict[str, Any]:
    import httpx

    with httpx.Client(trust_env=False, timeout=60) as client:
        data: dict[str, Any] = client.get(f"http://127.0.0.1:{port}/inbox").json()
        return data


def _organisation_events(system: System, events: int, progress: Progress, task: str) -> list[UUID]:
    """``events`` public events: organisations registered and revised (10 per stream), each
    stream decided by the organisation decider and appended in one go; returns the streams."""
    from services.organisations.commands import RegisterOrganisation, ReviseOrganisation
    from services.organisations.model import ORGANISATION

    ctx = Context(now=datetime.now(UTC), actor="bench")
    streams, done = [], 0
    per_stream = 10
    while done < events:
        org = uuid4()
        n = min(per_stream, events - done)
        commands: list[Any] = [
            RegisterOrganisation(org, f"Migrant Workers' Network {done}", "ngo", "KH")
        ]
        commands += [
            ReviseOrganisation(org, website=f"https://mwn-{done}.example.org/v{k}")
            for k in range(1, n)
        ]
        state = ORGANISATION.initial()
        new = []
        for command in commands:
            for event in ORGANISATION.decide(state, command, ctx):
                state = ORGANISATION.evolve(state, event)
                new.append(system.registry.to_new_event(event))
        system.store.append(org, ORGANISATION.stream_type, 0, new, META)
        streams.append(org)
        done += n
        progress(task, done, events)
    return streams


def _threads_worker_child(
    pipe: Pipe, settings: dict[str, Any], concurrency: int, stop_file: str
) -> None:
    """A stand-in for the Celery worker without Redis: the relay loop, and ``webhooks.deliver``
    runs (the same function the task calls) on ``concurrency`` threads; a scan every 5 s."""

    def run() -> None:
        _quiet_logs()
        from infra.projections.projector import Projector
        from infra.webhooks.delivery import Deliverer
        from infra.webhooks.relay import DELIVER, NAME, WebhookRelay

        system = bootstrap(Settings(**settings))
        pool = ThreadPoolExecutor(concurrency, thread_name_prefix="deliver")
        stop = threading.Event()
        errors: list[BaseException] = []

        def send(name: str, kwargs: dict[str, Any]) -> None:
            if name == DELIVER:
                pool.submit(deliver, UUID(kwargs["subscription_id"]))

        relay = Projector(system.db, system.store, [WebhookRelay(send)])

        def make() -> Deliverer:
            return Deliverer(
                system.db,
                system.store,
                system.bus,
                system.settings,
                catch_up=lambda: relay.catch_up(names=[NAME]),
                requeue=lambda sid: send(DELIVER, {"subscription_id": str(sid)}),
            )

        def deliver(subscription_id: UUID) -> None:
            try:
                make().run(subscription_id)
            except BaseException as exc:
                errors.append(exc)

        loop = threading.Thread(target=relay.run_forever, args=(stop,), daemon=True)
        loop.start()
        pipe.send({"ready": True})
        next_scan = time.monotonic() + 5
        try:
            while not os.path.exists(stop_file):
                if errors:
                    raise errors[0]
                if time.monotonic() >= next_scan:
                    for sid in make().due():
                        send(DELIVER, {"subscription_id": str(sid)})
                    next_scan = time.monotonic() + 5
                time.sleep(0.1)
        finally:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            system.close()

    _report_errors(pipe, run)


@dataclass(frozen=True)
class _Plan:
    """What one baseline sender posts: (path, [(body, headers)]) per subscriber."""

    port: int
    queues: list[tuple[str, list[tuple[bytes, dict[str, str]]]]]


def _post_all(plan: _Plan, start: threading.Event | Any) -> int:
    import httpx

    sent = 0
    with httpx.Client(trust_env=False, timeout=30) as client:
        client.get(f"http://127.0.0.1:{plan.port}/inbox-warmup")
        start.wait()
        for path, items in plan.queues:
            for body, headers in items:
                response = client.post(
                    f"http://127.0.0.1:{plan.port}{path}", content=body, headers=headers
                )
                if response.status_code != 204:
                    raise RuntimeError(f"the receiver answered {response.status_code}")
                sent += 1
    return sent


def _baseline_child(pipe: Pipe, plan: _Plan, start: Any) -> None:
    _report_errors(pipe, lambda: pipe.send({"sent": _post_all(plan, start)}))


def _baseline(plans: list[_Plan], processes: bool) -> float:
    """Seconds for the plain senders, from a common start to the last one done."""
    if not processes:
        start = threading.Event()
        with ThreadPoolExecutor(len(plans)) as pool:
            futures = [pool.submit(_post_all, plan, start) for plan in plans]
            time.sleep(0.5)  # every client warm
            started = time.perf_counter()
            start.set()
            for f in futures:
                f.result()
            return time.perf_counter() - started
    ctx = multiprocessing.get_context("spawn")
    event = ctx.Event()
    with ExitStack() as stack:
        children = [stack.enter_context(_child(_baseline_child, plan, event)) for plan in plans]
        time.sleep(3.0)  # every interpreter started, its client warm
        started = time.perf_counter()
        event.set()
        for process, pipe in children:
            _receive(process, pipe, timeout_s=1800)
        return time.perf_counter() - started


def _baseline_plans(
    system: System, subs: list[tuple[UUID, str]], port: int, after: int, senders: int
) -> list[_Plan]:
    """The same CloudEvents bodies, signed the same way, in the same order per subscriber."""
    from infra.integration.contract import cloudevent
    from infra.webhooks import signing
    from infra.webhooks.delivery import CONTENT_TYPE

    bodies = []
    for event in system.store.iter_all(after):
        body = orjson.dumps(cloudevent(event, system.settings.public_url))
        bodies.append((str(event.id), body))
    now = int(time.time())
    queues = []
    for i, (_, secret) in enumerate(subs):
        items = []
        for msg_id, body in bodies:
            headers = signing.headers([secret], msg_id, now, body)
            headers["Content-Type"] = CONTENT_TYPE
            items.append((body, headers))
        queues.append((f"/baseline/{i}", items))
    return [_Plan(port, queues[k::senders]) for k in range(senders)]


def _delivered(system: System) -> int:
    from infra.webhooks.tables import webhook_deliveries as d

    with system.db.read() as conn:
        return int(conn.execute(select(func.count()).where(d.c.status == "delivered")).scalar_one())


def _waiting(system: System) -> bool:
    """Whether a delivery is still pending or being sent: one probe of the partial index
    the worker's queues use, however many rows the table holds (counting them all five
    times a second was load on the database under measurement)."""
    from infra.webhooks.tables import IS_WAITING
    from infra.webhooks.tables import webhook_deliveries as d

    with system.db.read() as conn:
        probe = select(d.c.id).where(IS_WAITING).limit(1)
        return conn.execute(probe).first() is not None


def _wait_delivered(
    system: System, expected: int, timeout_s: float, progress: Progress, task: str, alive: Any
) -> None:
    """Until ``expected`` deliveries are delivered: checked every 0.1 s by a probe for any
    delivery still waiting, counted (for progress, and to finish) every 2 s and whenever
    nothing waits."""
    deadline = time.monotonic() + timeout_s
    counted = 0.0
    while True:
        now = time.monotonic()
        if not _waiting(system) or now - counted >= 2.0:
            counted = now
            done = _delivered(system)
            progress(task, done, expected)
            if done >= expected:
                return
        if not alive():
            raise RuntimeError("the webhook worker stopped")
        if now > deadline:
            raise TimeoutError(f"only {done} of {expected} webhook deliveries were delivered")
        time.sleep(0.1)


def _redis_ok(url: str | None) -> bool:
    if not url:
        return False
    try:
        import redis

        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except Exception:
        return False


@contextmanager
def _celery_worker(
    settings: dict[str, Any], concurrency: int, log_path: Path
) -> Iterator[Callable[[], bool]]:
    """``concord worker`` (Celery on Redis, prefork) on a private queue, with the scheduler's
    ``webhooks.scan`` sent every 5 s as beat would; yields an is-alive check."""
    from infra.queue import make_app

    env = {
        **os.environ,
        "DATABASE_URL": settings["DATABASE_URL"],
        "REDIS_URL": settings["REDIS_URL"],
        "CONCORD_QUEUE": settings["CONCORD_QUEUE"],
        "CONCORD_DATA_DIR": str(settings["CONCORD_DATA_DIR"]),
        "CONCORD_LOG_FORMAT": "console",
        "CONCORD_LOG_LEVEL": "WARNING",
        "CONCORD_WEBHOOK_ALLOW_HOSTS": settings["CONCORD_WEBHOOK_ALLOW_HOSTS"],
    }
    with log_path.open("ab") as log:
        worker = subprocess.Popen(  # noqa: S603 (our own interpreter and arguments)
            [sys.executable, "-m", "infra.cli", "worker", "--concurrency", str(concurrency)],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    celery = make_app(Settings(**settings))
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(5.0):
            celery.send_task("webhooks.scan", queue=settings["CONCORD_QUEUE"])

    scanner = threading.Thread(target=beat, daemon=True)
    scanner.start()
    try:
        yield lambda: worker.poll() is None
    finally:
        stop.set()
        scanner.join(timeout=10)
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(timeout=10)
        with suppress(Exception):
            celery.connection_for_write().default_channel.client.delete(settings["CONCORD_QUEUE"])


@contextmanager
def _threads_worker(
    settings: dict[str, Any], concurrency: int, out_dir: Path
) -> Iterator[Callable[[], bool]]:
    stop_file = out_dir / f"fanout-stop-{secrets.token_hex(4)}"
    with _child(_threads_worker_child, settings, concurrency, str(stop_file)) as (process, pipe):
        _receive(process, pipe, timeout_s=120)
        try:
            yield process.is_alive
        finally:
            stop_file.touch()
            process.join(timeout=60)
            stop_file.unlink(missing_ok=True)


def bench_fanout(
    url: str,
    out_dir: Path,
    progress: Progress,
    events: int = 10_000,
    subscribers: int = 10,
    *,
    mode: str = "auto",
    concurrency: int | None = None,
) -> dict[str, Any]:
    """``events`` public events delivered to ``subscribers`` webhook endpoints on loopback.

    ``mode``: ``celery`` (a real worker on ``REDIS_URL``), ``threads`` (the task functions in
    one child process), or ``auto`` (celery on PostgreSQL when Redis answers, else threads).
    ``concurrency``: pool slots, default one per subscriber (each subscription's queue is
    sent in order, one at a time, so more would idle).
    """
    backend = backend_of(url)
    out_dir.mkdir(parents=True, exist_ok=True)
    redis_url = os.environ.get("REDIS_URL")
    if mode == "auto":
        mode = "celery" if backend == "postgresql" and _redis_ok(redis_url) else "threads"
    if mode not in ("celery", "threads"):
        raise ValueError(f"unknown fan-out mode {mode!r}")
    slots = concurrency or subscribers
    token = secrets.token_hex(4)
    data_dir = (out_dir / f"fanout-{token}").resolve()
    port = _free_port()
    with scratch_database(url, out_dir) as scratch, ExitStack() as stack:
        settings = _settings_kwargs(
            scratch,
            data_dir,
            CONCORD_WEBHOOK_ALLOW_HOSTS="127.0.0.1",
            REDIS_URL=redis_url if mode == "celery" else None,
            CONCORD_QUEUE=f"concord-bench-{token}",
        )
        system = bootstrap(Settings(**settings))
        stack.callback(system.close)
        from infra.webhooks.subscriptions import subscriptions

        owner = system.keys.create("integrator", "bench receiver")[0].id
        subs = []
        for i in range(subscribers):
            sub, secret = subscriptions(system).create(
                owner, f"http://127.0.0.1:{port}/hooks/{i}", description=f"bench {i}"
            )
            subs.append((sub.id, secret))
        paths = {str(i): secret for i, (_, secret) in enumerate(subs)}
        receiver, receiver_pipe = stack.enter_context(_child(_receiver_child, port, paths))
        _receive(receiver, receiver_pipe, timeout_s=60)

        if mode == "celery":
            log_path = out_dir / f"fanout-worker-{token}.log"
            alive = stack.enter_context(_celery_worker(settings, slots, log_path))
        else:
            alive = stack.enter_context(_threads_worker(settings, slots, out_dir))

        # Warm-up: one event to every subscriber (worker processes, connections, caches).
        warm_task = "fan-out: warm up the worker"
        _organisation_events(system, 1, lambda *_: None, warm_task)
        _wait_delivered(system, subscribers, 300, progress, warm_task, alive)
        after = system.store.head_position()

        started = time.perf_counter()
        _organisation_events(system, events, progress, f"fan-out: append {events:,} events")
        appended_s = time.perf_counter() - started
        expected = (events + 1) * subscribers
        _wait_delivered(
            system,
            expected,
            max(600.0, expected / 20),
            progress,
            f"fan-out: deliver to {subscribers} subscribers",
            alive,
        )
        ours_s = time.perf_counter() - started

        inbox = _inbox(port)
        plans = _baseline_plans(system, subs, port, after, slots)
        task = "fan-out: baseline (plain httpx)"
        progress(task, 0, 1)
        baseline_s = _baseline(plans, processes=mode == "celery")
        progress(task, 1, 1)
        checked = _check_inbox(system, subs, inbox, _inbox(port), after)

    ratio = round(baseline_s / ours_s, 3) if ours_s > 0 else None
    deliveries = events * subscribers
    return _workload(
        "webhook-fanout",
        f"{events:,} events to {subscribers} webhook subscribers on loopback",
        backend,
        "s",
        round(ours_s, 3),
        ("httpx", round(baseline_s, 3)),
        ratio,
        [_target("ratio to plain httpx POSTs", 0.5, ratio or 0.0, at_least=True)],
        {
            "mode": mode,
            "concurrency": slots,
            "events": events,
            "subscribers": subscribers,
            "deliveries": deliveries,
            "deliveries_per_s": round(deliveries / ours_s, 1),
            "baseline_per_s": round(deliveries / baseline_s, 1),
            "append_s": round(appended_s, 2),
            **checked,
            "notes": "seconds: from the first append until every delivery row is delivered "
            "(the worker was warm); the appends run meanwhile. Baseline: the same signed "
            "bodies POSTed with httpx.Client (keep-alive), one sender per pool slot, each "
            "subscriber's in order.",
        },
    )


def _check_inbox(
    system: System,
    subs: list[tuple[UUID, str]],
    ours: dict[str, Any],
    after_baseline: dict[str, Any],
    after: int,
) -> dict[str, Any]:
    """Every event arrived at every subscriber once, in log order, correctly signed."""
    from infra.webhooks.tables import webhook_deliveries as d

    with system.db.read() as conn:
        rows = conn.execute(
            select(d.c.subscription_id, d.c.event_id, d.c.status).order_by(d.c.position)
        ).all()
    in_order: dict[UUID, list[str]] = {}
    for row in rows:
        in_order.setdefault(row.subscription_id, []).append(str(row.event_id))
    ids = ours["ids"]
    arrived = in_sequence = duplicates = 0
    for i, (sid, _) in enumerate(subs):
        got = ids.get(f"/hooks/{i}", [])
        unique = list(dict.fromkeys(got))
        duplicates += len(got) - len(unique)
        arrived += len(unique)
        in_sequence += unique == in_order.get(sid, [])
    baseline = sum(len(v) for k, v in after_baseline["ids"].items() if k.startswith("/baseline"))
    return {
        "delivery_rows": len(rows),
        "rows_delivered": sum(r.status == "delivered" for r in rows),
        "arrived": arrived,
        "duplicates": duplicates,
        "subscribers_in_order": in_sequence,
        "bad_requests": ours["bad"] + after_baseline["bad"],
        "baseline_arrived": baseline,
    }


# ============================================================================================
# 3. rebuild-projection


_ROLES = ("delegate", "delegate", "delegate", "speaker", "observer", "resource_person")


@dataclass
class _People:
    """A pool of people who register for many consultations."""

    rng: random.Random
    size: int = 9000
    ids: list[UUID] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ids = [UUID(int=self.rng.getrandbits(128), version=4) for _ in range(self.size)]

    def name(self, i: int) -> str:
        return f"{_GIVEN[i % len(_GIVEN)]} {_FAMILY[(i // len(_GIVEN)) % len(_FAMILY)]}"


def _consultation_script(
    rng: random.Random, people: _People, base: datetime
) -> Iterator[tuple[list[Any], datetime]]:
    """One consultation's life as bursts of commands (each burst one append), with the time
    each is decided at: plan, open registration, agenda, working groups, registrations beyond
    capacity, cancellations (waitlist promotions), check-ins, assignments, close, complete."""
    from services.consultations import commands as c

    cid = uuid4()
    starts = base + timedelta(days=60 + rng.randrange(200))
    ends = starts + timedelta(days=2)
    areas = c.DEFAULT_THEMATIC_AREAS[:3]
    capacity = rng.randrange(40, 70)
    attendees = rng.sample(range(people.size), capacity + rng.randrange(5, 15))
    registrations = [uuid4() for _ in attendees]
    groups = [uuid4() for _ in areas[:2]]
    yield (
        [
            c.PlanConsultation(
                cid,
                f"National consultation on migrant workers' rights {cid.hex[:6]}",
                "national",
                rng.choice(_COUNTRIES),
                "hybrid",
                "Asia/Bangkok",
                starts,
                ends,
                organiser_id=uuid4(),
                city="Bangkok",
                capacity=capacity,
                thematic_areas=areas,
                virtual_url="https://meet.example.org/consultation",
            ),
            c.OpenRegistration(cid, starts - timedelta(days=1)),
        ],
        base,
    )
    sessions = []
    for k, area in enumerate(areas):
        speakers = tuple(
            c.SpeakerDetails(people.ids[p], people.name(p)) for p in rng.sample(attendees, 2)
        )
        sessions.append(
            c.ScheduleSession(
                cid,
                uuid4(),
                f"Panel on {area.lower()}",
                "panel",
                starts + timedelta(hours=2 * k + 1),
                starts + timedelta(hours=2 * k + 2),
                area,
                speakers,
            )
        )
    yield sessions, base
    yield [c.FormWorkingGroup(cid, g, area) for g, area in zip(groups, areas, strict=False)], base
    burst: list[Any] = []
    for person, rid in zip(attendees, registrations, strict=True):
        burst.append(
            c.RegisterParticipant(
                cid,
                rid,
                people.ids[person],
                people.name(person),
                f"person{person}@example.org",
                rng.choice(_ROLES),
                country=rng.choice(_COUNTRIES),
            )
        )
        if len(burst) >= rng.randrange(5, 25):
            yield burst, base
            burst = []
    yield burst, base
    cancelled = rng.sample(registrations[:capacity], rng.randrange(2, 8))
    yield [c.CancelRegistration(cid, r, "cannot travel") for r in cancelled], base
    present = [r for r in registrations[:capacity] if r not in cancelled]
    during = starts + timedelta(hours=1)
    checked = rng.sample(present, len(present) * 2 // 3)
    for k in range(0, len(checked), 20):
        yield [c.CheckIn(cid, r) for r in checked[k : k + 20]], during
    yield (
        [
            c.AssignToWorkingGroup(cid, r, groups[k % len(groups)])
            for k, r in enumerate(checked[:24])
        ],
        during,
    )
    yield [c.CloseRegistration(cid), c.CompleteConsultation(cid)], ends + timedelta(hours=1)


def _consultation_log(
    system: System, total: int, progress: Progress, rng: random.Random, active: int = 48
) -> int:
    """At least ``total`` consultation events, ``active`` consultations interleaved, each burst
    decided by the consultation decider and appended with its expected version (sealed)."""
    from services.consultations.model import CONSULTATION

    people = _People(rng)
    base = datetime.now(UTC)
    running: list[tuple[UUID | None, Any, Iterator[tuple[list[Any], datetime]], int]] = []
    written = 0
    task = f"rebuild: append {total:,} events"
    while written < total:
        while len(running) < active:
            running.append(
                (None, CONSULTATION.initial(), _consultation_script(rng, people, base), 0)
            )
        k = rng.randrange(len(running))
        cid, state, script, version = running[k]
        burst = next(script, None)
        if burst is None:
            running.pop(k)
            continue
        commands, now = burst
        ctx = Context(now=now, actor="bench")
        new = []
        for command in commands:
            for event in CONSULTATION.decide(state, command, ctx):
                state = CONSULTATION.evolve(state, event)
                new.append(system.registry.to_new_event(event))
        if not new:
            continue
        cid = state.consultation_id
        result = system.store.append(cid, CONSULTATION.stream_type, version, new, META)
        running[k] = (cid, state, script, result.version)
        written += len(new)
        progress(task, min(written, total), total)
    return written


def _digest(system: System, tables: Sequence[Any]) -> dict[str, tuple[int, str]]:
    """Per table: (rows, SHA-256 of the rows in key order)."""
    out = {}
    with system.db.read() as conn:
        for table in tables:
            key = list(table.primary_key.columns)
            h = hashlib.sha256()
            count = 0
            for row in conn.execute(select(table).order_by(*key)).yield_per(5000):
                h.update(orjson.dumps(list(row), default=str, option=orjson.OPT_SORT_KEYS))
                count += 1
            out[table.name] = (count, h.hexdigest())
    return out


def _rebuild_child(pipe: Pipe, settings: dict[str, Any], name: str, batch_size: int) -> None:
    def run() -> None:
        _quiet_logs()
        from infra.projections.rebuild import rebuild

        system = bootstrap(Settings(**settings))
        try:
            projection = system.projector.projections[name]
            samples: list[tuple[int, int, int, float]] = []
            started = time.perf_counter()
            samples.append((0, 0, _rss_kb(), 0.0))

            def report(done: int, head: int) -> None:
                samples.append((done, head, _rss_kb(), time.perf_counter() - started))
                pipe.send({"progress": (done, head)})

            position = rebuild(
                system.db, system.store, projection, batch_size=batch_size, progress=report
            )
            seconds = time.perf_counter() - started
            pipe.send(
                {
                    "position": position,
                    "seconds": seconds,
                    "samples": samples,
                    "peak_kb": _rss_kb(field_name="VmHWM"),
                }
            )
        finally:
            system.close()

    _report_errors(pipe, run)


def _rss_at(samples: list[tuple[int, int, int, float]], share: float, head: int) -> int:
    """RSS (kB) at the first sample at or past ``share`` of the log."""
    return next((rss for done, _, rss, _ in samples if done >= share * head), samples[-1][2])


def bench_rebuild(
    url: str,
    out_dir: Path,
    progress: Progress,
    events: int = 1_000_000,
    *,
    projection: str = "consultations",
    batch_size: int = 5000,
) -> dict[str, Any]:
    """``events`` consultation events, then ``concord projections rebuild <projection>``."""
    backend = backend_of(url)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_dir = (out_dir / f"rebuild-{secrets.token_hex(4)}").resolve()
    rng = random.Random(13)
    with scratch_database(url, out_dir) as scratch:
        settings = _settings_kwargs(scratch, data_dir)
        system = bootstrap(Settings(**settings))
        try:
            started = time.perf_counter()
            written = _consultation_log(system, events, progress, rng)
            append_s = time.perf_counter() - started
            if system.db.is_postgres:
                from sqlalchemy import text

                with system.db.autocommit() as conn:
                    conn.execute(text("VACUUM (ANALYZE) events"))
            target = system.projector.projections[projection]
            task = f"rebuild: live projector ({projection})"
            head = system.store.head_position()
            started = time.perf_counter()
            live_applied = 0
            while system.projector.checkpoints([projection])[projection] < head:
                live_applied += system.projector.catch_up(until=head, names=[projection])
                progress(task, system.projector.checkpoints([projection])[projection], head)
            live_s = time.perf_counter() - started
            live = _digest(system, target.tables)
        finally:
            system.close()

        task = f"rebuild: concord projections rebuild {projection}"
        parent_peak = 0
        with _child(_rebuild_child, settings, projection, batch_size) as (process, pipe):
            while True:
                parent_peak = max(parent_peak, _rss_kb(process.pid))
                message = _receive(process, pipe, timeout_s=7200)
                if "progress" in message:
                    progress(task, *message["progress"])
                    continue
                result = message
                break
        system = bootstrap(Settings(**settings))
        try:
            rebuilt = _digest(system, target.tables)
        finally:
            system.close()

    samples = result["samples"]
    head = result["position"]
    rate = round(head / result["seconds"], 1) if result["seconds"] > 0 else 0.0
    at = {f"{int(s * 100)}%": _rss_at(samples, s, head) for s in (0.1, 0.5, 1.0)}
    from_10 = [rss for done, _, rss, _ in samples if done >= 0.1 * head]
    growth_mb = _mb(max(from_10) - at["10%"])
    return _workload(
        f"rebuild-{projection}",
        f"concord projections rebuild {projection} over {head:,} events",
        backend,
        "events/s",
        rate,
        None,
        None,
        [_target("RSS growth from 10% to 100% of the rebuild (MB)", 50.0, growth_mb)],
        {
            "events": written,
            "position": head,
            "seconds": round(result["seconds"], 2),
            "rss_mb": {k: _mb(v) for k, v in at.items()},
            "rss_start_mb": _mb(samples[0][2]),
            "peak_rss_mb": _mb(result["peak_kb"]),
            "growth_10_to_100_mb": growth_mb,
            "rss_samples_mb": [
                (done, _mb(rss)) for done, _, rss, _ in samples[:: max(1, len(samples) // 20)]
            ],
            "matches_live": rebuilt == live,
            "tables": {k: v[0] for k, v in rebuilt.items()},
            "live_catch_up_s": round(live_s, 2),
            "live_events_per_s": round(live_applied / live_s, 1) if live_s > 0 else None,
            "append_s": round(append_s, 1),
            "batch_size": batch_size,
            "notes": "RSS of the rebuilding process (a fresh interpreter), sampled after each "
            "page; peak is its VmHWM. matches_live: the rebuilt tables equal, row for row, "
            "the tables the live projector kept.",
        },
    )


__all__ = ["bench_compile", "bench_fanout", "bench_rebuild"]
