"""Webhook deliveries to a real HTTP endpoint on 127.0.0.1, on SQLite and PostgreSQL.

Every request is verified with the ``standardwebhooks`` package and parsed with the
``cloudevents`` SDK by the receiver (``tests/webhook_receiver.py``). Time is a clock the test
moves (real time plus an offset), so a retry schedule of more than a day runs in seconds.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from sqlalchemy import select, text

from infra.bootstrap import System
from infra.mail.transport import Smtp
from infra.projections.projector import Projector
from infra.reminders import Reminders
from infra.settings import Settings
from infra.webhooks.delivery import (
    RECORD_EVERY,
    RECORD_WITHIN_S,
    Deliverer,
    Success,
    record_delivered,
)
from infra.webhooks.guard import AllowList
from infra.webhooks.relay import WebhookRelay
from infra.webhooks.sender import Answer
from infra.webhooks.subscriptions import Subscription, Subscriptions, subscriptions
from infra.webhooks.tables import webhook_attempts, webhook_deliveries, webhook_subscriptions
from services.organisations.commands import RegisterOrganisation
from services.organisations.model import ORGANISATION
from services.ports import RecordedEvent
from services.webhooks import policy
from tests.mailserver import MailServer
from tests.webhook_receiver import Received, Receiver, Reply

TIMEOUT_S = 1.0


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    """Loopback allowed (the receiver lives there) and a short timeout."""
    return Settings(
        DATABASE_URL=database_url,
        CONCORD_DATA_DIR=tmp_path / "data",
        REDIS_URL=None,
        CONCORD_LOG_FORMAT="console",
        CONCORD_WEBHOOK_ALLOW_HOSTS="127.0.0.1",
        CONCORD_WEBHOOK_TIMEOUT=TIMEOUT_S,
    )


class Clock:
    """Real time moved forward by the test (rows the relay stamps with real time stay due)."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, delta: timedelta) -> None:
        self.offset += delta


@dataclass
class Rig:
    system: System
    receiver: Receiver
    clock: Clock = field(default_factory=Clock)
    nudges: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.relay = Projector(
            self.system.db,
            self.system.store,
            [WebhookRelay(lambda name, kwargs: self.nudges.append({"task": name, **kwargs}))],
        )
        self.subs: Subscriptions = subscriptions(self.system, clock=self.clock)
        self.deliverer = self.make_deliverer()

    def make_deliverer(self, **overrides: Any) -> Deliverer:
        options: dict[str, Any] = {
            "catch_up": self.relay.catch_up,
            "clock": self.clock,
            "random": lambda: 0.5,  # no jitter: the schedule exactly
            **overrides,
        }
        return Deliverer(
            self.system.db, self.system.store, self.system.bus, self.system.settings, **options
        )

    def subscribe(self, url: str | None = None, **kwargs: Any) -> Subscription:
        owner = self.system.keys.create("integrator", "crm")[0].id
        sub, secret = self.subs.create(owner, url or self.receiver.url, **kwargs)
        self.receiver.secrets.append(secret)
        return sub

    def publish(self, count: int) -> list[RecordedEvent]:
        """``count`` organisations registered: public events in the log."""
        recorded = []
        for i in range(count):
            org = uuid4()
            outcome = self.system.bus.handle(
                ORGANISATION,
                org,
                RegisterOrganisation(org, f"Migrant Forum {i}", "ngo", "ID"),
            )
            recorded += list(outcome.recorded)
        positions = [e.position for e in recorded]
        if None in positions:  # PostgreSQL numbers them just after commit
            self.system.store.sequence_pending()
            recorded = [
                e for e in self.system.store.read_all(0, 10_000) if e.id in {r.id for r in recorded}
            ]
        return recorded

    def run(self, sub: Subscription) -> int:
        return self.deliverer.run(sub.id)

    def deliveries(self, sub: Subscription) -> list[Any]:
        with self.system.db.read() as conn:
            return list(
                conn.execute(
                    select(webhook_deliveries)
                    .where(webhook_deliveries.c.subscription_id == sub.id)
                    .order_by(webhook_deliveries.c.position)
                ).all()
            )

    def attempts(self, delivery_id: UUID) -> list[Any]:
        with self.system.db.read() as conn:
            return list(
                conn.execute(
                    select(webhook_attempts)
                    .where(webhook_attempts.c.delivery_id == delivery_id)
                    .order_by(webhook_attempts.c.id)
                ).all()
            )

    def logged(self, *types: str) -> list[RecordedEvent]:
        return self.system.store.read_all(0, 10_000, types=list(types))

    def next_attempt_at(self, sub: Subscription) -> datetime | None:
        head = next(d for d in self.deliveries(sub) if d.status in ("pending", "sending"))
        when: datetime | None = head.next_attempt_at
        return when


