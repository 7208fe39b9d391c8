"""Settled records of sending go after ``CONCORD_RETENTION_DAYS`` (infra/retention.py), on
SQLite and PostgreSQL: webhook deliveries delivered or given up, with their attempts, and
e-mails settled in any way. What is still waiting stays, nothing is sent again because its
record went, and a replay still sends an old event again."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from infra.bootstrap import System
from infra.mail.transport import Smtp
from infra.projections.reminders import reminders as reminders_table
from infra.queue import make_app
from infra.reminders import Reminders
from infra.retention import purge
from infra.schema import mail_outbox
from infra.webhooks.tables import webhook_attempts
from services.webhooks import policy

# The webhook suite's rig and settings, the reminder suite's client and SMTP server.
from tests.integration.test_reminders import MINUTE, open_with_participants, run
from tests.integration.test_reminders import client as client
from tests.integration.test_reminders import smtp as smtp
from tests.integration.test_webhooks import Rig, _rigged
from tests.integration.test_webhooks import settings as settings
from tests.mailserver import MailServer
from tests.webhook_receiver import Reply

DAYS = 30.0


@pytest.fixture
def rig(system: System) -> Iterator[Rig]:
    with _rigged(system) as rigged:
        yield rigged


def _attempts(rig: Rig) -> int:
    with rig.system.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(webhook_attempts)).scalar_one())


def test_old_settled_deliveries_go_with_their_attempts_and_the_waiting_ones_stay(
    rig: Rig,
) -> None:
    sub = rig.subscribe()
    delivered = rig.publish(2)
    failing = rig.publish(1)[0]
    rig.receiver.script[str(delivered[1].id)] = [Reply(500), Reply(200)]
    rig.receiver.script[str(failing.id)] = [Reply(500)] * policy.ATTEMPTS
    assert rig.run(sub) == 1, "the first is delivered, the second fails once"
    rig.clock.advance(rig.next_attempt_at(sub) - rig.clock())  # type: ignore[operator]
    assert rig.run(sub) == 1, "the second goes on its retry; the third fails"
    while rig.deliveries(sub)[2].status != "failed":  # retried for over a day, then given up
        rig.clock.advance(rig.next_attempt_at(sub) - rig.clock())  # type: ignore[operator]
        rig.run(sub)
    waiting = rig.publish(1)[0]
    rig.receiver.script[str(waiting.id)] = [Reply(503)]
    rig.run(sub)
    assert [r.status for r in rig.deliveries(sub)] == [
        "delivered",
        "delivered",
        "failed",
        "pending",
    ]
    assert _attempts(rig) == 1 + 2 + policy.ATTEMPTS + 1

    # Within the retention nothing goes; a moment past it, the three settled ones do.
    first_settled = min(r.updated_at for r in rig.deliveries(sub))
    assert purge(rig.system.db, DAYS, now=first_settled + timedelta(days=DAYS)).deliveries == 0
    later = rig.clock() + timedelta(days=DAYS, minutes=1)
    done = purge(rig.system.db, DAYS, now=later, batch=2)
    assert (done.deliveries, done.attempts, done.complete) == (3, 1 + 2 + policy.ATTEMPTS, True)
    (left,) = rig.deliveries(sub)
    assert (left.event_id, left.status) == (waiting.id, "pending")
    assert [a.status_code for a in rig.attempts(left.id)] == [503]
    assert _attempts(rig) == 1

    # The relay does not bring the purged ones back; the waiting one is delivered once.
    sent = len(rig.receiver.received)
    rig.clock.advance(rig.next_attempt_at(sub) - rig.clock())  # type: ignore[operator]
    assert rig.run(sub) == 1
    assert rig.receiver.ids()[sent:] == [str(waiting.id)]
    assert len(rig.deliveries(sub)) == 1

    # A replay sends the old events again, with their webhook-ids, as new deliveries.
    replay = rig.subs.replay(sub.id, after=0)
    assert replay is not None and replay.complete and replay.scheduled == 4
    rig.receiver.script.clear()
    assert rig.run(sub) == 4
    expected = [str(e.id) for e in [*delivered, failing, waiting]]
    assert rig.receiver.unique_ids() == expected
    assert rig.receiver.ids()[-4:] == expected


def test_a_queue_is_read_from_its_head_and_a_waiting_delivery_holds_up_what_follows(
    rig: Rig,
) -> None:
    """Deliveries settle in position order, so the purge reads each queue from its head: a
    window with a delivery still waiting (here one replayed) ends that queue's turn, and of
    that window only the old settled ones go."""
    sub = rig.subscribe()
    first, second, third = rig.publish(3)
    assert rig.run(sub) == 3
    replay = rig.subs.replay(sub.id, after=0, limit=1)
    assert replay is not None and replay.scheduled == 1
    later = rig.clock() + timedelta(days=DAYS + 1)
    assert purge(rig.system.db, DAYS, now=later, batch=1).deliveries == 0
    assert purge(rig.system.db, DAYS, now=later, batch=3).deliveries == 2
    (left,) = rig.deliveries(sub)
    assert (left.event_id, left.status, left.round) == (first.id, "pending", 1)
    assert rig.run(sub) == 1
    assert rig.receiver.ids()[-1] == str(first.id)
    assert {second.id, third.id}.isdisjoint(r.event_id for r in rig.deliveries(sub))


def _message(status: str, due: datetime) -> dict[str, object]:
    key = f"test:{uuid4()}"
    return {
        "key": key,
        "reminder_key": key,
        "rule": "registration_confirmed",
        "consultation_id": None,
        "recipient_kind": "registration",
        "recipient_id": uuid4(),
        "message_id": f"<{key}@concord.test>",
        "status": status,
        "attempts": 1,
        "failures": 0,
        "next_attempt_at": due,
        "created_at": due,
        "sent_at": due if status == "sent" else None,
    }


def test_settled_messages_go_after_the_retention_and_unsettled_ones_stay(system: System) -> None:
    now = datetime.now(UTC)
    old, young = now - timedelta(days=DAYS + 1), now - timedelta(days=DAYS - 1)
    settled = ("sent", "skipped", "dropped", "failed")
    rows = [_message(s, when) for s in settled for when in (old, young)]
    rows += [_message(s, old) for s in ("pending", "sending")]
    with system.db.write() as conn:
        conn.execute(mail_outbox.insert(), rows)
    done = purge(system.db, DAYS, now=now, batch=3)
    assert (done.messages, done.complete) == (4, True)
    with system.db.read() as conn:
        left = conn.execute(select(mail_outbox.c.status, mail_outbox.c.next_attempt_at)).all()
    kept = sorted((status, due == old) for status, due in left)
    assert kept == sorted([(s, False) for s in settled] + [("pending", True), ("sending", True)])


def test_a_purged_message_is_never_sent_again(
    client: TestClient, system: System, smtp: MailServer
) -> None:
    """Sent confirmations purged; a tick, with every reminder marked pending again (as a
    rebuild of the reminders might leave them), sends none of them again, and the next
    reminder still goes out."""
    starts = open_with_participants(client, system, 3)
    reminders = Reminders(system, mail=Smtp(smtp.url, 10))
    now = datetime.now(UTC)
    assert len(run(reminders, now)) == 3
    assert purge(system.db, DAYS, now=now + timedelta(days=DAYS + 1)).messages == 3
    with system.db.write() as conn:
        assert conn.execute(select(func.count()).select_from(mail_outbox)).scalar_one() == 0
        conn.execute(reminders_table.update().values(pending=True))
    assert run(reminders, now + MINUTE) == [], "fanned out before: not again"
    assert len(run(reminders, starts - timedelta(days=7) + MINUTE)) == 3
    assert len(smtp.inbox.messages) == 6


def test_zero_days_keeps_everything(system: System) -> None:
    old = datetime.now(UTC) - timedelta(days=3650)
    with system.db.write() as conn:
        conn.execute(mail_outbox.insert(), [_message("sent", old)])
    assert purge(system.db, 0).as_dict() == {
        "deliveries": 0,
        "attempts": 0,
        "messages": 0,
        "complete": 1,
    }
    with system.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(mail_outbox)).scalar_one() == 1


def test_a_run_stops_at_its_budget_and_the_next_goes_on(system: System) -> None:
    old = datetime.now(UTC) - timedelta(days=DAYS + 1)
    with system.db.write() as conn:
        conn.execute(mail_outbox.insert(), [_message("sent", old) for _ in range(5)])
    assert purge(system.db, DAYS, budget_s=0).as_dict()["complete"] == 0
    assert purge(system.db, DAYS, batch=2).messages == 5


def test_the_scheduler_runs_the_purge_every_hour_with_the_setting(system: System) -> None:
    import workers.tasks  # noqa: F401  (registers the tasks)
    from workers.celery_app import app

    schedule = make_app(system.settings).conf.beat_schedule["retention.purge"]
    assert schedule == {"task": "retention.purge", "schedule": 3600.0}
    assert "retention.purge" in app.tasks
    assert system.settings.retention_days == DAYS
