"""Reads answered from what an API process kept (api/freshness.py), on SQLite and PostgreSQL.

A process keeps the consultations and statements it read and answers from them while the log
and the projections stand still: one shared check instead of a read per request. Whatever
changed before a request arrived — through this process or another, by a command, an erasure
or a rebuild — is in its answer.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from api.freshness import Freshness, View
from api.main import create_app
from api.routers import statements
from infra.bootstrap import System, bootstrap
from infra.freshness import Mark, current, read_mark
from infra.projections.rebuild import rebuild
from services.statements.model import STATEMENT
from tests.e2e.conftest import Keys
from tests.e2e.test_consultations_api import jakarta, org
from tests.e2e.test_hot_stream import count_reads, endorsement, finalised


@pytest.fixture
def other(system: System) -> Iterator[TestClient]:
    """A second API process on the same database."""
    second = bootstrap(system.settings)
    app = create_app(second, background=False, prepare=False)
    try:
        with TestClient(app, raise_server_exceptions=False) as c:
            yield c
    finally:
        second.close()


def count_detail_reads(system: System) -> list[str]:
    """Statements this process runs against the consultations' detail documents."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "consultations.detail" in statement:
            seen.append(statement)

    event.listen(system.db.engine, "before_cursor_execute", record)
    return seen


def planned(client: TestClient, keys: Keys) -> tuple[str, dict[str, str]]:
    organiser = keys.organiser
    host = org(client, organiser, "Human Rights Working Group")
    r = client.post("/v1/consultations", json=jakarta(host), headers=organiser)
    assert r.status_code == 201, r.text
    return f"/v1/consultations/{r.json()['id']}", organiser


def test_a_consultation_read_again_is_answered_from_what_the_process_kept(
    client: TestClient, keys: Keys, system: System
) -> None:
    url, _ = planned(client, keys)
    reads = count_detail_reads(system)
    first = client.get(url)
    assert first.status_code == 200
    again = [client.get(url) for _ in range(3)]
    assert len(reads) == 1, "read once, then kept"
    assert all(r.json() == first.json() for r in again)
    assert all(r.headers["etag"] == first.headers["etag"] for r in again)


def test_a_change_made_through_another_process_shows_in_the_next_read(
    client: TestClient, other: TestClient, keys: Keys
) -> None:
    url, organiser = planned(client, keys)
    assert client.get(url).json()["title"].startswith("Regional CSO")
    r = other.patch(url, json={"title": "Renamed elsewhere"}, headers=organiser)
    assert r.status_code == 200, r.text
    shown = client.get(url)
    assert shown.json()["title"] == "Renamed elsewhere"
    assert shown.headers["etag"] == r.headers["etag"]


def test_the_status_follows_the_clock_in_a_kept_document(
    client: TestClient, keys: Keys, system: System
) -> None:
    """The document is kept; its status is worked out at each read (registration closes by
    the clock, with no event to say so)."""
    url, organiser = planned(client, keys)
    starts = datetime.fromisoformat(client.get(url).json()["starts_at"])
    closes = datetime.now(UTC) + timedelta(seconds=2)
    r = client.post(
        f"{url}/open-registration", json={"closes_at": closes.isoformat()}, headers=organiser
    )
    assert r.status_code == 200, r.text
    assert starts > closes
    assert client.get(url).json()["status"] == "registration_open"
    reads = count_detail_reads(system)
    wait = (closes - datetime.now(UTC)).total_seconds() + 0.2
    threading.Event().wait(max(0.0, wait))
    assert client.get(url).json()["status"] == "registration_closed"
    assert reads == [], "the kept document, with the status of the moment"


def test_a_kept_document_outlives_writes_to_other_streams_but_not_its_own(
    client: TestClient, other: TestClient, keys: Keys, system: System
) -> None:
    """Organisations being added elsewhere move the log and the consultations projection's
    checkpoint, not its rows: the document stays kept. A registration is read afresh."""
    url, organiser = planned(client, keys)
    client.get(url)
    reads = count_detail_reads(system)
    for n in range(3):
        org(other, keys.admin, f"Another organisation {n}")
        system.projector.catch_up()  # every checkpoint past it, the consultations' too
        assert client.get(url).status_code == 200
    assert reads == [], "kept across writes to other streams"
    r = other.post(
        f"{url}/open-registration",
        json={"closes_at": (datetime.now(UTC) + timedelta(days=1)).isoformat()},
        headers=organiser,
    )
    assert r.status_code == 200, r.text
    shown = client.get(url)
    assert shown.json()["status"] == "registration_open"
    assert shown.headers["etag"] == r.headers["etag"]
    assert len(reads) == 1