@contextmanager
def _rigged(system: System) -> Iterator[Rig]:
    with Receiver() as receiver:
        yield Rig(system, receiver)
        assert receiver.problems == [], receiver.problems


@pytest.fixture
def rig(system: System) -> Iterator[Rig]:
    with _rigged(system) as rigged:
        yield rigged


@pytest.fixture
def pg_rig(pg_system: System) -> Iterator[Rig]:
    """A rig on PostgreSQL only, with the loopback receiver allowed as in ``settings``."""
    allowed = {"webhook_allow_hosts": "127.0.0.1", "webhook_timeout_s": TIMEOUT_S}
    with _rigged(replace(pg_system, settings=pg_system.settings.model_copy(update=allowed))) as r:
        yield r


# -- delivering ---------------------------------------------------------------------------------


def test_each_event_arrives_once_signed_and_parsed_in_position_order(rig: Rig) -> None:
    before = rig.publish(2)  # before the subscription: not delivered
    sub = rig.subscribe()
    events = rig.publish(5)
    assert rig.run(sub) == 5
    assert rig.receiver.ids() == [str(e.id) for e in events]
    assert rig.receiver.positions() == sorted(e.position or 0 for e in events)
    first = rig.receiver.received[0]
    assert first.event.get_type() == "org.concord.organisation.registered.v1"
    assert first.event.get_data()["name"] == "Migrant Forum 0"
    assert first.verified_by == {0}
    assert first.path == "/hooks/concord"
    assert str(before[0].id) not in rig.receiver.ids()
    rows = rig.deliveries(sub)
    assert [(r.status, r.attempts, r.last_status_code) for r in rows] == [("delivered", 1, 204)] * 5
    assert rig.nudges == [{"task": "webhooks.deliver", "subscription_id": str(sub.id)}]
    assert rig.run(sub) == 0, "nothing is sent twice"
    assert len(rig.receiver.received) == 5


@pytest.mark.postgres
def test_a_success_is_recorded_without_waiting_for_the_flush_and_only_in_its_transaction(
    pg_rig: Rig,
) -> None:
    """The success statement turns ``synchronous_commit`` off for its own transaction (its
    commit does not wait for the WAL flush: a success lost with the database server only
    means that delivery is sent again), and for nothing else the pooled connection runs."""
    rig = pg_rig
    sub = rig.subscribe()
    rig.publish(1)
    rig.relay.catch_up()
    (claim,) = rig.deliverer.claims(sub.id)
    now = datetime.now(UTC)
    answer = Answer(204, {}, b"", None, 3)
    with rig.system.db.write() as conn:
        assert conn.execute(text("SHOW synchronous_commit")).scalar() == "on"
        assert record_delivered(conn, [Success(claim, answer, now, now)]) == {claim.delivery_id}
        assert conn.execute(text("SHOW synchronous_commit")).scalar() == "off"
    with rig.system.db.read() as conn:
        assert conn.execute(text("SHOW synchronous_commit")).scalar() == "on"
    assert [(r.status, r.attempts) for r in rig.deliveries(sub)] == [("delivered", 1)]


