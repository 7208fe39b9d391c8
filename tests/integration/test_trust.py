"""Personal data sealed per person, erasure by deleting a key, and hash-chained streams —
on SQLite and PostgreSQL, read back the way an attacker with a backup would (raw SQL)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID, uuid4

import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from infra.bootstrap import System
from infra.db import Database
from infra.eventstore.verify import verify
from infra.migrate import upgrade
from services.people import PERSON, ErasePerson
from services.ports import NO_STREAM, NewEvent
from tests import backends

NAME = "Nguyễn Thị Hoa"
EMAIL = "hoa@migrantforum.example"


def personal(subject: UUID, value: str) -> dict[str, object]:
    return {"$personal": {"subject": str(subject), "value": value}}


def append_person(system: System, subject: UUID, name: str = NAME) -> UUID:
    stream = uuid4()
    system.store.append(
        stream,
        "test",
        NO_STREAM,
        [
            NewEvent("test.registered", {"name": personal(subject, name), "n": 1}),
            NewEvent("test.noted", {"email": personal(subject, EMAIL), "list": [1, 2.5, "x"]}),
        ],
    )
    return stream


def raw_log(db: Database) -> str:
    """Everything the events table holds, as text (what a backup of the log would show)."""
    with db.read() as conn:
        rows = conn.execute(text("SELECT data, metadata FROM events ORDER BY id")).all()
    return "\n".join(
        (r.data if isinstance(r.data, str) else orjson.dumps(r.data).decode())
        + (r.metadata if isinstance(r.metadata, str) else orjson.dumps(r.metadata).decode())
        for r in rows
    )


def test_personal_data_is_sealed_at_rest_and_opened_on_read(system: System) -> None:
    subject = uuid4()
    stream = append_person(system, subject)
    log = raw_log(system.db)
    assert NAME not in log and EMAIL not in log and "Nguy" not in log
    assert '"ct"' in log.replace(" ", "") and str(subject) in log  # the subject id stays
    events = system.store.read_stream(stream)
    assert events[0].data["name"] == personal(subject, NAME)
    assert events[1].data["email"] == personal(subject, EMAIL)
    assert events[1].data["list"] == [1, 2.5, "x"]
    feed = system.store.read_all(0, 10)
    assert [e.data for e in feed] == [e.data for e in events]
    assert all(e.hash and len(e.hash) == 64 for e in events)


def test_erasure_deletes_the_key_keeps_the_chain_and_later_data_gets_a_new_key(
    system: System,
) -> None:
    subject, other = uuid4(), uuid4()
    stream = append_person(system, subject)
    kept = append_person(system, other, "Somchai Jaidee")
    assert system.store.knows(subject)
    assert system.store.forget(subject) is True
    assert system.store.forget(subject) is False, "a second erasure finds nothing to delete"
    assert not system.store.knows(subject)
    events = system.store.read_stream(stream)
    assert events[0].data["name"] == {"$personal": {"subject": str(subject), "erased": True}}
    assert events[1].data["email"] == {"$personal": {"subject": str(subject), "erased": True}}
    assert events[0].data["n"] == 1, "everything that is not personal data stays"
    assert system.store.read_stream(kept)[0].data["name"]["$personal"]["value"] == "Somchai Jaidee"
    report = verify(system.db)
    assert report.ok, report.broken
    assert report.events == 4 and report.streams == 2 and report.head == 4
    # The person comes back (a new registration): a new key; the old data stays erased.
    again = append_person(system, subject, "Nguyễn Thị Hoa (again)")
    assert system.store.read_stream(again)[0].data["name"]["$personal"]["value"].endswith("(again)")
    assert system.store.read_stream(stream)[0].data["name"]["$personal"] == {
        "subject": str(subject),
        "erased": True,
    }
    assert verify(system.db).ok


def test_verify_names_the_first_broken_link(system: System) -> None:
    subject = uuid4()
    stream = append_person(system, subject)
    system.store.append(stream, "test", 2, [NewEvent("test.third", {"x": 3})])
    assert verify(system.db).ok
    key = stream.hex if system.db.is_sqlite else stream

    def tamper(sql: str) -> None:
        with system.db.write() as conn:
            conn.execute(text(sql), {"s": key})

    # 1. A changed payload: its own content hash no longer matches.
    cast = "" if system.db.is_sqlite else "::jsonb"
    tamper(f"UPDATE events SET data = '{{\"x\": 4}}'{cast} WHERE stream_id = :s AND version = 3")
    report = verify(system.db)
    assert report.broken is not None and report.broken.version == 3
    assert report.broken.stream_id == stream and "content" in report.broken.problem
    assert str(stream) in report.broken.describe()
    tamper(f"UPDATE events SET data = '{{\"x\": 3}}'{cast} WHERE stream_id = :s AND version = 3")
    assert verify(system.db).ok, "the original content verifies again"
    # 2. A recomputed content hash does not help: the chain link does not follow.
    tamper("UPDATE events SET content_hash = chain_hash WHERE stream_id = :s AND version = 2")
    report = verify(system.db)
    assert report.broken is not None and report.broken.version == 2
    # 3. A removed event: a version is missing.
    with system.db.write() as conn:
        conn.execute(text("DELETE FROM events WHERE stream_id = :s AND version = 1"), {"s": key})
    report = verify(system.db)
    assert report.broken is not None and "version 1 is missing" in report.broken.problem


def test_the_verify_command_exits_non_zero_on_a_broken_log(
    system: System, settings: object, tmp_path: Path
) -> None:
    stream = append_person(system, uuid4())
    env = {**os.environ, "DATABASE_URL": system.settings.database_url}
    ok = subprocess.run(
        [sys.executable, "-m", "infra.cli", "verify", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert orjson.loads(ok.stdout)["ok"] is True
    key = stream.hex if system.db.is_sqlite else stream
    with system.db.write() as conn:
        conn.execute(
            text(
                "UPDATE events SET event_type = 'test.forged' WHERE stream_id = :s AND version = 2"
            ),
            {"s": key},
        )
    broken = subprocess.run(
        [sys.executable, "-m", "infra.cli", "verify"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert broken.returncode == 1
    assert f"stream {stream}, version 2" in broken.stderr and "BROKEN" in broken.stderr


def test_positions_with_a_gap_are_reported(system: System) -> None:
    for _ in range(3):
        append_person(system, uuid4())
    with system.db.write() as conn:
        conn.execute(text("UPDATE events SET position = position + 10 WHERE position = 6"))
    report = verify(system.db)
    assert report.broken is not None and report.broken.position == 6
    assert "position is missing" in report.broken.problem


# -- the migration that brought existing logs under these rules ---------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A brand-new database (not the shared template), for running migrations one by one."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.sqlite3'}"
        return
    if not backends.postgres().ok:
        pytest.skip(backends.postgres().reason)
    base = make_url(backends.postgres_url() or "")
    name = f"concord_migration_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = Database(base.render_as_string(hide_password=False))
    with admin.autocommit() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield base.set(database=name).render_as_string(hide_password=False)
    with admin.autocommit() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_the_migration_seals_plain_personal_data_and_hashes_existing_streams(
    empty_url: str,
) -> None:
    upgrade(empty_url, "0007")
    db = Database(empty_url)
    subject, stream = uuid4(), uuid4()
    sqlite = db.is_sqlite
    with db.write() as conn:
        for version, data in (
            (1, {"name": personal(subject, NAME)}),
            (2, {"count": 2, "nested": [{"email": personal(subject, EMAIL)}]}),
        ):
            conn.execute(
                text(
                    "INSERT INTO events (position, event_id, stream_id, stream_type, version, "
                    "event_type, schema_version, data, metadata, recorded_at) VALUES (:p, :e, :s, "
                    f"'test', :v, 'test.old', 1, {':d' if sqlite else 'CAST(:d AS jsonb)'}, "
                    "'{}', :at)"
                ),
                {
                    "p": version,
                    "e": uuid4().hex if sqlite else uuid4(),
                    "s": stream.hex if sqlite else stream,
                    "v": version,
                    "d": orjson.dumps(data).decode(),
                    "at": "2019-03-01 09:00:00.123456" if sqlite else "2019-03-01T09:00:00.123456Z",
                },
            )
    upgrade(empty_url, "head")
    assert NAME not in raw_log(db) and EMAIL not in raw_log(db)
    with db.read() as conn:
        keys = conn.execute(text("SELECT count(*) FROM person_keys")).scalar_one()
    assert keys == 1
    report = verify(db)
    assert report.ok and report.events == 2, report.broken
    from infra.eventstore.store import SqlEventStore
    from infra.personal import Keyring

    store = SqlEventStore(db, keyring=Keyring(db))
    events = store.read_stream(stream)
    assert events[0].data["name"]["$personal"]["value"] == NAME
    assert events[1].data["nested"][0]["email"]["$personal"]["value"] == EMAIL
    db.dispose()


def test_an_erasure_whose_request_died_after_its_event_still_deletes_the_key(
    system: System,
) -> None:
    """The API appends ``person.erased`` and then deletes the key; killed in between, the
    event alone is enough: the projectors delete the key when they catch up."""
    subject = uuid4()
    stream = append_person(system, subject)
    system.bus.handle(PERSON, subject, ErasePerson(subject, "asked to be forgotten"))
    assert system.store.knows(subject), "as the API leaves it when killed right here"
    system.projector.catch_up()
    assert not system.store.knows(subject)
    assert system.store.read_stream(stream)[0].data["name"]["$personal"]["erased"] is True
    system.projector.catch_up()  # nothing left to do, and nothing fails
