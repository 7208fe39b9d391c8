"""Reminders through real processes: a Celery worker and two beat schedulers on Redis, a real
SMTP server, and faults — kill -9 of the worker mid-send, Redis down for 10 s while the API
keeps accepting sign-ups. Afterwards every due message was sent, none twice.

The Redis here is a private ``redis-server`` on its own port, so stopping it disturbs nobody.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from infra.bootstrap import System
from infra.schema import mail_outbox
from services.reminders.events import message_stream
from tests import backends
from tests.e2e.conftest import Keys
from tests.integration.test_reminders import open_registration, org, plan, register
from tests.mailserver import MailServer
from tests.processes import REDIS_SERVER, PrivateRedis, spawn

_REDIS = backends.redis()

pytestmark = [
    pytest.mark.redis,
    pytest.mark.postgres,
    pytest.mark.skipif(not _REDIS.ok, reason=_REDIS.reason),
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed"),
]


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        return
    process.wait(timeout=60)


def test_workers_and_two_schedulers_send_every_message_once_through_faults(
    pg_system: System, private_redis: PrivateRedis, tmp_path: Path
) -> None:
    system = pg_system
    with MailServer() as smtp:
        smtp.inbox.delay_s = 1.0  # each message spends a second in RCPT: time to kill
        env = {
            **os.environ,
            "DATABASE_URL": system.settings.database_url,
            "REDIS_URL": private_redis.url,
            "SMTP_URL": smtp.url,
            "CONCORD_LOG_FORMAT": "console",
            "CONCORD_SCHEDULER_TICK": "1",
            "CONCORD_MAIL_LEASE": "4",
            "CONCORD_SMTP_TIMEOUT": "3",
        }
        logs = tmp_path / "logs"
        logs.mkdir()
        schedulers = [
            spawn(
                ["scheduler"],
                {**env, "CONCORD_DATA_DIR": str(tmp_path / f"beat{i}")},
                logs / f"beat{i}.log",
            )
            for i in (1, 2)
        ]
        worker_env = {**env, "CONCORD_DATA_DIR": str(tmp_path / "worker")}
        worker = spawn(["worker", "--concurrency", "1"], worker_env, logs / "worker.log")
        try:
            with TestClient(create_app(system)) as client:
                keys = Keys(system)
                organiser = keys.organiser
                host = org(client, organiser, "HRWG", "hrwg@example.org")
                starts = datetime.now(UTC).replace(microsecond=0) + timedelta(days=20)
                cid = plan(client, organiser, host, "Asia/Jakarta", starts)
                open_registration(client, organiser, cid, starts - timedelta(days=5))
                for i in range(4):
                    register(client, organiser, cid, f"Người {i}", f"p{i}@example.org")

                # kill -9 the worker while it is inside an SMTP conversation.
                assert smtp.inbox.in_rcpt.wait(60), "the worker never started sending"
                stop(worker, signal.SIGKILL)
                worker = spawn(["worker", "--concurrency", "1"], worker_env, logs / "worker.log")

                # Redis goes away for 10 s; sign-ups are still accepted meanwhile.
                private_redis.stop()
                down_until = time.monotonic() + 10
                for i in range(4, 7):
                    register(client, organiser, cid, f"Người {i}", f"p{i}@example.org")
                time.sleep(max(0.0, down_until - time.monotonic()))
                private_redis.start()

                deadline = time.monotonic() + 150
                while len(smtp.inbox.by_id()) < 7:
                    assert time.monotonic() < deadline, (
                        f"{len(smtp.inbox.by_id())} of 7 messages; worker log:\n"
                        + (logs / "worker.log").read_text(errors="replace")[-4000:]
                    )
                    time.sleep(0.5)
                time.sleep(6)  # longer than a lease: any duplicate would have gone out by now
        finally:
            stop(worker)
            for scheduler in schedulers:
                stop(scheduler)

        received = smtp.inbox.by_id()
        assert len(received) == 7
        assert all(len(copies) == 1 for copies in received.values()), "a message went twice"
        to = sorted(str(m[0]["To"]) for m in received.values())
        assert to == sorted(f"Người {i} <p{i}@example.org>" for i in range(7))
        with system.db.read() as conn:
            rows = conn.execute(mail_outbox.select()).all()
        assert len(rows) == 7 and {r.status for r in rows} == {"sent"}
        assert any(r.attempts > 1 for r in rows), "the killed send was taken over"
        for row in rows:
            recorded = system.store.read_stream(message_stream(row.key))
            assert [e.type for e in recorded] == ["reminder.sent"]
        worker_log = (logs / "worker.log").read_text(errors="replace")
        due = [line for line in worker_log.splitlines() if "reminder due" in line]
        assert any("correlation_id=" in line and "task=reminders.tick" in line for line in due), (
            "the relay's tasks log the correlation id of the request behind the event"
        )
        beats = [(logs / f"beat{i}.log").read_text(errors="replace") for i in (1, 2)]
        assert all("reminders.tick" in b for b in beats), "both schedulers were ticking"


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.extend(int(c) for c in text)
    return found


def test_a_pool_process_killed_mid_send_is_redelivered_at_once(
    pg_system: System, private_redis: PrivateRedis, tmp_path: Path
) -> None:
    """Why ``task_acks_late`` + ``task_reject_on_worker_lost``: kill -9 of the pool process
    that is sending; the worker's main process sees it die, gives the message back to the
    queue, and the redelivered task (same task id) takes its own claim over at once — long
    before the 10-minute lease would let anyone else. No scheduler runs here, so nothing
    else could have sent it."""
    system = pg_system
    with MailServer() as smtp:
        smtp.inbox.delay_s = 1.5
        env = {
            **os.environ,
            "DATABASE_URL": system.settings.database_url,
            "REDIS_URL": private_redis.url,
            "SMTP_URL": smtp.url,
            "CONCORD_DATA_DIR": str(tmp_path / "worker"),
            "CONCORD_LOG_FORMAT": "console",
            "CONCORD_MAIL_LEASE": "600",
        }
        log = tmp_path / "worker.log"
        worker = spawn(["worker", "--concurrency", "1"], env, log)
        try:
            with TestClient(create_app(system)) as client:
                keys = Keys(system)
                organiser = keys.organiser
                host = org(client, organiser, "HRWG", "hrwg@example.org")
                starts = datetime.now(UTC).replace(microsecond=0) + timedelta(days=20)
                cid = plan(client, organiser, host, "Asia/Jakarta", starts)
                open_registration(client, organiser, cid, starts - timedelta(days=5))
                register(client, organiser, cid, "Đặng Thị Mai", "mai@example.org")
                assert smtp.inbox.in_rcpt.wait(60), "the worker never started sending"
                pool = _children(worker.pid)
                assert pool, "no pool process"
                for child in pool:
                    os.kill(child, signal.SIGKILL)
                smtp.inbox.wait_for(1, timeout_s=60)
                time.sleep(2)
        finally:
            stop(worker)
        output = log.read_text(errors="replace")
        assert "WorkerLostError" in output or "exited with 'signal 9" in output, output[-3000:]
        received = smtp.inbox.by_id()
        assert len(received) == 1 and all(len(v) == 1 for v in received.values())
        with system.db.read() as conn:
            [row] = conn.execute(mail_outbox.select()).all()
        assert row.status == "sent" and row.attempts == 2