def test_a_rebuilt_projection_is_read_again(client: TestClient, keys: Keys, system: System) -> None:
    url, _ = planned(client, keys)
    client.get(url)
    reads = count_detail_reads(system)
    rebuild(system.db, system.store, system.projector.projections["consultations"])
    assert client.get(url).status_code == 200
    assert len(reads) == 1, "the rebuild moved the checkpoint's time: read afresh"


def test_an_endorsement_through_another_process_shows_in_the_next_page(
    client: TestClient, other: TestClient, keys: Keys, system: System, monkeypatch: Any
) -> None:
    sid = finalised(client, keys)
    url = f"/v1/statements/{sid}/endorsements"
    organisation = org(client, keys.organiser, "Migrant CARE")
    assert client.get(url, headers=keys.admin).json()["total"] == 0
    reads = count_reads(system, monkeypatch)
    assert client.get(url, headers=keys.admin).json()["total"] == 0
    assert reads == [], "nothing new in the log: the kept fold answers without a read"
    r = other.post(
        url,
        headers=keys.make("organisation", organisation),
        json={
            "organisation_id": organisation,
            "signatory_name": "Ana Lopez",
            "signatory_title": "Director",
        },
    )
    assert r.status_code == 201, r.text
    page = client.get(url, headers=keys.admin).json()
    assert page["total"] == 1
    assert page["data"][0]["signatory_name"] == "Ana Lopez"
    assert reads == [sid]


def test_readers_waiting_on_a_moved_log_read_the_stream_once(
    client: TestClient, keys: Keys, system: System, monkeypatch: Any
) -> None:
    """The log moved on (another stream): of the readers that then queue for the statement
    together, the first reads what it may have missed and the others take its answer."""
    sid = finalised(client, keys)
    url = f"/v1/statements/{sid}/endorsements"
    client.get(url, headers=keys.admin)
    org(client, keys.organiser, "Somewhere else")
    mark = read_mark(system.db, [])
    reads = count_reads(system, monkeypatch)
    start = threading.Barrier(8)

    def read(_: int) -> int:
        start.wait()
        return system.lanes.load(STATEMENT, sid, seen=mark).version

    with ThreadPoolExecutor(8) as pool:
        versions = set(pool.map(read, range(8)))
    assert len(versions) == 1
    assert reads == [sid], "one reader caught the stream up; the rest took what it kept"


def test_a_name_erased_through_another_process_is_gone_from_the_next_page(
    client: TestClient, other: TestClient, keys: Keys, system: System
) -> None:
    sid = finalised(client, keys)
    job = endorsement(sid, 3)
    system.lanes.handle(STATEMENT, sid, job)
    url = f"/v1/statements/{sid}/endorsements"
    [signed] = client.get(url, headers=keys.admin).json()["data"]
    assert signed["signatory_name"] == "Signatory 3"
    r = other.post(
        "/v1/people/erase", headers=keys.admin, json={"person_id": str(job.command.person_id)}
    )
    assert r.status_code == 200, r.text
    [after] = client.get(url, headers=keys.admin).json()["data"]
    assert after["signatory_name"] is None
    assert after["organisation_id"] == signed["organisation_id"]


def test_a_page_of_a_kept_statement_is_rendered_once(
    client: TestClient, keys: Keys, system: System, monkeypatch: Any
) -> None:
    sid = finalised(client, keys)
    for n in range(3):
        system.lanes.handle(STATEMENT, sid, endorsement(sid, n))
    rendered: list[int] = []
    real = statements._signatories

    def counted(at: Any, endorsements: Any) -> Any:
        rendered.append(1)
        return real(at, endorsements)

    monkeypatch.setattr(statements, "_signatories", counted)
    url = f"/v1/statements/{sid}/endorsements"
    pages = [client.get(url, headers=keys.admin, params={"limit": 2}) for _ in range(3)]
    assert len(rendered) == 1
    assert all(p.content == pages[0].content for p in pages)
    assert [e["signatory_name"] for e in pages[0].json()["data"]] == [
        "Signatory 0",
        "Signatory 1",
    ]
    rest = client.get(url, headers=keys.admin, params={"limit": 2, "offset": 2}).json()
    assert [e["signatory_name"] for e in rest["data"]] == ["Signatory 2"]
    assert len(rendered) == 2


