"""Wire the system once: database, event store, registry and projector.

The API, the workers and the CLI all call :func:`bootstrap`; tests call it with their own
settings, so every process is assembled the same way.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from infra.db import Database
from infra.dispatch import Dispatcher, Send, celery_sender
from infra.eventstore.store import SqlEventStore
from infra.keys import ApiKeys
from infra.lanes import Lanes
from infra.personal import Keyring
from infra.projections import all_projections
from infra.projections.projector import Projector
from infra.routes import ROUTES
from infra.settings import Settings, get_settings
from infra.streamlocks import StreamLocks
from infra.webhooks.relay import WebhookRelay
from services.bus import CommandBus
from services.messages import EventRegistry

log = structlog.get_logger("concord")

#: Seconds the worker's loop leaves an event to the commands that apply it to their inline
#: projections before it applies it itself (see ``Projector.run_forever``).
LEAVE_INLINE_S = 0.5


@dataclass
class System:
    """Everything a process needs, built once."""

    settings: Settings
    db: Database
    registry: EventRegistry
    store: SqlEventStore
    projector: Projector
    keys: ApiKeys
    bus: CommandBus
    dispatcher: Projector
    #: Per-stream command batching and folded streams (infra/lanes.py).
    lanes: Lanes
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start_background(self, *, dispatch: bool = False) -> None:
        """Run projection catch-up (and the sequencer fallback) in a daemon thread; with
        ``dispatch``, also the relay that turns committed events into tasks."""
        # The commands bring their inline projections up to date themselves; the loop takes
        # over only what none of them has applied within a moment. The relays are the loop's.
        loops = [("concord-projector", self.projector, LEAVE_INLINE_S)]
        if dispatch:
            loops.append(("concord-dispatch", self.dispatcher, 0.0))
        for name, projector, leave_inline_s in loops:
            thread = threading.Thread(
                target=projector.run_forever,
                args=(self._stop,),
                kwargs={"on_error": _report, "leave_inline_s": leave_inline_s},
                name=name,
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()
        if self.lanes.locks is not None:
            self.lanes.locks.close()
        self.db.dispose()


def _report(exc: Exception) -> None:
    log.error("background projector failed; retrying", error=repr(exc))


def registry() -> EventRegistry:
    """The registry of every domain event class (each context registers its events)."""
    import services.contexts  # noqa: F401  (imports every context's events)
    from services.registry import EVENTS

    return EVENTS


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


def bootstrap(settings: Settings | None = None) -> System:
    settings = settings or get_settings()
    db = Database.configured(settings)
    events = registry()
    keyring = Keyring(db)
    store = SqlEventStore(
        db, events, sequence_timeout_s=settings.sequence_timeout_s, keyring=keyring
    )
    projector = Projector(db, store, all_projections(store, keyring))
    send = _lazy_sender(settings)
    # The worker's relays from the log: tasks for routed events, webhook delivery rows.
    dispatcher = Projector(db, store, [Dispatcher(send, ROUTES), WebhookRelay(send)])
    bus = CommandBus(store, events, SystemClock())

    def epoch() -> int:
        with db.read() as conn:
            return Keyring.epoch(conn)

    return System(
        settings=settings,
        db=db,
        registry=events,
        store=store,
        projector=projector,
        keys=ApiKeys(db, cache_s=settings.key_cache_s),
        bus=bus,
        dispatcher=dispatcher,
        lanes=Lanes(
            bus,
            epoch,
            cache_events=settings.fold_cache_events,
            locks=StreamLocks(db) if db.is_postgres and settings.stream_locks else None,
        ),
    )


def _lazy_sender(settings: Settings) -> Send:
    """Build the Celery client on first use: most processes never enqueue anything."""
    sender: list[Send] = []

    def send(name: str, kwargs: dict[str, Any]) -> None:
        if not sender:
            from infra.queue import make_app

            sender.append(celery_sender(make_app(settings), settings.queue))
        sender[0](name, kwargs)

    return send
