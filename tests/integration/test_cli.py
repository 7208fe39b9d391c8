"""The ``concord`` command line, as an operator uses it."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import time
from pathlib import Path
from uuid import uuid4

import httpx
import pytest
from typer.testing import CliRunner

from infra.bootstrap import bootstrap
from infra.cli import app
from infra.settings import Settings
from services.ports import NO_STREAM, NewEvent
from tests.e2e.conftest import Keys
from tests.e2e.test_statements_api import draft, sign_and_close
from tests.processes import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def embedded_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {"CONCORD_DATA_DIR": str(tmp_path / "var"), "CONCORD_LOG_FORMAT": "console"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    return env


def test_migrate_then_rebuild_with_progress(embedded_env: dict[str, str]) -> None:
    runner = CliRunner()
    migrated = runner.invoke(app, ["migrate"])
    assert runner.invoke(app, ["keys", "list"]).output == ""
    assert migrated.exit_code == 0, migrated.output
    assert (Path(embedded_env["CONCORD_DATA_DIR"]) / "concord.sqlite3").exists()
    system = bootstrap(Settings())
    for _ in range(5):
        system.store.append(uuid4(), "consultation", NO_STREAM, [NewEvent("x.happened", {})])
    system.close()
    rebuilt = runner.invoke(
        app, ["projections", "rebuild", "stream_catalog", "--batch-size", "100"]
    )
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "stream_catalog: rebuilt up to position 5" in rebuilt.output
    status = runner.invoke(app, ["projections", "status"])
    assert "stream_catalog\t5\t(lag 0)" in status.output
    created = runner.invoke(app, ["keys", "create", "--role", "admin", "--name", "ops"])
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip().splitlines()[-1]
    assert secret.startswith("concord_")
    listed = runner.invoke(app, ["keys", "list"]).output
    assert "admin" in listed and "active" in listed and secret not in listed
    key_id = listed.split("\t")[0]
    assert runner.invoke(app, ["keys", "revoke", key_id]).exit_code == 0
    assert "revoked" in runner.invoke(app, ["keys", "list"]).output
    bad = runner.invoke(app, ["keys", "create", "--role", "organisation", "--name", "x"])
    assert bad.exit_code == 2
    unknown = runner.invoke(app, ["projections", "rebuild", "nope"])
    assert unknown.exit_code == 2
    assert "unknown projection 'nope'" in unknown.output


def test_serve_in_embedded_mode_runs_api_worker_and_scheduler(
    embedded_env: dict[str, str], tmp_path: Path
) -> None:
    """What ``make run`` starts: one command, no external server, projections kept current,
    and a statement published through the embedded broker and worker."""
    env = {**os.environ, **embedded_env}
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    subprocess.run(
        [sys.executable, "-m", "infra.cli", "migrate"],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "infra.cli", "serve", "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail("the server did not become ready")
        system = bootstrap(Settings())
        stream = uuid4()
        system.store.append(stream, "consultation", NO_STREAM, [NewEvent("x.happened", {})])
        # Nobody asks the API to catch up: the embedded worker's projector loop does it.
        deadline = time.monotonic() + 30
        while system.projector.checkpoints()["stream_catalog"] < 1:
            assert time.monotonic() < deadline, "the embedded worker never caught up"
            time.sleep(0.2)
        _, secret = system.keys.create("integrator", "cli test")
        summary = httpx.get(
            f"{base}/v1/streams/{stream}",
            headers={"Authorization": f"Bearer {secret}"},
            timeout=5,
        )
        assert summary.status_code == 200
        assert summary.json()["stream_type"] == "consultation"
        with httpx.Client(base_url=base, timeout=30) as client:
            drafted = draft(client, Keys(system))  # type: ignore[arg-type]
            sign_and_close(client, Keys(system), drafted)  # type: ignore[arg-type]
            url = f"/v1/statements/{drafted['sid']}"
            job = client.post(f"{url}/publish", headers=drafted["organiser"])
            assert job.status_code == 202
            deadline = time.monotonic() + 90
            while client.get(job.headers["location"]).json()["status"] != "done":
                assert time.monotonic() < deadline, "the embedded worker never published it"
                time.sleep(0.5)
            assert client.get(f"{url}/document.pdf").headers["content-type"] == "application/pdf"
        system.close()
    finally:
        server.terminate()
        server.wait(timeout=60)
    output = log.read_text(errors="replace")
    assert "celery@" in output, output[-3000:]
    assert server.returncode is not None


def test_make_run_puts_the_demo_reminders_in_the_maildir_within_a_minute(
    embedded_env: dict[str, str], tmp_path: Path
) -> None:
    """``make run`` is migrate, demo, serve: the demo's follow-up starts tomorrow, so its
    participants' confirmations and their "starts tomorrow" reminder reach var/mail, which any
    mail client opens, within a minute, each message once."""
    import email
    from email.policy import default

    env = {**os.environ, **embedded_env}
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    env.pop("SMTP_URL", None)
    for step in (["migrate"], ["demo"]):
        subprocess.run(
            [sys.executable, "-m", "infra.cli", *step],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
    maildir = Path(embedded_env["CONCORD_DATA_DIR"]) / "mail" / "new"
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "infra.cli", "serve", "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        subjects: list[str] = []
        while time.monotonic() < deadline:
            files = sorted(maildir.glob("concord-*")) if maildir.exists() else []
            subjects = [
                str(email.message_from_bytes(f.read_bytes(), policy=default)["Subject"])
                for f in files
            ]
            starts = [s for s in subjects if s.startswith("Reminder:")]
            if len(starts) == 3 and len(subjects) == 6:
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"the Maildir has {subjects}; log: {log.read_text()[-3000:]}")
        assert all("follow-up" in s for s in subjects), subjects
        assert sum(s.startswith("Registration confirmed") for s in subjects) == 3
        time.sleep(3)  # a second tick (the relay's or the minute's) sends nothing more
        assert len(list(maildir.glob("concord-*"))) == 6
    finally:
        server.terminate()
        server.wait(timeout=60)


def test_stdout_carries_only_what_a_command_prints(embedded_env: dict[str, str]) -> None:
    """Logs go to stderr, so a script reading a new key (or ``--json``) gets nothing else."""
    run = functools.partial(
        subprocess.run, capture_output=True, text=True, env={**os.environ, **embedded_env}
    )
    assert run([sys.executable, "-m", "infra.cli", "migrate"]).returncode == 0
    created = run(
        [sys.executable, "-m", "infra.cli", "keys", "create", "--role", "admin", "--name", "ops"]
    )
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith("concord_") and created.stdout.count("\n") == 1
    assert "api key created" in created.stderr
