"""Projections: checkpoint in the same transaction, replay is a no-op, rebuild then swap."""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from fastapi.testclient import TestClient
from sqlalchemy import Connection, event, select, text

from api.main import create_app
from infra.bootstrap import System
from infra.migrate import include_object
from infra.projections.base import Tables
from infra.projections.catalog import StreamCatalog, stream_catalog
from infra.projections.consultations import ConsultationViews, registrations
from infra.projections.projector import ProjectionTimeout, Projector
from infra.projections.rebuild import rebuild
from infra.projections.reminders import reminders
from infra.schema import metadata
from services.ports import NO_STREAM, NewEvent, RecordedEvent
from tests.e2e.conftest import Keys
from tests.integration.test_reminders import open_registration, org, plan, register
from tests.integration.test_webhook_worker import wait_until


def write(system: System, streams: int, events_each: int) -> None:
    for _ in range(streams):
        system.store.append(
            uuid4(),
            "consultation",
            NO_STREAM,
            [NewEvent("consultation.changed", {"n": i}) for i in range(events_each)],
        )


def catalog_rows(system: System) -> list[tuple]:
    with system.db.read() as conn:
        rows = conn.execute(
            select(
                stream_catalog.c.stream_id,
                stream_catalog.c.stream_type,
                stream_catalog.c.version,
                stream_catalog.c.first_position,
                stream_catalog.c.last_position,
            ).order_by(stream_catalog.c.first_position)
        ).all()
    return [tuple(r) for r in rows]


@pytest.fixture
def catalog(system: System) -> Projector:
    """A projector running only the stream catalog."""
    return Projector(system.db, system.store, [StreamCatalog()])


def test_catch_up_applies_every_event_once_and_moves_the_checkpoint(
    system: System, catalog: Projector
) -> None:
    write(system, streams=3, events_each=2)
    assert catalog.catch_up() == 6
    assert catalog.checkpoints() == {"stream_catalog": 6}
    assert [r[2:] for r in catalog_rows(system)] == [(2, 1, 2), (2, 3, 4), (2, 5, 6)]
    assert catalog.catch_up() == 0, "a replay applies nothing"
    write(system, streams=1, events_each=1)
    assert catalog.catch_up(until=7) == 1
    assert catalog.checkpoints() == {"stream_catalog": 7}
    others = len(system.projector.projections) - 1
    assert system.projector.catch_up() == 7 * others, "the other projections follow on their own"
    assert set(system.projector.checkpoints().values()) == {7}


class Exploding:
    name = "stream_catalog"
    tables = (stream_catalog,)

    def apply(self, conn: Connection, tables: Tables, events: Sequence[RecordedEvent]) -> None:
        StreamCatalog().apply(conn, tables, events)
        raise RuntimeError("projection bug")


def test_a_failing_projection_moves_neither_rows_nor_checkpoint(
    system: System, catalog: Projector
) -> None:
    write(system, streams=2, events_each=1)
    broken = Projector(system.db, system.store, [Exploding()])
    with pytest.raises(RuntimeError, match="projection bug"):
        broken.catch_up()
    assert catalog_rows(system) == []
    assert catalog.checkpoints() == {"stream_catalog": 0}
    assert catalog.catch_up() == 2


