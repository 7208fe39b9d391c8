"""Records of streams kept per process and carried forward (:class:`KeptRecords`)."""

from __future__ import annotations

import threading
from uuid import UUID

from cachetools import LRUCache

from infra.eventstore.store import SqlEventStore
from infra.personal import Keyring
from services.ports import RecordedEvent


class KeptRecords:
    """Streams' records, kept and carried forward by the events appended since instead of
    read whole for each use: the sign-on pages load a statement for the form, the answer,
    the receipt and the check for a use lost in a crash (api/pages/common.py), and the
    invitation expiry sweep checks each link falling due against its statement. Kept only
    while nobody is erased: the keyring's epoch is read before the stream, and records kept
    at another epoch are read again from the start (they may hold a name since erased). At
    most ``max_events`` events in all (the records of 10,000 signatories took 27 MB,
    measured); a stream larger than that is read whole each time."""

    def __init__(self, store: SqlEventStore, max_events: int) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._kept: LRUCache[UUID, tuple[int, tuple[RecordedEvent, ...]]] = LRUCache(
            max(1, max_events), getsizeof=lambda kept: max(1, len(kept[1]))
        )

    def read(self, stream_id: UUID, until_version: int | None = None) -> list[RecordedEvent]:
        """Every event of the stream (up to ``until_version``), in version order."""
        with self.store.db.read() as conn:
            epoch = Keyring.epoch(conn)  # before the stream: an erasure after it shows next time
        with self._lock:
            kept = self._kept.get(stream_id)
        records: tuple[RecordedEvent, ...] = ()
        if kept is not None and kept[0] == epoch and kept[1]:
            records = kept[1]
        new = self.store.read_stream(stream_id, after_version=records[-1].version if records else 0)
        records = (*records, *new)
        # Kept only once every record has its position (a record read before the sequencer
        # numbered it would keep lacking one).
        if new and all(r.position is not None for r in new):
            with self._lock:
                current = self._kept.get(stream_id)
                later = current is None or current[0] != epoch or len(current[1]) < len(records)
                if later and len(records) <= self._kept.maxsize:
                    self._kept[stream_id] = (epoch, records)
        # Versions run from 1 without a gap: the first ``until_version`` records.
        return list(records if until_version is None else records[:until_version])