@pytest.mark.postgres
def test_successes_are_recorded_in_groups_and_a_slow_endpoints_one_by_one(pg_rig: Rig) -> None:
    """A fast endpoint's successes are recorded together, never more than RECORD_EVERY of
    them sent and unrecorded; a slow endpoint's each before the next is sent."""
    rig = pg_rig
    fast, slow = rig.subscribe(), rig.subscribe()
    recorded: dict[UUID, list[int]] = {fast.id: [], slow.id: []}

    def count(request: Received) -> None:  # delivered rows as each request arrives
        sub = fast if request.path.endswith("/fast") else slow
        recorded[sub.id].append(sum(r.status == "delivered" for r in rig.deliveries(sub)))

    rig.receiver.on_request = count
    with rig.system.db.write() as conn:  # tell the two apart by path
        for sub, path in ((fast, "fast"), (slow, "slow")):
            conn.execute(
                webhook_subscriptions.update()
                .where(webhook_subscriptions.c.id == sub.id)
                .values(url=f"{rig.receiver.url}/{path}")
            )
    events = rig.publish(2 * RECORD_EVERY + 5)
    assert rig.run(fast) == 2 * RECORD_EVERY + 5
    seen = recorded[fast.id]
    assert seen == sorted(seen)
    assert all(k - count <= RECORD_EVERY - 1 for k, count in enumerate(seen)), seen
    assert any(count < k for k, count in enumerate(seen)), "recorded one by one"
    assert [(r.status, r.attempts) for r in rig.deliveries(fast)] == [("delivered", 1)] * len(
        events
    )
    for event in events[:3]:  # the same events, slow to answer this time
        rig.receiver.script[str(event.id)] = [Reply(delay=1.5 * RECORD_WITHIN_S)]
    with rig.system.db.write() as conn:  # only the first three are due for the slow one
        conn.execute(
            webhook_deliveries.update()
            .where(
                webhook_deliveries.c.subscription_id == slow.id,
                webhook_deliveries.c.position > events[2].position,
            )
            .values(next_attempt_at=rig.clock() + timedelta(days=1))
        )
    assert rig.run(slow) == 3
    assert recorded[slow.id] == [0, 1, 2]


def test_event_type_filters_choose_what_is_delivered(rig: Rig) -> None:
    orgs = rig.subscribe(event_types=["org.concord.organisation.registered.v1"])
    plain = rig.subscribe(event_types=["organisation.registered"])
    other = rig.subscribe(event_types=["statement.endorsed"])
    rig.publish(2)
    assert rig.run(orgs) == 2
    assert rig.run(plain) == 2
    assert rig.run(other) == 0
    assert rig.deliveries(other) == []


def test_scripted_failures_follow_the_schedule(rig: Rig) -> None:
    """500, a timeout, 429 with Retry-After, a redirect (not followed), 503 with an HTTP-date
    Retry-After, then 200; the next event waits for the first."""
    sub = rig.subscribe()
    first, second = rig.publish(2)
    rig.receiver.script[str(first.id)] = [
        Reply(500, body=b"boom"),
        Reply(204, delay=TIMEOUT_S + 1.5),
        Reply(429, headers={"Retry-After": "3600"}),
        Reply(302, headers={"Location": rig.receiver.url + "/elsewhere"}),
        Reply(503, headers={"Retry-After": "later"}),  # unreadable: the schedule decides
        Reply(200),
    ]

    def attempt_expecting(delay: timedelta, status: int | None) -> None:
        sent = len(rig.receiver.received)
        start = rig.clock()
        rig.run(sub)
        assert len(rig.receiver.received) == sent + 1
        row = rig.deliveries(sub)[0]
        assert row.last_status_code == status
        due = rig.next_attempt_at(sub)
        assert due is not None
        assert delay <= due - start < delay + timedelta(seconds=TIMEOUT_S + 3)
        # Not a moment before it is due.
        rig.clock.advance(due - rig.clock() - timedelta(seconds=1))
        assert rig.run(sub) == 0
        assert len(rig.receiver.received) == sent + 1
        rig.clock.advance(timedelta(seconds=1))

    attempt_expecting(timedelta(seconds=5), 500)
    attempt_expecting(timedelta(minutes=5), None)  # the timeout
    assert "timeout" in rig.deliveries(sub)[0].last_error.lower()
    attempt_expecting(timedelta(hours=1), 429)  # Retry-After beats the 30 minutes
    attempt_expecting(timedelta(hours=2), 302)
    attempt_expecting(timedelta(hours=5), 503)
    assert rig.run(sub) == 2, "the sixth attempt succeeds, then the second event goes at once"
    assert rig.receiver.unique_ids() == [str(first.id), str(second.id)]
    assert all(r.path == "/hooks/concord" for r in rig.receiver.received), "no redirect followed"
    rows = rig.deliveries(sub)
    assert [(r.status, r.attempts) for r in rows] == [("delivered", 6), ("delivered", 1)]
    log = rig.attempts(rows[0].id)
    assert [a.status_code for a in log] == [500, None, 429, 302, 503, 200]
    assert log[0].response_body == "boom"
    timestamps = [r.timestamp for r in rig.receiver.received]
    assert timestamps == sorted(timestamps), "webhook-timestamp is each attempt's own"
    assert {r.webhook_id for r in rig.receiver.received[:6]} == {str(first.id)}


