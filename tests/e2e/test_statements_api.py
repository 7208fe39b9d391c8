"""The Jakarta 2018 joint statement through HTTP: drafted, amended, finalised, signed by 16
NGOs from eight member states, compiled from the log into Markdown, HTML and PDF."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from pypdf import PdfReader

from infra.bootstrap import System
from infra.compile import compile_statement
from infra.dispatch import Dispatcher
from infra.projections.projector import Projector
from infra.routes import ROUTES
from services.consultations.commands import DEFAULT_THEMATIC_AREAS
from tests.e2e.conftest import Keys

SIGNATORIES = [  # (organisation, country, signatory)
    ("Human Rights Working Group", "ID", "Rafendi Djamin"),
    ("Migrant CARE", "ID", "Anis Hidayah"),
    ("Serikat Buruh Migran Indonesia", "ID", "Hariyanto Suwarno"),
    ("HOME", "SG", "Sheena Kanwar"),
    ("Transient Workers Count Too", "SG", "Alex Au"),
    ("Tenaganita", "MY", "Glorene Das"),
    ("North South Initiative", "MY", "Adrian Pereira"),
    ("MAP Foundation", "TH", "Brahm Press"),
    ("Migrant Working Group", "TH", "สมชาย ใจดี"),
    ("Center for Migrant Advocacy", "PH", "Ellene Sana"),
    ("Migrante International", "PH", "Joanna Concepcion"),
    ("Legal Clinic Myanmar", "MM", "Thet Thet Aung"),
    ("Future Light Center", "MM", "Ko Min Htike"),
    ("Trung tâm Phát triển và Hội nhập", "VN", "Hà Thị Minh Đức"),
    ("Hội Liên hiệp Phụ nữ Việt Nam", "VN", "Nguyễn Thị Thu Hằng"),
    ("Persatuan Pekerja Asing Brunei", "BN", "Siti Aminah"),
]


@pytest.fixture
def drafted(client: TestClient, keys: Keys) -> dict:
    return draft(client, keys)


def draft(client: TestClient, keys: Keys) -> dict:
    """Sixteen organisations, a consultation that was held, and its statement with a
    recommendation in each of the seven thematic areas."""
    organiser = keys.organiser
    orgs = {}
    for name, country, _ in SIGNATORIES:
        r = client.post(
            "/v1/organisations",
            headers=organiser,
            json={"name": name, "kind": "ngo", "country": country},
        )
        orgs[name] = r.json()["id"]
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)
    consultation = client.post(
        "/v1/consultations",
        headers=organiser,
        json={
            "title": "Regional CSO Consultation on the Implementation of the ASEAN Consensus",
            "scope": "regional",
            "host_country": "ID",
            "city": "Jakarta",
            "mode": "in_person",
            "timezone": "Asia/Jakarta",
            "starts_at": start.isoformat(),
            "ends_at": (start + timedelta(days=1)).isoformat(),
            "organiser_id": orgs["Human Rights Working Group"],
        },
    ).json()
    statement = client.post(
        f"/v1/consultations/{consultation['id']}/statements",
        headers=organiser,
        json={
            "title": "Regional Civil Society Recommendations on the Implementation of the 2017 "
            "ASEAN Consensus on the Protection and Promotion of the Rights of Migrant Workers",
            "language": "en",
            "preamble": "We, civil society organisations from eight member states…",
        },
    )
    assert statement.status_code == 201, statement.text
    sid = statement.json()["id"]
    for i, area in enumerate(reversed(DEFAULT_THEMATIC_AREAS)):
        r = client.post(
            f"/v1/statements/{sid}/recommendations",
            headers=organiser,
            json={
                "thematic_area": area,
                "text": f"Recommendation {i} on {area}.",
                "addressed_to": ["ASEAN Member States", "ACMW"],
            },
        )
        assert r.status_code == 201, r.text
    return {"sid": sid, "orgs": orgs, "organiser": organiser}


def sign_and_close(client: TestClient, keys: Keys, drafted: dict) -> str:
    """Finalise, have all sixteen organisations sign, close; returns the content hash."""
    url, orgs = f"/v1/statements/{drafted['sid']}", drafted["orgs"]
    deadline = (datetime.now(UTC) + timedelta(days=7)).isoformat()
    finalised = client.post(
        f"{url}/finalise", headers=drafted["organiser"], json={"endorsement_deadline": deadline}
    )
    assert finalised.status_code == 200, finalised.text
    for name, _, signatory in SIGNATORIES:
        r = client.post(
            f"{url}/endorsements",
            headers=keys.make("organisation", orgs[name]),
            json={"organisation_id": orgs[name], "signatory_name": signatory},
        )
        assert r.status_code == 201, r.text
    assert client.post(f"{url}/close-endorsements", headers=drafted["organiser"]).status_code == 200
    return str(finalised.json()["content_hash"])


def test_the_jakarta_statement_end_to_end(
    client: TestClient, keys: Keys, system: System, drafted: dict
) -> None:
    sid, orgs, organiser = drafted["sid"], drafted["orgs"], drafted["organiser"]
    url = f"/v1/statements/{sid}"
    body = client.get(url, headers=organiser).json()
    assert [s["thematic_area"] for s in body["sections"]] == list(DEFAULT_THEMATIC_AREAS)
    assert client.get(url).status_code == 401, "drafts are not public"

    # An organisation proposes an amendment for itself; the organiser decides.
    care = keys.make("organisation", orgs["Migrant CARE"])
    target = body["sections"][2]["recommendations"][0]["id"]
    proposed = client.post(
        f"{url}/amendments",
        headers=care,
        json={
            "recommendation_id": target,
            "text": "Guarantee access to justice for all migrant workers.",
            "rationale": "Stronger wording",
        },
    )
    assert proposed.status_code == 201, proposed.text
    foreign = client.post(
        f"{url}/amendments",
        headers=care,
        json={
            "recommendation_id": target,
            "text": "x",
            "rationale": "y",
            "organisation_id": orgs["HOME"],
        },
    )
    assert foreign.status_code == 403
    accepted = client.post(
        f"{url}/amendments/{proposed.json()['amendment_id']}/accept", headers=organiser
    )
    assert accepted.status_code == 200, accepted.text
    rec = accepted.json()["sections"][2]["recommendations"][0]
    assert rec["text"] == "Guarantee access to justice for all migrant workers."
    assert [h["kind"] for h in rec["history"]] == ["added", "amended"]

    deadline = (datetime.now(UTC) + timedelta(days=7)).isoformat()
    finalised = client.post(
        f"{url}/finalise", headers=organiser, json={"endorsement_deadline": deadline}
    )
    assert finalised.status_code == 200, finalised.text
    content_hash = finalised.json()["content_hash"]
    assert re.fullmatch(r"[0-9a-f]{64}", content_hash)
    assert finalised.json()["endorsement_deadline"].endswith("+07:00")
    assert (
        client.post(
            f"{url}/recommendations",
            headers=organiser,
            json={"thematic_area": DEFAULT_THEMATIC_AREAS[0], "text": "Too late"},
        ).status_code
        == 409
    )

    for name, _, signatory in SIGNATORIES:
        key = keys.make("organisation", orgs[name])
        r = client.post(
            f"{url}/endorsements",
            headers=key,
            json={
                "organisation_id": orgs[name],
                "signatory_name": signatory,
                "signatory_title": "Coordinator",
                "content_hash": content_hash,
            },
        )
        assert r.status_code == 201, r.text
        assert "x-event-position" in r.headers
    home = keys.make("organisation", orgs["HOME"])
    twice = client.post(
        f"{url}/endorsements",
        headers=home,
        json={"organisation_id": orgs["HOME"], "signatory_name": "Someone else"},
    )
    assert twice.status_code == 409
    assert twice.json()["signatory_name"] == "Sheena Kanwar", "the problem names the existing one"
    for_other = client.post(
        f"{url}/endorsements",
        headers=home,
        json={"organisation_id": orgs["Tenaganita"], "signatory_name": "Mallory"},
    )
    assert for_other.status_code == 403
    wrong_text = client.post(
        f"{url}/endorsements",
        headers=organiser,
        json={"organisation_id": orgs["HOME"], "signatory_name": "X", "content_hash": "0" * 64},
    )
    assert wrong_text.status_code == 409

    # Withdraw and sign again: both stay in the history.
    assert (
        client.request(
            "DELETE",
            f"{url}/endorsements/{orgs['HOME']}",
            headers=home,
            json={"reason": "board review"},
        ).status_code
        == 200
    )
    before = client.get(f"{url}/endorsements", headers=organiser).json()
    assert before["total"] == 15
    again = client.post(
        f"{url}/endorsements",
        headers=home,
        json={"organisation_id": orgs["HOME"], "signatory_name": "Sheena Kanwar"},
    )
    assert again.status_code == 201
    listing = client.get(f"{url}/endorsements", headers=organiser).json()
    assert listing["total"] == 16
    assert listing["by_country"] == {
        "BN": 1,
        "ID": 3,
        "MM": 2,
        "MY": 2,
        "PH": 2,
        "SG": 2,
        "TH": 2,
        "VN": 2,
    }
    csv = client.get(f"{url}/endorsements", params={"format": "csv"}, headers=organiser)
    assert csv.headers["content-type"].startswith("text/csv")
    assert "Hà Thị Minh Đức" in csv.content.decode("utf-8-sig")

    # Publish: 202 and a job; the worker (here called directly) compiles from the log.
    assert client.post(f"{url}/publish", headers=organiser).status_code == 409, "still open"
    assert client.post(f"{url}/close-endorsements", headers=organiser).status_code == 200
    job = client.post(f"{url}/publish", headers=organiser)
    assert job.status_code == 202, job.text
    assert client.get(job.headers["location"]).json()["status"] == "queued"
    sent: list[tuple[str, dict]] = []
    relay = Projector(
        system.db, system.store, [Dispatcher(lambda n, k: sent.append((n, k)), ROUTES)]
    )
    relay.catch_up()
    compiles = [task for task in sent if task[0] == "statements.compile"]
    assert compiles == [("statements.compile", {"statement_id": sid, "job_id": job.json()["id"]})]
    assert {name for name, _ in sent} == {"statements.compile", "reminders.tick"}  # notices
    files = compile_statement(
        system, *(__import__("uuid").UUID(v) for v in compiles[0][1].values())
    )
    assert (
        compile_statement(
            system, __import__("uuid").UUID(sid), __import__("uuid").UUID(job.json()["id"])
        )
        == files
    ), "idempotent"
    assert client.get(job.headers["location"]).json()["status"] == "done"
    published = client.get(url)  # public now
    assert published.status_code == 200
    assert published.json()["status"] == "published"
    pdf = client.get(f"{url}/document.pdf")
    assert pdf.headers["content-type"] == "application/pdf"
    text = " ".join(
        " ".join(p.extract_text() or "" for p in PdfReader(io.BytesIO(pdf.content)).pages).split()
    )
    for _, _, signatory in SIGNATORIES:
        if signatory.isascii() or "Đức" in signatory:
            assert signatory in text, signatory
    assert "16 organisations from 8 countries" in text
    html = client.get(f"{url}/document.html").text
    assert content_hash in html
    assert client.get(f"{url}/document.md").status_code == 200
    old = client.get(
        url, params={"as_of": str(int(finalised.headers["x-event-position"]))}, headers=organiser
    ).json()
    assert old["status"] == "finalised"
    assert old["signatories"] == []


def test_a_job_whose_worker_died_is_found_and_finished(
    client: TestClient, keys: Keys, system: System, drafted: dict
) -> None:
    """No worker ran the compile (killed, message stranded): the sweep finds the job."""
    from uuid import UUID

    from infra.compile import unfinished_jobs

    sign_and_close(client, keys, drafted)
    job = client.post(f"/v1/statements/{drafted['sid']}/publish", headers=drafted["organiser"])
    assert unfinished_jobs(system, older_than_s=60) == [], "too recent to be stranded"
    (stranded,) = unfinished_jobs(system, older_than_s=0)
    assert stranded == (UUID(drafted["sid"]), UUID(job.json()["id"]))
    compile_statement(system, *stranded)
    compile_statement(system, *stranded)  # a second, late delivery changes nothing
    assert unfinished_jobs(system, older_than_s=0) == []
    assert client.get(job.headers["location"]).json()["status"] == "done"
    published = system.store.read_all(
        0, 10_000, types=["statement.compiled", "statement.published"]
    )
    assert len(published) == 2, "compiled and published once each"


def test_two_concurrent_compiles_produce_one_artefact(
    client: TestClient, keys: Keys, system: System, drafted: dict
) -> None:
    import threading
    from uuid import UUID

    sign_and_close(client, keys, drafted)
    job = client.post(f"/v1/statements/{drafted['sid']}/publish", headers=drafted["organiser"])
    ids = (UUID(drafted["sid"]), UUID(job.json()["id"]))
    results: list[dict] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(compile_statement(system, *ids))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert results[0] == results[1], "the same bytes, hence the same content hashes"
    recorded = system.store.read_all(0, 10_000, types=["statement.compiled", "statement.published"])
    assert [e.type for e in recorded] == ["statement.compiled", "statement.published"]
    stored = list((system.settings.data_dir / "documents").rglob("*.pdf"))
    assert len(stored) == 1
