"""Run Alembic migrations programmatically (``concord migrate`` and the test fixtures)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config

#: Objects that exist on purpose outside the SQLAlchemy models (PostgreSQL only): the writing
#: transaction's id, the index the sequencer scans and the sequencer's state.
UNMODELLED = {("events", "tx_id"), ("events", "ix_events_unsequenced")}
UNMODELLED_TABLES = {"event_sequencer"}


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Alembic autogenerate filter: ignore the deliberately unmodelled objects."""
    if type_ == "table":
        return name not in UNMODELLED_TABLES
    table = getattr(getattr(obj, "table", None), "name", None)
    return (table, name) not in UNMODELLED and table not in UNMODELLED_TABLES


MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision``."""
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)
