"""``GET /metrics``: who may read it, and that every number in it follows the system.

The exposition is parsed with prometheus_client's own parser. Command counts live in the test
process (and add up across tests), so those tests compare before and after; everything read
from the database or the broker is compared with the real thing.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from structlog.testing import capture_logs

from api.commands import outcome_class
from api.main import create_app
from infra.bootstrap import System
from infra.metrics import prepare_multiprocess_dir
from infra.queue import make_app
from infra.schema import mail_outbox
from services.errors import DomainError
from services.ports import NO_STREAM, NewEvent
from tests import backends
from tests.e2e.conftest import Keys

ROOT = Path(__file__).resolve().parents[2]
EXPOSITION = "text/plain; version=0.0.4"
ORGANISATION = {"name": "Human Rights Working Group", "kind": "ngo", "country": "ID"}
REGISTERED = {"command": "RegisterOrganisation", "outcome": "ok"}


class Samples(dict[tuple[str, frozenset[tuple[str, str]]], float]):
    """One scrape: (sample name, labels) -> value."""

    def value(self, name: str, **labels: str) -> float | None:
        return self.get((name, frozenset(labels.items())))

    def named(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        return {labels: v for (n, labels), v in self.items() if n == name}


def parse(text: str) -> Samples:
    samples = Samples()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def scrape(client: TestClient, headers: dict[str, str]) -> Samples:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(EXPOSITION)
    return parse(response.text)


def with_settings(system: System, **changes: Any) -> System:
    """The same running system seen through other settings (it shares the database)."""
    return dataclasses.replace(system, settings=system.settings.model_copy(update=changes))


def _register(client: TestClient, headers: dict[str, str]) -> dict[str, Any]:
    response = client.post("/v1/organisations", json=ORGANISATION, headers=headers)
    assert response.status_code == 201, response.text
    return {**response.json(), "position": int(response.headers["X-Event-Position"])}


# -- who may read it ------------------------------------------------------------------------------


def test_metrics_need_an_admin_key_by_default(client: TestClient, keys: Keys) -> None:
    assert client.get("/metrics").status_code == 401
    bad = client.get("/metrics", headers={"Authorization": "Bearer concord_0_nope"})
    assert bad.status_code == 401
    assert bad.headers["www-authenticate"].startswith("Bearer")
    for role in ("organiser", "integrator"):
        refused = client.get("/metrics", headers=keys.make(role))
        assert refused.status_code == 403, role
        assert refused.headers["content-type"] == "application/problem+json"
    assert client.get("/metrics", headers=keys.admin).status_code == 200


def test_a_scrape_token_reads_metrics_and_nothing_else(system: System, keys: Keys) -> None:
    token = f"scrape-{uuid4().hex}"
    app = create_app(with_settings(system, metrics_token=SecretStr(token)))
    with TestClient(app, raise_server_exceptions=False) as client:
        bearer = {"Authorization": f"Bearer {token}"}
        assert client.get("/metrics", headers=bearer).status_code == 200
        assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers=keys.admin).status_code == 200
        # The token is not an API key: every other route refuses it.
        assert client.get("/v1/organisations", headers=bearer).status_code == 401


def test_an_empty_scrape_token_is_no_token(system: System) -> None:
    app = create_app(with_settings(system, metrics_token=SecretStr("")))
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/metrics", headers={"Authorization": "Bearer "}).status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer  "}).status_code == 401


def test_public_metrics_need_no_key(system: System) -> None:
    app = create_app(with_settings(system, metrics_public=True))
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/metrics").status_code == 200


def test_the_schema_documents_the_exposition_format(client: TestClient) -> None:
    operation = client.app.openapi()["paths"]["/metrics"]["get"]  # type: ignore[attr-defined]
    assert list(operation["responses"]["200"]["content"]) == [EXPOSITION]
    assert {"401", "403"} <= operation["responses"].keys()


# -- commands -------------------------------------------------------------------------------------


def test_commands_are_counted_by_command_and_outcome(client: TestClient, admin: dict) -> None:
    def count(samples: Samples, outcome: str, command: str = "ReviseOrganisation") -> float:
        return samples.value("concord_commands_total", command=command, outcome=outcome) or 0.0

    before = scrape(client, admin)
    organisation = _register(client, admin)
    _register(client, admin)
    url = f"/v1/organisations/{organisation['id']}"
    assert client.patch(url, json={"acronym": "HRWG"}, headers=admin).status_code == 200
    assert client.patch(url, json={"acronym": "HRWG"}, headers=admin).status_code == 200
    stale = client.patch(url, json={"acronym": "X"}, headers={**admin, "If-Match": '"1"'})
    assert stale.status_code == 412
    missing = client.patch(f"/v1/organisations/{uuid4()}", json={"acronym": "X"}, headers=admin)
    assert missing.status_code == 404
    after = scrape(client, admin)

    assert (
        count(after, "ok", "RegisterOrganisation") - count(before, "ok", "RegisterOrganisation")
        == 2
    )
    for outcome in ("ok", "unchanged", "conflict", "not_found"):
        assert count(after, outcome) - count(before, outcome) == 1, outcome


class _Refused(DomainError):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (_Refused("not-your-organisation"), "forbidden"),
        (_Refused("invalid-dates"), "invalid"),
        (_Refused("unknown-consultation"), "not_found"),
        (_Refused("registration-closed"), "conflict"),
        (RuntimeError("boom"), "error"),
    ],
)
def test_refusals_are_classed_like_their_http_status(error: Exception, outcome: str) -> None:
    assert outcome_class(error) == outcome


# -- the event log and the projections --------------------------------------------------------


def test_events_appended_is_the_head_of_the_log(
    client: TestClient, admin: dict, system: System
) -> None:
    assert scrape(client, admin).value("concord_events_appended_total") == 0
    last = [_register(client, admin) for _ in range(3)][-1]
    samples = scrape(client, admin)
    assert samples.value("concord_events_appended_total") == last["position"]
    assert last["position"] == system.store.head_position() == 3


def test_projection_lag_in_events_and_seconds(
    client: TestClient, admin: dict, system: System
) -> None:
    _register(client, admin)  # the command brings the projections of its stream up to date
    assert (
        scrape(client, admin).value("concord_projection_lag_events", projection="organisations")
        == 0
    )
    system.projector.catch_up()  # … and the worker's loop the others
    caught_up = scrape(client, admin)
    for name in system.projector.projections:
        assert caught_up.value("concord_projection_lag_events", projection=name) == 0, name
        assert caught_up.value("concord_projection_lag_seconds", projection=name) == 0, name
        assert caught_up.value("concord_projection_position", projection=name) == 1, name

    # Appended behind the projector's back (as a worker would find them).
    stream = uuid4()
    system.store.append(stream, "probe", NO_STREAM, [NewEvent("probe.happened", {})])
    system.store.append(stream, "probe", 1, [NewEvent("probe.happened", {})])
    oldest = system.store.read_all(1, 1)[0].recorded_at
    asked = datetime.now(UTC)
    behind = scrape(client, admin)
    answered = datetime.now(UTC)
    for name in system.projector.projections:
        assert behind.value("concord_projection_lag_events", projection=name) == 2, name
        seconds = behind.value("concord_projection_lag_seconds", projection=name)
        assert seconds is not None, name
        low = (asked - oldest).total_seconds()
        assert seconds > 0, name
        assert low - 0.001 <= seconds <= (answered - oldest).total_seconds() + 0.001, name
    # The relay only runs in a worker: it has applied nothing here.
    assert behind.value("concord_projection_lag_events", projection="dispatch") == 3
    assert behind.value("concord_projection_position", projection="dispatch") == 0

    system.projector.catch_up()
    after = scrape(client, admin)
    for name in system.projector.projections:
        assert after.value("concord_projection_lag_events", projection=name) == 0, name
        assert after.value("concord_projection_lag_seconds", projection=name) == 0, name
        assert after.value("concord_projection_position", projection=name) == 3, name
        moved = after.value("concord_projection_last_advanced_timestamp_seconds", projection=name)
        assert moved is not None
        assert asked.timestamp() - 1 <= moved <= datetime.now(UTC).timestamp(), name


def test_a_growing_lag_in_seconds_shows_a_stalled_worker(
    client: TestClient, admin: dict, system: System
) -> None:
    """The relay has not moved since an event an hour old: that hour is what the gauge says."""
    _register(client, admin)
    from sqlalchemy import update

    from infra.schema import events

    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    with system.db.write() as conn:
        conn.execute(update(events).where(events.c.position == 1).values(recorded_at=hour_ago))
    seconds = scrape(client, admin).value("concord_projection_lag_seconds", projection="dispatch")
    assert seconds is not None
    assert 3600 <= seconds < 3600 + 60


# -- mail -------------------------------------------------------------------------------------


def _mail_row(rule: str, status: str, failures: int) -> dict[str, Any]:
    now = datetime.now(UTC)
    key = uuid4().hex
    return {
        "key": key,
        "reminder_key": f"{rule}:{key}",
        "rule": rule,
        "consultation_id": uuid4(),
        "recipient_kind": "registration",
        "recipient_id": uuid4(),
        "message_id": f"<{key}@concord.test>",
        "status": status,
        "attempts": failures + (1 if status == "sent" else 0),
        "failures": failures,
        "next_attempt_at": now,
        "created_at": now,
        "sent_at": now if status == "sent" else None,
    }


def test_mail_counters_follow_the_outbox(client: TestClient, admin: dict, system: System) -> None:
    empty = scrape(client, admin)
    assert empty.named("concord_reminders_sent_total") == {}
    assert empty.value("concord_deliveries_failed_total", channel="mail") == 0

    rows = [
        _mail_row("starts_in_7d", "sent", 0),
        _mail_row("starts_in_7d", "sent", 2),
        _mail_row("starts_in_1d", "sent", 0),
        _mail_row("starts_in_1d", "failed", 5),
        _mail_row("registration_confirmed", "pending", 1),
        _mail_row("registration_confirmed", "skipped", 0),
    ]
    with system.db.write() as conn:
        conn.execute(mail_outbox.insert(), rows)
    samples = scrape(client, admin)
    assert samples.named("concord_reminders_sent_total") == {
        frozenset({("rule", "starts_in_7d")}): 2,
        frozenset({("rule", "starts_in_1d")}): 1,
    }
    assert samples.value("concord_deliveries_failed_total", channel="mail") == 2 + 5 + 1
    assert samples.named("concord_mail_outbox_messages") == {
        frozenset({("status", "sent")}): 3,
        frozenset({("status", "failed")}): 1,
        frozenset({("status", "pending")}): 1,
        frozenset({("status", "skipped")}): 1,
    }


# -- the Celery queue -----------------------------------------------------------------------------


# kombu's SQLAlchemy transport (the embedded broker) still declares a ``noload`` relationship.
@pytest.mark.filterwarnings(
    "ignore:The ``noload`` loader strategy is deprecated:DeprecationWarning"
)
def test_queue_depth_of_the_embedded_broker(
    client: TestClient, admin: dict, system: System
) -> None:
    queue = system.settings.queue
    assert scrape(client, admin).value("concord_queue_depth", queue=queue) == 0
    celery = make_app(system.settings)
    try:
        for _ in range(3):
            celery.send_task("metrics.probe", kwargs={}, queue=queue)
        assert scrape(client, admin).value("concord_queue_depth", queue=queue) == 3
        # A delivered, unacknowledged message is no longer waiting.
        with celery.connection_for_read() as connection:
            channel = connection.default_channel
            assert channel.basic_get(queue) is not None
            assert scrape(client, admin).value("concord_queue_depth", queue=queue) == 2
            channel.basic_recover(requeue=True)
    finally:
        celery.close()


_REDIS = backends.redis()


@pytest.mark.redis
@pytest.mark.skipif(not _REDIS.ok, reason=_REDIS.reason)
def test_queue_depth_of_a_redis_queue_with_its_priority_lists(system: System) -> None:
    import redis

    url = os.environ["REDIS_URL"]
    queue = f"concord-metrics-{uuid4().hex[:12]}"
    on_redis = with_settings(system, redis_url=url, queue=queue)
    keys = Keys(on_redis)
    celery = make_app(on_redis.settings)
    server = redis.Redis.from_url(url)
    try:
        with TestClient(create_app(on_redis), raise_server_exceptions=False) as client:
            assert scrape(client, keys.admin).value("concord_queue_depth", queue=queue) == 0
            celery.send_task("metrics.probe", kwargs={}, queue=queue)
            celery.send_task("metrics.probe", kwargs={}, queue=queue)
            celery.send_task("metrics.probe", kwargs={}, queue=queue, priority=9)
            lists = [k for k in server.scan_iter(match=f"{queue}*") if server.type(k) == b"list"]
            assert len(lists) == 2, "kombu keeps a second priority in a list of its own"
            assert scrape(client, keys.admin).value("concord_queue_depth", queue=queue) == 3
    finally:
        celery.close()
        for key in server.scan_iter(match=f"*{queue}*"):
            server.delete(key)
        server.close()


def test_an_unreachable_broker_leaves_the_queue_out_and_says_so(system: System, keys: Keys) -> None:
    down = with_settings(system, redis_url="redis://127.0.0.1:9/0")
    app = create_app(down)
    with TestClient(app, raise_server_exceptions=False) as client, capture_logs() as logs:
        samples = scrape(client, keys.admin)
    assert samples.named("concord_queue_depth") == {}
    assert samples.value("concord_metrics_source_up", source="queue") == 0
    assert samples.value("concord_metrics_source_up", source="event_log") == 1
    assert samples.value("concord_events_appended_total") == 0
    warned = [e for e in logs if e["event"] == "metrics source unavailable"]
    assert [e["source"] for e in warned] == ["queue"]


# -- several API processes ------------------------------------------------------------------------

API_PROCESS = textwrap.dedent(
    """
    import os, sys
    from fastapi.testclient import TestClient
    from api.main import create_app
    from infra.bootstrap import bootstrap

    system = bootstrap()
    headers = {{"Authorization": "Bearer " + os.environ["TEST_ADMIN_KEY"]}}
    with TestClient(create_app(system)) as client:
        for _ in range(int(sys.argv[1])):
            created = client.post("/v1/organisations", json={organisation!r}, headers=headers)
            assert created.status_code == 201, created.text
        scraped = client.get("/metrics", headers=headers)
        assert scraped.status_code == 200, scraped.text
    system.close()
    sys.stdout.write(scraped.text)
    """
).format(organisation=ORGANISATION)


def test_counts_add_up_across_api_processes(system: System, tmp_path: Path) -> None:
    """Two API processes with PROMETHEUS_MULTIPROC_DIR: each scrape sees both processes' counts."""
    shared = tmp_path / "prometheus"
    prepare_multiprocess_dir(shared)
    _, secret = system.keys.create("admin", "metrics test", None)
    env = {
        **{k: v for k, v in os.environ.items() if k != "REDIS_URL"},
        "DATABASE_URL": system.settings.database_url,
        "CONCORD_DATA_DIR": str(system.settings.data_dir),
        "CONCORD_LOG_FORMAT": "console",
        "PROMETHEUS_MULTIPROC_DIR": str(shared),
        "TEST_ADMIN_KEY": secret,
    }

    def api_process(commands: int) -> Samples:
        done = subprocess.run(
            [sys.executable, "-c", API_PROCESS, str(commands)],
            env=env,
            cwd=ROOT,
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
        return parse(done.stdout.decode())

    first = api_process(2)
    second = api_process(3)
    assert first.value("concord_commands_total", **REGISTERED) == 2
    assert second.value("concord_commands_total", **REGISTERED) == 2 + 3
    assert second.value("concord_events_appended_total") == 5
    assert len(list(shared.glob("counter_*.db"))) == 2, "one file per process"

    # This process is not one of them; reading the directory, it reports the same sum.
    reader = with_settings(system, metrics_multiproc_dir=shared)
    with TestClient(create_app(reader), raise_server_exceptions=False) as client:
        admin = Keys(reader).admin
        assert scrape(client, admin).value("concord_commands_total", **REGISTERED) == 5
        # A new deployment starts from an empty directory.
        prepare_multiprocess_dir(shared)
        assert scrape(client, admin).value("concord_commands_total", **REGISTERED) is None


def test_failed_webhook_attempts_are_counted(
    client: TestClient, admin: dict, system: System
) -> None:
    from datetime import UTC, datetime
    from uuid import uuid4

    from infra.webhooks.tables import webhook_attempts, webhook_deliveries, webhook_subscriptions

    now = datetime.now(UTC)
    subscription, delivery = uuid4(), uuid4()
    with system.db.write() as conn:
        conn.execute(
            webhook_subscriptions.insert().values(
                id=subscription, owner_key_id=uuid4(), url="https://example.org/hook",
                status="active", secret="whsec_x", start_after=0, created_at=now, updated_at=now,
            )
        )  # fmt: skip
        conn.execute(
            webhook_deliveries.insert().values(
                id=delivery, subscription_id=subscription, event_id=uuid4(), position=1,
                event_type="consultation.planned", status="pending", attempts=3, round=1,
                created_at=now, updated_at=now,
            )
        )  # fmt: skip
        for number, code in enumerate((500, None, 302, 204), start=1):
            conn.execute(
                webhook_attempts.insert().values(
                    delivery_id=delivery, number=number, round=1, started_at=now,
                    duration_ms=5, status_code=code,
                )
            )  # fmt: skip
    samples = scrape(client, admin)
    assert samples.value("concord_deliveries_failed_total", channel="webhook") == 3
    assert samples.named("concord_webhook_deliveries") == {frozenset({("status", "pending")}): 1}


def test_connections_opened_are_counted(client: TestClient, admin: dict, system: System) -> None:
    def opened() -> float:
        return scrape(client, admin).value("concord_db_connections_opened_total") or 0.0

    opened()  # a scrape reads the database after it has rendered the counts
    before = opened()
    assert opened() == before  # a connection the pool kept is not opened again
    system.db.engine.dispose()  # the pool lets its connections go: the next use opens one
    opened()
    assert opened() >= before + 1