def test_two_projectors_racing_apply_each_event_once(system: System) -> None:
    write(system, streams=40, events_each=3)
    a = Projector(system.db, system.store, [StreamCatalog()], batch_size=7)
    b = Projector(system.db, system.store, [StreamCatalog()], batch_size=5)
    counts: list[int] = []
    threads = [threading.Thread(target=lambda p=p: counts.append(p.catch_up())) for p in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(counts) == 120
    assert len(catalog_rows(system)) == 40


def test_a_projection_whose_name_is_not_an_identifier_is_refused_before_any_sql(
    system: System,
) -> None:
    """PostgreSQL takes the locks and reads the checkpoints in one query with the names
    written in (no parameters: one round trip), so only plain identifiers may get there."""

    class Odd(StreamCatalog):
        name = "catalog'); DROP TABLE events; --"

    projector = Projector(system.db, system.store, [Odd()])
    write(system, streams=1, events_each=1)
    if system.db.is_postgres:
        with pytest.raises(ValueError, match="not a plain identifier"):
            projector.catch_up()
    with system.db.read() as conn:
        assert conn.execute(text("SELECT count(*) FROM events")).scalar_one() == 1


class Recording:
    """A projection that remembers the positions it was given."""

    tables = ()

    def __init__(
        self,
        name: str,
        *,
        streams: set[str] | None = None,
        inline: bool = True,
        personal: bool = True,
    ):
        self.name = name
        self.inline = inline
        self.personal = personal
        if streams is not None:
            self.streams = frozenset(streams)
        self.seen: list[int | None] = []

    def apply(self, conn: Connection, tables: Tables, events: Sequence[RecordedEvent]) -> None:
        self.seen += [e.position for e in events]


def test_the_worker_loop_leaves_a_command_the_events_it_applies_itself(system: System) -> None:
    """A command brings its inline projections up to its own events before it answers; the
    worker's loop takes such an event only once it has been in the log a while, so the two do
    not queue on the projection's lock. Events the projection does not read, and projections
    off the command path, move at once."""
    rosters = Recording("rosters_test", streams={"consultation"})
    catalog = Recording("catalog_test", inline=False)
    loop = Projector(system.db, system.store, [rosters, catalog])

    def one(stream_type: str) -> int:
        result = system.store.append(uuid4(), stream_type, NO_STREAM, [NewEvent("x.y", {})])
        assert result.position is not None
        return result.position

    p1, p2, p3 = one("organisation"), one("consultation"), one("organisation")
    stop = threading.Event()
    kwargs = {"idle_s": 0.01, "leave_inline_s": 3.0}
    thread = threading.Thread(target=loop.run_forever, args=(stop,), kwargs=kwargs)
    thread.start()
    try:
        wait_until(lambda: loop.checkpoints()["catalog_test"] == p3, 10, "catalog at the head")
        assert catalog.seen == [p1, p2, p3]
        assert loop.checkpoints()["rosters_test"] == p1, "held at the consultation's event"
        assert rosters.seen == [p1]
        wait_until(lambda: loop.checkpoints()["rosters_test"] == p3, 10, "… but not forever")
        assert rosters.seen == [p1, p2, p3]
        p4 = one("consultation")
        loop.catch_up(until=p4, names=["rosters_test"])  # what a command does: at once
        assert rosters.seen == [p1, p2, p3, p4]
    finally:
        stop.set()
        thread.join(10)


def test_the_worker_loop_reads_personal_data_only_for_a_projection_that_may_take_it(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While an inline projection's next events are held for the commands, the loop's pages
    are read for the others alone: with personal data left sealed when none of them reads it."""
    rosters = Recording("rosters_test", streams={"consultation"})
    notices = Recording("notices_test", inline=False, personal=False)
    loop = Projector(system.db, system.store, [rosters, notices])
    asked: list[tuple[float, bool]] = []
    read_all = system.store.read_all

    def spy(*args: Any, **kwargs: Any) -> list[RecordedEvent]:
        asked.append((time.monotonic(), kwargs["personal"]))
        return read_all(*args, **kwargs)

    monkeypatch.setattr(system.store, "read_all", spy)
    p1 = system.store.append(uuid4(), "consultation", NO_STREAM, [NewEvent("x.y", {})]).position
    p2 = system.store.append(uuid4(), "organisation", NO_STREAM, [NewEvent("x.y", {})]).position
    stop = threading.Event()
    started = time.monotonic()
    kwargs = {"idle_s": 0.01, "leave_inline_s": 2.0}
    thread = threading.Thread(target=loop.run_forever, args=(stop,), kwargs=kwargs)
    thread.start()
    try:
        wait_until(lambda: loop.checkpoints().get("notices_test") == p2, 10, "notices at the head")
        wait_until(lambda: loop.checkpoints().get("rosters_test") == p2, 10, "rosters, later")
    finally:
        stop.set()
        thread.join(10)
    assert notices.seen == [p1, p2] and rosters.seen == [p1, p2]
    held = [personal for at, personal in asked if at - started < 1.5]
    assert held and not any(held), "sealed while only the notices could take events"
    assert any(personal for _, personal in asked), "opened once the rosters took theirs"


def test_wait_for_reports_a_position_that_never_arrives(system: System) -> None:
    write(system, streams=1, events_each=1)
    system.projector.wait_for(1, timeout_s=2)
    assert min(system.projector.checkpoints().values()) == 1
    with pytest.raises(ProjectionTimeout):
        system.projector.wait_for(99, timeout_s=0.05)


def test_rebuild_reproduces_the_live_projection_and_swaps_it_in(
    system: System, catalog: Projector
) -> None:
    write(system, streams=30, events_each=4)
    catalog.catch_up()
    live = catalog_rows(system)
    with system.db.write() as conn:  # damage the live table: the rebuild must repair it
        conn.execute(stream_catalog.delete().where(stream_catalog.c.first_position < 40))
    seen: list[tuple[int, int]] = []
    position = rebuild(
        system.db,
        system.store,
        StreamCatalog(),
        batch_size=25,
        progress=lambda done, head: seen.append((done, head)),
    )
    assert position == 120
    assert catalog_rows(system) == live
    assert seen[-1] == (120, 120)
    assert system.projector.checkpoints()["stream_catalog"] == 120
    assert system.projector.catch_up(names=["stream_catalog"]) == 0


def test_after_a_rebuild_the_schema_still_matches_the_migrations(system: System) -> None:
    write(system, streams=3, events_each=1)
    rebuild(system.db, system.store, StreamCatalog())
    rebuild(system.db, system.store, StreamCatalog())  # twice: names must not drift
    assert schema_drift(system) == []
    with system.db.read() as conn:
        leftovers = [
            n
            for n in (
                conn.execute(text("SELECT name FROM sqlite_master WHERE type='table'")).scalars()
                if system.db.is_sqlite
                else conn.execute(
                    text("SELECT tablename FROM pg_tables WHERE schemaname='public'")
                ).scalars()
            )
            if n.endswith("__rebuild")
        ]
    assert leftovers == []


def schema_drift(system: System) -> list:
    """What Alembic's autogenerate would change to make the database match the models."""
    with system.db.read() as conn, warnings.catch_warnings():
        # tx_id (PostgreSQL's xid8) is deliberately outside the models; see migrations/env.py.
        warnings.filterwarnings("ignore", "Did not recognize type 'xid8'")
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "include_object": include_object}
        )
        return compare_metadata(context, metadata)


