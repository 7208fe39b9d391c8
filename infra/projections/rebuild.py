"""Rebuild a projection from the log into fresh tables, then swap them in.

1. Create shadow tables ``<table>__rebuild`` (same columns, no secondary indexes: bulk loading
   is faster without them).
2. Replay the whole log into them, one short transaction per page: live traffic carries on
   meanwhile, and new events wait at most one page's transaction for their positions.
3. Swap, in one short transaction holding the projection's lock (which pauses the live
   projector): apply the last events that arrived meanwhile, drop the live tables, rename the
   shadows, create the indexes under their real names and move the checkpoint.

Readers see the old tables until the swap commits and the new ones after; never a half-built one.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, MetaData, Table, text

from infra.db import Database
from infra.eventstore.store import SqlEventStore
from infra.projections.base import Projection, live_tables, reads_payload
from infra.projections.projector import Projector
from infra.schema import NAMING_CONVENTION
from services.ports import RecordedEvent

SHADOW_SUFFIX = "__rebuild"
Progress = Callable[[int, int], None]


def shadow_tables(projection: Projection) -> dict[str, Table]:
    """Copies of the projection's tables under shadow names, without secondary indexes."""
    shadow_md = MetaData(naming_convention=NAMING_CONVENTION)
    shadows: dict[str, Table] = {}
    for name, table in live_tables(projection).items():
        shadow = table.to_metadata(shadow_md, name=name + SHADOW_SUFFIX)
        shadow.indexes.clear()
        shadow.primary_key.name = f"pk_{shadow.name}"
        shadows[name] = shadow
    return shadows


def rebuild(
    db: Database,
    store: SqlEventStore,
    projection: Projection,
    *,
    batch_size: int = 5000,
    progress: Progress | None = None,
) -> int:
    """Rebuild ``projection`` from the whole log; returns the position it now stands at."""
    projector = Projector(db, store, [projection], batch_size=batch_size)
    live = live_tables(projection)
    shadows = shadow_tables(projection)
    with db.write() as conn:
        for shadow in shadows.values():
            shadow.drop(conn, checkfirst=True)
            shadow.create(conn)

    # Replay up to the head as it stands now; whatever arrives meanwhile is applied during
    # the swap, and anything after that by the live projector.
    head = store.head_position()
    payload = reads_payload(projection)
    position = 0
    while position < head:
        page = _page(store, position, head, batch_size, payload=payload)
        if not page:
            break
        with db.write() as conn:
            projection.apply(conn, shadows, page)
        position = page[-1].position or position
        if progress is not None:
            progress(position, head)

    with db.write() as conn:
        projector.lock(conn, projection.name)
        final = store.head_position()
        while position < final and (
            page := _page(store, position, final, batch_size, conn, payload=payload)
        ):
            projection.apply(conn, shadows, page)
            position = page[-1].position or position
        finish = getattr(projection, "before_swap", None)
        if finish is not None:
            finish(conn, shadows)
        for name, table in live.items():
            _swap(conn, db, table, shadows[name])
        projector.save(conn, projection.name, position)
    if progress is not None:
        progress(position, position)
    return position


def _page(
    store: SqlEventStore,
    after: int,
    until: int,
    size: int,
    conn: Connection | None = None,
    *,
    payload: bool = True,
) -> list[RecordedEvent]:
    """The next page of events after ``after``, none beyond position ``until``."""
    page = store.read_all(after, min(size, until - after), conn=conn, payload=payload)
    return [e for e in page if (e.position or 0) <= until]


def _swap(conn: Connection, db: Database, live: Table, shadow: Table) -> None:
    preparer = conn.dialect.identifier_preparer
    live.drop(conn, checkfirst=True)
    conn.execute(
        text(f"ALTER TABLE {preparer.quote(shadow.name)} RENAME TO {preparer.quote(live.name)}")
    )
    if db.is_postgres:
        # The primary key's index was named after the shadow table; give it the live name.
        shadow_pk = preparer.quote(f"pk_{shadow.name}")
        live_pk = preparer.quote(f"pk_{live.name}")
        conn.execute(text(f"ALTER INDEX {shadow_pk} RENAME TO {live_pk}"))
    for index in live.indexes:
        index.create(conn)
