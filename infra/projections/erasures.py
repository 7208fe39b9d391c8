"""Keys follow the log: a ``person.erased`` event deletes that person's key.

``POST /v1/people/erase`` deletes the key itself right after it appends the event; this makes
the deletion a consequence of the log as well, so an erasure whose API process died between
the two still takes effect as soon as any projector catches up (the worker's within seconds).
Deleting a key that is gone already changes nothing, so replays and rebuilds are harmless.
"""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from sqlalchemy import Connection, Table

from infra.personal import Keyring
from infra.projections.base import Tables
from services.ports import RecordedEvent


class KeyShredder:
    """A projection without tables: its effect is on ``person_keys``."""

    name = "erasures"
    tables: tuple[Table, ...] = ()
    streams = frozenset({"person"})

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    def apply(self, conn: Connection, tables: Tables, events: Sequence[RecordedEvent]) -> None:
        for event in events:
            if event.type == "person.erased":
                self.keyring.forget(UUID(event.data["person_id"]), conn)
