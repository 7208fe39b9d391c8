"""Which real servers this test run can use, and why not when it cannot.

PostgreSQL comes from ``DATABASE_URL`` (``postgresql://…``) and Redis from ``REDIS_URL``. Tests
never touch the configured database itself: each run creates a database of its own next to it
and drops it at the end.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str


def _normalise(url: str) -> str:
    from infra.settings import normalise_database_url

    return normalise_database_url(url)


def postgres_url() -> str | None:
    url = os.environ.get("DATABASE_URL", "")
    return _normalise(url) if url.startswith(("postgres://", "postgresql")) else None


def postgres() -> Availability:
    url = postgres_url()
    if url is None:
        return Availability(False, "DATABASE_URL does not point at PostgreSQL")
    try:
        import psycopg

        plain = url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(plain, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        return Availability(
            False, f"PostgreSQL at DATABASE_URL is unreachable ({exc.__class__.__name__})"
        )
    return Availability(True, "PostgreSQL reachable")


def redis() -> Availability:
    url = os.environ.get("REDIS_URL")
    if not url:
        return Availability(False, "REDIS_URL is not set")
    try:
        import redis as redis_lib

        client = redis_lib.Redis.from_url(url, socket_connect_timeout=2)
        client.ping()
        client.close()
    except Exception as exc:
        return Availability(False, f"Redis at REDIS_URL is unreachable ({exc.__class__.__name__})")
    return Availability(True, "Redis reachable")
