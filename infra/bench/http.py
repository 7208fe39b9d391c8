"""End-to-end HTTP workloads of ``concord bench``, driven by ``wrk`` against the real server.

Each workload runs the real ``concord serve`` (uvicorn, several worker processes, PostgreSQL
and Redis as in production) on the bench's scratch database and is judged against a baseline
measured in the same run under the same uvicorn settings:

=====================  =======================================================  ============
hot-statement          64 connections endorsing and withdrawing on ONE           bare INSERT
                       statement (one stream), each organisation with its key
spread-registrations   64 connections registering people over 100 consultations  bare INSERT
read-consultation      consultation detail                                       GET /health
read-endorsements      a page of a statement with 10,000 endorsements            GET /health
=====================  =======================================================  ============

The bare INSERT is :mod:`infra.bench.baseline_app` (one INSERT per request through the same
pool, no auth): the physical ceiling of a durable HTTP command here. While the write loads
run, a sampler records the projection lag (commit of the oldest event a projection has not
applied yet, to now) and every API process's resident memory.

Load comes from ``wrk`` (Debian package; ``make install`` installs it): a Python client
tops out far below the server. Each wrk run reports requests/s, p50/p95/p99 and every
response status, so a conflict (409) a client saw is counted, not hidden.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
from sqlalchemy import text

from infra.bench import baseline_app
from infra.bootstrap import bootstrap
from infra.settings import Settings
from services.bus import Job
from services.consultations.commands import DEFAULT_THEMATIC_AREAS
from services.decider import Context
from services.people import person_id
from services.ports import Metadata
from services.statements.commands import EndorseStatement
from services.statements.model import STATEMENT

Progress = Callable[[str, int, int], None]

CONNECTIONS = 64
THREADS = 2
SERVER_WORKERS = 2
HOT_ORGANISATIONS = 512
SPREAD_CONSULTATIONS = 100
READ_ENDORSEMENTS = 10_000

#: Targets of issue 8, as (ratio against the baseline) minimums.
TARGETS = {
    "hot-statement": 0.5,
    "spread-registrations": 0.6,
    "read-consultation": 0.4,
    "read-endorsements": 0.4,
}
#: p99 of the hot statement at most this multiple of the baseline's p99.
HOT_P99_FACTOR = 2.0
LAG_P99_S = 1.0
#: How long the worker may take to apply the set-up's events before the loads start.
SETTLE_S = 300.0
#: Between loads: how long the bench waits at most for the worker to go idle, the window it
#: watches, and the share of a core below which the worker counts as idle.
QUIET_S = 120.0
IDLE_WINDOW_S = 1.0
IDLE_SHARE = 0.05
API_RSS_MB = 200.0


class WrkMissing(RuntimeError):
    """``wrk`` is not installed."""


def require_wrk() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise WrkMissing(
            "the HTTP workloads need wrk (Debian: apt-get install wrk; make install does it)"
        )
    return found


# -- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        """The serving processes: uvicorn's workers (children), else the process itself."""
        children = _children(self.process.pid)
        return children or [self.process.pid]

    def stop(self) -> None:
        _terminate(self.process)