def test_retry_after_as_an_http_date_is_honoured(rig: Rig) -> None:
    sub = rig.subscribe()
    (event,) = rig.publish(1)
    later = rig.clock() + timedelta(hours=3)
    rig.receiver.script[str(event.id)] = [
        Reply(503, headers={"Retry-After": format_datetime(later, usegmt=True)})
    ]
    rig.run(sub)
    due = rig.next_attempt_at(sub)
    assert due is not None and abs((due - later).total_seconds()) < 2


def test_a_delivery_is_given_up_after_more_than_a_day_and_the_next_one_goes(rig: Rig) -> None:
    sub = rig.subscribe()
    first, second = rig.publish(2)
    rig.receiver.script[str(first.id)] = [Reply(500)] * policy.ATTEMPTS
    started = rig.clock()
    for _ in range(policy.ATTEMPTS - 1):
        assert rig.run(sub) == 0
        rig.clock.advance(rig.next_attempt_at(sub) - rig.clock())  # type: ignore[operator]
    assert rig.clock() - started > timedelta(hours=24)
    assert rig.run(sub) == 2, "the last attempt gives up, and the next event is delivered"
    rows = rig.deliveries(sub)
    assert [(r.status, r.attempts) for r in rows] == [("failed", 8), ("delivered", 1)]
    failed = rig.logged("webhook.delivery_failed")
    assert len(failed) == 1
    assert failed[0].data["event_id"] == str(first.id)
    assert failed[0].data["attempts"] == 8 and failed[0].data["status_code"] == 500
    assert rig.receiver.ids() == [str(first.id)] * 8 + [str(second.id)]


def test_410_disables_the_endpoint_and_resuming_delivers_what_waited(rig: Rig) -> None:
    sub = rig.subscribe()
    first, second = rig.publish(2)
    rig.receiver.script[str(first.id)] = [Reply(410)]
    assert rig.run(sub) == 0
    current = rig.subs.get(sub.id)
    assert current is not None and current.status == "disabled"
    assert current.disabled_reason == "gone (410)"
    disabled = rig.logged("webhook.endpoint_disabled")
    assert [(e.data["reason"], e.data["status_code"]) for e in disabled] == [("gone", 410)]
    assert disabled[0].data["owner_key_id"] == str(sub.owner_key_id)
    rig.clock.advance(timedelta(days=1))
    assert rig.deliverer.due() == []
    assert rig.run(sub) == 0
    rig.publish(1)
    assert len(rig.receiver.received) == 1
    resumed = rig.subs.update(sub.id, status="active")
    assert resumed is not None and resumed.status == "active" and resumed.failing_since is None
    assert rig.deliverer.due() == [sub.id]
    assert rig.run(sub) == 3
    assert rig.receiver.unique_ids()[:2] == [str(first.id), str(second.id)]
    assert len(rig.logged("webhook.endpoint_disabled")) == 1


