"""Planning and signing up through HTTP: the Jakarta consultation of February 2018."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import icalendar
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from infra.bootstrap import System
from tests.e2e.conftest import Keys

PROBLEM = "application/problem+json"


def org(client: TestClient, headers: dict, name: str, country: str = "ID") -> str:
    response = client.post(
        "/v1/organisations", json={"name": name, "kind": "ngo", "country": country}, headers=headers
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def jakarta(organiser: str, **overrides: object) -> dict:
    # Planned a year ahead so registration can be open "now" in the test.
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=60)
    return {
        "title": "Regional CSO Consultation on the Implementation of the ASEAN Consensus",
        "theme": "Rights of migrant workers",
        "scope": "regional",
        "host_country": "ID",
        "city": "Jakarta",
        "venue": "Hotel Ibis Tamarin",
        "mode": "in_person",
        "timezone": "Asia/Jakarta",
        "starts_at": start.isoformat(),
        "ends_at": (start + timedelta(days=1, hours=8)).isoformat(),
        "organiser_id": organiser,
        "capacity": 2,
        **overrides,
    }


@pytest.fixture
def setup(client: TestClient, keys: Keys) -> dict:
    organiser = keys.organiser
    hrwg = org(client, organiser, "Human Rights Working Group")
    home = org(client, organiser, "HOME", "SG")
    care = org(client, organiser, "Migrant CARE")
    response = client.post("/v1/consultations", json=jakarta(hrwg), headers=organiser)
    assert response.status_code == 201, response.text
    consultation = response.json()
    return {
        "organiser": organiser,
        "hrwg": hrwg,
        "home": home,
        "care": care,
        "c": consultation,
        "url": f"/v1/consultations/{consultation['id']}",
    }


def open_registration(client: TestClient, s: dict) -> None:
    closes = datetime.fromisoformat(s["c"]["starts_at"]) - timedelta(days=2)
    r = client.post(
        f"{s['url']}/open-registration",
        json={"closes_at": closes.isoformat()},
        headers=s["organiser"],
    )
    assert r.status_code == 200, r.text


def test_a_planned_consultation_shows_in_its_own_time_zone(client: TestClient, setup: dict) -> None:
    c = setup["c"]
    assert c["starts_at"].endswith("+07:00")
    assert c["status"] == "planned"
    assert len(c["thematic_areas"]) == 7
    assert c["version"] == 1
    public = client.get(setup["url"])
    assert public.status_code == 200
    assert public.headers["etag"] == '"1"'


def test_bad_plans_are_refused_with_clear_errors(client: TestClient, setup: dict) -> None:
    organiser, hrwg = setup["organiser"], setup["hrwg"]
    cases = [
        ({"timezone": "Asia/Atlantis"}, 422, "timezone"),
        ({"host_country": "ZZ"}, 422, "host_country"),
        ({"starts_at": "2018-02-20T09:00:00"}, 422, "starts_at"),
        ({"organiser_id": str(uuid4())}, 422, "organiser_id"),
        ({"capacity": 0}, 422, "capacity"),
    ]
    for change, status, field in cases:
        r = client.post("/v1/consultations", json=jakarta(hrwg, **change), headers=organiser)
        assert r.status_code == status, (change, r.text)
        assert field in [e["field"] for e in r.json().get("errors", [])], r.text
    backwards = jakarta(hrwg)
    backwards["ends_at"], backwards["starts_at"] = backwards["starts_at"], backwards["ends_at"]
    r = client.post("/v1/consultations", json=backwards, headers=organiser)
    assert r.status_code == 422
    assert r.headers["content-type"] == PROBLEM


def test_agenda_working_groups_and_calendar(client: TestClient, setup: dict) -> None:
    organiser, url, c = setup["organiser"], setup["url"], setup["c"]
    start = datetime.fromisoformat(c["starts_at"])
    session = client.post(
        f"{url}/sessions",
        headers=organiser,
        json={
            "title": "Opening plenary",
            "kind": "plenary",
            "starts_at": (start + timedelta(hours=1)).isoformat(),
            "ends_at": (start + timedelta(hours=2)).isoformat(),
            "speakers": [{"name": "Hà Thị Minh Đức", "organisation_id": setup["hrwg"]}],
        },
    )
    assert session.status_code == 201, session.text
    assert session.json()["speakers"][0]["name"] == "Hà Thị Minh Đức"
    outside = client.post(
        f"{url}/sessions",
        headers=organiser,
        json={
            "title": "Too late",
            "kind": "panel",
            "starts_at": (start + timedelta(days=5)).isoformat(),
            "ends_at": (start + timedelta(days=5, hours=1)).isoformat(),
        },
    )
    assert outside.status_code in (409, 422)
    group = client.post(
        f"{url}/working-groups", headers=organiser, json={"thematic_area": "Access to justice"}
    )
    assert group.status_code == 201, group.text
    assert (
        client.post(
            f"{url}/working-groups", headers=organiser, json={"thematic_area": "Access to justice"}
        ).status_code
        == 409
    )
    assert client.post(
        f"{url}/working-groups", headers=organiser, json={"thematic_area": "Astrology"}
    ).status_code in (404, 422)

    ics = client.get(f"{url}/calendar.ics")
    assert ics.status_code == 200
    assert ics.headers["content-type"].startswith("text/calendar")
    cal = icalendar.Calendar.from_ical(ics.content)
    events = list(cal.walk("VEVENT"))
    assert len(events) == 2
    main = next(e for e in events if str(e["uid"]).startswith("consultation-"))
    assert str(main["dtstart"].dt.tzinfo) == "Asia/Jakarta"
    assert main["dtstart"].dt == datetime.fromisoformat(c["starts_at"])
    assert int(main["sequence"]) == 0
    assert list(cal.walk("VTIMEZONE"))

    moved = client.post(
        f"{url}/reschedule",
        headers=organiser,
        json={
            "starts_at": c["starts_at"],
            "ends_at": (start + timedelta(days=1, hours=10)).isoformat(),
            "reason": "venue change",
        },
    )
    assert moved.status_code == 200, moved.text
    cal = icalendar.Calendar.from_ical(client.get(f"{url}/calendar.ics").content)
    main = next(e for e in cal.walk("VEVENT") if str(e["uid"]).startswith("consultation-"))
    assert int(main["sequence"]) == 1


def test_capacity_waitlist_promotion_and_rosters(
    client: TestClient, keys: Keys, setup: dict
) -> None:
    url = setup["url"]
    open_registration(client, setup)
    hrwg_key = keys.make("organisation", setup["hrwg"])
    care_key = keys.make("organisation", setup["care"])
    a = client.post(
        f"{url}/registrations",
        headers=hrwg_key,
        json={
            "name": "Hà Thị Minh Đức",
            "email": "duc@example.org",
            "role": "delegate",
            "country": "VN",
        },
    )
    assert a.status_code == 201, a.text
    assert a.json()["status"] == "registered"
    assert a.json()["organisation_id"] == setup["hrwg"]
    assert "x-event-position" in a.headers
    b = client.post(
        f"{url}/registrations",
        headers=care_key,
        json={
            "name": "Anis Hidayah",
            "email": "anis@example.org",
            "role": "speaker",
            "country": "ID",
        },
    )
    c = client.post(
        f"{url}/registrations",
        headers=care_key,
        json={
            "name": "Wahyu Susilo",
            "email": "wahyu@example.org",
            "role": "delegate",
            "country": "ID",
        },
    )
    assert b.json()["status"] == "registered"
    assert c.json()["status"] == "waitlisted"
    again = client.post(
        f"{url}/registrations",
        headers=care_key,
        json={"name": "Wahyu Susilo", "email": "Wahyu@Example.org", "role": "delegate"},
    )
    assert again.status_code == 409
    # An organisation registers only its own people and sees only its own roster.
    foreign = client.post(
        f"{url}/registrations",
        headers=care_key,
        json={
            "name": "X",
            "email": "x@example.org",
            "role": "observer",
            "organisation_id": setup["hrwg"],
        },
    )
    assert foreign.status_code == 403
    mine = client.get(f"{url}/registrations", headers=care_key).json()
    assert {r["name"] for r in mine["data"]} == {"Anis Hidayah", "Wahyu Susilo"}
    assert client.get(f"{url}/registrations", headers=setup["organiser"]).json()["total"] == 3
    assert client.get(f"{url}/registrations", headers=keys.integrator).status_code == 403
    assert client.get(f"{url}/registrations").status_code == 401
    # Public detail: counts, never names.
    detail = client.get(url).json()
    assert detail["counts"]["registered"] == 2
    assert detail["counts"]["waitlisted"] == 1
    assert detail["counts"]["by_country"] == {"VN": 1, "ID": 1}
    assert "Anis" not in client.get(url).text
    # Another organisation cannot cancel; the owner can, and the waitlist moves up.
    rid = b.json()["id"]
    assert (
        client.post(f"{url}/registrations/{rid}/cancel", headers=hrwg_key, json={}).status_code
        == 403
    )
    cancelled = client.post(
        f"{url}/registrations/{rid}/cancel", headers=care_key, json={"reason": "visa refused"}
    )
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    promoted = client.get(
        f"{url}/registrations", params={"status": "registered"}, headers=setup["organiser"]
    ).json()
    assert {r["name"] for r in promoted["data"]} == {"Hà Thị Minh Đức", "Wahyu Susilo"}
    checked = client.post(
        f"{url}/registrations/{a.json()['id']}/check-in", headers=setup["organiser"]
    )
    assert checked.status_code == 200
    assert checked.json()["checked_in"] is True
    assert (
        client.post(
            f"{url}/registrations/{uuid4()}/check-in", headers=setup["organiser"]
        ).status_code
        == 404
    )


def test_two_clients_racing_for_the_last_seat(client: TestClient, keys: Keys, setup: dict) -> None:
    url = setup["url"]
    open_registration(client, setup)
    organiser = setup["organiser"]
    client.post(
        f"{url}/registrations",
        headers=organiser,
        json={"name": "First", "email": "first@example.org", "role": "delegate"},
    )
    results: list[str] = []

    def take(i: int) -> None:
        r = client.post(
            f"{url}/registrations",
            headers=organiser,
            json={"name": f"P{i}", "email": f"p{i}@example.org", "role": "delegate"},
        )
        results.append(r.json()["status"] if r.status_code == 201 else str(r.status_code))

    threads = [threading.Thread(target=take, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["registered", "waitlisted"]


def test_registration_rules_after_closing_and_cancelling(client: TestClient, setup: dict) -> None:
    url, organiser = setup["url"], setup["organiser"]
    person = {"name": "Late", "email": "late@example.org", "role": "observer"}
    before = client.post(f"{url}/registrations", headers=organiser, json=person)
    assert before.status_code == 409
    open_registration(client, setup)
    assert client.post(f"{url}/close-registration", headers=organiser).status_code == 200
    closed = client.post(f"{url}/registrations", headers=organiser, json=person)
    assert closed.status_code == 409
    assert closed.json()["type"].endswith(("registration-closed", "registration-not-open"))
    assert client.post(f"{url}/cancel", headers=organiser, json={"reason": ""}).status_code == 422
    assert (
        client.post(
            f"{url}/cancel", headers=organiser, json={"reason": "Security situation"}
        ).status_code
        == 200
    )
    detail = client.get(url).json()
    assert detail["status"] == "cancelled"
    assert detail["cancellation_reason"] == "Security situation"
    listed = client.get("/v1/consultations", params={"status": "cancelled"}).json()
    assert [c["id"] for c in listed["data"]] == [setup["c"]["id"]]
    assert client.get("/v1/consultations", params={"status": "planned"}).json()["total"] == 0


def test_the_past_on_request(client: TestClient, setup: dict) -> None:
    url, organiser = setup["url"], setup["organiser"]
    first = client.patch(url, json={"title": "Renamed"}, headers=organiser)
    assert first.status_code == 200, first.text
    position = int(first.headers["x-event-position"])
    assert client.get(url).json()["title"] == "Renamed"
    then = client.get(url, params={"as_of": str(position - 1)})
    assert then.status_code == 200
    assert then.json()["title"].startswith("Regional CSO Consultation")
    assert then.headers["etag"] == '"1"'
    long_ago = client.get(url, params={"as_of": "2017-01-01T00:00:00+07:00"})
    assert long_ago.status_code == 404
    assert client.get(url, params={"as_of": "yesterday"}).status_code == 422
    stale = client.patch(url, json={"title": "Lost"}, headers={**organiser, "If-Match": '"1"'})
    assert stale.status_code == 412


def test_a_series_shows_its_progress(client: TestClient, setup: dict) -> None:
    organiser = setup["organiser"]
    series = client.post(
        "/v1/series",
        headers=organiser,
        json={
            "title": "National consultations across ASEAN",
            "planned_countries": ["VN", "MM", "KH", "LA", "PH", "SG", "BN"],
        },
    )
    assert series.status_code == 201, series.text
    sid = series.json()["id"]
    cdi = org(client, organiser, "CDI", "VN")
    start = datetime(2019, 12, 18, 8, 30, tzinfo=UTC)
    hanoi = client.post(
        "/v1/consultations",
        headers=organiser,
        json={
            "title": "National consultation workshop",
            "scope": "national",
            "host_country": "VN",
            "city": "Hà Nội",
            "mode": "in_person",
            "timezone": "Asia/Ho_Chi_Minh",
            "starts_at": start.isoformat(),
            "ends_at": (start + timedelta(hours=8)).isoformat(),
            "organiser_id": cdi,
            "series_id": sid,
        },
    )
    assert hanoi.status_code == 201, hanoi.text
    assert hanoi.json()["city"] == "Hà Nội"
    assert hanoi.json()["starts_at"].endswith("+07:00")
    wrong = client.post(
        "/v1/consultations", headers=organiser, json={**jakarta(setup["hrwg"]), "series_id": sid}
    )
    assert wrong.status_code == 409
    progress = client.get(f"/v1/series/{sid}").json()
    assert progress["progress"]["scheduled"] == ["VN"]
    assert (
        client.post(
            f"/v1/consultations/{hanoi.json()['id']}/complete", headers=organiser
        ).status_code
        == 200
    )
    progress = client.get(f"/v1/series/{sid}").json()
    assert progress["progress"]["done"] == ["VN"]
    assert "VN" not in progress["progress"]["remaining"]
    assert len(progress["progress"]["remaining"]) == 6


def test_a_registration_answers_as_the_roster_then_shows_it(
    client: TestClient, setup: dict, system: System
) -> None:
    """A registration with a seat answers from its own event, without reading the roster
    back; the answer is what the roster shows. One beyond capacity is read back (its place in
    line is the roster's to say)."""
    open_registration(client, setup)
    url, organiser = setup["url"], setup["organiser"]
    roster_reads: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM registrations" in statement:
            roster_reads.append(statement)

    event.listen(system.db.engine, "before_cursor_execute", record)
    try:
        answers = [
            client.post(
                f"{url}/registrations",
                json={
                    "name": f"  Nguyễn Thị Hoa {n} ",
                    "email": f"Hoa.{n}@Example.org",
                    "role": "delegate",
                    "organisation_id": setup["hrwg"],
                    "country": "VN",
                },
                headers=organiser,
            )
            for n in range(3)  # capacity 2: the third waits in line
        ]
    finally:
        event.remove(system.db.engine, "before_cursor_execute", record)
    assert [a.status_code for a in answers] == [201, 201, 201], answers[-1].text
    assert [a.json()["status"] for a in answers] == ["registered", "registered", "waitlisted"]
    assert len(roster_reads) == 1, "only the waitlisted one is read back"
    roster = client.get(f"{url}/registrations?limit=10", headers=organiser).json()["data"]
    shown = {r["id"]: r for r in roster}
    for answer in answers:
        assert answer.json() == shown[answer.json()["id"]]
    assert answers[2].json()["waitlist_position"] == 1
