"""Keep child processes (the embedded worker and scheduler) running beside the API."""

from __future__ import annotations

import ctypes
import ctypes.util
import signal
import subprocess
import threading
import time

import structlog

log = structlog.get_logger("concord.supervisor")


def _die_with_parent() -> None:
    """Linux: have the kernel send SIGTERM to the child if the parent dies (even by kill -9)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Supervisor:
    """Start children, restart any that dies, and stop them all on the way out."""

    def __init__(self, restart_delay_s: float = 2.0) -> None:
        self.restart_delay_s = restart_delay_s
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._commands: dict[str, list[str]] = {}
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def start(self, name: str, command: list[str]) -> None:
        self._commands[name] = command
        self._spawn(name)
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="supervisor", daemon=True)
            self._watcher.start()

    def _spawn(self, name: str) -> None:
        self._children[name] = subprocess.Popen(  # noqa: S603
            self._commands[name], preexec_fn=_die_with_parent
        )
        log.info("child started", child=name, pid=self._children[name].pid)

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            for name, child in list(self._children.items()):
                code = child.poll()
                if code is not None and not self._stop.is_set():
                    log.error("child exited; restarting", child=name, code=code)
                    time.sleep(self.restart_delay_s)
                    if not self._stop.is_set():
                        self._spawn(name)

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        for child in self._children.values():
            if child.poll() is None:
                child.terminate()
        deadline = time.monotonic() + timeout_s
        for name, child in self._children.items():
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("child did not stop; killing", child=name)
                child.kill()
                child.wait()