def test_the_subscriptions_contact_is_told_once_that_its_endpoint_was_disabled(
    rig: Rig, tmp_path: Path
) -> None:
    sub = rig.subscribe(contact_email="ops@crm.example", description="CRM mirror")
    silent = rig.subscribe(rig.receiver.url + "/other")  # no contact: nobody to tell
    (first,) = rig.publish(1)
    rig.receiver.script[str(first.id)] = [Reply(410), Reply(410)]
    assert rig.run(sub) == 0 and rig.run(silent) == 0
    with MailServer(tmp_path) as smtp:
        reminders = Reminders(rig.system, mail=Smtp(smtp.url, 10))
        keys = reminders.tick()
        assert len(keys) == 2
        results = {r.status for r in (reminders.send(k) for k in keys)}
        assert results == {"sent", "skipped"}
        (message,) = smtp.inbox.messages
        assert message["To"].addresses[0].addr_spec == "ops@crm.example"
        assert message["Subject"] == "Webhook deliveries to 127.0.0.1 are stopped"
        text = message.get_body(("plain",)).get_content()
        assert "answered 410 Gone" in text and rig.receiver.url in text and "CRM mirror" in text
        assert f"/v1/subscriptions/{sub.id}/deliveries" in text
        # Once: another tick and another send change nothing.
        assert reminders.tick() == []
        assert {reminders.send(k).status for k in keys} == {"not-claimed"}
        assert len(smtp.inbox.messages) == 1
    recorded = rig.logged("reminder.sent")
    assert [(e.data["rule"], e.data["recipient_id"]) for e in recorded] == [
        ("webhook_endpoint_disabled", str(sub.id))
    ]
    assert recorded[0].data["consultation_id"] is None


def test_no_notice_goes_out_when_the_endpoint_was_resumed_first(rig: Rig, tmp_path: Path) -> None:
    sub = rig.subscribe(contact_email="ops@crm.example")
    (first,) = rig.publish(1)
    rig.receiver.script[str(first.id)] = [Reply(410)]
    rig.run(sub)
    rig.subs.update(sub.id, status="active")
    with MailServer(tmp_path) as smtp:
        reminders = Reminders(rig.system, mail=Smtp(smtp.url, 10))
        (key,) = reminders.tick()
        result = reminders.send(key)
        assert result.status == "skipped" and "resumed" in (result.detail or "")
        assert smtp.inbox.messages == []


def test_an_endpoint_failing_for_days_is_disabled_once(rig: Rig) -> None:
    sub = rig.subscribe()
    events = rig.publish(8)
    for e in events:
        rig.receiver.script[str(e.id)] = [Reply(500)] * 20
    started = rig.clock()
    while (current := rig.subs.get(sub.id)) is not None and current.status == "active":
        rig.run(sub)
        due = rig.next_attempt_at(sub)
        assert due is not None
        rig.clock.advance(max(due - rig.clock(), timedelta(0)))
        assert rig.clock() - started < timedelta(days=7), "never disabled"
    assert rig.clock() - started >= timedelta(days=5)
    disabled = rig.logged("webhook.endpoint_disabled")
    assert [e.data["reason"] for e in disabled] == ["failing"]
    assert current is not None and current.disabled_reason is not None
    assert current.disabled_reason.startswith("failing since")
    given_up = rig.logged("webhook.delivery_failed")
    assert [e.data["position"] for e in given_up] == [e.position for e in events[: len(given_up)]]
    assert len(given_up) >= 4, "in order: each event gives up before the next is tried"
    sent = len(rig.receiver.received)
    rig.clock.advance(timedelta(days=2))
    assert rig.run(sub) == 0 and len(rig.receiver.received) == sent


def test_pause_holds_deliveries_and_resume_sends_them_in_order(rig: Rig) -> None:
    sub = rig.subscribe()
    rig.subs.update(sub.id, status="paused")
    events = rig.publish(3)
    assert rig.run(sub) == 0
    assert rig.deliverer.due() == []
    assert [r.status for r in rig.deliveries(sub)] == ["pending"] * 3, "queued while paused"
    rig.subs.update(sub.id, status="active")
    assert rig.run(sub) == 3
    assert rig.receiver.ids() == [str(e.id) for e in events]


