"""Organisations through HTTP: roles, validation, ETag/If-Match, idempotency, read-your-writes."""

from __future__ import annotations

import threading
from uuid import uuid4

import pytest
from fastapi.testclient import TestClient

from tests.e2e.conftest import Keys

PROBLEM = "application/problem+json"
HRWG = {
    "name": "Human Rights Working Group",
    "acronym": "HRWG",
    "kind": "ngo",
    "country": "id",
    "email": "info@hrwg.example",
    "website": "https://hrwg.example",
}


def register(client: TestClient, headers: dict, **overrides: object) -> dict:
    response = client.post("/v1/organisations", json={**HRWG, **overrides}, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


def test_an_organiser_registers_an_organisation_and_reads_it_back(
    client: TestClient, keys: Keys
) -> None:
    organiser = keys.organiser
    response = client.post("/v1/organisations", json=HRWG, headers=organiser)
    assert response.status_code == 201
    body = response.json()
    assert body["country"] == "ID"
    assert body["version"] == 1
    assert response.headers["etag"] == '"1"'
    position = int(response.headers["x-event-position"])
    assert response.headers["location"] == f"/v1/organisations/{body['id']}"
    public = client.get(f"/v1/organisations/{body['id']}")  # public profile, no key
    assert public.status_code == 200
    assert public.json()["name"] == "Human Rights Working Group"
    assert public.headers["etag"] == '"1"'
    events = client.get(
        "/v1/events", params={"after": position - 1}, headers=keys.integrator
    ).json()
    (event,) = events["data"]
    assert event["type"] == "organisation.registered"
    assert event["metadata"]["actor"].startswith("organiser (key ")
    assert event["metadata"]["api_key_id"] is not None


def test_names_with_diacritics_round_trip(client: TestClient, keys: Keys) -> None:
    body = register(
        client, keys.organiser, name="Trung tâm Phát triển và Hội nhập", acronym="CDI", country="VN"
    )
    assert (
        client.get(f"/v1/organisations/{body['id']}").json()["name"]
        == "Trung tâm Phát triển và Hội nhập"
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"country": "XX"}, "country"),
        ({"country": "IDN"}, "country"),
        ({"kind": "cartel"}, "kind"),
        ({"name": ""}, "name"),
        ({"name": "x" * 301}, "name"),
        ({"name": "bad\u0000name"}, "name"),
        ({"email": "not-an-email"}, "email"),
        ({"website": "javascript:alert(1)"}, "website"),
        ({"unexpected": 1}, "unexpected"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(
    client: TestClient, keys: Keys, change: dict, field: str
) -> None:
    response = client.post("/v1/organisations", json={**HRWG, **change}, headers=keys.organiser)
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    assert field in [e["field"] for e in response.json()["errors"]]


def test_malformed_json_and_wrong_types(client: TestClient, keys: Keys) -> None:
    headers = {**keys.organiser, "Content-Type": "application/json"}
    assert client.post("/v1/organisations", content=b"{nope", headers=headers).status_code == 400
    assert client.post("/v1/organisations", json=[1, 2], headers=headers).status_code == 422
    assert (
        client.post("/v1/organisations", json={**HRWG, "name": 5}, headers=headers).status_code
        == 422
    )


def test_who_may_do_what(client: TestClient, keys: Keys) -> None:
    body = register(client, keys.organiser)
    other = register(client, keys.organiser, name="Migrant CARE", acronym=None)
    own = keys.make("organisation", organisation_id=body["id"])
    # 401 without or with a bad key; 403 with a valid key of the wrong role.
    assert client.post("/v1/organisations", json=HRWG).status_code == 401
    bad = client.post(
        "/v1/organisations", json=HRWG, headers={"Authorization": "Bearer concord_x_y"}
    )
    assert bad.status_code == 401
    assert bad.headers["www-authenticate"].startswith("Bearer")
    assert (
        client.post(
            "/v1/organisations", json=HRWG, headers={"Authorization": "Basic x"}
        ).status_code
        == 401
    )
    assert client.post("/v1/organisations", json=HRWG, headers=own).status_code == 403
    assert client.post("/v1/organisations", json=HRWG, headers=keys.integrator).status_code == 403
    # An organisation changes its own details, never another's.
    mine = client.patch(
        f"/v1/organisations/{body['id']}", json={"website": "https://hrwg.or.id"}, headers=own
    )
    assert mine.status_code == 200
    theirs = client.patch(
        f"/v1/organisations/{other['id']}", json={"name": "Hijacked"}, headers=own
    )
    assert theirs.status_code == 403
    assert client.get(f"/v1/organisations/{other['id']}").json()["name"] == "Migrant CARE"
    assert (
        client.patch(
            f"/v1/organisations/{other['id']}", json={"name": "X"}, headers=keys.integrator
        ).status_code
        == 403
    )
    # Events and key management are not for organisations.
    assert client.get("/v1/events", headers=own).status_code == 403
    assert client.get("/v1/api-keys", headers=own).status_code == 403
    assert client.get("/v1/api-keys", headers=keys.organiser).status_code == 403
    assert client.get("/v1/organisations").status_code == 401
    assert client.get("/v1/organisations", headers=own).status_code == 200


def test_revoked_keys_stop_working_at_once(client: TestClient, keys: Keys) -> None:
    admin = keys.admin
    created = client.post(
        "/v1/api-keys", json={"name": "newsletter", "role": "integrator"}, headers=admin
    )
    assert created.status_code == 201
    secret = created.json()["key"]
    assert secret.startswith(f"concord_{created.json()['prefix']}_")
    headers = {"Authorization": f"Bearer {secret}"}
    assert client.get("/v1/events", headers=headers).status_code == 200
    listed = client.get("/v1/api-keys", headers=admin).json()
    assert all("key" not in k for k in listed)
    assert client.delete(f"/v1/api-keys/{created.json()['id']}", headers=admin).status_code == 200
    assert client.get("/v1/events", headers=headers).status_code == 401
    assert client.delete(f"/v1/api-keys/{uuid4()}", headers=admin).status_code == 404


def test_organisation_keys_need_a_known_organisation(client: TestClient, keys: Keys) -> None:
    admin = keys.admin
    missing = client.post("/v1/api-keys", json={"name": "x", "role": "organisation"}, headers=admin)
    assert missing.status_code == 422
    unknown = client.post(
        "/v1/api-keys",
        json={"name": "x", "role": "organisation", "organisation_id": str(uuid4())},
        headers=admin,
    )
    assert unknown.status_code == 422


def test_if_match_makes_an_update_conditional(client: TestClient, keys: Keys) -> None:
    organiser = keys.organiser
    body = register(client, organiser)
    url = f"/v1/organisations/{body['id']}"
    first = client.patch(url, json={"acronym": "HRWG-ID"}, headers={**organiser, "If-Match": '"1"'})
    assert first.status_code == 200
    assert first.headers["etag"] == '"2"'
    stale = client.patch(url, json={"acronym": "Lost"}, headers={**organiser, "If-Match": '"1"'})
    assert stale.status_code == 412
    assert stale.headers["content-type"] == PROBLEM
    assert stale.json()["current_version"] == 2
    assert client.get(url).json()["acronym"] == "HRWG-ID"
    garbage = client.patch(url, json={"acronym": "x"}, headers={**organiser, "If-Match": "abc"})
    assert garbage.status_code == 400
    unknown = client.patch(f"/v1/organisations/{uuid4()}", json={"name": "x"}, headers=organiser)
    assert unknown.status_code == 404


@pytest.mark.parametrize("tag", ["1", "'1'", '""1""', '"1', '"\u00b9"', '"1.0"', '"1e0"', "*1"])
def test_if_match_takes_only_an_etag_we_issued(client: TestClient, keys: Keys, tag: str) -> None:
    """RFC 9110's entity tag, a quoted version, as the header's documented pattern says. The
    server used to take anything that stripped down to digits (``1``, ``""1``, ``"¹"``), which
    no pattern a client or a request generator can read described."""
    organiser = keys.organiser
    url = f"/v1/organisations/{register(client, organiser)['id']}"
    headers = {**organiser, "If-Match": tag.encode("latin-1")}
    refused = client.patch(url, json={"acronym": "x"}, headers=headers)
    assert refused.status_code == 400, refused.text
    assert refused.json()["type"].endswith("/bad-if-match")
    for issued in ('"1"', 'W/"1"', "*"):
        again = client.patch(url, json={"acronym": "x"}, headers={**organiser, "If-Match": issued})
        assert again.status_code in (200, 412), (issued, again.text)


def test_an_idempotency_key_replays_the_first_response(client: TestClient, keys: Keys) -> None:
    headers = {**keys.organiser, "Idempotency-Key": "register-hrwg-1"}
    first = client.post("/v1/organisations", json=HRWG, headers=headers)
    again = client.post("/v1/organisations", json=HRWG, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["x-event-position"] == first.headers["x-event-position"]
    listed = client.get("/v1/organisations", headers=keys.organiser).json()
    assert listed["total"] == 1, "the retry did nothing"
    other = client.post("/v1/organisations", json={**HRWG, "name": "Other"}, headers=headers)
    assert other.status_code == 422
    assert other.json()["type"].endswith("idempotency-key-reused")
    # Keys are scoped to the credentials: another key may use the same value.
    elsewhere = client.post(
        "/v1/organisations",
        json=HRWG,
        headers={**keys.organiser, "Idempotency-Key": "register-hrwg-1"},
    )
    assert elsewhere.status_code == 201
    assert elsewhere.json()["id"] != first.json()["id"]


def test_concurrent_duplicates_run_once(client: TestClient, keys: Keys) -> None:
    headers = {**keys.organiser, "Idempotency-Key": "race-1"}
    statuses: list[int] = []
    ids: list[str] = []

    def post() -> None:
        response = client.post("/v1/organisations", json=HRWG, headers=headers)
        statuses.append(response.status_code)
        if response.status_code == 201:
            ids.append(response.json()["id"])

    threads = [threading.Thread(target=post) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(statuses) <= {201, 409}
    assert len(set(ids)) == 1
    assert client.get("/v1/organisations", headers=keys.organiser).json()["total"] == 1


def test_lists_filter_and_paginate(client: TestClient, keys: Keys) -> None:
    organiser = keys.organiser
    for name, country in [
        ("HRWG", "ID"),
        ("Migrant CARE", "ID"),
        ("HOME", "SG"),
        ("MAP Foundation", "TH"),
    ]:
        register(client, organiser, name=name, acronym=None, country=country)
    page = client.get(
        "/v1/organisations", params={"country": "ID", "limit": 1}, headers=organiser
    ).json()
    assert page["total"] == 2
    assert len(page["data"]) == 1
    search = client.get("/v1/organisations", params={"q": "care"}, headers=organiser).json()
    assert [o["name"] for o in search["data"]] == ["Migrant CARE"]
    assert (
        client.get("/v1/organisations", params={"limit": 500}, headers=organiser).status_code == 422
    )


def test_the_request_id_becomes_the_events_correlation_id(client: TestClient, keys: Keys) -> None:
    headers = {**keys.organiser, "X-Request-ID": "req-jakarta-2018"}
    response = client.post("/v1/organisations", json=HRWG, headers=headers)
    assert response.headers["x-request-id"] == "req-jakarta-2018"
    position = int(response.headers["x-event-position"])
    feed = client.get("/v1/events", params={"after": position - 1}, headers=keys.integrator)
    assert feed.json()["data"][0]["metadata"]["correlation_id"] == "req-jakarta-2018"


def test_huge_bodies_are_refused_before_parsing(client: TestClient, keys: Keys) -> None:
    body = {**HRWG, "name": "x" * 2_000_000}
    response = client.post("/v1/organisations", json=body, headers=keys.organiser)
    assert response.status_code == 413
    assert response.headers["content-type"] == PROBLEM
    assert client.get("/v1/organisations", headers=keys.organiser).json()["total"] == 0
