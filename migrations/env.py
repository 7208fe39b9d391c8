"""Alembic environment: the same migrations build PostgreSQL and SQLite databases."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from infra.db import Database
from infra.schema import metadata
from infra.settings import get_settings

config = context.config

# Columns and objects that exist on purpose outside the SQLAlchemy metadata (PostgreSQL only).
_UNMODELLED = {("events", "tx_id"), ("events", "ix_events_unsequenced")}


def include_object(obj, name, type_, reflected, compare_to):  # type: ignore[no-untyped-def]
    table = getattr(getattr(obj, "table", None), "name", None)
    return (table, name) not in _UNMODELLED


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        include_object=include_object,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run(connection)
        return
    url = config.get_main_option("sqlalchemy.url") or get_settings().database_url
    db = Database(url)
    try:
        with db.engine.connect() as conn:
            run(conn)
            conn.commit()
    finally:
        db.dispose()


main()
