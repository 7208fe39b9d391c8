"""Real processes for tests: a free loopback port, and ``concord`` commands in their own group."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def spawn(command: Sequence[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``concord <command>`` writing to ``log``, in its own process group (so kill -9 of the
    group takes a worker's pool processes too)."""
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "infra.cli", *command],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """One Celery worker with one pool process."""
    return spawn(["worker", "--concurrency", "1"], env, log)
