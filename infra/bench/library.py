"""The eventsourcing library (PyPI) as a contender, through its lowest-level recorder API.

``ApplicationRecorder.insert_events`` with ``StoredEvent`` rows and ``select_notifications``
pages: this measures the library's storage, not its domain-model layer. On PostgreSQL each
insert takes ``LOCK TABLE … IN EXCLUSIVE MODE`` (so notification ids follow commit order),
which serialises every writer.
"""

from __future__ import annotations

import getpass
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy.engine import make_url

from infra.bench.contenders import Writer
from infra.bench.workload import METADATA, BenchEvent, Fold

_PAGE = 5000


def library_env(url: str) -> dict[str, str]:
    """The eventsourcing environment for the database at the SQLAlchemy ``url``."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        return {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": u.database or ""}
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": u.database or "",
        "POSTGRES_HOST": u.host or str(u.query.get("host") or "localhost"),
        "POSTGRES_PORT": str(u.port or 5432),
        "POSTGRES_USER": u.username or getpass.getuser(),
        "POSTGRES_PASSWORD": u.password or "",
        "POSTGRES_POOL_SIZE": "5",
        "CREATE_TABLE": "yes",
    }


class Library:
    """``eventsourcing``'s application recorder on the same database."""

    name = "eventsourcing"

    def __init__(self, url: str) -> None:
        from eventsourcing.persistence import InfrastructureFactory

        self.factory: Any = InfrastructureFactory.construct(library_env(url))
        self.recorder = self.factory.application_recorder()
        self.is_postgres = make_url(url).get_backend_name() == "postgresql"

    @contextmanager
    def writer(self) -> Iterator[Writer]:
        yield _LibraryWriter(self.recorder)

    def read(self, fold: Fold) -> None:
        loads = orjson.loads
        start = 1
        while True:
            page = self.recorder.select_notifications(start, _PAGE)
            for n in page:
                fold.add(n.topic, loads(n.state)["data"])
            if len(page) < _PAGE:
                return
            start = page[-1].id + 1

    def rebuild(self) -> int | None:
        return None

    def before_reads(self) -> None:
        if self.is_postgres:
            with self.factory.datastore.get_connection() as conn:
                conn.execute("VACUUM (ANALYZE) stored_events")

    def phases(self) -> dict[str, Any] | None:
        return None

    def close(self) -> None:
        self.factory.close()


class _LibraryWriter:
    def __init__(self, recorder: Any) -> None:
        from eventsourcing.persistence import StoredEvent

        self.recorder = recorder
        self.stored_event = StoredEvent

    def append(self, events: Sequence[BenchEvent]) -> None:
        # The state carries what our row carries: the data, the metadata and the time.
        at = datetime.now(UTC).isoformat()
        self.recorder.insert_events(
            [
                self.stored_event(
                    originator_id=e.stream_id,
                    originator_version=e.version,
                    topic=e.type,
                    state=orjson.dumps({"data": e.data, "metadata": METADATA, "at": at}),
                )
                for e in events
            ]
        )
