"""Who may call what: every route in the OpenAPI schema, for every kind of caller.

The matrix is built from ``app.openapi()["paths"]``, so a new route that is missing from ``ACCESS``
fails the test until someone decides who may call it. Each cell is an outcome class: 401 (no key
or a bad one on a protected route), 403 (a valid key that may not do this), or allowed (anything
else a client can get: 2xx, 404, 409, 422). The ids in the paths are real, so "allowed" usually
means the request did its work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest
from fastapi.testclient import TestClient

from tests.e2e.conftest import Keys

PROBLEM = "application/problem+json"

# -- callers ------------------------------------------------------------------------------------

ANONYMOUS = "anonymous"
BAD_KEY = "bad key"
ADMIN = "admin"
ORGANISER = "organiser"
OWN_ORG = "organisation (own)"
OTHER_ORG = "organisation (other)"
INTEGRATOR = "integrator"
#: Callers that cannot hurt an allowed call when they go first (see ``test_authorization_matrix``).
CALLERS = (ANONYMOUS, BAD_KEY, INTEGRATOR, OTHER_ORG, OWN_ORG, ORGANISER, ADMIN)

EVERYONE = frozenset(CALLERS)
ANY_KEY = frozenset({ADMIN, ORGANISER, OWN_ORG, OTHER_ORG, INTEGRATOR})
#: Public API reads: no key needed. A key that is sent must be valid (the contract: an invalid
#: key is 401), so a bad key is refused even here.
PUBLIC = EVERYONE - {BAD_KEY}
ADMINS = frozenset({ADMIN})
ORGANISERS = frozenset({ADMIN, ORGANISER})
EVENT_READERS = frozenset({ADMIN, ORGANISER, INTEGRATOR})
#: Webhook subscriptions: admins, and integrator keys for their own (another key's is a 404).
INTEGRATORS = frozenset({ADMIN, INTEGRATOR})
#: Organisers, or an organisation key acting for the organisation that owns the object.
OWNER = frozenset({ADMIN, ORGANISER, OWN_ORG})
#: Every member key may call it; what an organisation key sees is filtered to its own rows.
MEMBERS = frozenset({ADMIN, ORGANISER, OWN_ORG, OTHER_ORG})

C = "/v1/consultations/{consultation_id}"
R = C + "/registrations/{registration_id}"
S = "/v1/statements/{statement_id}"
W = "/v1/subscriptions/{subscription_id}"
P = "/s/{statement_id}"

#: (method, path template) -> the callers allowed through. Objects in the paths (and the
#: ``organisation_id`` in bodies) belong to organisation A; "own" is A's key, "other" is B's.
ACCESS: dict[tuple[str, str], frozenset[str]] = {
    # operations
    ("GET", "/health"): EVERYONE,
    ("GET", "/ready"): EVERYONE,
    ("GET", "/metrics"): ADMINS,  # or CONCORD_METRICS_TOKEN; everyone if CONCORD_METRICS_PUBLIC
    # the event log
    ("GET", "/v1/events"): EVENT_READERS,
    ("GET", "/v1/streams/{stream_id}/events"): EVENT_READERS,
    ("GET", "/v1/streams/{stream_id}"): EVENT_READERS,
    ("GET", "/v1/events/stream"): EVENT_READERS,  # ends after CONCORD_SSE_MAX_SECONDS (tests: 1 s)
    ("GET", "/v1/event-types"): EVENT_READERS,
    ("GET", "/v1/asyncapi.json"): PUBLIC,  # documentation, like /openapi.json
    # organisations
    ("POST", "/v1/organisations"): ORGANISERS,
    ("GET", "/v1/organisations"): ANY_KEY,
    ("GET", "/v1/organisations/{organisation_id}"): PUBLIC,
    ("PATCH", "/v1/organisations/{organisation_id}"): OWNER,
    # consultations
    ("POST", "/v1/consultations"): ORGANISERS,
    ("GET", "/v1/consultations"): PUBLIC,
    ("GET", C): PUBLIC,
    ("PATCH", C): ORGANISERS,
    ("GET", C + "/calendar.ics"): PUBLIC,
    ("POST", C + "/reschedule"): ORGANISERS,
    ("POST", C + "/open-registration"): ORGANISERS,
    ("POST", C + "/close-registration"): ORGANISERS,
    ("POST", C + "/cancel"): ORGANISERS,
    ("GET", C + "/reminders"): ORGANISERS,
    ("PUT", C + "/reminders"): ORGANISERS,
    ("POST", C + "/complete"): ORGANISERS,
    ("POST", C + "/sessions"): ORGANISERS,
    ("PATCH", C + "/sessions/{session_id}"): ORGANISERS,
    ("DELETE", C + "/sessions/{session_id}"): ORGANISERS,
    ("POST", C + "/working-groups"): ORGANISERS,
    # registrations
    ("POST", C + "/registrations"): OWNER,
    ("GET", C + "/registrations"): MEMBERS,
    ("POST", R + "/cancel"): OWNER,
    ("POST", R + "/check-in"): ORGANISERS,
    ("POST", R + "/working-group"): ORGANISERS,
    # joint statements (organisation A is on the drafting committee; B is not)
    ("POST", C + "/statements"): ORGANISERS,
    ("GET", S): ANY_KEY,  # a draft; public once published
    ("GET", S + "/endorsements"): ANY_KEY,
    ("GET", S + "/document.{kind}"): PUBLIC,
    ("GET", "/v1/jobs/{job_id}"): PUBLIC,
    ("POST", S + "/recommendations"): OWNER,
    ("PATCH", S + "/recommendations/{recommendation_id}"): OWNER,
    ("DELETE", S + "/recommendations/{recommendation_id}"): OWNER,
    ("POST", S + "/amendments"): OWNER,
    ("POST", S + "/amendments/{amendment_id}/accept"): OWNER,
    ("POST", S + "/amendments/{amendment_id}/reject"): OWNER,
    ("POST", S + "/finalise"): OWNER,
    ("POST", S + "/reopen"): OWNER,
    ("POST", S + "/close-endorsements"): OWNER,
    ("POST", S + "/publish"): OWNER,
    ("POST", S + "/endorsements"): OWNER,
    ("DELETE", S + "/endorsements/{organisation_id}"): OWNER,
    ("GET", S + "/endorsements/{organisation_id}/receipt"): OWNER,
    # erasure: admins anyone; an organisation its own people (another's person is a 404, so
    # nobody can probe who is known: the request reaches the handler)
    ("POST", "/v1/people/erase"): frozenset({ADMIN, OWN_ORG, OTHER_ORG}),
    # invitations to endorse by e-mail (for organisations without a key)
    ("POST", S + "/invitations"): ORGANISERS,
    ("GET", S + "/invitations"): ORGANISERS,
    ("GET", S + "/invitations/{invitation_id}"): ORGANISERS,
    ("POST", S + "/invitations/{invitation_id}/resend"): ORGANISERS,
    ("POST", S + "/invitations/{invitation_id}/revoke"): ORGANISERS,
    # public pages (HTML): no key is read; a sign-on page needs its link's token
    ("GET", P): EVERYONE,
    ("GET", P + "/live"): EVERYONE,
    ("GET", P + "/sign/{token}"): EVERYONE,
    ("POST", P + "/sign/{token}"): EVERYONE,
    ("POST", P + "/sign/{token}/withdraw"): EVERYONE,
    ("POST", P + "/sign/{token}/opened"): EVERYONE,
    # series
    ("POST", "/v1/series"): ORGANISERS,
    ("GET", "/v1/series/{series_id}"): PUBLIC,
    ("POST", "/v1/series/{series_id}/countries"): ORGANISERS,
    # API keys
    ("GET", "/v1/api-keys"): ADMINS,
    ("POST", "/v1/api-keys"): ADMINS,
    ("DELETE", "/v1/api-keys/{key_id}"): ADMINS,
    # how a key is used: admins, and the organisation the key belongs to (the one in the paths
    # is an organisation key of A)
    ("GET", "/v1/api-keys/{key_id}/usage"): frozenset({ADMIN, OWN_ORG}),
    # webhook subscriptions (the one in the paths belongs to the integrator caller's key)
    ("POST", "/v1/subscriptions"): INTEGRATORS,
    ("GET", "/v1/subscriptions"): INTEGRATORS,
    ("GET", W): INTEGRATORS,
    ("PATCH", W): INTEGRATORS,
    ("DELETE", W): INTEGRATORS,
    ("POST", W + "/rotate-secret"): INTEGRATORS,
    ("GET", W + "/deliveries"): INTEGRATORS,
    ("POST", W + "/replay"): INTEGRATORS,
}

#: Served but left out of the schema; they must stay readable without a key.
UNDOCUMENTED_PUBLIC = (
    "/openapi.json",
    "/docs",
    "/redoc",
    "/static/concord.css",  # the public pages' style and script
    "/static/concord.js",
)

#: Cells where the app disagrees with ``ACCESS`` today: (method, path, caller) -> what it does.
#: Each has a strict xfail test below that turns red once the app is fixed; then drop the entry.
KNOWN_DEVIATIONS: dict[tuple[str, str, str], str] = {}


#: Routes whose request cannot succeed on a freshly built world (still allowed: 409, not 403).
NO_SUCCESS = {
    ("POST", C + "/complete"): "the consultation has not started yet",
    ("GET", S + "/document.{kind}"): "not published yet (404)",
    ("GET", "/v1/jobs/{job_id}"): "no such job (404)",
    ("POST", S + "/amendments/{amendment_id}/accept"): "no such amendment (404)",
    ("POST", S + "/amendments/{amendment_id}/reject"): "no such amendment (404)",
    ("POST", S + "/reopen"): "the statement is still a draft",
    ("POST", S + "/close-endorsements"): "the statement is still a draft",
    ("POST", S + "/publish"): "the statement is still a draft",
    ("POST", S + "/endorsements"): "the statement is not finalised",
    ("DELETE", S + "/endorsements/{organisation_id}"): "nothing endorsed yet",
    ("GET", S + "/endorsements/{organisation_id}/receipt"): "nothing endorsed yet (404)",
    ("POST", "/v1/people/erase"): "a person is erased once (then 409); another's is a 404",
    ("POST", S + "/invitations"): "the statement is not finalised (409)",
    ("GET", S + "/invitations/{invitation_id}"): "no such invitation (404)",
    ("POST", S + "/invitations/{invitation_id}/resend"): "no such invitation (404)",
    ("POST", S + "/invitations/{invitation_id}/revoke"): "no such invitation (404)",
    ("GET", P): "the statement is a draft (404 page)",
    ("GET", P + "/live"): "the statement is a draft (404)",
    ("GET", P + "/sign/{token}"): "no such link (404 page)",
    ("POST", P + "/sign/{token}"): "no such link (404 page)",
    ("POST", P + "/sign/{token}/withdraw"): "no such link (404 page)",
    ("POST", P + "/sign/{token}/opened"): "no such link (404 page)",
}


# -- the world the requests act on ----------------------------------------------------------------


@dataclass
class World:
    """Real objects, so the ids in every path exist."""

    org_a: str
    org_b: str
    series_id: str
    consultation_id: str
    session_id: str
    working_group_id: str
    registration_a: str
    registration_b: str
    spare_key_id: str
    starts_at: datetime
    thematic_area: str
    headers: dict[str, dict[str, str]]
    statement_id: str = ""
    recommendation_id: str = ""
    subscription_id: str = ""

    @property
    def ids(self) -> dict[str, str]:
        """Values for the path parameters of every route."""
        return {
            "organisation_id": self.org_a,
            "consultation_id": self.consultation_id,
            "stream_id": self.consultation_id,
            "session_id": self.session_id,
            "registration_id": self.registration_a,
            "series_id": self.series_id,
            "key_id": self.spare_key_id,
            "statement_id": self.statement_id,
            "recommendation_id": self.recommendation_id,
            "amendment_id": str(uuid4()),
            "job_id": str(uuid4()),
            "kind": "pdf",
            "subscription_id": self.subscription_id,
            "invitation_id": str(uuid4()),
            "token": "not-a-token-we-sent-" + uuid4().hex,
        }


def _created(response: Any) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    return response.json()


def build_world(client: TestClient, keys: Keys) -> World:
    """Two organisations, a series, a consultation with an agenda, a working group and open
    registration, and one registration for each organisation (A's and B's)."""
    organiser = keys.organiser
    org_a = _created(
        client.post(
            "/v1/organisations",
            json={"name": "Human Rights Working Group", "kind": "ngo", "country": "ID"},
            headers=organiser,
        )
    )["id"]
    org_b = _created(
        client.post(
            "/v1/organisations",
            json={"name": "Migrant CARE", "kind": "ngo", "country": "ID"},
            headers=organiser,
        )
    )["id"]
    series_id = _created(
        client.post(
            "/v1/series",
            json={"title": "National consultations 2026", "planned_countries": ["ID", "VN"]},
            headers=organiser,
        )
    )["id"]
    starts = datetime.now().astimezone().replace(microsecond=0) + timedelta(days=60)
    consultation = _created(
        client.post(
            "/v1/consultations",
            json={
                "title": "National CSO Consultation on migrant workers' rights",
                "scope": "national",
                "host_country": "ID",
                "city": "Jakarta",
                "mode": "in_person",
                "timezone": "Asia/Jakarta",
                "starts_at": starts.isoformat(),
                "ends_at": (starts + timedelta(hours=8)).isoformat(),
                "organiser_id": org_a,
                "partner_ids": [org_b],
                "capacity": 50,
                "series_id": series_id,
            },
            headers=organiser,
        )
    )
    url = f"/v1/consultations/{consultation['id']}"
    area = consultation["thematic_areas"][0]
    session_id = _created(
        client.post(
            f"{url}/sessions",
            json={
                "title": "Opening plenary",
                "kind": "plenary",
                "starts_at": (starts + timedelta(hours=1)).isoformat(),
                "ends_at": (starts + timedelta(hours=2)).isoformat(),
                "speakers": [{"name": "Speaker", "organisation_id": org_a}],
            },
            headers=organiser,
        )
    )["id"]
    group_id = _created(
        client.post(f"{url}/working-groups", json={"thematic_area": area}, headers=organiser)
    )["id"]
    opened = client.post(
        f"{url}/open-registration",
        json={"closes_at": (starts - timedelta(days=2)).isoformat()},
        headers=organiser,
    )
    assert opened.status_code == 200, opened.text
    registration = {
        org: _created(
            client.post(
                f"{url}/registrations",
                json={
                    "name": f"Delegate of {name}",
                    "email": f"delegate@{name}.example",
                    "organisation_id": org,
                    "role": "delegate",
                },
                headers=organiser,
            )
        )["id"]
        for org, name in ((org_a, "a"), (org_b, "b"))
    }
    spare_key = _created(
        client.post(
            "/v1/api-keys",
            json={"name": "spare", "role": "organisation", "organisation_id": org_a},
            headers=keys.admin,
        )
    )["id"]
    statement = _created(
        client.post(
            f"{url}/statements",
            json={"title": "Joint statement", "language": "en", "drafting_committee": [org_a]},
            headers=organiser,
        )
    )
    recommendation = _created(
        client.post(
            f"/v1/statements/{statement['id']}/recommendations",
            json={"thematic_area": area, "text": "Ratify the CMW."},
            headers=organiser,
        )
    )["sections"][0]["recommendations"][0]["id"]
    integrator = keys.integrator
    subscription = _created(
        client.post(
            "/v1/subscriptions",
            json={"url": "https://hooks.example.org/concord"},
            headers=integrator,
        )
    )["id"]
    headers = {
        ANONYMOUS: {},
        BAD_KEY: {"Authorization": "Bearer concord_00000000_not-a-key-we-issued"},
        ADMIN: keys.admin,
        ORGANISER: organiser,
        OWN_ORG: keys.make("organisation", org_a),
        OTHER_ORG: keys.make("organisation", org_b),
        INTEGRATOR: integrator,
    }
    return World(
        org_a=org_a,
        org_b=org_b,
        series_id=series_id,
        consultation_id=consultation["id"],
        session_id=session_id,
        working_group_id=group_id,
        registration_a=registration[org_a],
        registration_b=registration[org_b],
        spare_key_id=spare_key,
        starts_at=starts,
        thematic_area=area,
        headers=headers,
        statement_id=statement["id"],
        recommendation_id=recommendation,
        subscription_id=subscription,
    )


def _email() -> str:
    return f"{uuid4().hex[:12]}@example.org"


#: A valid body for each route that takes one, so an allowed caller gets past validation and an
#: ownership check inside the route is reached (it runs after the body is parsed).
BODIES: dict[tuple[str, str], Callable[[World], Any]] = {
    ("POST", "/v1/organisations"): lambda w: {
        "name": "KSBSI",
        "kind": "trade_union",
        "country": "ID",
    },
    ("PATCH", "/v1/organisations/{organisation_id}"): lambda w: {"acronym": "HRWG"},
    ("POST", "/v1/consultations"): lambda w: {
        "title": "Follow-up",
        "scope": "national",
        "host_country": "ID",
        "mode": "virtual",
        "timezone": "Asia/Jakarta",
        "starts_at": (w.starts_at + timedelta(days=30)).isoformat(),
        "ends_at": (w.starts_at + timedelta(days=30, hours=3)).isoformat(),
        "organiser_id": w.org_a,
    },
    ("PATCH", C): lambda w: {"venue": "Hotel Ibis Tamarin"},
    ("POST", C + "/reschedule"): lambda w: {
        "starts_at": (w.starts_at + timedelta(days=1)).isoformat(),
        "ends_at": (w.starts_at + timedelta(days=1, hours=8)).isoformat(),
        "reason": "Venue change",
    },
    ("POST", C + "/open-registration"): lambda w: {
        "closes_at": (w.starts_at - timedelta(days=1)).isoformat()
    },
    ("POST", C + "/cancel"): lambda w: {"reason": "Postponed"},
    ("PUT", C + "/reminders"): lambda w: {"consultation_starts": ["P3D", "PT12H"]},
    ("POST", C + "/sessions"): lambda w: {
        "title": "Working groups",
        "kind": "working_group",
        "starts_at": (w.starts_at + timedelta(hours=3)).isoformat(),
        "ends_at": (w.starts_at + timedelta(hours=4)).isoformat(),
    },
    ("PATCH", C + "/sessions/{session_id}"): lambda w: {"title": "Opening"},
    ("POST", C + "/working-groups"): lambda w: {"thematic_area": "Access to justice"},
    ("POST", C + "/registrations"): lambda w: {
        "name": "Another delegate",
        "email": _email(),
        "organisation_id": w.org_a,
        "role": "observer",
    },
    ("POST", R + "/cancel"): lambda w: {"reason": "Cannot travel"},
    ("POST", R + "/working-group"): lambda w: {"working_group_id": w.working_group_id},
    ("POST", "/v1/series"): lambda w: {"title": "Regional", "planned_countries": ["TH"]},
    ("POST", "/v1/series/{series_id}/countries"): lambda w: {"countries": ["KH"]},
    ("POST", "/v1/api-keys"): lambda w: {"name": "ci", "role": "integrator"},
    ("POST", "/v1/subscriptions"): lambda w: {"url": "https://hooks.example.org/crm"},
    ("PATCH", W): lambda w: {"description": "CRM mirror", "status": "paused"},
    ("POST", W + "/replay"): lambda w: {"after": 0},
    ("POST", C + "/statements"): lambda w: {"title": "Another statement", "language": "en"},
    ("POST", S + "/recommendations"): lambda w: {
        "thematic_area": w.thematic_area,
        "text": "Protect undocumented workers.",
    },
    ("PATCH", S + "/recommendations/{recommendation_id}"): lambda w: {"text": "Ratify it now."},
    ("POST", S + "/amendments"): lambda w: {
        "recommendation_id": w.recommendation_id,
        "text": "Ratify the CMW without reservations.",
        "rationale": "Stronger",
        "organisation_id": w.org_a,
    },
    ("POST", S + "/amendments/{amendment_id}/reject"): lambda w: {"reason": "Out of scope"},
    ("POST", S + "/finalise"): lambda w: {
        "endorsement_deadline": (datetime.now(UTC) + timedelta(days=7)).isoformat()
    },
    ("POST", S + "/reopen"): lambda w: {"reason": "New facts"},
    ("POST", S + "/invitations"): lambda w: {
        "organisation_id": w.org_b,
        "email": "coordinator@b.example",
    },
    ("POST", S + "/endorsements"): lambda w: {
        "organisation_id": w.org_a,
        "signatory_name": "Hà Thị Minh Đức",
    },
    ("POST", "/v1/people/erase"): lambda w: {"email": "delegate@a.example"},
}


@pytest.fixture
def world(client: TestClient, keys: Keys) -> World:
    return build_world(client, keys)


# -- the matrix ---------------------------------------------------------------------------------


def outcome(status: int) -> str:
    """The outcome class of a status code; anything a client should never see is 'unexpected'."""
    if status == 401:
        return "401"
    if status == 403:
        return "403"
    if 200 <= status < 300 or status in (404, 409, 422):
        return "allowed"
    return f"unexpected {status}"


def expected(route: tuple[str, str], caller: str) -> str:
    if caller in ACCESS[route]:
        return "allowed"
    return "401" if caller in (ANONYMOUS, BAD_KEY) else "403"


def schema_routes(client: TestClient) -> set[tuple[str, str]]:
    paths = client.app.openapi()["paths"]  # type: ignore[attr-defined]
    return {(method.upper(), path) for path, item in paths.items() for method in item}


def call(client: TestClient, world: World, route: tuple[str, str], caller: str, **ids: str) -> Any:
    method, template = route
    body = BODIES.get(route)
    return client.request(
        method,
        template.format(**{**world.ids, **ids}),
        headers=world.headers[caller],
        json=body(world) if body else None,
    )


def test_every_route_in_the_schema_has_a_row_in_the_table(client: TestClient) -> None:
    served = schema_routes(client)
    missing = sorted(served - ACCESS.keys())
    stale = sorted(ACCESS.keys() - served)
    assert not missing, f"routes with no row in ACCESS (decide who may call them): {missing}"
    assert not stale, f"rows in ACCESS for routes the app no longer serves: {stale}"
    assert BODIES.keys() <= served


def test_authorization_matrix(client: TestClient, keys: Keys) -> None:
    """Every route x every caller lands in the expected outcome class."""
    wrong: list[str] = []
    reads = build_world(client, keys)
    for route in sorted(schema_routes(client) & ACCESS.keys()):
        method, path = route
        # Reads share a world; a write gets one of its own. The refused callers go first, so
        # the first allowed caller acts on the world as it was built and must really succeed.
        world = reads if method == "GET" else build_world(client, keys)
        first_allowed = True
        for caller in CALLERS:
            response = call(client, world, route, caller)
            got = outcome(response.status_code)
            want = KNOWN_DEVIATIONS.get((*route, caller), expected(route, caller))
            if got != want:
                wrong.append(
                    f"{method} {path} as {caller}: expected {want}, got {response.status_code}"
                    f" {response.text[:200]}"
                )
            elif got in ("401", "403"):
                assert response.headers["content-type"] == PROBLEM, (route, caller)
                assert response.json()["status"] == response.status_code, (route, caller)
                if got == "401":
                    assert response.headers["www-authenticate"].startswith("Bearer"), route
            elif first_allowed and caller in ACCESS[route] and route not in NO_SUCCESS:
                first_allowed = False
                if not 200 <= response.status_code < 300:
                    wrong.append(
                        f"{method} {path} as {caller}: allowed, but the request in the table did"
                        f" not succeed ({response.status_code} {response.text[:200]})"
                    )
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("path", UNDOCUMENTED_PUBLIC)
def test_the_schema_and_the_docs_are_public(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 200


# -- organisation keys, by content -------------------------------------------------------------


def test_an_organisation_reads_only_its_own_roster_rows(client: TestClient, world: World) -> None:
    url = f"/v1/consultations/{world.consultation_id}/registrations"
    everyone = client.get(url, headers=world.headers[ORGANISER]).json()
    assert {r["id"] for r in everyone["data"]} == {world.registration_a, world.registration_b}
    for caller, org, mine in (
        (OWN_ORG, world.org_a, world.registration_a),
        (OTHER_ORG, world.org_b, world.registration_b),
    ):
        roster = client.get(url, headers=world.headers[caller])
        assert roster.status_code == 200, roster.text
        body = roster.json()
        assert [r["id"] for r in body["data"]] == [mine], caller
        assert {r["organisation_id"] for r in body["data"]} == {org}, caller
        assert body["total"] == 1, "the total must not count other organisations' people"
        by_status = client.get(url, params={"status": "registered"}, headers=world.headers[caller])
        assert [r["id"] for r in by_status.json()["data"]] == [mine], caller


def test_an_organisation_registers_only_its_own_people(client: TestClient, world: World) -> None:
    url = f"/v1/consultations/{world.consultation_id}/registrations"
    own, other = world.headers[OWN_ORG], world.headers[OTHER_ORG]
    person = {"name": "Yuyun", "role": "delegate"}
    implied = client.post(url, json={**person, "email": _email()}, headers=own)
    assert implied.status_code == 201, implied.text
    assert implied.json()["organisation_id"] == world.org_a
    for body in (
        {**person, "email": _email(), "organisation_id": world.org_b},
        {**person, "email": _email(), "organisation_id": str(uuid4())},
    ):
        refused = client.post(url, json=body, headers=own)
        assert refused.status_code == 403, refused.text
    roster = client.get(url, headers=world.headers[ORGANISER]).json()
    assert roster["total"] == 3, "a refused registration must not be recorded"
    assert client.get(url, headers=other).json()["total"] == 1


def test_an_organisation_cancels_only_its_own_people(client: TestClient, world: World) -> None:
    url = f"/v1/consultations/{world.consultation_id}/registrations"
    own = world.headers[OWN_ORG]
    theirs = client.post(f"{url}/{world.registration_b}/cancel", json={}, headers=own)
    assert theirs.status_code == 403, theirs.text
    roster = {r["id"]: r for r in client.get(url, headers=world.headers[ORGANISER]).json()["data"]}
    assert roster[world.registration_b]["status"] == "registered"
    mine = client.post(f"{url}/{world.registration_a}/cancel", json={}, headers=own)
    assert mine.status_code == 200, mine.text
    assert mine.json()["status"] == "cancelled"


def test_an_organisation_changes_only_its_own_profile(client: TestClient, world: World) -> None:
    own = world.headers[OWN_ORG]
    theirs = client.patch(
        f"/v1/organisations/{world.org_b}", json={"name": "Hijacked"}, headers=own
    )
    assert theirs.status_code == 403, theirs.text
    assert client.get(f"/v1/organisations/{world.org_b}").json()["name"] == "Migrant CARE"
    mine = client.patch(f"/v1/organisations/{world.org_a}", json={"acronym": "HRWG"}, headers=own)
    assert mine.status_code == 200, mine.text
    assert mine.json()["acronym"] == "HRWG"


def test_public_reads_carry_no_personal_data(client: TestClient, world: World) -> None:
    c = f"/v1/consultations/{world.consultation_id}"
    for path in (c, f"{c}/calendar.ics", "/v1/consultations", f"/v1/series/{world.series_id}"):
        response = client.get(path)
        assert response.status_code == 200, (path, response.text)
        assert "@a.example" not in response.text and "@b.example" not in response.text, path


def test_revoked_and_malformed_keys_are_refused(client: TestClient, keys: Keys) -> None:
    revoked = keys.organiser
    key_id = next(
        k["id"]
        for k in client.get("/v1/api-keys", headers=keys.admin).json()
        if revoked["Authorization"].split("_")[1] == k["prefix"]
    )
    assert client.delete(f"/v1/api-keys/{key_id}", headers=keys.admin).status_code == 200
    secret = revoked["Authorization"].removeprefix("Bearer ")
    for headers in (
        revoked,
        {"Authorization": f"Basic {secret}"},
        {"Authorization": "Bearer "},
        {"Authorization": secret},
    ):
        response = client.get("/v1/organisations", headers=headers)
        assert response.status_code == 401, (headers, response.text)


# -- known deviations from the contract ----------------------------------------------------------


def test_a_bad_key_is_refused_on_public_reads_too(client: TestClient, world: World) -> None:
    public = [("GET", C), ("GET", C + "/calendar.ics"), ("GET", "/v1/series/{series_id}")]
    statuses = {route: call(client, world, route, BAD_KEY).status_code for route in public}
    assert set(statuses.values()) == {401}, statuses
