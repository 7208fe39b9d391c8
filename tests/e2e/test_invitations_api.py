"""Invitations through the HTTP API, on each back end: issue, list, resend, revoke, expire,
and a problem document for everything a client can get wrong."""

from __future__ import annotations

import hashlib
import stat
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
from fastapi.testclient import TestClient

from infra.bootstrap import System
from infra.invitations import expire_due
from infra.tokens import link_token, secret_key
from services.consultations.commands import DEFAULT_THEMATIC_AREAS
from tests.e2e.conftest import Keys

PROBLEM = "application/problem+json"


def created(response: Any) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def finalised_statement(
    client: Any, organiser: dict[str, str], *, language: str = "en", finalise: bool = True
) -> dict[str, Any]:
    """A consultation in Jakarta, two organisations (one in Yangon) and a statement with a
    recommendation in two thematic areas, finalised for endorsement for a week."""
    hrwg = created(
        client.post(
            "/v1/organisations",
            json={
                "name": "Human Rights Working Group",
                "kind": "network",
                "country": "ID",
                "email": "hrwg@example.org",
            },
            headers=organiser,
        )
    )["id"]
    yangon = created(
        client.post(
            "/v1/organisations",
            json={"name": "ရန်ကုန် Migrant Workers Association", "kind": "ngo", "country": "MM"},
            headers=organiser,
        )
    )["id"]
    starts = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)
    consultation = created(
        client.post(
            "/v1/consultations",
            json={
                "title": "Regional CSO Consultation on the ASEAN Consensus",
                "scope": "regional",
                "host_country": "ID",
                "city": "Jakarta",
                "mode": "in_person",
                "timezone": "Asia/Jakarta",
                "starts_at": starts.isoformat(),
                "ends_at": (starts + timedelta(days=1)).isoformat(),
                "organiser_id": hrwg,
            },
            headers=organiser,
        )
    )
    statement = created(
        client.post(
            f"/v1/consultations/{consultation['id']}/statements",
            json={
                "title": "Regional Civil Society Recommendations on Migrant Workers' Rights",
                "language": language,
                "preamble": "We, civil society organisations from eight member states, recommend:",
            },
            headers=organiser,
        )
    )
    sid = statement["id"]
    for area, text in (
        (DEFAULT_THEMATIC_AREAS[0], "Extend social protection to all migrant workers."),
        (DEFAULT_THEMATIC_AREAS[2], "Guarantee access to legal aid and interpreters."),
    ):
        created(
            client.post(
                f"/v1/statements/{sid}/recommendations",
                json={"thematic_area": area, "text": text, "addressed_to": ["ASEAN Member States"]},
                headers=organiser,
            )
        )
    content_hash = None
    if finalise:
        deadline = (datetime.now(UTC) + timedelta(days=7)).isoformat()
        finalised = client.post(
            f"/v1/statements/{sid}/finalise",
            json={"endorsement_deadline": deadline},
            headers=organiser,
        )
        assert finalised.status_code == 200, finalised.text
        content_hash = finalised.json()["content_hash"]
    return {
        "sid": sid,
        "consultation_id": consultation["id"],
        "hrwg": hrwg,
        "yangon": yangon,
        "content_hash": content_hash,
    }


def invite(
    client: Any, organiser: dict[str, str], world: dict[str, Any], **body: Any
) -> dict[str, Any]:
    payload = {"organisation_id": world["yangon"], "email": "coordinator@yangon.example.org"}
    return created(
        client.post(
            f"/v1/statements/{world['sid']}/invitations",
            json={**payload, **body},
            headers=organiser,
        )
    )


@pytest.fixture
def organiser(keys: Keys) -> dict[str, str]:
    return keys.organiser


@pytest.fixture
def world(client: TestClient, organiser: dict[str, str]) -> dict[str, Any]:
    return finalised_statement(client, organiser)


