"""A real Celery worker on Redis compiles a published statement from the log."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pypdf import PdfReader

from api.main import create_app
from infra.bootstrap import System
from tests import backends
from tests.e2e.conftest import Keys
from tests.e2e.test_statements_api import SIGNATORIES, draft, sign_and_close
from tests.processes import start_worker

ROOT = Path(__file__).resolve().parents[2]
_REDIS = backends.redis()

pytestmark = [
    pytest.mark.redis,
    pytest.mark.postgres,
    pytest.mark.skipif(not _REDIS.ok, reason=_REDIS.reason),
]


def test_a_redis_worker_compiles_the_signed_statement(pg_system: System, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": pg_system.settings.database_url,
        "REDIS_URL": os.environ["REDIS_URL"],
        "CONCORD_DATA_DIR": str(pg_system.settings.data_dir),  # shared, as in compose
        "CONCORD_LOG_FORMAT": "console",
    }
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "worker", "--concurrency", "1"],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        with TestClient(create_app(pg_system)) as client:
            keys = Keys(pg_system)
            drafted = draft(client, keys)
            content_hash = sign_and_close(client, keys, drafted)
            url = f"/v1/statements/{drafted['sid']}"
            job = client.post(f"{url}/publish", headers=drafted["organiser"])
            assert job.status_code == 202, job.text
            deadline = time.monotonic() + 120
            while client.get(job.headers["location"]).json()["status"] != "done":
                assert worker.poll() is None, "the worker died"
                assert time.monotonic() < deadline, "the worker never published the statement"
                time.sleep(0.5)
            pdf = client.get(f"{url}/document.pdf")
            assert pdf.status_code == 200
            text = " ".join(
                " ".join(
                    p.extract_text() or "" for p in PdfReader(io.BytesIO(pdf.content)).pages
                ).split()
            )
            for _, _, signatory in SIGNATORIES:
                if signatory.isascii() or "Đức" in signatory or "Hằng" in signatory:
                    assert signatory in text, signatory
            assert "Signed by 16 organisations from 8 countries" in text
            assert content_hash in client.get(f"{url}/document.html").text
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        log.close()
    assert "statements.compile" in (tmp_path / "worker.log").read_text(errors="replace")


def test_a_worker_killed_mid_compile_loses_nothing(pg_system: System, tmp_path: Path) -> None:
    """kill -9 of the whole worker while it compiles; after a restart the sweep finishes the
    job, once: compiled and published appear exactly once in the log."""
    import signal

    from infra.queue import make_app
    from infra.settings import Settings

    env = {
        **os.environ,
        "DATABASE_URL": pg_system.settings.database_url,
        "REDIS_URL": os.environ["REDIS_URL"],
        "CONCORD_DATA_DIR": str(pg_system.settings.data_dir),
        "CONCORD_LOG_FORMAT": "console",
    }
    log = tmp_path / "worker.log"
    first = start_worker(env, log)
    with TestClient(create_app(pg_system)) as client:
        keys = Keys(pg_system)
        drafted = draft(client, keys)
        sign_and_close(client, keys, drafted)
        job = client.post(f"/v1/statements/{drafted['sid']}/publish", headers=drafted["organiser"])
        deadline = time.monotonic() + 60
        started = re.compile(r"Task statements\.compile\[[0-9a-f-]+\] received")
        while not started.search(log.read_text(errors="replace")):
            assert time.monotonic() < deadline, "the worker never started compiling"
            time.sleep(0.02)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
        second = start_worker(env, log)
        try:
            celery = make_app(
                Settings(
                    REDIS_URL=os.environ["REDIS_URL"],
                    DATABASE_URL=pg_system.settings.database_url,
                    CONCORD_DATA_DIR=tmp_path / "client",
                )
            )
            deadline = time.monotonic() + 120
            while client.get(job.headers["location"]).json()["status"] != "done":
                assert time.monotonic() < deadline, "the job never finished after the restart"
                celery.send_task(
                    "statements.sweep",
                    kwargs={"older_than_s": 0},
                    queue=os.environ["CONCORD_QUEUE"],
                )
                time.sleep(2)
        finally:
            os.killpg(second.pid, signal.SIGTERM)
            second.wait(timeout=60)
    recorded = pg_system.store.read_all(
        0, 10_000, types=["statement.compiled", "statement.published"]
    )
    assert [e.type for e in recorded] == ["statement.compiled", "statement.published"]