def test_the_migrated_schema_matches_the_models(system: System) -> None:
    assert schema_drift(system) == []


def test_rebuild_while_writers_keep_appending_misses_nothing(system: System) -> None:
    write(system, streams=50, events_each=2)
    stop = threading.Event()
    errors: list[BaseException] = []

    def keep_writing() -> None:
        try:
            while not stop.is_set():
                write(system, streams=1, events_each=2)
        except BaseException as exc:
            errors.append(exc)

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        rebuild(system.db, system.store, StreamCatalog(), batch_size=10)
    finally:
        stop.set()
        writer.join()
    assert errors == []
    system.projector.catch_up(names=["stream_catalog"])
    head = system.store.head_position()
    rows = catalog_rows(system)
    assert len(rows) == head // 2
    assert sum(r[2] for r in rows) == head


def test_a_roster_built_one_command_at_a_time_equals_its_rebuild(system: System) -> None:
    """Live, each command's events are applied on their own; a rebuild reads the stream in
    one batch. A registration row's times must come from its own events either way."""
    with TestClient(create_app(system)) as client:
        organiser = Keys(system).organiser
        starts = datetime.now(UTC).replace(microsecond=0) + timedelta(days=30)
        cid = plan(client, organiser, org(client, organiser, "HRWG"), "Asia/Jakarta", starts)
        open_registration(client, organiser, cid, starts - timedelta(days=2))
        for i in range(3):
            register(client, organiser, cid, f"Person {i}", f"p{i}@example.org")

    def roster() -> list[dict]:
        with system.db.read() as conn:
            rows = conn.execute(select(registrations).order_by(registrations.c.registered_at))
            return [dict(r._mapping) for r in rows]

    live = roster()
    assert len({r["updated_at"] for r in live}) == 3, "each row stamped by its own event"
    rebuild(system.db, system.store, system.projector.projections["consultations"])
    assert roster() == live


