"""Smoke test for ``concord bench``: a tiny run on SQLite gives the documented JSON and a chart.

Only the shape is checked; speed stays out of the test suite.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("eventsourcing")
pytest.importorskip("matplotlib")

from infra.bench import run_bench

WORKLOADS = [
    "append-1-writer",
    "append-4-writers",
    "append-batch-100",
    "read-all-fold",
    "rebuild-projection",
]


def test_a_tiny_bench_on_sqlite_writes_json_and_a_png_chart(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    url = f"sqlite:///{tmp_path / 'configured.sqlite3'}"

    result = run_bench(events=50, out_dir=str(out), quiet=True, database_url=url)

    assert [w["name"] for w in result["workloads"]] == WORKLOADS
    for w in result["workloads"]:
        assert w["backend"] == "sqlite"
        assert w["per_s"] > 0
        assert set(w["baselines"]) == {"plain", "eventsourcing"}
        assert w["baselines"]["plain"] > 0
        assert isinstance(w["meets_target"], bool)
    by_name = {w["name"]: w for w in result["workloads"]}
    assert by_name["append-1-writer"]["baselines"]["eventsourcing"] > 0
    assert by_name["rebuild-projection"]["baselines"]["eventsourcing"] is None
    assert not [n for n in result["notes"] if n.startswith("CHECK FAILED")]

    written = json.loads(Path(result["files"]["json"]).read_text())
    assert written["workloads"] == json.loads(json.dumps(result["workloads"]))
    assert json.loads((out / "latest.json").read_text()) == written
    for chart in (Path(result["files"]["chart"]), out / "latest.png"):
        assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_scratch_database_is_removed_and_the_configured_one_untouched(
    tmp_path: Path,
) -> None:
    out = tmp_path / "bench"
    configured = tmp_path / "configured.sqlite3"

    run_bench(events=20, out_dir=str(out), quiet=True, database_url=f"sqlite:///{configured}")

    assert not configured.exists()
    assert not list(out.glob("*.sqlite3*"))
