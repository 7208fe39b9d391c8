"""Fixtures: the same tests run on SQLite and on PostgreSQL, with databases built by Alembic."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from infra.bootstrap import System, bootstrap
from infra.db import Database
from infra.migrate import upgrade
from infra.schema import metadata
from infra.settings import Settings
from tests import backends

# Each test run consumes its own Celery queue, so two runs sharing one Redis never take each
# other's tasks (subprocesses inherit it through the environment). Under pytest-xdist every
# worker process is a run of its own: it inherits the controller's environment, so it names its
# own queue (Redis keys of rate limits and live streams are scoped by the queue name too).
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if _WORKER:
    os.environ["CONCORD_QUEUE"] = f"concord-test-{_WORKER}-{uuid.uuid4().hex[:12]}"
else:
    os.environ.setdefault("CONCORD_QUEUE", f"concord-test-{uuid.uuid4().hex[:12]}")
# A live event stream (GET /v1/events/stream) ends after a second here, so a client that reads
# whole responses (the authorization matrix) gets one; the stream tests set their own limits.
os.environ["CONCORD_SSE_MAX_SECONDS"] = "1"
# The suite sends thousands of requests with a few keys from one address: budgets it cannot
# reach. The rate-limit tests (tests/e2e/test_rate_limits_api.py …) set tiny ones of their own.
for _budget in ("READ", "WRITE", "ANONYMOUS"):
    os.environ.setdefault(f"CONCORD_RATE_LIMIT_{_budget}", "1000000/minute")

_PG = backends.postgres()
BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param(
        "postgres",
        id="postgres",
        marks=[pytest.mark.postgres, pytest.mark.skipif(not _PG.ok, reason=_PG.reason)],
    ),
]


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite file migrated with Alembic; each test gets a copy."""
    path = tmp_path_factory.mktemp("template") / "concord.sqlite3"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A database of this run's own, next to the one DATABASE_URL names, built by Alembic."""
    if not _PG.ok:
        pytest.skip(_PG.reason)
    base = make_url(backends.postgres_url() or "")
    name = f"concord_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = Database(base.render_as_string(hide_password=False))
    with admin.autocommit() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = base.set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    yield url
    with admin.autocommit() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _truncate_postgres(url: str) -> None:
    db = Database(url)
    tables = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
    with db.autocommit() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        conn.execute(text("UPDATE event_sequencer SET horizon = '0', last_position = 0"))
    db.dispose()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A freshly migrated, empty database on each back end."""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        target = tmp_path / "concord.sqlite3"
        shutil.copy(template, target)
        return f"sqlite:///{target}"
    url: str = request.getfixturevalue("postgres_database")
    _truncate_postgres(url)
    return url


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        DATABASE_URL=database_url,
        CONCORD_DATA_DIR=tmp_path / "data",
        REDIS_URL=None,
        CONCORD_LOG_FORMAT="console",
    )


@pytest.fixture
def system(settings: Settings) -> Iterator[System]:
    running = bootstrap(settings)
    yield running
    running.close()


@pytest.fixture
def pg_system(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[System]:
    """A system on PostgreSQL only (for behaviour SQLite's single writer cannot show)."""
    if not _PG.ok:
        pytest.skip(_PG.reason)
    url: str = request.getfixturevalue("postgres_database")
    _truncate_postgres(url)
    running = bootstrap(
        Settings(DATABASE_URL=url, CONCORD_DATA_DIR=tmp_path / "data", REDIS_URL=None)
    )
    yield running
    running.close()


def clear_of_window_edge(window_s: float, margin_s: float) -> None:
    """Wait, if need be, until at least ``margin_s`` remain before the next window boundary.

    Rate-limit windows are aligned to the clock (the `limits` sliding-window counter): a test
    that crosses a boundary sees its earlier hits weighted and rounded down, so one hit more
    than the quota can fit. Tests that count hits exactly start clear of the edge."""
    into = time.time() % window_s
    if into > window_s - margin_s:
        time.sleep(window_s - into + 0.05)


@pytest.fixture
def whole_minute_ahead() -> None:
    """The test starts at least 15 s before the next minute boundary (per-minute budgets)."""
    clear_of_window_edge(60, 15)
