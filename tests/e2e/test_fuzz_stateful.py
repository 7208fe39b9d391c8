"""Schemathesis' stateful and authentication checks over the served OpenAPI schema, in process.

* Sequences: Schemathesis' state machine follows the schema's links (api/openapi.py ``LINKS``)
  from a created object to what acts on it, with an admin key: an organisation, then a
  consultation for it, its agenda, registration and delegates, a statement and its
  recommendations; API keys and webhook subscriptions, to their deletion. No answer may be a
  5xx; an object just created must not be a 404 (``ensure_resource_availability``); one
  deleted must stay gone (``use_after_free``); every answer must be what the schema documents.
* Keys: every operation the schema says needs a key is called with an admin key, aimed at real
  objects, until it succeeds; then Schemathesis sends the same request without a key and with
  a bad one, and both must be refused (``ignored_auth``).

Invalid input across the whole API (negative mode, ``negative_data_rejection``) is
tests/e2e/test_fuzz_openapi.py. Anything known to be wrong, or a false positive of the tool,
is tolerated one item at a time in ``KNOWN``, each naming a test below that shows it on its own.

Bounded: a few dozen short scenarios and a few requests per operation, derandomised (which link
a step follows is still drawn at random by Schemathesis, so the exact path varies run to run;
the coverage asserted is what every run reaches).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any

import hypothesis
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.parameters import ParameterLocation
from schemathesis.generation.stateful.state_machine import StepInput, StepOutput, normalize_name
from schemathesis.openapi.checks import UseAfterFree
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ensure_resource_availability,
    ignored_auth,
    response_schema_conformance,
    status_code_conformance,
    use_after_free,
)
from structlog.testing import capture_logs

from infra.bootstrap import System
from services.consultations.commands import DEFAULT_THEMATIC_AREAS
from tests.e2e.conftest import Keys
from tests.e2e.fuzzing import SEED, Findings, Known, Seen, bounded, pinned, served_schema, streams
from tests.e2e.test_authorization_matrix import (
    ADMIN,
    ANONYMOUS,
    BAD_KEY,
    BODIES,
    NO_SUCCESS,
    C,
    S,
    W,
    World,
    build_world,
)

CONFORMANCE = [status_code_conformance, content_type_conformance, response_schema_conformance]
STATEFUL_CHECKS = [not_a_server_error, use_after_free, ensure_resource_availability, *CONFORMANCE]
AUTH_CHECKS = [not_a_server_error, ignored_auth, *CONFORMANCE]
#: Scenarios, and requests in each: long enough for the deepest flows (an organisation, its
#: consultation, registration opened, a delegate registered and cancelled; a statement, a
#: recommendation, an amendment accepted) to be reached in a run.
SCENARIOS = 20
STEPS = 40
#: Generated requests per operation that needs a key, after the matrix's valid one.
AUTH_EXAMPLES = 2
#: A webhook endpoint on a public name (never called: deliveries run in the worker).
HOOK = "https://hooks.example.org/concord"
HEADER = ParameterLocation.HEADER


def _revoked_key_usage(seen: Seen) -> bool:
    return (
        seen.operation == "GET /v1/api-keys/{key_id}/usage"
        and isinstance(seen.failure, UseAfterFree)
        and seen.failure.free.startswith("DELETE /v1/api-keys/")
    )


KNOWN: dict[str, Known] = {
    # Not a fault: DELETE /v1/api-keys/{id} revokes a key, which stays on record (listed, with
    # revoked_at) so that what it did, and who still tries it, can be read after a leak.
    "revoked key's usage": Known("test_a_revoked_keys_usage_stays_readable", _revoked_key_usage),
}


@pytest.fixture
def world(client: TestClient, keys: Keys) -> World:
    return build_world(client, keys)


@pytest.fixture
def api_schema(client: TestClient) -> Iterator[Any]:
    yield from served_schema(client)


def _operations(schema: Any) -> list[Any]:
    return [result.ok() for result in schema.get_all_operations()]


def needs_key(operation: Any) -> bool:
    return bool(operation.definition.raw.get("security") == [{"apiKey": []}])


# -- sequences ----------------------------------------------------------------------------------


Rule = Callable[[dict[str, Any]], dict[str, Any]]


def _rules(world: World) -> dict[tuple[str, str], Rule]:
    """Rules a request body must follow that its schema cannot state: when things happen (a
    consultation in the future, its sessions inside it, registration closing before it), that
    a reference names an object that exists, that a webhook URL is https. Applied to generated
    bodies so that a scenario gets past its first step; every other field stays generated."""
    starts = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=90)
    emails = count()

    def at(hours: int) -> str:
        return (starts + timedelta(hours=hours)).isoformat()

    def put(**fields: Any) -> Rule:
        """These fields, whatever was generated (``None``: left out)."""
        return lambda body: {
            **{k: v for k, v in body.items() if k not in fields},
            **{k: v for k, v in fields.items() if v is not None},
        }

    def when(**fields: Any) -> Rule:
        """Those of these fields the body has (an update may leave any out)."""
        return lambda body: {**body, **{k: v for k, v in fields.items() if k in body}}

    def key(body: dict[str, Any]) -> dict[str, Any]:
        """An organisation key names its organisation; no other key names one."""
        if body["role"] == "organisation" or body.get("organisation_id") is not None:
            return {**body, "role": "organisation", "organisation_id": world.org_a}
        return body

    def registration(body: dict[str, Any]) -> dict[str, Any]:
        return {
            **body,
            "email": f"delegate-{next(emails)}@a.example",
            "organisation_id": world.org_a,
        }

    return {
        # The default thematic areas, which the recommendations below name.
        ("POST", "/v1/consultations"): put(
            starts_at=at(0),
            ends_at=at(8),
            co_organiser_ids=[],
            partner_ids=[world.org_b],
            series_id=None,
            thematic_areas=None,
        ),
        ("POST", f"{C}/reschedule"): put(starts_at=at(24), ends_at=at(30)),
        ("POST", f"{C}/open-registration"): put(closes_at=at(-48)),
        ("POST", f"{C}/sessions"): put(
            starts_at=at(1), ends_at=at(2), thematic_area=None, speakers=[]
        ),
        ("PATCH", f"{C}/sessions/{{session_id}}"): when(
            starts_at=at(2), ends_at=at(3), thematic_area=None, speakers=[]
        ),
        ("POST", f"{C}/working-groups"): put(
            thematic_area=DEFAULT_THEMATIC_AREAS[0], facilitator_registration_id=None
        ),
        ("POST", f"{C}/registrations"): registration,
        ("POST", f"{C}/statements"): put(drafting_committee=[world.org_a]),
        ("POST", f"{S}/recommendations"): put(thematic_area=DEFAULT_THEMATIC_AREAS[0]),
        ("POST", f"{S}/amendments"): put(organisation_id=world.org_a),
        ("POST", f"{S}/finalise"): put(endorsement_deadline=at(-24 * 60)),
        ("POST", f"{S}/endorsements"): put(organisation_id=world.org_a, content_hash=None),
        ("POST", "/v1/api-keys"): key,
        ("POST", "/v1/subscriptions"): put(url=HOOK, event_types=None),
        ("PATCH", W): when(url=HOOK, event_types=None),
    }


class Workflows:
    """What a stateful run did: answers by operation and status, links followed to a success."""

    def __init__(self) -> None:
        self.answers: Counter[tuple[str, int]] = Counter()
        self.followed: set[str] = set()

    @property
    def succeeded(self) -> set[str]:
        return {label for label, status in self.answers if 200 <= status < 300}

    def __str__(self) -> str:
        return "\n".join(
            f"{n:4} {label} {status}" for (label, status), n in sorted(self.answers.items())
        )


def run_workflows(schema: Any, world: World, findings: Findings) -> Workflows:
    seen = Workflows()
    endless = [operation.path for operation in _operations(schema) if streams(operation)]
    schema = schema.exclude(path=endless)
    # Valid requests only: invalid ones are test_fuzz_openapi.py's, and a scenario goes no
    # further than its first refusal. The key is the run's: none is generated.
    schema.config.generation.modes = [GenerationMode.POSITIVE]
    schema.config.generation.with_security_parameters = False
    # The schema's own links only. Most create routes answer an untyped object, so links
    # inferred from response schemas guess at fields that are not there (``consultation_id``
    # in a consultation) and spend the budget on 404s.
    schema.config.phases.stateful.inference.algorithms = []
    rules = _rules(world)

    @schema.hook
    def map_body(context: Any, body: Any) -> Any:
        rule = rules.get((context.operation.method.upper(), context.operation.path))
        return rule(body) if rule is not None and isinstance(body, dict) else body

    machine = schema.as_state_machine()

    class Scenario(machine):  # type: ignore[misc, valid-type]
        def step(self, input: StepInput) -> StepOutput | None:
            case = input.case
            # X-Min-Position is the creating request's position when a link carried it; a
            # generated one may not be in the log (a 503, as documented): pinned instead.
            carried = {name.lower() for where, name in input.applied_parameters if where == HEADER}
            pin = {
                k: v for k, v in (pinned(case.operation) or {}).items() if k.lower() not in carried
            }
            response = findings.send(case, headers=pin)
            if response is None:
                return None
            self.after_call(response, case)  # recorded first: the checks read the scenario
            findings.validate(case, response, STATEFUL_CHECKS, recorder=self.recorder)
            seen.answers[case.operation.label, response.status_code] += 1
            if 200 <= response.status_code < 300 and input.transition and input.is_applied:
                seen.followed.add(input.transition.id)
            return StepOutput(response, case)

    # A scenario may start with any operation that has links to follow; one with an id in its
    # path then names a random object, a 404 that ends the scenario. Those operations are
    # reached through links instead (a new consultation, then its registrations).
    for label in machine._root_labels:
        if "{" in label:
            setattr(Scenario, normalize_name(f"RANDOM -> {label}"), None)  # no longer a rule
    with capture_logs():
        Scenario.run(
            settings=hypothesis.settings(
                max_examples=SCENARIOS,
                stateful_step_count=STEPS,
                derandomize=True,
                deadline=None,
                database=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
                print_blob=False,
            )
        )
    return seen


#: What every run reaches, however the links fall: creations followed by reads, changes and
#: deletions, so that the stateful checks had something to check.
REACHED = {
    "POST /v1/organisations",
    "POST /v1/consultations",
    "GET /v1/consultations/{consultation_id}",
    "POST /v1/api-keys",
    "DELETE /v1/api-keys/{key_id}",
    "POST /v1/subscriptions",
    "GET /v1/subscriptions/{subscription_id}",
    "PATCH /v1/subscriptions/{subscription_id}",
    "DELETE /v1/subscriptions/{subscription_id}",
}


def test_sequences_of_requests_as_admin(api_schema: Any, world: World, system: System) -> None:
    findings = Findings(world.headers[ADMIN], system.db.is_sqlite, KNOWN)
    seen = run_workflows(api_schema, world, findings)
    assert not findings, str(findings)
    assert seen.succeeded >= REACHED, f"not reached: {REACHED - seen.succeeded}\n{seen}"


# -- keys -----------------------------------------------------------------------------------------


def _known_good(operation: Any, world: World) -> Any:
    """The authorization matrix's request: real objects in the path, a valid body."""
    body = BODIES.get((operation.method.upper(), operation.path))
    return operation.Case(
        path_parameters={p.name: world.ids[p.name] for p in operation.path_parameters},
        headers=pinned(operation),
        **({"body": body(world), "media_type": "application/json"} if body else {}),
    )


