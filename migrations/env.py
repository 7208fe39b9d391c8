"""Alembic environment: the same migrations build PostgreSQL and SQLite databases."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

import infra.projections
import infra.webhooks.tables  # noqa: F401  (webhook subscriptions and deliveries)
from infra.db import Database
from infra.migrate import include_object
from infra.schema import metadata
from infra.settings import get_settings

config = context.config


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