def test_commands_leave_the_schedule_and_catalog_to_their_readers(system: System) -> None:
    """Commands wait only for the inline projections that read their stream; the reminder
    schedule and the stream catalog are caught up by whoever reads them, so a client still
    reads its own change there (without X-Min-Position)."""
    assert set(system.projector.inline) == set(system.projector.projections) - {
        "reminders",
        "stream_catalog",
    }
    # … and only for those that read the command's stream: an endorsement waits for none.
    assert system.projector.inline_for("consultation") == ["consultations"]
    assert system.projector.inline_for("statement") == []
    with TestClient(create_app(system)) as client:
        organiser = Keys(system).organiser
        admin = Keys(system).admin
        starts = datetime.now(UTC).replace(microsecond=0) + timedelta(days=30)
        cid = plan(client, organiser, org(client, organiser, "HRWG"), "Asia/Jakarta", starts)
        open_registration(client, organiser, cid, starts - timedelta(days=2))
        register(client, organiser, cid, "Đặng Thị Mai", "mai@example.org")
        head = system.store.head_position()
        behind = system.projector.checkpoints(["reminders", "stream_catalog"])
        assert all(position < head for position in behind.values()), behind
        assert system.projector.checkpoints(["consultations"]) == {"consultations": head}

        schedule = client.get(f"/v1/consultations/{cid}/reminders", headers=organiser)
        assert schedule.status_code == 200, schedule.text
        rules = [r["rule"] for r in schedule.json()["reminders"]]
        assert "registration_confirmed" in rules, rules
        summary = client.get(f"/v1/streams/{cid}", headers=admin)
        assert summary.status_code == 200, summary.text
        assert summary.json()["version"] == system.store.read_stream(UUID(cid))[-1].version


def test_the_schedule_reads_a_subject_once_and_writes_a_run_of_notices_at_once(
    system: System,
) -> None:
    """A busy consultation's registrations (or a hot statement's endorsements) caught up
    together: its row is read once and their notices are one insert, not one of each per
    event — and the schedule is the one a rebuild makes."""
    with TestClient(create_app(system)) as client:
        organiser = Keys(system).organiser
        starts = datetime.now(UTC).replace(microsecond=0) + timedelta(days=30)
        cid = plan(client, organiser, org(client, organiser, "HRWG"), "Asia/Jakarta", starts)
        open_registration(client, organiser, cid, starts - timedelta(days=2))
        for n in range(30):
            register(client, organiser, cid, f"Delegate {n}", f"delegate-{n}@example.org")
    executed: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if "reminder" in statement:
            executed.append(statement.split()[0].upper())

    event.listen(system.db.engine, "before_cursor_execute", seen)
    try:
        system.projector.catch_up(names=["reminders"])
    finally:
        event.remove(system.db.engine, "before_cursor_execute", seen)
    # Planned and opened: the consultation's row and its two anchors' reminders; then the 30
    # registrations: no read, one insert of their confirmations.
    assert executed.count("SELECT") <= 1, executed
    assert len(executed) <= 8, executed
    with system.db.read() as conn:
        notices = conn.execute(
            select(reminders.c.key).where(reminders.c.rule == "registration_confirmed")
        ).all()
        live = sorted(tuple(r) for r in conn.execute(select(reminders)).all())
    assert len(notices) == 30
    rebuild(system.db, system.store, system.projector.projections["reminders"])
    with system.db.read() as conn:
        assert sorted(tuple(r) for r in conn.execute(select(reminders)).all()) == live