def test_the_organiser_invites_and_the_log_keeps_only_the_links_hash(
    client: TestClient, system: System, organiser: dict[str, str], world: dict[str, Any], keys: Keys
) -> None:
    response = client.post(
        f"/v1/statements/{world['sid']}/invitations",
        json={
            "organisation_id": world["yangon"],
            "email": "Coordinator@Yangon.example.org",
            "expires_in": "P10D",
        },
        headers=organiser,
    )
    invitation = created(response)
    iid = invitation["id"]
    assert response.headers["location"] == f"/v1/statements/{world['sid']}/invitations/{iid}"
    assert response.headers["etag"] == '"1"'
    assert int(response.headers["x-event-position"]) > 0
    assert invitation["status"] == "issued"
    assert invitation["generation"] == 1
    assert invitation["email"] == "Coordinator@yangon.example.org"  # the domain normalised
    assert invitation["language"] == "en", "the statement's language by default"
    expires = datetime.fromisoformat(invitation["expires_at"])
    assert abs(expires - (datetime.now(UTC) + timedelta(days=10))) < timedelta(minutes=1)

    token = link_token(secret_key(system.settings), invitation_id=UUID(iid), generation=1)
    assert token not in response.text
    (record,) = system.store.read_stream(UUID(iid))
    assert record.stream_type == "invitation"
    assert record.data["token_hash"] == hashlib.sha256(token.encode()).hexdigest()
    assert token not in str(record.data)
    # Integrators see the invitation without the hash, and the address as a plain value.
    feed = client.get("/v1/events", params={"types": "invitation.issued"}, headers=keys.admin)
    (event,) = feed.json()["data"]
    assert event["public_type"] == "org.concord.invitation.issued.v1"
    assert "token_hash" not in event["data"]
    assert event["data"]["email"] == "Coordinator@yangon.example.org"

    listed = client.get(f"/v1/statements/{world['sid']}/invitations", headers=organiser).json()
    assert listed["total"] == 1
    assert listed["data"] == [invitation]
    one = client.get(f"/v1/statements/{world['sid']}/invitations/{iid}", headers=organiser)
    assert one.json() == invitation


def test_the_embedded_secret_is_generated_once_and_private(system: System) -> None:
    first = secret_key(system.settings)
    path = system.settings.data_dir.resolve() / "secret.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert secret_key(system.settings) == first
    assert len(first) >= 32


def test_resending_renews_the_link_and_revoking_stops_it(
    client: TestClient, system: System, organiser: dict[str, str], world: dict[str, Any]
) -> None:
    invitation = invite(client, organiser, world, expires_in="PT2H")
    url = f"/v1/statements/{world['sid']}/invitations/{invitation['id']}"
    resent = client.post(f"{url}/resend", json={"expires_in": "P3D"}, headers=organiser)
    assert resent.status_code == 200, resent.text
    body = resent.json()
    assert (body["generation"], body["status"], body["resent_at"] is not None) == (
        2,
        "issued",
        True,
    )
    assert datetime.fromisoformat(body["expires_at"]) > datetime.fromisoformat(
        invitation["expires_at"]
    )
    assert client.post(f"{url}/resend", headers=organiser).json()["generation"] == 3
    revoked = client.post(f"{url}/revoke", json={"reason": "wrong address"}, headers=organiser)
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["status"] == "revoked"
    again = client.post(f"{url}/revoke", headers=organiser)
    assert again.status_code == 200, "revoking twice changes nothing"
    assert again.headers["etag"] == revoked.headers["etag"]
    refused = client.post(f"{url}/resend", headers=organiser)
    assert refused.status_code == 409
    assert refused.headers["content-type"] == PROBLEM
    assert refused.json()["type"].endswith("/invitation-revoked")
    types = [e.type for e in system.store.read_stream(UUID(invitation["id"]))]
    assert types == [
        "invitation.issued",
        "invitation.resent",
        "invitation.resent",
        "invitation.revoked",
    ]


