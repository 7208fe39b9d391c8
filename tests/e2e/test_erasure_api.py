"""Erasure and endorsement receipts through the HTTP API, on SQLite and PostgreSQL.

After ``POST /v1/people/erase`` the person's name and e-mail read as null in every read model,
the feed, the CSV and the consultation's public agenda, while counts, endorsements and the
log's hashes stay intact — and the raw log never held them in clear.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import text

from infra.bootstrap import System
from infra.eventstore.verify import verify
from services.people import person_id
from tests.e2e.conftest import Keys
from tests.e2e.test_statements_api import draft

PROBLEM = "application/problem+json"
DELEGATE, EMAIL = "Phạm Thị Lan", "lan@hrwg.example"
SIGNATORY = "Daw Aye Aye Mar"


def _world(client: TestClient, keys: Keys) -> dict[str, Any]:
    """A statement drafted from a consultation; organisation A registers its delegate (also
    a speaker) and endorses with a signatory."""
    drafted = draft(client, keys)
    organiser, orgs = drafted["organiser"], drafted["orgs"]
    org_a, org_b = orgs["Human Rights Working Group"], orgs["Migrant CARE"]
    statement = client.get(f"/v1/statements/{drafted['sid']}", headers=organiser).json()
    cid = statement["consultation_id"]
    starts = datetime.now(UTC) + timedelta(days=30)
    moved = client.post(
        f"/v1/consultations/{cid}/reschedule",
        headers=organiser,
        json={"starts_at": starts.isoformat(), "ends_at": (starts + timedelta(days=1)).isoformat()},
    )
    assert moved.status_code == 200, moved.text
    opened = client.post(
        f"/v1/consultations/{cid}/open-registration",
        headers=organiser,
        json={"closes_at": (starts - timedelta(days=2)).isoformat()},
    )
    assert opened.status_code == 200, opened.text
    key_a = keys.make("organisation", org_a)
    registered = client.post(
        f"/v1/consultations/{cid}/registrations",
        headers=key_a,
        json={"name": DELEGATE, "email": EMAIL, "organisation_id": org_a, "role": "delegate"},
    )
    assert registered.status_code == 201, registered.text
    session = client.post(
        f"/v1/consultations/{cid}/sessions",
        headers=organiser,
        json={
            "title": "Opening plenary",
            "kind": "plenary",
            "starts_at": starts.isoformat(),
            "ends_at": (starts + timedelta(hours=1)).isoformat(),
            "speakers": [{"name": DELEGATE, "organisation_id": org_a}],
        },
    )
    assert session.status_code == 201, session.text
    url = f"/v1/statements/{drafted['sid']}"
    deadline = (datetime.now(UTC) + timedelta(days=7)).isoformat()
    finalised = client.post(
        f"{url}/finalise", headers=organiser, json={"endorsement_deadline": deadline}
    )
    assert finalised.status_code == 200, finalised.text
    endorsed = client.post(
        f"{url}/endorsements",
        headers=key_a,
        json={"organisation_id": org_a, "signatory_name": SIGNATORY, "signatory_title": "Chair"},
    )
    assert endorsed.status_code == 201, endorsed.text
    return {
        "cid": cid,
        "sid": drafted["sid"],
        "url": url,
        "org_a": org_a,
        "org_b": org_b,
        "key_a": key_a,
        "key_b": keys.make("organisation", org_b),
        "organiser": organiser,
        "receipt": endorsed.json()["receipt"],
        "content_hash": finalised.json()["content_hash"],
    }


def test_an_organisation_erases_its_delegate_and_its_signatory_everywhere(
    client: TestClient, keys: Keys, system: System
) -> None:
    w = _world(client, keys)
    before = client.get(f"/v1/consultations/{w['cid']}", headers=w["organiser"]).json()
    # Another organisation cannot erase A's people, nor learn whether they exist.
    refused = client.post("/v1/people/erase", headers=w["key_b"], json={"email": EMAIL})
    assert refused.status_code == 404 and refused.headers["content-type"] == PROBLEM
    unknown = client.post(
        "/v1/people/erase", headers=w["key_a"], json={"email": "nobody@nowhere.example"}
    )
    assert unknown.status_code == 404
    bad = client.post(
        "/v1/people/erase", headers=w["key_a"], json={"email": EMAIL, "signatory_name": "x"}
    )
    assert bad.status_code == 422 and bad.headers["content-type"] == PROBLEM

    erased = client.post(
        "/v1/people/erase", headers=w["key_a"], json={"email": EMAIL, "reason": "request"}
    )
    assert erased.status_code == 200, erased.text
    assert erased.json()["person_id"] == str(person_id(EMAIL)) and erased.json()["key_deleted"]
    again = client.post("/v1/people/erase", headers=w["key_a"], json={"email": EMAIL})
    assert again.status_code == 409 and again.json()["type"].endswith("already-erased")
    signatory = client.post(
        "/v1/people/erase", headers=w["key_a"], json={"signatory_name": SIGNATORY}
    )
    assert signatory.status_code == 200, signatory.text
    # A speaker is named on the public agenda with a random person id an admin can erase.
    (speaker,) = [sp for s in before["agenda"] for sp in s["speakers"]]
    assert speaker["name"] == DELEGATE
    gone = client.post(
        "/v1/people/erase", headers=keys.admin, json={"person_id": speaker["person_id"]}
    )
    assert gone.status_code == 200, gone.text

    # Read models: the roster and the public agenda.
    roster = client.get(
        f"/v1/consultations/{w['cid']}/registrations", headers=w["organiser"]
    ).json()["data"]
    mine = [r for r in roster if r["organisation_id"] == w["org_a"]]
    assert [(r["name"], r["email"]) for r in mine] == [(None, None)]
    detail = client.get(f"/v1/consultations/{w['cid']}", headers=w["organiser"]).json()
    speakers = [sp for s in detail["agenda"] for sp in s["speakers"]]
    assert [sp["name"] for sp in speakers] == [None]
    assert detail["counts"] == before["counts"], "counts stay intact"
    # The statement: the endorsement by the organisation counts; the signatory is null.
    listed = client.get(f"{w['url']}/endorsements", headers=w["organiser"]).json()
    entry = next(e for e in listed["data"] if e["organisation_id"] == w["org_a"])
    assert entry["signatory_name"] is None and entry["signatory_title"] is None
    assert listed["total"] == 1
    csv = client.get(f"{w['url']}/endorsements?format=csv", headers=w["organiser"]).text
    assert SIGNATORY not in csv and "Human Rights Working Group" in csv
    # The feed: every event that held the data now shows null; person.erased is public.
    feed = client.get("/v1/events?limit=1000", headers=keys.admin).text
    assert DELEGATE not in feed and EMAIL not in feed and SIGNATORY not in feed
    events = client.get("/v1/events?limit=1000&types=person.erased", headers=keys.admin).json()
    assert {e["data"]["person_id"] for e in events["data"]} == {
        str(person_id(EMAIL)),
        str(person_id(f"{w['org_a']}/{SIGNATORY}")),
        speaker["person_id"],
    }
    # The log holds no name in clear, before or after, and its hashes still verify.
    with system.db.read() as conn:
        raw = " ".join(str(r) for r in conn.execute(text("SELECT data FROM events")).scalars())
    assert DELEGATE not in raw and EMAIL not in raw and SIGNATORY not in raw
    assert verify(system.db).ok
    # The receipt still checks out: the endorsement is intact.
    receipt = client.get(
        f"{w['url']}/endorsements/{w['org_a']}/receipt",
        headers=w["key_a"],
        params={"event_hash": w["receipt"]["event_hash"]},
    ).json()
    assert receipt["verified"] is True and receipt["matches"] is True


def test_an_admin_erases_by_person_id_and_anyone_else_may_not(
    client: TestClient, keys: Keys
) -> None:
    w = _world(client, keys)
    pid = str(person_id(EMAIL))
    assert client.post("/v1/people/erase", json={"person_id": pid}).status_code == 401
    organiser = client.post("/v1/people/erase", headers=w["organiser"], json={"person_id": pid})
    assert organiser.status_code == 403
    done = client.post("/v1/people/erase", headers=keys.admin, json={"person_id": pid})
    assert done.status_code == 200, done.text
    roster = client.get(
        f"/v1/consultations/{w['cid']}/registrations", headers=w["organiser"]
    ).json()["data"]
    assert all(r["name"] is None for r in roster if r["organisation_id"] == w["org_a"])


def test_a_receipt_names_the_endorsed_text_and_detects_tampering(
    client: TestClient, keys: Keys, system: System
) -> None:
    w = _world(client, keys)
    kept = w["receipt"]
    assert kept["content_hash"] == w["content_hash"]
    assert len(kept["event_hash"]) == 64 and kept["statement_id"] == w["sid"]
    assert kept["organisation_id"] == w["org_a"] and kept["position"] >= 1
    url = f"{w['url']}/endorsements/{w['org_a']}/receipt"
    assert client.get(url, headers=w["key_b"]).status_code == 403
    assert (
        client.get(f"{w['url']}/endorsements/{w['org_b']}/receipt", headers=w["key_b"]).status_code
        == 404
    )
    checked = client.get(url, headers=w["key_a"], params={"event_hash": kept["event_hash"]})
    assert checked.status_code == 200, checked.text
    body = checked.json()
    assert body["verified"] is True and body["matches"] is True and body["status"] == "active"
    assert body["event_hash"] == kept["event_hash"] and body["position"] == kept["position"]
    assert (
        client.get(url, headers=w["key_a"], params={"event_hash": "0" * 64}).json()["matches"]
        is False
    )
    assert client.get(url, headers=w["key_a"], params={"event_hash": "xyz"}).status_code == 422
    # Someone edits the statement's history in the database: the receipt no longer verifies.
    key = w["sid"].replace("-", "") if system.db.is_sqlite else w["sid"]
    with system.db.write() as conn:
        conn.execute(  # backdate an event of the statement's history
            text("UPDATE events SET recorded_at = :t WHERE stream_id = :s AND version = 2"),
            {
                "s": key,
                "t": "2020-01-01 00:00:00"
                if system.db.is_sqlite
                else datetime(2020, 1, 1, tzinfo=UTC),
            },
        )
    tampered = client.get(url, headers=w["key_a"], params={"event_hash": kept["event_hash"]})
    body = tampered.json()
    assert tampered.status_code == 200, tampered.text
    assert body["verified"] is False and body["matches"] is False
    assert "version 2" in body["broken"]