def test_a_projector_follows_what_another_process_applied_without_reading_the_log(
    system: System,
) -> None:
    """Two API processes take turns catching up. Each one's consultation cache follows the
    events the other applied (from the page it reads anyway), so its next batch does not
    fold the stream again; the rows still equal a rebuild."""
    first, second = (
        system.projector,
        Projector(system.db, system.store, [ConsultationViews(system.store)]),
    )
    views = second.projections["consultations"]
    assert isinstance(views, ConsultationViews)
    with TestClient(create_app(system)) as client:
        organiser = Keys(system).organiser
        starts = datetime.now(UTC).replace(microsecond=0) + timedelta(days=30)
        host = org(client, organiser, "HRWG")
        system.projector = second  # the second process applies the consultation's start …
        try:
            cid = plan(client, organiser, host, "Asia/Jakarta", starts)
            open_registration(client, organiser, cid, starts - timedelta(days=2))
        finally:
            system.projector = first
        assert UUID(cid) in views._cache
        for i in range(3):  # … then the first applies three registrations
            register(client, organiser, cid, f"Person {i}", f"p{i}@example.org")
        version = system.store.read_stream(UUID(cid))[-1].version
        assert views._cache[UUID(cid)][0] < version

        reads: list[UUID] = []
        original = system.store.read_stream

        def counted(stream_id: UUID, **kwargs: Any) -> list[RecordedEvent]:
            reads.append(stream_id)
            return original(stream_id, **kwargs)

        register(client, organiser, cid, "Person 3", "p3@example.org")  # applied by first
        system.store.read_stream = counted  # type: ignore[method-assign]
        try:
            second.catch_up()  # sees the four registrations, applies nothing
            assert views._cache[UUID(cid)][0] == version + 1
            assert first.catch_up(names=["consultations"]) == 0
        finally:
            system.store.read_stream = original  # type: ignore[method-assign]
        assert UUID(cid) not in reads, "the second process folded the stream again"

    def roster() -> list[dict]:
        with system.db.read() as conn:
            rows = conn.execute(select(registrations).order_by(registrations.c.registered_at))
            return [dict(r._mapping) for r in rows]

    live = roster()
    assert len(live) == 4
    rebuild(system.db, system.store, system.projector.projections["consultations"])
    assert roster() == live


class Given(Recording):
    """Keeps the events it is given; ``personal=False`` says it never reads a name."""

    def __init__(self, name: str, *, personal: bool) -> None:
        super().__init__(name, inline=False)
        self.personal = personal
        self.given: list[RecordedEvent] = []

    def apply(self, conn: Connection, tables: Tables, events: Sequence[RecordedEvent]) -> None:
        self.given.extend(events)


def test_the_relays_read_the_log_without_opening_anyones_personal_data(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Relays route by type and ids: a page read for them leaves names sealed (no key lookup,
    nothing decrypted), while a projection that shows names still reads them opened."""
    client = TestClient(create_app(system, prepare=False))
    keys = Keys(system)
    organiser = keys.organiser
    starts = datetime.now(UTC) + timedelta(days=30)
    cid = plan(client, organiser, org(client, organiser, "Host"), "Asia/Jakarta", starts)
    open_registration(client, organiser, cid, starts - timedelta(days=2))
    register(client, organiser, cid, "Siti Rahma", "siti@example.org")
    keyring = system.store.keyring
    assert keyring is not None
    opened: list[int] = []
    real_open = keyring.open

    def counted(conn: Connection, items: Any) -> Any:
        opened.append(len(items))
        return real_open(conn, items)

    monkeypatch.setattr(keyring, "open", counted)

    def registered(personal: bool) -> RecordedEvent:
        probe = Given(f"probe_{personal}".lower(), personal=personal)
        Projector(system.db, system.store, [probe]).catch_up()
        [event] = [e for e in probe.given if e.type == "consultation.participant_registered"]
        return event

    relayed = registered(personal=False)
    assert opened == [], "no key was looked up"
    sealed = relayed.data["name"]["$personal"]
    assert "ct" in sealed and "value" not in sealed, "the name stays sealed"
    assert relayed.data["registration_id"], "the rest of the payload is there"
    assert registered(personal=True).data["name"]["$personal"]["value"] == "Siti Rahma"
    assert opened, "a projection that shows names opens them"