def test_the_sweep_expires_links_whose_time_is_up(
    client: TestClient, system: System, organiser: dict[str, str], world: dict[str, Any]
) -> None:
    soon = invite(client, organiser, world, expires_in="PT1H")
    later = invite(client, organiser, world, email="second@yangon.example.org")
    url = f"/v1/statements/{world['sid']}/invitations"
    assert expire_due(system) == 0, "nothing is due yet"
    in_two_hours = datetime.now(UTC) + timedelta(hours=2)
    assert expire_due(system, in_two_hours) == 1
    assert expire_due(system, in_two_hours) == 0, "a second sweep changes nothing"
    expired = client.get(url, params={"status": "expired"}, headers=organiser).json()
    assert [i["id"] for i in expired["data"]] == [soon["id"]]
    assert expired["data"][0]["expired_at"] is not None
    issued = client.get(url, params={"status": "issued"}, headers=organiser).json()
    assert [i["id"] for i in issued["data"]] == [later["id"]]
    # Resending an expired invitation makes it live again, with a new link.
    resent = client.post(f"{url}/{soon['id']}/resend", headers=organiser)
    assert resent.status_code == 200, resent.text
    assert resent.json()["status"] == "issued"
    assert resent.json()["expired_at"] is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "not-an-address"}, "email"),
        ({"expires_in": "PT30M"}, "expires_in"),
        ({"expires_in": "P91D"}, "expires_in"),
        ({"language": "Burmese!"}, "language"),
        ({"token": "let me choose"}, "token"),
    ],
)
def test_bad_input_is_a_validation_problem_naming_the_field(
    client: TestClient, organiser: dict[str, str], world: dict[str, Any], body: dict, field: str
) -> None:
    payload = {"organisation_id": world["yangon"], "email": "a@example.org", **body}
    response = client.post(
        f"/v1/statements/{world['sid']}/invitations", json=payload, headers=organiser
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    assert field in {e["field"] for e in response.json()["errors"]}


def test_invitations_need_an_open_statement_and_a_known_organisation(
    client: TestClient, organiser: dict[str, str], world: dict[str, Any]
) -> None:
    draft = finalised_statement(client, organiser, finalise=False)
    for sid, organisation, status, kind in (
        (draft["sid"], draft["yangon"], 409, "statement-not-open"),
        (world["sid"], str(uuid4()), 404, "unknown-organisation"),
        (str(uuid4()), world["yangon"], 404, "unknown-statement"),
    ):
        response = client.post(
            f"/v1/statements/{sid}/invitations",
            json={"organisation_id": organisation, "email": "a@example.org"},
            headers=organiser,
        )
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == PROBLEM
        assert response.json()["type"].endswith("/" + kind)
    closed = client.post(f"/v1/statements/{world['sid']}/close-endorsements", headers=organiser)
    assert closed.status_code == 200
    refused = client.post(
        f"/v1/statements/{world['sid']}/invitations",
        json={"organisation_id": world["yangon"], "email": "a@example.org"},
        headers=organiser,
    )
    assert refused.status_code == 409
    assert refused.json()["statement_status"] == "closed"
    for path in (
        f"/v1/statements/{world['sid']}/invitations/{uuid4()}",
        f"/v1/statements/{uuid4()}/invitations",
    ):
        missing = client.get(path, headers=organiser)
        assert missing.status_code == 404, path
        assert missing.headers["content-type"] == PROBLEM


def test_only_organisers_invite_and_see_invitations(
    client: TestClient, keys: Keys, organiser: dict[str, str], world: dict[str, Any]
) -> None:
    invitation = invite(client, organiser, world)
    url = f"/v1/statements/{world['sid']}/invitations"
    own = keys.make("organisation", world["yangon"])
    for headers, status in (({}, 401), (own, 403), (keys.integrator, 403)):
        assert client.get(url, headers=headers).status_code == status
        attempt = client.post(
            url,
            json={"organisation_id": world["yangon"], "email": "x@example.org"},
            headers=headers,
        )
        assert attempt.status_code == status
        assert attempt.headers["content-type"] == PROBLEM
        assert (
            client.post(f"{url}/{invitation['id']}/revoke", headers=headers).status_code == status
        )
    assert client.get(url, headers=keys.admin).json()["total"] == 1


def test_an_idempotency_key_invites_once(
    client: TestClient, system: System, organiser: dict[str, str], world: dict[str, Any]
) -> None:
    url = f"/v1/statements/{world['sid']}/invitations"
    body = {"organisation_id": world["yangon"], "email": "once@yangon.example.org"}
    headers = {**organiser, "Idempotency-Key": "invite-yangon-1"}
    first = client.post(url, json=body, headers=headers)
    second = client.post(url, json=body, headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert second.headers["idempotent-replayed"] == "true"
    assert client.get(url, headers=organiser).json()["total"] == 1
    other = client.post(url, json={**body, "email": "twice@example.org"}, headers=headers)
    assert other.status_code == 422
    assert other.json()["type"].endswith("/idempotency-key-reused")


def test_a_sweep_reads_each_statement_whole_once(
    client: TestClient,
    system: System,
    organiser: dict[str, str],
    world: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Links of one statement falling due together: each is checked for a use lost in a crash,
    and the statement is read whole once for all of them, then only for what it gained."""
    for i in range(4):
        organisation = world["yangon"] if i % 2 else world["hrwg"]
        invite(client, organiser, world, organisation_id=organisation, email=f"{i}@x.org")
    sid = UUID(world["sid"])
    reads: list[int] = []
    real = system.store.read_stream

    def counted(stream_id: UUID, **kwargs: Any) -> list[Any]:
        if stream_id == sid:
            reads.append(kwargs.get("after_version", 0))
        return real(stream_id, **kwargs)

    monkeypatch.setattr(system.store, "read_stream", counted)
    assert expire_due(system, datetime.now(UTC) + timedelta(days=400)) == 4
    assert reads.count(0) == 1 and len(reads) == 4, reads
