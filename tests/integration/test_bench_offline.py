"""The offline bench workloads at tiny sizes, on SQLite and PostgreSQL: the dict's shape, and
that the work was really done (files compiled, deliveries arrived, the rebuild matches).

Speed stays out of the test suite: no timing is asserted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from infra.bench.offline import bench_compile, bench_fanout, bench_rebuild
from tests import backends

_PG = backends.postgres()
URLS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param(
        "postgres",
        id="postgres",
        marks=[pytest.mark.postgres, pytest.mark.skipif(not _PG.ok, reason=_PG.reason)],
    ),
]


@pytest.fixture(params=URLS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The database the bench is pointed at (it works on a scratch database beside it)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'configured.sqlite3'}"
    return backends.postgres_url() or ""


class Progress:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []

    def __call__(self, task: str, done: int, total: int) -> None:
        assert 0 <= done <= total, (task, done, total)
        self.calls.append((task, done, total))


def check_shape(result: dict[str, Any], name: str, url: str, unit: str) -> None:
    assert set(result) == {
        "name", "description", "backend", "unit", "value", "baseline", "ratio", "targets",
        "details",
    }  # fmt: skip
    assert result["name"] == name
    assert result["backend"] == ("sqlite" if url.startswith("sqlite") else "postgresql")
    assert result["unit"] == unit
    assert isinstance(result["value"], float) and result["value"] > 0
    assert isinstance(result["description"], str) and result["description"]
    baseline = result["baseline"]
    if baseline is None:
        assert result["ratio"] is None
    else:
        assert set(baseline) == {"name", "value"} and baseline["value"] > 0
        assert isinstance(result["ratio"], float) and result["ratio"] > 0
    assert result["targets"]
    for target in result["targets"]:
        assert set(target) == {"what", "limit", "actual", "ok"}
        assert isinstance(target["ok"], bool)
    assert isinstance(result["details"], dict)


def test_compile_renders_every_signatory_in_three_files(url: str, tmp_path: Path) -> None:
    progress = Progress()

    result = bench_compile(url, tmp_path / "out", progress, signatories=50)

    check_shape(result, "compile-statement", url, "s")
    details = result["details"]
    assert details["signatories_compiled"] == 50
    assert set(details["files"]) == {"md", "html", "pdf"}
    for kind, path in details["files"].items():
        data = Path(path).read_bytes()
        assert len(data) == details["bytes"][kind] > 0
    assert Path(details["files"]["pdf"]).read_bytes().startswith(b"%PDF-")
    markdown = Path(details["files"]["md"]).read_text()
    assert "Signed by 50 organisations from 11 countries" in markdown
    assert details["peak_rss_mb"] > 0
    assert {t["what"] for t in result["targets"]} == {
        "seconds to compile",
        "peak RSS of the compiling process (MB)",
    }
    assert progress.calls[-1][1:] == (1, 1)


def test_fanout_delivers_every_event_to_every_subscriber_in_order(url: str, tmp_path: Path) -> None:
    result = bench_fanout(url, tmp_path / "out", Progress(), events=200, subscribers=2)

    check_shape(result, "webhook-fanout", url, "s")
    details = result["details"]
    assert result["baseline"]["name"] == "httpx"
    # 200 events and the warm-up event, to each subscriber, once, in log order, signed.
    assert details["delivery_rows"] == details["rows_delivered"] == 2 * 201
    assert details["arrived"] == 2 * 201
    assert details["duplicates"] == 0
    assert details["subscribers_in_order"] == 2
    assert details["bad_requests"] == []
    assert details["baseline_arrived"] == 2 * 200
    assert result["targets"][0]["what"] == "ratio to plain httpx POSTs"


def test_rebuild_gives_the_tables_the_live_projector_kept(url: str, tmp_path: Path) -> None:
    result = bench_rebuild(url, tmp_path / "out", Progress(), events=2_000, batch_size=500)

    check_shape(result, "rebuild-consultations", url, "events/s")
    details = result["details"]
    assert details["events"] >= 2_000
    assert details["position"] >= details["events"]
    assert details["matches_live"] is True
    assert details["tables"]["consultations"] > 0
    assert details["tables"]["registrations"] > 0
    assert set(details["rss_mb"]) == {"10%", "50%", "100%"}
    assert all(v > 0 for v in details["rss_mb"].values())
    assert details["peak_rss_mb"] >= max(details["rss_mb"].values())
