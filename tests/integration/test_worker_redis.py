"""A real Celery worker on Redis and PostgreSQL: the production shape of the background side."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from uuid import uuid4

import pytest

from infra.bootstrap import System
from infra.settings import Settings
from services.ports import NO_STREAM, NewEvent
from tests import backends

ROOT = Path(__file__).resolve().parents[2]
_REDIS = backends.redis()

pytestmark = [
    pytest.mark.redis,
    pytest.mark.postgres,
    pytest.mark.skipif(not _REDIS.ok, reason=_REDIS.reason),
]


@pytest.fixture
def worker(pg_system: System, tmp_path: Path):  # type: ignore[no-untyped-def]
    redis_url = os.environ["REDIS_URL"]
    env = {
        **os.environ,
        "DATABASE_URL": pg_system.settings.database_url,
        "REDIS_URL": redis_url,
        "CONCORD_DATA_DIR": str(tmp_path / "var"),
        "CONCORD_LOG_FORMAT": "console",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "worker", "--concurrency", "1"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    yield redis_url
    process.terminate()
    output = process.communicate(timeout=60)[0].decode(errors="replace")
    assert "ready" in output, output[-3000:]


def test_tasks_run_on_a_redis_worker_and_the_projector_follows_the_log(
    pg_system: System, worker: str, tmp_path: Path
) -> None:
    from infra.queue import make_app

    app = make_app(
        Settings(
            DATABASE_URL=pg_system.settings.database_url,
            REDIS_URL=worker,
            CONCORD_DATA_DIR=tmp_path / "client",
        )
    )
    stream = uuid4()
    pg_system.store.append(stream, "consultation", NO_STREAM, [NewEvent("x.happened", {})])
    head = app.send_task("events.sequence", queue=os.environ["CONCORD_QUEUE"])
    applied = app.send_task("projections.catch_up", queue=os.environ["CONCORD_QUEUE"])
    # One event, applied by each projection that had not seen it (the worker's own loop may
    # have been first): between none and one per projection.
    assert 0 <= applied.get(timeout=60) <= len(pg_system.projector.projections)
    head.forget()
    deadline = time.monotonic() + 30
    while pg_system.projector.checkpoints()["stream_catalog"] < 1:
        assert time.monotonic() < deadline, "the worker's projector never caught up"
        time.sleep(0.1)
