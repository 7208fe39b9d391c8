"""A projection's rows change only for the streams it says it reads (``streams``): what its
change marker, and so every kept document, relies on (infra/projections/projector.py). And one
that says it reads no personal data (``personal = False``) makes the same rows from events whose
personal data stays sealed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Connection, select

from infra import demo
from infra.bootstrap import System
from infra.db import Database
from infra.migrate import upgrade
from infra.projections.base import live_tables, reads_payload, reads_personal
from services.ports import RecordedEvent


def _rows(conn: Connection, tables: dict[str, Any]) -> dict[str, list[Any]]:
    return {
        name: sorted(map(repr, conn.execute(select(table)).all())) for name, table in tables.items()
    }


def _log(system: System, *, personal: bool = True) -> list[RecordedEvent]:
    events: list[RecordedEvent] = []
    while page := system.store.read_all(
        events[-1].position or 0 if events else 0, 1000, personal=personal
    ):
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


def test_a_projection_that_reads_no_personal_data_makes_the_same_rows_from_sealed_events(
    system: System, tmp_path: Path
) -> None:
    demo.load(system)
    opened, sealed = _log(system), _log(system, personal=False)
    assert opened != sealed  # the demo's people: their names and addresses differ
    checked = 0
    for projection in system.projector.projections.values():
        if not projection.tables or not reads_payload(projection) or reads_personal(projection):
            continue
        checked += 1
        rows = []
        for name, events in (("opened", opened), ("sealed", sealed)):
            db = Database(f"sqlite:///{tmp_path / f'{projection.name}-{name}.sqlite3'}")
            upgrade(str(db.url))
            tables = live_tables(projection)
            with db.write() as conn:
                projection.apply(conn, tables, events)
                rows.append(_rows(conn, tables))
            db.engine.dispose()
        assert rows[0] == rows[1], projection.name
        assert any(rows[0].values()), projection.name
    assert checked >= 1  # the reminder schedule
