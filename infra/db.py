"""Engines for PostgreSQL and SQLite, with the transaction behaviour the event store needs.

* Writes on SQLite start with ``BEGIN IMMEDIATE`` so two writers queue on the database lock
  instead of failing halfway through a transaction; readers use WAL and never block writers.
* Single-statement appends run in autocommit mode: one round trip, no BEGIN/COMMIT.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import Connection, Engine, Insert, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

if TYPE_CHECKING:
    from infra.settings import Settings

# The statements below are built once per (back end, table, columns) and shared: a statement
# is immutable (every method makes a new one), and one built once also keeps its SQLAlchemy
# cache key, which building it per call recomputes (a tenth of a command's CPU, measured).


def dialect_insert(conn: Connection, table: Table) -> Any:
    """The back end's own INSERT, which can say ``ON CONFLICT …`` (both dialects' forms)."""
    return _insert(conn.dialect.name, table)


@lru_cache(maxsize=512)  # a rebuild's fresh tables add a few entries each
def _insert(dialect: str, table: Table) -> Any:
    return postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)


def insert_or_skip(conn: Connection, table: Table) -> Insert:
    """``INSERT … ON CONFLICT DO NOTHING`` on either back end: a row whose key exists is skipped
    (two writers racing for one key both succeed, and one row results)."""
    return _insert_or_skip(conn.dialect.name, table)


@lru_cache(maxsize=512)
def _insert_or_skip(dialect: str, table: Table) -> Insert:
    return _insert(dialect, table).on_conflict_do_nothing()  # type: ignore[no-any-return]


def upsert(conn: Connection, table: Table, key: str, columns: Sequence[str]) -> Insert:
    """``INSERT … ON CONFLICT (key) DO UPDATE`` setting ``columns`` from the new row; run it
    with a list of rows (one round trip for the lot)."""
    return upsert_statement(conn.dialect.name, table, key, tuple(columns))


@lru_cache(maxsize=512)
def upsert_statement(dialect: str, table: Table, key: str, columns: tuple[str, ...]) -> Insert:
    """:func:`upsert` for a back end named by its dialect (``postgresql`` or ``sqlite``)."""
    stmt = _insert(dialect, table)
    return stmt.on_conflict_do_update(  # type: ignore[no-any-return]
        index_elements=[table.c[key]], set_={c: stmt.excluded[c] for c in columns}
    )


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


class Database:
    """One engine plus the three ways the code uses it: read, write, autocommit."""

    def __init__(
        self, url: str, *, pool_size: int = 10, max_overflow: int | None = None, echo: bool = False
    ) -> None:
        self.url = make_url(url)
        self.dialect = self.url.get_backend_name()
        kwargs: dict[str, Any] = {
            "echo": echo,
            "json_serializer": _json_dumps,
            "json_deserializer": orjson.loads,
        }
        if self.is_sqlite:
            database = self.url.database or ""
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
            kwargs["poolclass"] = NullPool if database in ("", ":memory:") else None
            if kwargs["poolclass"] is None:
                del kwargs["poolclass"]
        else:
            from psycopg.types.json import set_json_loads

            set_json_loads(orjson.loads)
            # No pre-ping round trip per checkout (~0.1 ms, a tenth of an append): a dropped
            # connection fails the one request using it (503, api/problems.py) and is then
            # invalidated together with the rest of the pool (SQLAlchemy's disconnect handling;
            # infra/eventstore/store.py's driver path does the same).
            # ``pool_size`` connections stay open once opened; a burst past them opens up to
            # ``max_overflow`` more (default: as many again) and closes them on return.
            overflow = pool_size if max_overflow is None else max_overflow
            kwargs.update(pool_size=pool_size, max_overflow=overflow, pool_recycle=1800)
        self.engine: Engine = create_engine(self.url, **kwargs)
        if self.is_sqlite:
            _configure_sqlite(self.engine)

    @classmethod
    def configured(cls, settings: Settings) -> Database:
        """The database ``settings`` name, with their pool sizes."""
        return cls(
            settings.database_url,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
        )

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A read-write transaction: committed on success, rolled back on any error."""
        with self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only unit of work (a deferred transaction on SQLite).

        On PostgreSQL each statement runs on its own (autocommit): under READ COMMITTED a
        read transaction gives its statements no common snapshot anyway, and leaving out
        BEGIN and ROLLBACK saves two of a typical read's three round trips.
        """
        if self.is_postgres:
            with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                yield conn
            return
        with self.engine.connect().execution_options(concord_read_only=True) as conn:
            try:
                yield conn
            finally:
                conn.rollback()

    @contextmanager
    def autocommit(self) -> Iterator[Connection]:
        """Each statement is its own transaction: for single-statement atomic writes.

        SQLite has a single writer, so there it is simply a write transaction.
        """
        if self.is_sqlite:
            with self.write() as conn:
                yield conn
            return
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            yield conn

    def dispose(self, *, close: bool = True) -> None:
        """Let go of the pooled connections; ``close=False`` in a forked child, whose
        inherited connections the parent is still using (they must not be closed here)."""
        self.engine.dispose(close=close)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from pysqlite; we emit BEGIN ourselves below.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        if options.get("isolation_level") == "AUTOCOMMIT":
            return
        conn.exec_driver_sql("BEGIN" if options.get("concord_read_only") else "BEGIN IMMEDIATE")