def _terminate(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, and SIGKILL if it has not gone in 15 s."""
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with suppress(OSError):
                found += [int(c) for c in (task / "children").read_text().split()]
    return found


def rss_mb(pid: int) -> float:
    with suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _start(argv: list[str], env: dict[str, str], port: int, log: Path) -> Server:
    with log.open("ab") as out:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(process, port)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{argv[2:4]} exited with {process.returncode}; see {log}")
        with suppress(httpx.HTTPError):
            if httpx.get(f"{server.url}/health", timeout=1).status_code == 200:
                # Every worker answers once all are up; give the rest a moment.
                time.sleep(1.0)
                return server
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"the server on port {port} did not come up; see {log}")


def server_env(url: str, redis_url: str | None, data_dir: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "CONCORD_DATA_DIR": str(data_dir),
        "CONCORD_LOG_LEVEL": "WARNING",
        # The limiter still runs (its Redis round trip is part of every request); the budgets
        # are only high enough that the bench's keys are not turned away.
        "CONCORD_RATE_LIMIT_READ": "10000000/minute",
        "CONCORD_RATE_LIMIT_WRITE": "10000000/minute",
        "CONCORD_RATE_LIMIT_ANONYMOUS": "10000000/minute",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    # A queue of its own: nothing the bench's server enqueues reaches real workers.
    env["CONCORD_QUEUE"] = f"concord-bench-{uuid4().hex[:8]}"
    if redis_url:
        env["REDIS_URL"] = redis_url
    else:
        env.pop("REDIS_URL", None)
    return env


@contextmanager
def _serving(argv: list[str], env: dict[str, str], log: Path) -> Iterator[Server]:
    """``argv`` serving on a free loopback port with :data:`SERVER_WORKERS` processes."""
    port = free_port()
    args = ["--host", "127.0.0.1", "--port", str(port), "--workers", str(SERVER_WORKERS)]
    server = _start([*argv, *args], env, port, log)
    try:
        yield server
    finally:
        server.stop()


def api_server(env: dict[str, str], log: Path) -> AbstractContextManager[Server]:
    return _serving([sys.executable, "-m", "infra.cli", "serve"], env, log)


@dataclass
class Worker:
    """The Celery worker beside the API (None of it in embedded mode)."""

    process: subprocess.Popen[bytes]

    def pids(self) -> list[int]:
        """The worker and its pool's processes."""
        return [self.process.pid, *_children(self.process.pid)]


@contextmanager
def celery_worker(env: dict[str, str], log: Path) -> Iterator[Worker | None]:
    """One Celery worker beside the API, as in production: its loop keeps the projections
    that commands leave to it caught up (the lag the bench reports includes them). In
    embedded mode (no Redis) ``concord serve`` starts its own."""
    if not env.get("REDIS_URL"):
        yield None
        return
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "infra.cli", "worker", "--concurrency", "1"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield Worker(process)
    finally:
        _terminate(process)


def baseline_server(env: dict[str, str], log: Path) -> AbstractContextManager[Server]:
    """The bare one-INSERT app under the same uvicorn settings."""
    factory = "infra.bench.baseline_app:create_app"
    quiet = ["--no-access-log", "--log-level", "warning"]
    return _serving([sys.executable, "-m", "uvicorn", "--factory", factory, *quiet], env, log)


# -- wrk ------------------------------------------------------------------------------------

_LUA_COMMON = r"""
local threads = {}
function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end
statuses = {}
refusals = {}
sample = ""
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status >= 300 then
    if sample == "" then sample = string.sub(body or "", 1, 300) end
    local kind = string.match(body or "", "problems/([%w%-]+)") or tostring(status)
    refusals[kind] = (refusals[kind] or 0) + 1
  end
end
function done(summary, latency, requests)
  local total = {}
  local samples = {}
  local kinds = {}
  for _, t in ipairs(threads) do
    local b = t:get("sample")
    if b ~= nil and b ~= "" then table.insert(samples, b) end
    for kind, n in pairs(t:get("refusals")) do kinds[kind] = (kinds[kind] or 0) + n end
    local s = t:get("statuses")
    for code, n in pairs(s) do total[code] = (total[code] or 0) + n end
  end
  local parts = {}
  for code, n in pairs(total) do table.insert(parts, string.format('"%d": %d', code, n)) end
  local why = {}
  for kind, n in pairs(kinds) do table.insert(why, string.format('"%s": %d', kind, n)) end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p95_us": %d, "p99_us": %d, '
    .. '"errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}, "statuses": {%s}, '
    .. '"refusals": {%s}}\n'
    .. 'WRKSAMPLE %s\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(95),
    latency:percentile(99), e.connect, e.read, e.write, e.timeout, table.concat(parts, ", "),
    table.concat(why, ", "),
    string.gsub(table.concat(samples, " | "), "\n", " ")))
end
local function lines(path)
  local out = {}
  for line in io.lines(path) do table.insert(out, line) end
  return out
end
local function split(line)
  local out = {}
  for part in string.gmatch(line, "[^ ]+") do table.insert(out, part) end
  return out
end
"""

_LUA_INSERT = r"""
local i = 0
function request()
  i = i + 1
  return wrk.format("POST", "/insert", {["Content-Type"] = "application/json"},
    string.format('{"thread": %d, "n": %d, "note": "a durable command"}', tid, i))
end
"""

_LUA_GET = r"""
local paths = lines(os.getenv("BENCH_PATHS"))
local auth = os.getenv("BENCH_AUTH")
local i = 0
function request()
  i = i + 1
  local path = paths[((i * 7919 + tid * 104729) % #paths) + 1]
  if auth ~= nil and auth ~= "" then
    return wrk.format("GET", path, {["Authorization"] = "Bearer " .. auth})
  end
  return wrk.format("GET", path)
end
"""

# Each wrk thread endorses with its own organisations (every other line of the file), then
# withdraws them, then endorses again: an organisation's next command comes hundreds of
# requests after its last, so only a spurious conflict could make it fail.
_LUA_HOT = r"""
local all = lines(os.getenv("BENCH_ORGS"))
local statement = os.getenv("BENCH_STATEMENT")
local nthreads = tonumber(os.getenv("BENCH_THREADS"))
local mine = {}
function init(args)
  for n, line in ipairs(all) do
    if (n - 1) % nthreads == tid then table.insert(mine, split(line)) end
  end
end
local i = 0
function request()
  i = i + 1
  local k = ((i - 1) % #mine) + 1
  local pass = math.floor((i - 1) / #mine)
  local org, key = mine[k][1], mine[k][2]
  local headers = {["Authorization"] = "Bearer " .. key, ["Content-Type"] = "application/json"}
  if pass % 2 == 0 then
    return wrk.format("POST", "/v1/statements/" .. statement .. "/endorsements", headers,
      string.format('{"organisation_id": "%s", "signatory_name": "Signatory of %s", '
        .. '"signatory_title": "Director"}', org, string.sub(org, 1, 8)))
  end
  return wrk.format("DELETE", "/v1/statements/" .. statement .. "/endorsements/" .. org, headers)
end
"""

_LUA_REGISTER = r"""
local consultations = lines(os.getenv("BENCH_PATHS"))
local auth = os.getenv("BENCH_AUTH")
local i = 0
function request()
  i = i + 1
  local cid = consultations[((i * 7919 + tid * 104729) % #consultations) + 1]
  return wrk.format("POST", "/v1/consultations/" .. cid .. "/registrations",
    {["Authorization"] = "Bearer " .. auth, ["Content-Type"] = "application/json"},
    string.format('{"name": "Participant %d-%d", "email": "p%d-%d@bench.example", '
      .. '"role": "delegate"}', tid, i, tid, i))
end
"""


@dataclass
class WrkResult:
    requests: int
    seconds: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    statuses: dict[str, int]
    errors: dict[str, int]
    #: Answers that were not a success, by problem type (or status).
    refusals: dict[str, int] = field(default_factory=dict)
    #: The first answer that was not a success (per wrk thread), to say what went wrong.
    refused_sample: str = ""

    @property
    def per_s(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def ok(self) -> int:
        return sum(n for code, n in self.statuses.items() if code.startswith("2"))

    def as_dict(self) -> dict[str, Any]:
        return {
            "per_s": round(self.per_s, 1),
            "requests": self.requests,
            "p50_ms": round(self.p50_ms, 2),
            "p95_ms": round(self.p95_ms, 2),
            "p99_ms": round(self.p99_ms, 2),
            "statuses": self.statuses,
            "errors": self.errors,
            "refusals": self.refusals,
            "refused_sample": self.refused_sample,
        }


def wrk(
    url: str,
    script: str,
    seconds: float,
    env: dict[str, str],
    workdir: Path,
    connections: int = CONNECTIONS,
) -> WrkResult:
    path = workdir / f"wrk-{uuid4().hex[:8]}.lua"
    path.write_text(_LUA_COMMON + script)
    done = subprocess.run(  # noqa: S603 - the wrk binary found on PATH
        [
            require_wrk(),
            f"-t{THREADS}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "20s",
            "-s",
            str(path),
            url,
        ],
        env={**os.environ, **env, "BENCH_THREADS": str(THREADS)},
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        check=False,
    )
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    raw = json.loads(line.removeprefix("WRKJSON "))
    sample = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRKSAMPLE")), "")
    return WrkResult(
        requests=raw["requests"],
        seconds=raw["duration_us"] / 1e6,
        p50_ms=raw["p50_us"] / 1000,
        p95_ms=raw["p95_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        statuses=raw["statuses"],
        errors=raw["errors"],
        refusals=raw["refusals"],
        refused_sample=sample.removeprefix("WRKSAMPLE").strip()[:600],
    )


# -- sampling while the load runs -----------------------------------------------------------


@dataclass
class Sampler:
    """Projection lag and API memory, sampled every ``every_s`` while a load runs."""

    url: str
    pids: Callable[[], list[int]]
    every_s: float = 0.1
    lags: list[float] = field(default_factory=list)
    #: The same per projection: which one is behind when the log's oldest unapplied event is.
    lags_by_projection: dict[str, list[float]] = field(default_factory=dict)
    rss: dict[int, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        import psycopg

        from infra.bench.plain import pg_conninfo

        with psycopg.connect(pg_conninfo(self.url), autocommit=True) as conn:
            while not self._stop.wait(self.every_s):
                for pid in self.pids():
                    self.rss[pid] = max(self.rss.get(pid, 0.0), rss_mb(pid))
                rows = conn.execute(
                    "SELECT c.name,"
                    " (SELECT recorded_at FROM events WHERE position = c.position + 1)"
                    " FROM projection_checkpoints c"
                ).fetchall()
                now = datetime.now(UTC)
                lags = {
                    name: (now - behind).total_seconds() if behind else 0.0 for name, behind in rows
                }
                for name, lag in lags.items():
                    self.lags_by_projection.setdefault(name, []).append(max(lag, 0.0))
                self.lags.append(max([0.0, *lags.values()]))

    def lag_p99(self) -> float:
        return _p99(self.lags)

    def lag_p99_by_projection(self) -> dict[str, float]:
        return {
            name: round(_p99(lags), 3) for name, lags in sorted(self.lags_by_projection.items())
        }


def _p99(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


# -- the world the loads run in -------------------------------------------------------------


@dataclass
class World:
    admin: str
    organiser: str
    hot_statement: str
    read_statement: str
    organisations: list[tuple[str, str]]  # (organisation id, its key)
    consultations: list[str]


def build_world(
    url: str,
    server: str,
    data_dir: Path,
    progress: Progress,
    *,
    organisations: int = HOT_ORGANISATIONS,
    consultations: int = SPREAD_CONSULTATIONS,
    endorsements: int = READ_ENDORSEMENTS,
) -> World:
    """Organisations with their own keys, a finalised hot statement, 100 consultations open
    for registration and a statement with 10,000 endorsements — through the API where a
    client would, straight through the command bus for the 10,000 endorsements."""
    system = bootstrap(Settings(DATABASE_URL=url, CONCORD_DATA_DIR=data_dir, REDIS_URL=None))
    try:
        _, admin = system.keys.create("admin", "bench admin", created_by="concord bench")
        _, organiser = system.keys.create("organiser", "bench organiser", created_by="bench")
        with httpx.Client(
            base_url=server, headers={"Authorization": f"Bearer {admin}"}, timeout=60
        ) as client:
            total = organisations + consultations + 2
            done = [0]

            def step() -> None:
                done[0] += 1
                progress("setting up", done[0], total)

            def organisation(n: int) -> tuple[str, str]:
                r = client.post(
                    "/v1/organisations",
                    json={"name": f"Bench Organisation {n}", "kind": "ngo", "country": "ID"},
                )
                r.raise_for_status()
                oid = r.json()["id"]
                _, key = system.keys.create(
                    "organisation", f"bench {n}", organisation_id=UUID(oid), created_by="bench"
                )
                step()
                return oid, key

            with ThreadPoolExecutor(8) as pool:
                orgs = list(pool.map(organisation, range(organisations)))
            host = orgs[0][0]
            hot = _finalised_statement(client, host)
            step()
            read = _finalised_statement(client, host)
            step()

            def consultation(n: int) -> str:
                starts = datetime.now(UTC) + timedelta(days=30 + n % 30)
                r = client.post(
                    "/v1/consultations",
                    json=_consultation_body(f"Bench consultation {n}", host, starts),
                )
                r.raise_for_status()
                cid = str(r.json()["id"])
                client.post(
                    f"/v1/consultations/{cid}/open-registration",
                    json={"closes_at": (starts - timedelta(days=1)).isoformat()},
                ).raise_for_status()
                step()
                return cid

            with ThreadPoolExecutor(8) as pool:
                cids = list(pool.map(consultation, range(consultations)))
        _endorse_many(system, UUID(read), endorsements, progress)
        return World(admin, organiser, hot, read, orgs, cids)
    finally:
        system.close()


def _consultation_body(title: str, organiser_id: str, starts: datetime) -> dict[str, Any]:
    return {
        "title": title,
        "scope": "regional",
        "host_country": "ID",
        "city": "Jakarta",
        "mode": "in_person",
        "timezone": "Asia/Jakarta",
        "starts_at": starts.isoformat(),
        "ends_at": (starts + timedelta(days=1)).isoformat(),
        "organiser_id": organiser_id,
    }


def _finalised_statement(client: httpx.Client, host: str) -> str:
    held = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)
    r = client.post("/v1/consultations", json=_consultation_body("Held", host, held))
    r.raise_for_status()
    r = client.post(
        f"/v1/consultations/{r.json()['id']}/statements",
        json={"title": "Regional civil society recommendations", "language": "en"},
    )
    r.raise_for_status()
    sid = str(r.json()["id"])
    for area in DEFAULT_THEMATIC_AREAS:
        client.post(
            f"/v1/statements/{sid}/recommendations",
            json={"thematic_area": area, "text": f"On {area}.", "addressed_to": ["ASEAN"]},
        ).raise_for_status()
    deadline = (datetime.now(UTC) + timedelta(days=7)).isoformat()
    client.post(
        f"/v1/statements/{sid}/finalise", json={"endorsement_deadline": deadline}
    ).raise_for_status()
    return sid


def _endorse_many(system: Any, sid: UUID, n: int, progress: Progress) -> None:
    countries = ["ID", "VN", "PH", "TH", "MY", "KH", "MM", "SG", "LA", "BN"]
    batch = 500
    snapshot = None
    for start in range(0, n, batch):
        jobs = []
        for i in range(start, min(n, start + batch)):
            org = uuid4()
            name = f"Signatory {i}"
            jobs.append(
                Job(
                    EndorseStatement(
                        statement_id=sid,
                        organisation_id=org,
                        person_id=person_id(f"{org}/{name}"),
                        signatory_name=name,
                        signatory_title="Director",
                        organisation_name=f"Organisation {i}",
                        organisation_country=countries[i % len(countries)],
                        organisation_kind="ngo",
                    ),
                    Context(now=datetime.now(UTC), actor="concord bench"),
                    Metadata(actor="concord bench"),
                )
            )
        results, snapshot = system.bus.handle_batch(STATEMENT, sid, jobs, snapshot)
        failed = [r for r in results if isinstance(r, Exception)]
        if failed:
            raise RuntimeError(f"endorsing the read statement failed: {failed[0]!r}")
        progress("endorsing the read statement", min(n, start + batch), n)
    system.projector.catch_up()


# -- the workloads --------------------------------------------------------------------------


def run_http(
    url: str,
    out_dir: Path,
    progress: Progress,
    *,
    redis_url: str | None,
    seconds: float = 10.0,
    organisations: int = HOT_ORGANISATIONS,
    consultations: int = SPREAD_CONSULTATIONS,
    endorsements: int = READ_ENDORSEMENTS,
    connections: int = CONNECTIONS,
) -> list[dict[str, Any]]:
    """Every HTTP workload against its baseline, on the scratch database ``url``."""
    require_wrk()
    workdir = Path(tempfile.mkdtemp(prefix="concord-bench-http-"))
    log = out_dir / "bench-http-servers.log"
    try:
        baseline_app.prepare(url)
        env = server_env(url, redis_url, workdir / "data")
        with baseline_server(env, log) as bare:
            progress("baseline: one INSERT per request", 0, 1)
            insert = wrk(bare.url, _LUA_INSERT, seconds, {}, workdir, connections)
            progress("baseline: one INSERT per request", 1, 1)
        with api_server(env, log) as api, celery_worker(env, log) as worker:
            world = build_world(
                url,
                api.url,
                workdir / "setup",
                progress,
                organisations=organisations,
                consultations=consultations,
                endorsements=endorsements,
            )
            orgs = workdir / "orgs.txt"
            orgs.write_text("".join(f"{o} {k}\n" for o, k in world.organisations))
            cids = workdir / "consultations.txt"
            cids.write_text("".join(f"{c}\n" for c in world.consultations))
            detail_paths = workdir / "details.txt"
            detail_paths.write_text(
                "".join(f"/v1/consultations/{c}\n" for c in world.consultations)
            )
            pages = workdir / "pages.txt"
            pages.write_text(
                "".join(
                    f"/v1/statements/{world.read_statement}/endorsements?limit=100&offset={o}\n"
                    for o in range(0, endorsements, 100)
                )
            )
            memory: dict[int, float] = {}
            peaks: dict[str, float] = {}

            def load(name: str, script: str, extra: dict[str, str]) -> tuple[WrkResult, Sampler]:
                progress(name, 0, 1)
                with Sampler(url, api.pids) as sampler:
                    result = wrk(api.url, script, seconds, extra, workdir, connections)
                for pid, mb in sampler.rss.items():
                    memory[pid] = max(memory.get(pid, 0.0), mb)
                peaks[name] = round(max(sampler.rss.values(), default=0.0), 1)
                progress(name, 1, 1)
                return result, sampler

            background = worker.pids if worker is not None else api.pids
            # The set-up's aftermath first: the notices of the 10,000 endorsements.
            _quiet(url, background, progress)
            hot, hot_sampler = load(
                "hot statement",
                _LUA_HOT,
                {"BENCH_ORGS": str(orgs), "BENCH_STATEMENT": world.hot_statement},
            )
            _quiet(url, background, progress)
            spread, spread_sampler = load(
                "spread registrations",
                _LUA_REGISTER,
                {"BENCH_PATHS": str(cids), "BENCH_AUTH": world.organiser},
            )
            _quiet(url, background, progress)
            health, _ = load("baseline: GET /health", _LUA_GET, {"BENCH_PATHS": _one(workdir)})
            cold = {
                "consultation detail": _first_reads(api.url, detail_paths, world.admin),
                "endorsements page": _first_reads(api.url, pages, world.admin),
            }
            detail, _ = load(
                "consultation detail",
                _LUA_GET,
                {"BENCH_PATHS": str(detail_paths), "BENCH_AUTH": world.admin},
            )
            pages_read, _ = load(
                "endorsements page",
                _LUA_GET,
                {"BENCH_PATHS": str(pages), "BENCH_AUTH": world.admin},
            )
            events = _count_events(url)
        lag = max(hot_sampler.lag_p99(), spread_sampler.lag_p99())
        hot_by, spread_by = (
            hot_sampler.lag_p99_by_projection(),
            spread_sampler.lag_p99_by_projection(),
        )
        by_projection = {
            name: max(hot_by.get(name, 0.0), spread_by.get(name, 0.0))
            for name in sorted({*hot_by, *spread_by})
        }
        peak = max(memory.values(), default=0.0)
        extra = {
            "projection_lag_p99_s": round(lag, 3),
            "projection_lag_p99_s_by_projection": by_projection,
            "api_peak_rss_mb": round(peak, 1),
            "api_peak_rss_mb_by_load": peaks,
        }
        return [
            _write_workload(
                "hot-statement",
                f"{connections} connections endorsing and withdrawing on one statement",
                hot,
                insert,
                p99_factor=HOT_P99_FACTOR,
                extra={**extra, "events_in_log": events},
            ),
            _write_workload(
                "spread-registrations",
                f"{connections} connections registering people across "
                f"{consultations} consultations",
                spread,
                insert,
                extra=extra,
            ),
            _read_workload(
                "read-consultation",
                "consultation detail",
                detail,
                health,
                cold["consultation detail"],
            ),
            _read_workload(
                "read-endorsements",
                f"a page of 100 of a statement with {endorsements:,} endorsements",
                pages_read,
                health,
                cold["endorsements page"],
            ),
            _lag_and_memory(lag, peak),
        ]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _one(workdir: Path) -> str:
    path = workdir / "health.txt"
    path.write_text("/health\n")
    return str(path)


def _settle(url: str, progress: Progress, timeout_s: float = SETTLE_S) -> None:
    """Wait until every projection and relay has applied the set-up's events (the 10,000
    endorsements go in straight through the command bus, faster than the worker follows), so
    the lag measured under each load is that load's own, not the set-up's backlog."""
    from infra.db import Database

    db = Database(url)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            with db.read() as conn:
                head, slowest = conn.execute(_BEHIND).one()
            progress("projections catching up", min(slowest, head), max(head, 1))
            if slowest >= head:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"projections still at {slowest} of {head} after {timeout_s:.0f} s"
                )
            time.sleep(0.2)
    finally:
        db.dispose()


def _quiet(
    url: str,
    background: Callable[[], list[int]],
    progress: Progress,
    timeout_s: float = QUIET_S,
) -> None:
    """Wait until the work a load left behind is done: the projections and relays at the
    log's head, then the worker (reminders, e-mails, webhooks it queued) idle. Each workload is
    then measured on a quiet machine, not beside the previous one's aftermath (on two cores a
    worker sending a wave of confirmations took half a core from the reads measured next)."""
    _settle(url, progress)
    deadline = time.monotonic() + timeout_s
    busy = cpu_seconds(background())
    while time.monotonic() < deadline:
        time.sleep(IDLE_WINDOW_S)
        used = cpu_seconds(background())
        share = (used - busy) / IDLE_WINDOW_S
        busy = used
        progress("worker finishing queued work", 0 if share > IDLE_SHARE else 1, 1)
        if share <= IDLE_SHARE:
            return


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU seconds used so far by ``pids`` (those still alive)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        with suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


_BEHIND = text(
    "SELECT (SELECT COALESCE(max(position), 0) FROM events),"
    " (SELECT COALESCE(min(position), 0) FROM projection_checkpoints)"
)


def _count_events(url: str) -> int:
    from infra.db import Database

    db = Database(url)
    try:
        with db.read() as conn:
            return int(conn.execute(text("SELECT count(*) FROM events")).scalar_one())
    finally:
        db.dispose()


#: What a client would call a spurious conflict: the server failed to serialise the stream.
CONFLICTS = ("concurrency-conflict", "precondition-failed", "idempotency-key-in-progress")
#: Genuine answers to the load's own races: wrk cannot wait for an organisation's endorsement
#: to be answered before it sends that organisation's withdrawal on another connection.
DOMAIN_REFUSALS = ("not-endorsed", "already-endorsed")


def _conflicts(result: WrkResult) -> int:
    return sum(result.refusals.get(kind, 0) for kind in CONFLICTS)


def _failures(result: WrkResult) -> int:
    refused = sum(result.refusals.get(kind, 0) for kind in DOMAIN_REFUSALS)
    return result.requests - result.ok - refused


def _against(ours: WrkResult, base: WrkResult) -> tuple[float, float | None]:
    """Our successful answers per second, and that as a share of the baseline's rate."""
    ok_per_s = ours.ok / ours.seconds if ours.seconds else 0.0
    return ok_per_s, (ok_per_s / base.per_s if base.per_s else None)


def _write_workload(
    name: str,
    description: str,
    ours: WrkResult,
    base: WrkResult,
    *,
    p99_factor: float | None = None,
    extra: dict[str, Any],
) -> dict[str, Any]:
    ok_per_s, ratio = _against(ours, base)
    targets = [_target(f">= {TARGETS[name]} of the one-INSERT baseline", TARGETS[name], ratio)]
    if p99_factor is not None:
        limit = base.p99_ms * p99_factor
        targets.append(
            {
                "what": f"p99 <= {p99_factor}x the baseline's p99 (ms)",
                "limit": round(limit, 2),
                "actual": round(ours.p99_ms, 2),
                "ok": ours.p99_ms <= limit,
            }
        )
        conflicts = _conflicts(ours)
        targets.append(
            {
                "what": "client-visible conflicts",
                "limit": 0,
                "actual": conflicts,
                "ok": not conflicts,
            }
        )
    failures = _failures(ours)
    targets.append(
        {
            "what": "failed requests (non-2xx, not a domain refusal)",
            "limit": 0,
            "actual": failures,
            "ok": not failures,
        }
    )
    return {
        "name": name,
        "description": description,
        "backend": "postgresql",
        "unit": "req/s",
        "value": round(ok_per_s, 1),
        "baseline": {"name": "bare FastAPI one-INSERT route", "value": round(base.per_s, 1)},
        "ratio": round(ratio, 3) if ratio is not None else None,
        "targets": targets,
        "details": {"ours": ours.as_dict(), "baseline": base.as_dict(), **extra},
    }


def _read_workload(
    name: str, description: str, ours: WrkResult, base: WrkResult, first_s: float
) -> dict[str, Any]:
    ok_per_s, ratio = _against(ours, base)
    failures = _failures(ours)
    return {
        "name": name,
        "description": description,
        "backend": "postgresql",
        "unit": "req/s",
        "value": round(ok_per_s, 1),
        "baseline": {"name": "GET /health on the same server", "value": round(base.per_s, 1)},
        "ratio": round(ratio, 3) if ratio is not None else None,
        "targets": [
            _target(f">= {TARGETS[name]} of GET /health", TARGETS[name], ratio),
            {
                "what": "failed requests (non-2xx)",
                "limit": 0,
                "actual": failures,
                "ok": not failures,
            },
        ],
        "details": {
            "ours": ours.as_dict(),
            "baseline": base.as_dict(),
            # Each API process folds a long stream once (then keeps it): the first readers
            # wait for that, before the load is measured.
            "first_read_s": round(first_s, 3),
        },
    }


def _first_reads(server: str, paths: Path, key: str) -> float:
    """Warm every API process up on a read (as a real server is after its first reader):
    concurrent first requests; returns the slowest one's seconds."""
    path = paths.read_text().splitlines()[0]

    def one(_: int) -> float:
        began = time.perf_counter()
        r = httpx.get(f"{server}{path}", headers={"Authorization": f"Bearer {key}"}, timeout=300)
        r.raise_for_status()
        return time.perf_counter() - began

    with ThreadPoolExecutor(4 * SERVER_WORKERS) as pool:
        return max(pool.map(one, range(4 * SERVER_WORKERS)))


def _lag_and_memory(lag: float, peak: float) -> dict[str, Any]:
    return {
        "name": "lag-and-memory",
        "description": "projection lag p99 and API process peak RSS under the write loads",
        "backend": "postgresql",
        "unit": "s",
        "value": round(lag, 3),
        "baseline": None,
        "ratio": None,
        "targets": [
            {
                "what": "projection lag p99 (s)",
                "limit": LAG_P99_S,
                "actual": round(lag, 3),
                "ok": lag < LAG_P99_S,
            },
            {
                "what": "API peak RSS per process (MB)",
                "limit": API_RSS_MB,
                "actual": round(peak, 1),
                "ok": peak < API_RSS_MB,
            },
        ],
        "details": {"api_peak_rss_mb": round(peak, 1)},
    }


def _target(what: str, minimum: float, actual: float | None) -> dict[str, Any]:
    return {
        "what": what,
        "limit": minimum,
        "actual": round(actual, 3) if actual is not None else None,
        "ok": actual is not None and actual >= minimum,
    }
