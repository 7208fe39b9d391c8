"""Smoke test of ``concord bench --suite e2e``'s HTTP workloads: a tiny run, for real.

The real ``concord serve`` (two uvicorn workers) on a scratch PostgreSQL database and Redis,
the bare one-INSERT baseline, wrk driving each load for a second: the workloads come back in
the documented shape, every request answered 2xx (no conflict on the hot statement), and the
table and the chart are written. Only the shape and the answers are checked; speed stays out
of the test suite (``concord bench`` reports it).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from rich.console import Console

from infra.bench.e2e import print_e2e_table, write_e2e_chart
from infra.bench.http import DOMAIN_REFUSALS, run_http
from infra.bench.scratch import scratch_database
from tests import backends

_PG, _REDIS = backends.postgres(), backends.redis()

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.slow,
    pytest.mark.skipif(not _PG.ok, reason=_PG.reason),
    pytest.mark.skipif(not _REDIS.ok, reason=_REDIS.reason),
    pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (make install)"),
]


def test_a_tiny_http_bench_answers_every_request_and_reports_each_workload(
    tmp_path: Path,
) -> None:
    url = backends.postgres_url()
    assert url is not None
    seen: list[str] = []
    with scratch_database(url, tmp_path) as scratch:
        workloads = run_http(
            scratch,
            tmp_path,
            lambda what, done, total: seen.append(what),
            redis_url=os.environ["REDIS_URL"],
            seconds=1,
            organisations=32,
            consultations=3,
            endorsements=150,
            connections=4,
        )

    names = [w["name"] for w in workloads]
    assert names == [
        "hot-statement",
        "spread-registrations",
        "read-consultation",
        "read-endorsements",
        "lag-and-memory",
    ]
    for w in workloads[:4]:
        ours = w["details"]["ours"]
        assert ours["requests"] > 0, w["name"]
        # Only the load's own races may be refused (an organisation's withdrawal overtaking
        # its endorsement on another connection); nothing else, and never a conflict.
        assert set(ours["refusals"]) <= set(DOMAIN_REFUSALS), f"{w['name']}: {ours}"
        if w["name"] != "hot-statement":
            assert set(ours["statuses"]) <= {"200", "201"}, f"{w['name']}: {ours}"
        assert w["baseline"]["value"] > 0 and w["ratio"] is not None
        assert all(isinstance(t["ok"], bool) for t in w["targets"])
    hot = workloads[0]
    conflicts = next(t for t in hot["targets"] if t["what"] == "client-visible conflicts")
    assert conflicts["actual"] == 0 and conflicts["ok"]
    assert hot["details"]["events_in_log"] > 0
    # The lag is also told per projection (which one is behind), the worker's ones included.
    by_projection = hot["details"]["projection_lag_p99_s_by_projection"]
    assert {"consultations", "reminders"} <= set(by_projection)
    assert all(lag >= 0 for lag in by_projection.values())
    memory = workloads[4]["details"]["api_peak_rss_mb"]
    assert memory > 0, "the sampler read the API processes' memory"
    assert "hot statement" in seen and "endorsements page" in seen

    chart = tmp_path / "chart.png"
    write_e2e_chart(workloads, chart, "tiny")
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    console = Console(record=True, width=200)
    print_e2e_table(workloads, console, "tiny")
    assert "hot-statement" in console.export_text()
