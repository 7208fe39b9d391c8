"""A contended stream is decided by one process at a time (PostgreSQL).

Each API process funnels the commands for a stream through a lane (:mod:`infra.lanes`), and
the lanes of different processes meet at the append's expected version: the loser reads what
the winner appended and decides its whole batch again. On the hot statement (hundreds of
organisations endorsing one statement, two API processes) two batch attempts in five lost
that race, and their work was thrown away: deciding, a failed append, a read of the winner's
events.

So a stream that lost such races often in this process (:data:`CONFLICTS` within
:data:`RECENT_S`) is decided under a session advisory lock of its own for a while
(:data:`CONTENDED_S`, renewed each time the lock is found held by another process), taken on
a connection kept for these locks: the other process's leader waits for the lock instead of
doing work bound to be thrown away. A stream that loses a race now and then (registrations
spread over a hundred consultations lost one in fifty) is not worth two more round trips per
batch, and a stream nobody contends pays nothing. The lock is a courtesy, not a guarantee:
the expected version still decides every append, and a lock that cannot be had (every lock
connection in use, the holder slower than :data:`WAIT_S`, the database refusing) is simply
done without. A process that dies lets go of its locks with its connections.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any
from uuid import UUID

import psycopg
import structlog

from infra.db import Database

log = structlog.get_logger("concord.streamlocks")

#: The first key of every stream lock (the second is 32 bits of the stream id): "CONC" as a
#: signed 32-bit int. Two-key advisory locks never meet the one-key locks of the event store.
NAMESPACE = 0x434F_4E43
#: Races lost within :data:`RECENT_S` seconds that make a stream contended.
CONFLICTS = 3
RECENT_S = 5.0
#: How long a contended stream is decided under the lock (seconds), from when it became
#: contended or the lock was last found held by another process.
CONTENDED_S = 30.0
#: How long a leader waits for another process's batch on the stream (seconds).
WAIT_S = 2.0
#: Lock connections per process at most (streams decided under a lock at the same moment).
CONNECTIONS = 4
#: Seconds to open a lock connection at most (then the batch goes without).
CONNECT_TIMEOUT_S = 5
#: Streams remembered as contended at most (beyond it the list starts again).
REMEMBERED = 4096


def stream_key(stream_id: UUID) -> int:
    """The lock's second key: the stream id's first 32 bits, signed."""
    return int.from_bytes(stream_id.bytes[:4], "big", signed=True)


class StreamLocks:
    """Cross-process locks for the streams this process lost an append race on lately."""

    def __init__(
        self,
        db: Database,
        *,
        connections: int = CONNECTIONS,
        wait_s: float = WAIT_S,
        contended_s: float = CONTENDED_S,
    ) -> None:
        self.db = db
        self.connections = connections
        self.wait_s = wait_s
        self.contended_s = contended_s
        self._lock = threading.Lock()
        #: Per stream: when its lock mode ends (contended), or (races lost, since when).
        self._contended: dict[UUID, float] = {}
        self._races: dict[UUID, tuple[int, float]] = {}
        self._idle: list[psycopg.Connection[Any]] = []
        self._open = 0
        self._closed = False

    def conflicted(self, stream_id: UUID) -> None:
        """Another process appended to ``stream_id`` while this one decided on it."""
        now = time.monotonic()
        with self._lock:
            if len(self._races) >= REMEMBERED:
                self._races.clear()
            lost, since = self._races.get(stream_id, (0, now))
            if now - since > RECENT_S:
                lost, since = 0, now
            lost += 1
            if lost < CONFLICTS:
                self._races[stream_id] = (lost, since)
                return
            self._races.pop(stream_id, None)
        self._renew(stream_id)

    def _renew(self, stream_id: UUID) -> None:
        with self._lock:
            if len(self._contended) >= REMEMBERED:
                self._contended.clear()
            self._contended[stream_id] = time.monotonic() + self.contended_s

    def contended(self, stream_id: UUID) -> bool:
        """Whether ``stream_id`` lost a race here within :attr:`contended_s`."""
        with self._lock:
            until = self._contended.get(stream_id)
            if until is None:
                return False
            if time.monotonic() >= until:
                del self._contended[stream_id]
                return False
            return True

    @contextmanager
    def held(self, stream_id: UUID) -> Iterator[bool]:
        """Hold ``stream_id``'s lock for the block if it is contended (True), else nothing
        (False): not contended, or the lock could not be had in time."""
        if not self.contended(stream_id):
            yield False
            return
        conn = self._take()
        if conn is None:
            yield False
            return
        key = stream_key(stream_id)
        try:
            free = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (NAMESPACE, key))
            if free.fetchone() != (True,):
                self._renew(stream_id)  # another process is at it: still contended
                conn.execute("SELECT pg_advisory_lock(%s, %s)", (NAMESPACE, key))
        except psycopg.errors.LockNotAvailable:  # the holder is slow: go without
            self._give_back(conn)
            yield False
            return
        except psycopg.Error as exc:
            self._discard(conn, exc)
            yield False
            return
        try:
            yield True
        finally:
            try:
                conn.execute("SELECT pg_advisory_unlock(%s, %s)", (NAMESPACE, key))
            except psycopg.Error as exc:  # the session (and its lock) is gone or going
                self._discard(conn, exc)
            else:
                self._give_back(conn)

    def close(self) -> None:
        """Close the lock connections (their locks go with them)."""
        with self._lock:
            idle, self._idle = self._idle, []
            self._closed = True
        for conn in idle:
            with suppress(psycopg.Error):
                conn.close()

    def _take(self) -> psycopg.Connection[Any] | None:
        with self._lock:
            if self._closed:
                return None
            if self._idle:
                return self._idle.pop()
            if self._open >= self.connections:
                return None
            self._open += 1
        try:
            return self._connect()
        except psycopg.Error as exc:
            with self._lock:
                self._open -= 1
            log.warning("stream locks: no connection; deciding without", error=repr(exc))
            return None

    def _connect(self) -> psycopg.Connection[Any]:
        args, kwargs = self.db.engine.dialect.create_connect_args(self.db.url)
        kwargs.setdefault("connect_timeout", CONNECT_TIMEOUT_S)
        conn = psycopg.connect(*args, **kwargs, autocommit=True)
        # A lock wait longer than this fails with LockNotAvailable (the leader goes without).
        conn.execute(f"SET lock_timeout = {max(1, round(self.wait_s * 1000))}")
        return conn

    def _give_back(self, conn: psycopg.Connection[Any]) -> None:
        with self._lock:
            if not self._closed and not conn.closed:
                self._idle.append(conn)
                return
            self._open -= 1
        with suppress(psycopg.Error):
            conn.close()

    def _discard(self, conn: psycopg.Connection[Any], exc: Exception) -> None:
        log.warning("stream locks: lock connection failed; deciding without", error=repr(exc))
        with self._lock:
            self._open -= 1
        with suppress(psycopg.Error):
            conn.close()