def probe_keys(
    schema: Any, world: World, findings: Findings, fresh: Callable[[], World]
) -> set[str]:
    """Send each operation that needs a key the matrix's request, then a couple of generated
    ones at the same objects, all with the admin key, checking ``ignored_auth`` on each; return
    the operations whose key was probed (they succeeded, so the check sent the request again
    without a key and with a bad one)."""
    probed: set[str] = set()
    schema.config.generation.with_security_parameters = False  # the key is the run's
    for operation in _operations(schema):
        if streams(operation) or not needs_key(operation):
            continue
        # An earlier request may have used up the shared world (a consultation cancelled, a
        # subscription deleted): then one of the operation's own.
        for retry in (False, True):
            target = fresh() if retry else world
            with capture_logs():
                response = findings.call(_known_good(operation, target), AUTH_CHECKS)
            if response is not None and 200 <= response.status_code < 300:
                probed.add(operation.label)
                break
            if (operation.method.upper(), operation.path) in NO_SUCCESS:
                break
        real = {p.name: target.ids[p.name] for p in operation.path_parameters}

        @hypothesis.seed(SEED)
        @bounded(AUTH_EXAMPLES)
        @given(
            case=operation.as_strategy(
                generation_mode=GenerationMode.POSITIVE,
                path_parameters=real,
                headers=pinned(operation),
            )
        )
        def generated(case: Any) -> None:
            response = findings.call(case, AUTH_CHECKS)
            if response is not None and 200 <= response.status_code < 300:
                probed.add(case.operation.label)

        with capture_logs():
            generated()
    return probed


