"""A projection's rows change only for the streams it says it reads (``streams``): what its
change marker, and so every kept document, relies on (infra/projections/projector.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Connection, select

from infra import demo
from infra.bootstrap import System
from infra.db import Database
from infra.migrate import upgrade
from infra.projections.base import live_tables
from services.ports import RecordedEvent


def _rows(conn: Connection, tables: dict[str, Any]) -> dict[str, list[Any]]:
    return {
        name: sorted(map(repr, conn.execute(select(table)).all())) for name, table in tables.items()
    }


def _log(system: System) -> list[RecordedEvent]:
    events: list[RecordedEvent] = []
    while page := system.store.read_all(events[-1].position or 0 if events else 0, 1000):
        events += page
    return events


def test_events_of_other_streams_change_no_projections_rows(system: System, tmp_path: Path) -> None:
    demo.load(system)
    system.projector.catch_up()
    events = _log(system)
    assert len({e.stream_type for e in events}) >= 3  # consultations, organisations, series
    empty = Database(f"sqlite:///{tmp_path / 'empty.sqlite3'}")
    upgrade(str(empty.url))
    checked = 0
    for projection in system.projector.projections.values():
        streams = getattr(projection, "streams", None)
        if streams is None:
            continue
        checked += 1
        tables = live_tables(projection)
        foreign = [e for e in events if e.stream_type not in streams]
        assert foreign, projection.name
        # Into empty tables: nothing is inserted ...
        with empty.write() as conn:
            projection.apply(conn, tables, foreign)
            assert not any(_rows(conn, tables).values()), projection.name
            conn.rollback()
        # ... and over the projection as it stands: nothing is changed.
        with system.db.write() as conn:
            before = _rows(conn, tables)
            projection.apply(conn, tables, foreign)
            assert _rows(conn, tables) == before, projection.name
            conn.rollback()
    assert checked >= 4
    empty.engine.dispose()
