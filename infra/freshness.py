"""How far the log and the projections have come, read in one query: what a kept read answers by.

An API process keeps what it read (a consultation's document, a folded statement) and answers
from it while nothing it depends on has moved. Whether something moved is one small query,
:func:`read_mark`, shared by every request waiting at that moment (api/freshness.py):

* a projection's rows change only in a transaction that also moves its change marker
  (``changed_position``, ``changed_at``: the projector moves it for the events of the streams
  the projection reads, with the rows; a rebuild moves it too), so a document read in the same
  statement as that marker is current for as long as the marker is. Events of other streams
  move the projection's checkpoint but not the marker, so they leave kept documents current;
* a stream gains an event only once it is numbered before its command answers, so a folded
  stream that held every event numbered up to a head is current for as long as the head is —
  an event committed but not yet numbered belongs to a command nobody has heard back from;
* a name erased since a fold was kept moves the erasure counter (``keyring_epoch``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Select, String, bindparam, column, select, text

from infra.db import Database
from infra.eventstore.store import HEAD_SQL
from infra.schema import UtcDateTime, projection_checkpoints

#: Where a projection's rows last changed: (position, when). The time tells a rebuild that
#: ended at the same position from the rows it replaced.
Checkpoint = tuple[int, datetime | None]

NOWHERE: Checkpoint = (0, None)


@dataclass(frozen=True)
class Mark:
    """The log's head, the erasure counter and the projections' checkpoints, all read after
    a given moment (each on its own: none needs to agree with another)."""

    head: int
    epoch: int
    checkpoints: dict[str, Checkpoint] = field(default_factory=dict)

    def checkpoint(self, name: str) -> Checkpoint:
        return self.checkpoints.get(name, NOWHERE)


def current(kept: Checkpoint, now: Checkpoint) -> bool:
    """Whether rows read at checkpoint ``kept`` still show everything up to ``now``: the
    projection has not moved since, or they were read after it had moved further."""
    return kept == now or kept[0] > now[0]


_MARK = (
    text(
        f"SELECT ({HEAD_SQL}) AS head,"
        " (SELECT COALESCE(max(epoch), 0) FROM keyring_epoch) AS epoch,"
        " name, changed_position, changed_at"
        " FROM (SELECT 1 AS one) AS one LEFT JOIN projection_checkpoints ON name IN :names"
    )
    .bindparams(bindparam("names", expanding=True, type_=String))
    .columns(
        column("head", BigInteger),
        column("epoch", BigInteger),
        column("name", String),
        column("changed_position", BigInteger),
        column("changed_at", UtcDateTime()),
    )
)


def read_mark(db: Database, projections: Sequence[str]) -> Mark:
    """The :class:`Mark` now, with the checkpoints of ``projections``: one round trip."""
    with db.read() as conn:
        rows = conn.execute(_MARK, {"names": list(projections)}).all()
    head, epoch = int(rows[0].head), int(rows[0].epoch)
    checkpoints = {
        r.name: (int(r.changed_position), r.changed_at) for r in rows if r.name is not None
    }
    return Mark(head, epoch, checkpoints)


def with_checkpoint(query: Select[Any], projection: str) -> Select[Any]:
    """``query`` with its projection's checkpoint as two more columns, read in the same
    statement (so from the same snapshot as the rows)."""
    t = projection_checkpoints
    where = t.c.name == projection
    return query.add_columns(
        select(t.c.changed_position).where(where).scalar_subquery().label("checkpoint_position"),
        select(t.c.changed_at).where(where).scalar_subquery().label("checkpoint_at"),
    )


def checkpoint_of(row: Any) -> Checkpoint:
    """The checkpoint a row of a :func:`with_checkpoint` query was read at."""
    position = row.checkpoint_position
    return (int(position), row.checkpoint_at) if position is not None else NOWHERE