def test_secret_rotation_signs_with_both_secrets_until_the_grace_period_ends(rig: Rig) -> None:
    sub = rig.subscribe()
    rig.publish(1)
    rig.run(sub)
    rotated = rig.subs.rotate(sub.id)
    assert rotated is not None
    updated, new_secret = rotated
    assert new_secret != rig.receiver.secrets[0]
    assert updated.previous_secret_expires_at is not None
    rig.receiver.secrets.append(new_secret)
    rig.publish(1)
    rig.run(sub)
    during = rig.receiver.received[-1]
    assert during.verified_by == {0, 1}, "each secret verifies on its own"
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    rig.clock.advance(timedelta(hours=24, seconds=1))
    rig.publish(1)
    rig.run(sub)
    after = rig.receiver.received[-1]
    assert after.verified_by == {1}
    assert len(after.headers["webhook-signature"].split(" ")) == 1
    assert rig.receiver.received[0].verified_by == {0}


def test_replay_sends_again_from_a_position_in_order(rig: Rig) -> None:
    older = rig.publish(2)  # before the subscription
    sub = rig.subscribe()
    newer = rig.publish(3)
    assert rig.run(sub) == 3
    done = rig.subs.replay(sub.id, after=newer[0].position or 0)
    assert done is not None and done.complete and done.scheduled == 2
    assert rig.run(sub) == 2
    assert rig.receiver.ids()[3:] == [str(e.id) for e in newer[1:]], "same webhook-ids"
    everything = rig.subs.replay(sub.id, after=0)
    assert everything is not None and everything.scheduled == 5
    assert rig.run(sub) == 5
    assert rig.receiver.ids()[5:] == [str(e.id) for e in older + newer]
    rows = rig.deliveries(sub)
    assert [r.status for r in rows] == ["delivered"] * 5
    assert [r.round for r in rows] == [0, 0, 1, 2, 2]
    partial = rig.subs.replay(sub.id, after=0, limit=2)
    assert partial is not None and not partial.complete and partial.scheduled == 2
    assert partial.until == older[1].position
    rest = rig.subs.replay(sub.id, after=partial.until)
    assert rest is not None and rest.complete and rest.scheduled == 3


def test_events_after_a_replay_still_arrive_once(rig: Rig) -> None:
    sub = rig.subscribe()
    rig.publish(2)
    rig.run(sub)
    # The relay has not seen these yet when the replay starts: they come through the relay.
    later = rig.publish(2)
    rig.subs.replay(sub.id, after=0)
    assert rig.run(sub) == 4
    assert rig.receiver.ids()[-2:] == [str(e.id) for e in later]
    assert len(rig.deliveries(sub)) == 4


# -- crashes and races ---------------------------------------------------------------------------


