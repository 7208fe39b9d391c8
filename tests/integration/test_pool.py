"""The connection pool keeps what a burst of requests opened: a new PostgreSQL connection is a
new server backend (a fork, authentication, cold caches), and an API process under load that
closed and reopened them opened one for about every third request (``CONCORD_DB_POOL_SIZE``)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import text

from infra.bootstrap import System, bootstrap
from infra.db import Database
from infra.settings import Settings

pytestmark = pytest.mark.postgres


def _burst(db: Database, width: int) -> set[int]:
    """``width`` connections checked out at once; the server pids behind them."""
    held = threading.Barrier(width, timeout=30)

    def one(_: int) -> int:
        with db.read() as conn:
            pid = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
            held.wait()  # every connection is out of the pool at the same moment
            return pid

    with ThreadPoolExecutor(width) as pool:
        return set(pool.map(one, range(width)))


def test_connections_a_burst_opened_serve_the_next_burst(pg_system: System) -> None:
    width = 20  # an API process at 64 client connections had up to about 22 out at once
    first = _burst(pg_system.db, width)
    second = _burst(pg_system.db, width)
    assert len(first) == len(second) == width
    assert second == first, f"{len(second - first)} connections were opened again"


def test_the_pool_is_sized_by_the_settings(pg_system: System, tmp_path: Path) -> None:
    url = pg_system.db.url.render_as_string(hide_password=False)
    running = bootstrap(
        Settings(
            DATABASE_URL=url,
            CONCORD_DATA_DIR=tmp_path / "data",
            REDIS_URL=None,
            CONCORD_DB_POOL_SIZE=3,
            CONCORD_DB_MAX_OVERFLOW=2,
        )
    )
    try:
        first = _burst(running.db, 5)
        second = _burst(running.db, 5)
        # Three stay open; the two of the overflow are closed when returned.
        assert len(first & second) == 3
        assert running.db.engine.pool.size() == 3  # type: ignore[attr-defined]
    finally:
        running.close()
