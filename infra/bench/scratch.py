"""A throw-away database next to the configured one, so the bench never touches real data."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from infra.bench.plain import pg_conninfo
from infra.migrate import upgrade


def backend_of(url: str) -> str:
    """``postgresql`` or ``sqlite``; anything else is refused."""
    name = make_url(url).get_backend_name()
    if name not in ("postgresql", "sqlite"):
        raise ValueError(f"the bench runs on PostgreSQL or SQLite, not {name}")
    return name


@contextmanager
def scratch_database(url: str, out_dir: Path) -> Iterator[str]:
    """Create and migrate a fresh database beside ``url``; drop it afterwards.

    PostgreSQL: ``concord_bench_<random>`` on the same server. SQLite: a file in ``out_dir``.
    """
    token = secrets.token_hex(4)
    if backend_of(url) == "sqlite":
        path = (out_dir / f"bench-{token}.sqlite3").resolve()
        try:
            scratch = f"sqlite:///{path}"
            upgrade(scratch)
            yield scratch
        finally:
            for suffix in ("", "-wal", "-shm", "-journal"):
                with suppress(FileNotFoundError):
                    Path(f"{path}{suffix}").unlink()
        return

    base = make_url(url)
    name = f"concord_bench_{token}"
    with psycopg.connect(pg_conninfo(url), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        scratch = base.set(database=name).render_as_string(hide_password=False)
        upgrade(scratch)
        yield scratch
    finally:
        with psycopg.connect(pg_conninfo(url), autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