def test_two_workers_at_once_never_send_the_same_delivery_twice(rig: Rig) -> None:
    sub = rig.subscribe()
    events = rig.publish(12)
    for e in events:
        rig.receiver.script[str(e.id)] = [Reply(204, delay=0.05)]
    workers = [rig.make_deliverer() for _ in range(3)]
    errors: list[BaseException] = []

    def work(deliverer: Deliverer) -> None:
        try:
            for _ in range(20):
                deliverer.run(sub.id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert rig.receiver.ids() == [str(e.id) for e in events], "each once, in order"
    assert all(len(rig.attempts(r.id)) == 1 for r in rig.deliveries(sub))


def test_a_claim_left_by_a_dead_worker_is_taken_over_after_its_lease(rig: Rig) -> None:
    sub = rig.subscribe()
    (event,) = rig.publish(1)
    rig.relay.catch_up()
    dead = rig.deliverer.claim(sub.id)  # …and the worker dies before recording anything
    assert dead is not None
    assert rig.run(sub) == 0, "the claim holds"
    assert rig.deliverer.due() == []
    rig.clock.advance(rig.deliverer.lease + timedelta(seconds=1))
    assert rig.deliverer.due() == [sub.id]
    assert rig.run(sub) == 1
    assert rig.receiver.ids() == [str(event.id)]
    (row,) = rig.deliveries(sub)
    assert row.status == "delivered"
    log = rig.attempts(row.id)
    assert [(a.number, a.status_code) for a in log] == [(1, None), (2, 204)]
    assert log[0].error.startswith("interrupted")
    # The dead worker's late answer changes nothing.
    late = rig.deliverer.record(dead, rig.deliverer.send(dead, event), rig.clock())
    assert late is False
    assert rig.deliveries(sub)[0].status == "delivered"


def test_a_batch_left_by_a_dead_worker_logs_what_it_may_have_sent_as_interrupted(
    rig: Rig,
) -> None:
    """A claimed batch is sent in order and its successes recorded in groups of at most
    RECORD_EVERY: of a dead worker's batch only the first RECORD_EVERY it still holds can have
    been sent. Those are logged as interrupted attempts; the rest were never sent."""
    sub = rig.subscribe()
    events = rig.publish(RECORD_EVERY + 2)
    rig.relay.catch_up()
    dead = rig.deliverer.claims(sub.id)  # …and the worker dies before recording anything
    assert [c.position for c in dead] == [e.position for e in events]
    assert len({c.token for c in dead}) == 1
    assert rig.run(sub) == 0, "the claims hold"
    rig.clock.advance(2 * rig.deliverer.lease + timedelta(seconds=1))
    assert rig.deliverer.due() == [sub.id]
    assert rig.run(sub) == RECORD_EVERY + 2
    assert rig.receiver.ids() == [str(e.id) for e in events], "each once, in order"
    rows = rig.deliveries(sub)
    assert [(r.status, r.attempts) for r in rows] == [("delivered", 2)] * RECORD_EVERY + [
        ("delivered", 1)
    ] * 2
    for row in rows[:RECORD_EVERY]:
        log = rig.attempts(row.id)
        assert [(a.number, a.status_code) for a in log] == [(1, None), (2, 204)]
        assert log[0].error.startswith("interrupted")
    for row in rows[RECORD_EVERY:]:
        assert [(a.number, a.status_code) for a in rig.attempts(row.id)] == [(1, 204)]


def test_a_failure_in_a_batch_gives_back_the_claims_behind_it(rig: Rig) -> None:
    sub = rig.subscribe()
    events = rig.publish(4)
    rig.receiver.script[str(events[1].id)] = [Reply(500), Reply(204)]
    assert rig.run(sub) == 1
    rows = rig.deliveries(sub)
    assert [(r.status, r.attempts, r.claim_token) for r in rows[1:]] == [
        ("pending", 1, None),
        ("pending", 0, None),
        ("pending", 0, None),
    ], "the failed one waits for its retry; the two behind it were never sent"
    assert [a.status_code for a in rig.attempts(rows[2].id)] == []
    rig.clock.advance(rig.next_attempt_at(sub) - rig.clock())  # type: ignore[operator]
    assert rig.run(sub) == 3
    assert rig.receiver.ids() == [str(e.id) for e in events[:2]] + [str(e.id) for e in events[1:]]
    assert [(r.status, r.attempts) for r in rig.deliveries(sub)] == [
        ("delivered", 1),
        ("delivered", 2),
        ("delivered", 1),
        ("delivered", 1),
    ]


def test_a_batch_stops_sending_when_too_little_of_its_claim_is_left(rig: Rig) -> None:
    sub = rig.subscribe()
    events = rig.publish(3)
    rig.relay.catch_up()
    deliverer = rig.make_deliverer()
    batch = deliverer.claims(sub.id)
    assert len(batch) == 3
    assert batch[0].until - rig.clock() > deliverer.lease
    rig.clock.advance(batch[0].until - rig.clock() - deliverer.lease + timedelta(seconds=1))
    assert deliverer._send_batch(batch) == 1, "the first is sent; the rest given back"
    rows = rig.deliveries(sub)
    assert [(r.status, r.attempts, r.claim_token) for r in rows] == [
        ("delivered", 1, None),
        ("pending", 0, None),
        ("pending", 0, None),
    ]
    assert rig.run(sub) == 2
    assert rig.receiver.ids() == [str(e.id) for e in events]


def test_the_scan_nudges_each_due_subscription_once_a_minute(rig: Rig) -> None:
    sub = rig.subscribe()
    rig.publish(1)
    rig.relay.catch_up()
    assert rig.deliverer.due() == [sub.id]
    assert rig.deliverer.due() == [], "already nudged"
    rig.clock.advance(timedelta(seconds=61))
    assert rig.deliverer.due() == [sub.id]
    rig.run(sub)
    assert rig.deliverer.due() == []


# -- where requests may go -------------------------------------------------------------------------


def test_the_connection_goes_to_the_checked_address_with_the_names_host_header(
    rig: Rig,
) -> None:
    """Resolved once, pinned: the request reaches the address the guard checked, and the
    endpoint still sees its own name in Host."""
    port = rig.receiver.server.server_address[1]
    lookups: list[str] = []

    def resolve(host: str, _port: int) -> list[str]:
        lookups.append(host)
        return ["127.0.0.1"]

    allow = AllowList.parse("hooks.test")
    named = subscriptions(rig.system, resolve=resolve)
    named.allow = allow
    owner = rig.system.keys.create("integrator", "on-premise")[0].id
    sub, secret = named.create(owner, f"http://hooks.test:{port}/hooks/concord")
    rig.receiver.secrets.append(secret)
    (event,) = rig.publish(1)
    lookups.clear()
    assert rig.make_deliverer(resolve=resolve, allow=allow).run(sub.id) == 1
    assert lookups == ["hooks.test"], "resolved once, by us"
    (received,) = rig.receiver.received
    assert received.headers["host"] == f"hooks.test:{port}"
    assert received.webhook_id == str(event.id)


def test_a_name_that_resolves_to_loopback_at_send_time_is_refused(rig: Rig) -> None:
    """DNS rebinding: public when registered, loopback when sent — refused, and retried."""
    public = subscriptions(rig.system, resolve=lambda host, port: ["93.184.215.14"])
    owner = rig.system.keys.create("integrator", "rebinding")[0].id
    sub, _ = public.create(owner, "https://rebind.example.org/hook")
    rig.publish(1)
    deliverer = rig.make_deliverer(resolve=lambda host, port: ["127.0.0.1"], allow=AllowList())
    assert deliverer.run(sub.id) == 0
    (row,) = rig.deliveries(sub)
    assert row.status == "pending" and row.attempts == 1
    assert row.last_error.startswith("refused: rebind.example.org resolves to 127.0.0.1")
    assert rig.receiver.received == []


def test_the_readme_receiver_verifies_and_parses_real_deliveries(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    """The ten-line receiver in README.md ("Webhooks"), served by uvicorn, gets real deliveries."""
    import ast
    import re
    import socket

    import uvicorn

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("### Webhooks") :]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    owner = rig.system.keys.create("integrator", "readme")[0].id
    sub, secret = rig.subs.create(owner, f"http://127.0.0.1:{port}/concord")
    source = code.group(1).replace('Webhook("whsec_…")', f'Webhook("{secret}")')
    assert source != code.group(1)
    namespace: dict[str, Any] = {}
    exec(compile(source, "README.md", "exec"), namespace)
    server = uvicorn.Server(
        uvicorn.Config(namespace["app"], host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            thread.join(0.05)
        events = rig.publish(2)
        assert rig.run(sub) == 2
        rig.subs.replay(sub.id, after=0)
        assert rig.run(sub) == 2, "replayed: received again, printed once"
    finally:
        server.should_exit = True
        thread.join(10)
    printed = [
        line.split(" ", 2)
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("org.concord.")
    ]
    assert [(kind, int(position), ast.literal_eval(data)) for kind, position, data in printed] == [
        ("org.concord.organisation.registered.v1", e.position, e.data) for e in events
    ]
    assert [r.last_status_code for r in rig.deliveries(sub)] == [204, 204]


def test_a_revoked_keys_subscriptions_stop_delivering(rig: Rig) -> None:
    sub = rig.subscribe()
    rig.publish(1)
    rig.relay.catch_up()
    rig.system.keys.revoke(sub.owner_key_id)
    assert rig.deliverer.due() == []
    assert rig.run(sub) == 0
    assert rig.receiver.received == []
    assert [r.status for r in rig.deliveries(sub)] == ["pending"]