def test_operations_that_need_a_key_refuse_none_and_a_bad_one(
    api_schema: Any, client: TestClient, keys: Keys, world: World, system: System
) -> None:
    findings = Findings(world.headers[ADMIN], system.db.is_sqlite, KNOWN)
    probed = probe_keys(api_schema, world, findings, lambda: build_world(client, keys))
    assert not findings, str(findings)
    keyed = {op.label for op in _operations(api_schema) if needs_key(op) and not streams(op)}
    unprobed = sorted(keyed - probed)
    # What cannot succeed on a fresh world (a statement still a draft, an invitation nobody
    # sent) cannot be probed by the check, which needs a success to repeat: sent here directly.
    cannot = {f"{method} {path}" for method, path in NO_SUCCESS}
    assert not set(unprobed) - cannot, f"never succeeded, so never probed: {unprobed}"
    operations = {op.label: op for op in _operations(api_schema)}
    refused = {}
    for label in unprobed:
        case = _known_good(operations[label], world)
        for caller in (ANONYMOUS, BAD_KEY):
            response = case.call(headers=world.headers[caller])
            refused[label, caller] = response.status_code
    assert set(refused.values()) == {401}, refused


# -- known, each on its own -----------------------------------------------------------------------


def test_a_revoked_keys_usage_stays_readable(client: TestClient, world: World) -> None:
    """Revoking a key (its DELETE) keeps it on record: its usage, including the refused tries
    made with it afterwards, is what an organisation reads after a leak."""
    admin = world.headers[ADMIN]
    created = client.post(
        "/v1/api-keys", json={"name": "leaked", "role": "integrator"}, headers=admin
    )
    key = created.json()
    assert client.delete(f"/v1/api-keys/{key['id']}", headers=admin).status_code == 200
    tried = client.get("/v1/events", headers={"Authorization": f"Bearer {key['key']}"})
    assert tried.status_code == 401
    usage = client.get(f"/v1/api-keys/{key['id']}/usage", headers=admin)
    assert usage.status_code == 200, usage.text
    assert usage.json()["key"]["revoked_at"] is not None
    assert usage.json()["totals"]["denied"] >= 1


def test_every_known_item_names_a_test_here() -> None:
    names = {known.shown_by for known in KNOWN.values()}
    assert names <= set(globals()), names - set(globals())