# -- the shared check ----------------------------------------------------------------------


def test_a_request_arriving_during_a_check_waits_for_the_next_one() -> None:
    """A check under way may have read before a change a newer request must see: those who
    arrive meanwhile share the next check, which starts once it ends. Never more than one at
    a time, and never one per request."""
    started: list[int] = []
    began = threading.Event()
    release = [threading.Event() for _ in range(3)]

    def read() -> Mark:
        n = len(started)
        started.append(n)
        began.set()
        release[n].wait(10)
        return Mark(head=n, epoch=0)

    freshness = Freshness(read)

    async def scenario() -> tuple[list[Mark], list[int]]:
        first = asyncio.ensure_future(freshness.mark())
        assert await asyncio.to_thread(began.wait, 10)
        later = [asyncio.ensure_future(freshness.mark()) for _ in range(5)]
        await asyncio.sleep(0.05)
        assert started == [0], "one check at a time"
        release[0].set()
        release[1].set()
        marks = await asyncio.gather(first, *later)
        return list(marks), list(started)

    marks, checks = asyncio.run(scenario())
    assert checks == [0, 1]
    assert [m.head for m in marks] == [0, 1, 1, 1, 1, 1]


def test_a_failed_check_fails_the_requests_waiting_for_it_and_the_next_one_runs() -> None:
    calls: list[int] = []

    def read() -> Mark:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("database gone")
        return Mark(head=7, epoch=0)

    freshness = Freshness(read)

    async def scenario() -> Mark:
        with pytest.raises(ConnectionError):
            await freshness.mark()
        return await freshness.mark()

    assert asyncio.run(scenario()).head == 7


def test_kept_rows_are_current_until_their_projection_moves() -> None:
    t1, t2 = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)
    assert current((5, t1), (5, t1))
    assert current((6, t2), (5, t1)), "read after the projection had moved further"
    assert not current((5, t1), (6, t2))
    assert not current((5, t1), (5, t2)), "rebuilt at the same position"
    view: View[str] = View("consultations", size=2)
    keys = [uuid4() for _ in range(3)]
    for key in keys:
        view.keep(key, (5, t1), str(key))
    assert keys[0] not in view and view.get(keys[2], Mark(5, 0, {"consultations": (5, t1)}))
    view.keep(keys[2], (4, t1), "older")
    assert view.get(keys[2], Mark(5, 0, {"consultations": (5, t1)})) == str(keys[2])
    assert view.get(keys[2], Mark(6, 0, {"consultations": (6, t1)})) is None
    assert keys[2] not in view


def test_an_endorsement_copies_the_organisation_kept_until_it_changes_anywhere(
    client: TestClient, other: TestClient, keys: Keys, system: System
) -> None:
    """Endorsing copies the organisation's name, country and kind into the event. The
    process keeps the organisation it read for that, so an organisation endorsing again (and
    withdrawing in between) costs no read of it; renamed through another process, the next
    endorsement copies the new name."""
    organiser = keys.organiser
    sid = finalised(client, keys)
    oid = org(client, organiser, "Migrant Workers Network")
    lookups: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "FROM organisations" in statement and "organisations.organisation_id =" in statement:
            lookups.append(statement)

    event.listen(system.db.engine, "before_cursor_execute", record)
    try:

        def endorse_and_withdraw() -> None:
            r = client.post(
                f"/v1/statements/{sid}/endorsements",
                json={"organisation_id": oid, "signatory_name": "Hoa", "signatory_title": "Chair"},
                headers=organiser,
            )
            assert r.status_code == 201, r.text
            r = client.delete(f"/v1/statements/{sid}/endorsements/{oid}", headers=organiser)
            assert r.status_code == 200, r.text

        for _ in range(3):
            endorse_and_withdraw()
        assert len(lookups) == 1, "read once, then kept"
        r = other.patch(
            f"/v1/organisations/{oid}",
            json={"name": "Migrant Workers Network Asia"},
            headers=organiser,
        )
        assert r.status_code == 200, r.text
        endorse_and_withdraw()
        assert len(lookups) == 2, "read again once it changed"
    finally:
        event.remove(system.db.engine, "before_cursor_execute", record)
    names = [
        e.data["organisation_name"]
        for e in system.store.read_stream(sid)
        if e.type == "statement.endorsed"
    ]
    assert names == ["Migrant Workers Network"] * 3 + ["Migrant Workers Network Asia"]
