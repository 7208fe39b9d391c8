"""Reminders and notices with a real SMTP server (aiosmtpd) and controlled time.

The scheduler's tick and the worker's send take ``now``: the tests move the clock to just
before and just after each due moment, in three Asian time zones, and check that each rule
fires once, at the right local time; that rescheduling moves a reminder and cancelling drops
it; and that two schedulers and two senders at once still send each message once.
"""

from __future__ import annotations

import email
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.policy import default
from pathlib import Path
from typing import Any
from uuid import UUID

import icalendar
import pytest
import structlog.testing
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.main import create_app
from infra.bootstrap import System
from infra.mail.transport import Maildir, Smtp
from infra.projections.rebuild import rebuild
from infra.projections.reminders import reminders as reminders_table
from infra.reminders import Reminders
from infra.schema import mail_outbox, reminder_fanouts
from services.reminders.events import message_stream
from tests.e2e.conftest import Keys
from tests.mailserver import MailServer

MINUTE = timedelta(minutes=1)


@pytest.fixture
def client(system: System) -> Iterator[TestClient]:
    with TestClient(create_app(system), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def smtp() -> Iterator[MailServer]:
    with MailServer() as server:
        yield server


def org(client: TestClient, headers: dict, name: str, email_: str | None = None) -> str:
    body: dict[str, Any] = {"name": name, "kind": "ngo", "country": "ID"}
    if email_:
        body["email"] = email_
    r = client.post("/v1/organisations", json=body, headers=headers)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def plan(
    client: TestClient, organiser: dict, organiser_id: str, zone: str, starts: datetime, **more: Any
) -> str:
    r = client.post(
        "/v1/consultations",
        headers=organiser,
        json={
            "title": "National Consultation Workshop on Migrant Workers",
            "scope": "national",
            "host_country": "VN",
            "city": "Hà Nội",
            "mode": "in_person",
            "timezone": zone,
            "starts_at": starts.isoformat(),
            "ends_at": (starts + timedelta(hours=8)).isoformat(),
            "organiser_id": organiser_id,
            **more,
        },
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def open_registration(client: TestClient, organiser: dict, cid: str, closes: datetime) -> None:
    r = client.post(
        f"/v1/consultations/{cid}/open-registration",
        json={"closes_at": closes.isoformat()},
        headers=organiser,
    )
    assert r.status_code == 200, r.text


def register(
    client: TestClient, headers: dict, cid: str, name: str, email_: str, org_id: str | None = None
) -> dict:
    body: dict[str, Any] = {"name": name, "email": email_, "role": "delegate"}
    if org_id:
        body["organisation_id"] = org_id
    r = client.post(f"/v1/consultations/{cid}/registrations", json=body, headers=headers)
    assert r.status_code == 201, r.text
    return dict(r.json())


def run(reminders: Reminders, now: datetime) -> list[str]:
    """One scheduler tick and a worker sending every key it handed out."""
    keys = reminders.tick(now)
    return [key for key in keys if reminders.send(key, now).status == "sent"]


def sent_rules(keys: list[str]) -> list[str]:
    return sorted(k.split("/")[0] for k in keys)


@pytest.mark.parametrize(
    ("zone", "utc_hour"),
    [("Asia/Jakarta", 2), ("Asia/Ho_Chi_Minh", 2), ("Asia/Manila", 1)],
)
def test_each_reminder_fires_once_at_the_right_local_time(
    client: TestClient, system: System, smtp: MailServer, zone: str, utc_hour: int
) -> None:
    keys = Keys(system)
    organiser = keys.organiser
    host = org(client, organiser, "Migrant Forum in Asia", "mfa@example.org")
    # 09:00 local on 10 March next year; the participant signs up today.
    year = datetime.now(UTC).year + 1
    starts = datetime(year, 3, 10, 9, 0, tzinfo=UTC).replace(tzinfo=None)
    from zoneinfo import ZoneInfo

    starts_local = starts.replace(tzinfo=ZoneInfo(zone))
    cid = plan(client, organiser, host, zone, starts_local)
    open_registration(client, organiser, cid, starts_local - timedelta(days=3))
    register(client, organiser, cid, "Nguyễn Thị Hà", "ha@example.org")
    reminders = Reminders(system, mail=Smtp(smtp.url, 10))

    # Today: only the registration confirmation goes out (with the calendar attached).
    assert sent_rules(run(reminders, datetime.now(UTC))) == ["registration_confirmed"]
    confirmation = smtp.inbox.messages[-1]
    assert str(confirmation["To"]) == "Nguyễn Thị Hà <ha@example.org>"
    assert "=?utf-8?" in confirmation.as_string().split("\n\n")[0]  # RFC 2047 on the wire

    seven_days = datetime(year, 3, 3, utc_hour, 0, tzinfo=UTC)
    one_day = datetime(year, 3, 9, utc_hour, 0, tzinfo=UTC)
    assert run(reminders, seven_days - MINUTE) == []
    first = run(reminders, seven_days + MINUTE)
    assert sent_rules(first) == ["consultation_starts"]
    assert run(reminders, seven_days + 2 * MINUTE) == [], "sent once"
    assert run(reminders, one_day - MINUTE) == []
    second = run(reminders, one_day)
    assert sent_rules(second) == ["consultation_starts"]
    assert run(reminders, starts_local.astimezone(UTC) - MINUTE) == []

    starts_mail = [m for m in smtp.inbox.messages if "starts" in str(m["Subject"])]
    assert [str(m["Subject"]).rsplit(" ", 2)[-2:] for m in starts_mail] == [
        ["7", "days"],
        ["starts", "tomorrow"],
    ]
    assert len({str(m["Message-ID"]) for m in starts_mail}) == 2
    for message in starts_mail:
        assert message.get_body(("plain",)) is not None
        assert message.get_body(("html",)) is not None
        attachment = next(p for p in message.iter_attachments())
        assert attachment.get_content_type() == "text/calendar"
        calendar = icalendar.Calendar.from_ical(attachment.get_content())
        event = next(c for c in calendar.walk("VEVENT"))
        assert event.decoded("dtstart") == starts_local
        text = message.get_body(("plain",)).get_content()
        assert "09:00" in text and zone in text

    # Every message is in the log once, in its own stream.
    for key in [*first, *second]:
        recorded = system.store.read_stream(message_stream(key))
        assert [e.type for e in recorded] == ["reminder.sent"]
        assert "ha@example.org" not in str(recorded[0].data), "no addresses in the log"


def test_rescheduling_moves_the_reminder_and_cancelling_drops_it(
    client: TestClient, system: System, smtp: MailServer
) -> None:
    keys = Keys(system)
    organiser = keys.organiser
    host = org(client, organiser, "HRWG", "hrwg@example.org")
    starts = datetime.now(UTC).replace(microsecond=0, second=0) + timedelta(days=30)
    cid = plan(client, organiser, host, "Asia/Jakarta", starts)
    open_registration(client, organiser, cid, starts - timedelta(days=5))
    register(client, organiser, cid, "Wahyu Susilo", "wahyu@example.org")
    reminders = Reminders(system, mail=Smtp(smtp.url, 10))
    run(reminders, datetime.now(UTC))
    smtp.inbox.messages.clear()

    moved = starts + timedelta(days=14)
    r = client.post(
        f"/v1/consultations/{cid}/reschedule",
        json={
            "starts_at": moved.isoformat(),
            "ends_at": (moved + timedelta(hours=8)).isoformat(),
            "reason": "The venue is needed for flood relief",
        },
        headers=organiser,
    )
    assert r.status_code == 200, r.text
    # The participant hears of the move at once, with the updated calendar (SEQUENCE 1).
    assert sent_rules(run(reminders, datetime.now(UTC))) == ["consultation_rescheduled"]
    notice = smtp.inbox.messages[-1]
    assert "flood relief" in notice.get_body(("plain",)).get_content()
    calendar = icalendar.Calendar.from_ical(next(notice.iter_attachments()).get_content())
    assert next(iter(calendar.walk("VEVENT")))["sequence"] == 1

    old_due = starts - timedelta(days=1)
    assert run(reminders, old_due + MINUTE) == [], "the old date reminds nobody"
    new_due = moved - timedelta(days=1)
    assert sent_rules(run(reminders, new_due + MINUTE)) == ["consultation_starts"]

    # A second consultation is cancelled before its reminders fall due.
    other = plan(client, organiser, host, "Asia/Manila", starts)
    open_registration(client, organiser, other, starts - timedelta(days=5))
    register(client, organiser, other, "Ellene Sana", "ellene@example.org")
    run(reminders, datetime.now(UTC))
    cancelled = client.post(
        f"/v1/consultations/{other}/cancel", json={"reason": "Typhoon"}, headers=organiser
    )
    assert cancelled.status_code == 200, cancelled.text
    assert sent_rules(run(reminders, datetime.now(UTC))) == ["consultation_cancelled"]
    schedule = client.get(f"/v1/consultations/{other}/reminders", headers=organiser).json()
    assert {r["rule"] for r in schedule["reminders"]} == {
        "registration_confirmed",
        "consultation_cancelled",
    }, "no reminder is left for a cancelled consultation"
    assert run(reminders, starts - timedelta(days=7) + MINUTE) == []


def test_configured_offsets_replace_the_defaults(
    client: TestClient, system: System, smtp: MailServer
) -> None:
    keys = Keys(system)
    organiser = keys.organiser
    host = org(client, organiser, "SBMI", "sbmi@example.org")
    starts = datetime.now(UTC).replace(microsecond=0, second=0) + timedelta(days=20)
    cid = plan(client, organiser, host, "Asia/Jakarta", starts)
    url = f"/v1/consultations/{cid}/reminders"
    before = client.get(url, headers=organiser).json()
    assert before["offsets"]["consultation_starts"] == ["P7D", "P1D"]
    r = client.put(url, json={"consultation_starts": ["P3D", "PT2H"]}, headers=organiser)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["offsets"]["consultation_starts"] == ["P3D", "PT2H"]
    assert body["offsets"]["endorsement_deadline"] == ["P3D", "P1D"]  # 72 h and 24 h
    due = sorted(x["offset"] for x in body["reminders"] if x["rule"] == "consultation_starts")
    assert due == ["P3D", "PT2H"]
    assert body["reminders"][0]["due_at"].endswith("+07:00"), "shown in the local zone"

    bad = client.put(url, json={"consultation_starts": ["PT5M"]}, headers=organiser)
    assert bad.status_code == 422
    assert bad.headers["content-type"] == "application/problem+json"
    unknown = client.put(url, json={"lunch": ["P1D"]}, headers=organiser)
    assert unknown.status_code == 422
    member = keys.make("organisation", host)
    assert client.put(url, json={"consultation_starts": []}, headers=member).status_code == 403

    open_registration(client, organiser, cid, starts - timedelta(days=5))
    register(client, organiser, cid, "Hariyanto", "hari@example.org")
    reminders = Reminders(system, mail=Smtp(smtp.url, 10))
    run(reminders, datetime.now(UTC))
    assert sent_rules(run(reminders, starts - timedelta(days=3) + MINUTE)) == [
        "consultation_starts"
    ]
    assert sent_rules(run(reminders, starts - timedelta(hours=2) + MINUTE)) == [
        "consultation_starts"
    ]


def test_waitlist_and_registration_closing_notices(
    client: TestClient, system: System, smtp: MailServer
) -> None:
    keys = Keys(system)
    organiser = keys.organiser
    host = org(client, organiser, "Migrant CARE", "care@example.org")
    partner = org(client, organiser, "HOME", "home@example.org")
    starts = datetime.now(UTC).replace(microsecond=0, second=0) + timedelta(days=30)
    closes = starts - timedelta(days=10)
    cid = plan(client, organiser, host, "Asia/Jakarta", starts, capacity=1, partner_ids=[partner])
    open_registration(client, organiser, cid, closes)
    first = register(client, organiser, cid, "Anis Hidayah", "anis@example.org", host)
    second = register(client, organiser, cid, "Sister Ha", "ha@example.org", partner)
    assert second["status"] == "waitlisted"
    reminders = Reminders(system, mail=Smtp(smtp.url, 10))
    assert sent_rules(run(reminders, datetime.now(UTC))) == [
        "registration_confirmed",
        "registration_waitlisted",
    ]
    # Registration closes in 48 h: the organiser and HOME (only on the waiting list) hear.
    closing = run(reminders, closes - timedelta(hours=48) + MINUTE)
    assert sent_rules(closing) == ["registration_closes", "registration_closes"]
    to = sorted(str(m["To"]) for m in smtp.inbox.messages[-2:])
    assert to == ["HOME <home@example.org>", "Migrant CARE <care@example.org>"]

    r = client.post(
        f"/v1/consultations/{cid}/registrations/{first['id']}/cancel",
        json={"reason": "visa refused"},
        headers=organiser,
    )
    assert r.status_code == 200, r.text
    assert sent_rules(run(reminders, datetime.now(UTC))) == ["registration_promoted"]
    assert str(smtp.inbox.messages[-1]["To"]) == "Sister Ha <ha@example.org>"


def test_endorsement_deadline_reminders_and_endorsement_notices(
    client: TestClient, system: System, smtp: MailServer
) -> None:
    keys = Keys(system)
    organiser = keys.organiser
    host = org(client, organiser, "HRWG", "hrwg@example.org")
    signer = org(client, organiser, "Migrant CARE", "care@example.org")
    silent = org(client, organiser, "SBMI", "sbmi@example.org")
    starts = datetime.now(UTC).replace(microsecond=0) + timedelta(days=2)
    cid = plan(client, organiser, host, "Asia/Jakarta", starts)
    open_registration(client, organiser, cid, starts - timedelta(hours=1))
    register(client, organiser, cid, "Anis", "anis@example.org", signer)
    register(client, organiser, cid, "Bobi", "bobi@example.org", silent)
    deadline = datetime.now(UTC).replace(microsecond=0, second=0) + timedelta(days=10)
    sid = finalised_statement(client, organiser, cid, deadline)
    endorse(client, keys, sid, signer, "Anis Hidayah")
    reminders = Reminders(system, mail=Smtp(smtp.url, 10))
    now_sent = run(reminders, datetime.now(UTC))
    assert "endorsement_recorded" in sent_rules(now_sent)
    recorded = smtp.inbox.messages[-1]
    assert "Anis Hidayah" in recorded.get_body(("plain",)).get_content()

    # 72 h before the deadline only the organisation that has not endorsed is reminded.
    due = run(reminders, deadline - timedelta(hours=72) + MINUTE)
    assert sent_rules(due) == ["endorsement_deadline"]
    assert str(smtp.inbox.messages[-1]["To"]) == "SBMI <sbmi@example.org>"

    reopened = client.post(
        f"/v1/statements/{sid}/reopen", json={"reason": "A new paragraph"}, headers=organiser
    )
    assert reopened.status_code == 200, reopened.text
    assert sent_rules(run(reminders, datetime.now(UTC))) == ["endorsements_voided"]
    assert str(smtp.inbox.messages[-1]["To"]) == "Migrant CARE <care@example.org>"
    assert run(reminders, deadline - timedelta(hours=24) + MINUTE) == [], "reopening drops it"


def finalised_statement(client: TestClient, organiser: dict, cid: str, deadline: datetime) -> str:
    st = client.post(
        f"/v1/consultations/{cid}/statements",
        json={"title": "Joint statement", "language": "en"},
        headers=organiser,
    )
    assert st.status_code == 201, st.text
    sid = str(st.json()["id"])
    area = st.json()["thematic_areas"][0] if "thematic_areas" in st.json() else None
    rec = client.post(
        f"/v1/statements/{sid}/recommendations",
        json={"thematic_area": area or "Access to justice", "text": "Ratify the CMW."},
        headers=organiser,
    )
    assert rec.status_code == 201, rec.text
    fin = client.post(
        f"/v1/statements/{sid}/finalise",
        json={"endorsement_deadline": deadline.isoformat()},
        headers=organiser,
    )
    assert fin.status_code == 200, fin.text
    return sid


def endorse(client: TestClient, keys: Keys, sid: str, organisation_id: str, name: str) -> None:
    endorsed = client.post(
        f"/v1/statements/{sid}/endorsements",
        json={"organisation_id": organisation_id, "signatory_name": name},
        headers=keys.make("organisation", organisation_id),
    )
    assert endorsed.status_code == 201, endorsed.text


def test_a_notice_to_an_organisation_without_an_address_is_settled_at_fan_out(
    client: TestClient, system: System, smtp: MailServer
) -> None:
    """Under a campaign every endorsement brings a notice: one to an organisation that gave no
    contact address is recorded as skipped when it is fanned out, with no send to run."""
    keys = Keys(system)
    organiser = keys.organiser
    host = org(client, organiser, "HRWG", "hrwg@example.org")
    reachable = org(client, organiser, "Migrant CARE", "care@example.org")
    silent = org(client, organiser, "SBMI")
    starts = datetime.now(UTC).replace(microsecond=0) + timedelta(days=2)
    cid = plan(client, organiser, host, "Asia/Jakarta", starts)
    sid = finalised_statement(client, organiser, cid, starts + timedelta(days=10))
    endorse(client, keys, sid, reachable, "Anis Hidayah")
    endorse(client, keys, sid, silent, "Bobi Anwar")
    reminders = Reminders(system, mail=Smtp(smtp.url, 10))
    now = datetime.now(UTC)
    handed = reminders.tick(now)
    assert [k for k in handed if k.startswith("endorsement_recorded/")] == [
        k for k in handed if k.startswith("endorsement_recorded/") and reachable in k
    ]
    assert any(reachable in k for k in handed)
    with system.db.read() as conn:
        rows = {
            r.recipient_id: r
            for r in conn.execute(
                mail_outbox.select().where(mail_outbox.c.rule == "endorsement_recorded")
            )
        }
    skipped = rows[UUID(silent)]
    assert (skipped.status, skipped.attempts, skipped.last_error) == (
        "skipped",
        0,
        "the organisation has no contact address",
    )
    assert rows[UUID(reachable)].status == "pending"
    assert skipped.key not in handed
    assert [reminders.send(k, now).status for k in handed if reachable in k] == ["sent"]
    assert reminders.send(skipped.key, now).status == "not-claimed"
    assert [str(m["To"]) for m in smtp.inbox.messages] == ["Migrant CARE <care@example.org>"]


def test_notices_about_what_is_already_over_are_not_sent(
    client: TestClient, system: System, smtp: MailServer
) -> None:
    """A tick judges its notices together: a sign-up for a consultation that has ended and an
    endorsement recorded after endorsing closed reach nobody; a sign-up still ahead does."""
    keys = Keys(system)
    organiser = keys.organiser
    host = org(client, organiser, "HRWG", "hrwg@example.org")
    signer = org(client, organiser, "Migrant CARE", "care@example.org")
    now = datetime.now(UTC).replace(microsecond=0)
    soon = plan(client, organiser, host, "Asia/Jakarta", now + timedelta(hours=2))
    later = plan(client, organiser, host, "Asia/Manila", now + timedelta(days=9))
    for cid, person in ((soon, "soon@example.org"), (later, "later@example.org")):
        open_registration(client, organiser, cid, now + timedelta(hours=1))
        register(client, organiser, cid, "Dewi", person)
    sid = finalised_statement(client, organiser, soon, now + timedelta(hours=5))
    endorse(client, keys, sid, signer, "Anis Hidayah")
    reminders = Reminders(system, mail=Smtp(smtp.url, 10))
    after = now + timedelta(hours=11)  # the first consultation over, endorsing closed
    sent = run(reminders, after)
    assert sent_rules(sent) == ["registration_confirmed"]
    assert [str(m["To"]) for m in smtp.inbox.messages] == ["Dewi <later@example.org>"]


def open_with_participants(client: TestClient, system: System, people: int) -> datetime:
    """A consultation in nine days, open for registration, with ``people`` registered (each
    registration brings a confirmation notice, due now); returns when it starts."""
    organiser = Keys(system).organiser
    host = org(client, organiser, "HRWG", "hrwg@example.org")
    starts = datetime.now(UTC).replace(microsecond=0, second=0) + timedelta(days=9)
    cid = plan(client, organiser, host, "Asia/Jakarta", starts)
    open_registration(client, organiser, cid, starts - timedelta(days=1))
    for i in range(people):
        register(client, organiser, cid, f"Participant {i}", f"p{i}@example.org")
    return starts


def test_two_schedulers_and_two_senders_send_each_message_once(
    client: TestClient, system: System, smtp: MailServer
) -> None:
    starts = open_with_participants(client, system, 5)
    a = Reminders(system, mail=Smtp(smtp.url, 10))
    b = Reminders(system, mail=Smtp(smtp.url, 10))
    now = datetime.now(UTC)
    handed = a.tick(now) + b.tick(now)
    assert len(set(handed)) == 5
    results = [r.send(key, now).status for key in handed for r in (a, b)]
    assert results.count("sent") == 5
    due = starts - timedelta(days=7) + MINUTE
    handed = a.tick(due) + b.tick(due) + a.tick(due)
    results = [r.send(key, due).status for key in handed for r in (b, a)]
    assert results.count("sent") == 5
    ids = smtp.inbox.by_id()
    assert len(ids) == 10 and all(len(v) == 1 for v in ids.values())


def test_a_reminder_that_cannot_be_fanned_out_holds_back_none_of_the_others(
    client: TestClient, system: System, smtp: MailServer
) -> None:
    """A tick fans out its due reminders together; should one of them fail (here a row whose
    audience nobody knows), the others still go out and that one stays due."""
    open_with_participants(client, system, 3)
    now = datetime.now(UTC)
    with system.db.write() as conn:
        conn.execute(
            reminders_table.insert().values(
                key="broken/1",
                rule="registration_confirmed",
                due_at=now - timedelta(minutes=1),
                audience={"kind": "nobody-knows"},
                position=1,
            )
        )
    reminders = Reminders(system, mail=Smtp(smtp.url, 10))
    with structlog.testing.capture_logs() as logs:
        sent = run(reminders, now)
    assert sent_rules(sent) == ["registration_confirmed"] * 3
    assert any(e["event"] == "reminder not fanned out" for e in logs)
    with system.db.read() as conn:
        fanned = set(conn.execute(select(reminder_fanouts.c.reminder_key)).scalars())
    assert "broken/1" not in fanned and len(fanned) == 3
    assert run(reminders, now) == [], "nothing twice; the broken one is still due, still failing"


def test_a_refused_recipient_leaves_no_address_in_the_outbox_or_the_logs(
    client: TestClient, system: System, smtp: MailServer
) -> None:
    """The SMTP server's refusal names the recipient; the row (which outlives the person's
    key) and the log line keep the error without it."""
    organiser = Keys(system).organiser
    host = org(client, organiser, "HRWG", "hrwg@example.org")
    starts = datetime.now(UTC) + timedelta(days=9)
    cid = plan(client, organiser, host, "Asia/Jakarta", starts)
    open_registration(client, organiser, cid, starts - timedelta(days=1))
    register(client, organiser, cid, "Participant", "gone.person+x@mail.example.org")
    smtp.inbox.refuse = {"gone.person+x@mail.example.org"}
    reminders = Reminders(system, mail=Smtp(smtp.url, 10))
    now = datetime.now(UTC)
    [key] = reminders.tick(now)
    with structlog.testing.capture_logs() as logs:
        assert reminders.send(key, now).status == "retry"
    with system.db.read() as conn:
        row = conn.execute(mail_outbox.select().where(mail_outbox.c.key == key)).one()
    assert row.last_error.startswith("SMTPRecipientsRefused: {'[address]': (550")
    assert "Recipient address rejected" in row.last_error
    [line] = [entry for entry in logs if entry["event"] == "message not sent"]
    for text in (row.last_error, str(line)):
        assert "gone.person" not in text and "mail.example.org" not in text
    assert smtp.inbox.messages == []


def test_a_failed_send_backs_off_and_a_dead_claim_is_taken_over(
    client: TestClient, system: System, smtp: MailServer
) -> None:
    keys = Keys(system)
    organiser = keys.organiser
    host = org(client, organiser, "HRWG", "hrwg@example.org")
    starts = datetime.now(UTC) + timedelta(days=9)
    cid = plan(client, organiser, host, "Asia/Jakarta", starts)
    open_registration(client, organiser, cid, starts - timedelta(days=1))
    register(client, organiser, cid, "Participant", "p@example.org")
    down = Reminders(system, mail=Smtp("smtp://127.0.0.1:9", 2))  # nothing listens there
    now = datetime.now(UTC)
    [key] = down.tick(now)
    assert down.send(key, now).status == "retry"
    with system.db.read() as conn:
        row = conn.execute(mail_outbox.select().where(mail_outbox.c.key == key)).one()
    assert row.status == "pending" and row.failures == 1 and row.last_error
    assert row.next_attempt_at > now + timedelta(seconds=20)
    assert down.tick(now + timedelta(seconds=5)) == [], "backing off"

    up = Reminders(system, mail=Smtp(smtp.url, 10))
    later = row.next_attempt_at + timedelta(seconds=1)
    [again] = up.tick(later)
    # A worker claims it and dies (its claim is never finished) ...
    assert up._claim(again, later) is not None
    assert up.tick(later + timedelta(seconds=10)) == [], "the claim is still alive"
    # ... so once the lease has run out the next tick hands the message out again.
    lease = timedelta(seconds=system.settings.mail_lease_s)
    [taken] = up.tick(later + lease + timedelta(seconds=1))
    assert up.send(taken, later + lease + timedelta(seconds=1)).status == "sent"
    assert len(smtp.inbox.messages) == 1


def test_a_message_no_longer_wanted_after_a_cut_off_attempt_says_it_may_have_gone_out(
    client: TestClient, system: System, smtp: MailServer
) -> None:
    keys = Keys(system)
    organiser = keys.organiser
    host = org(client, organiser, "HRWG", "hrwg@example.org")
    starts = datetime.now(UTC) + timedelta(days=9)
    cid = plan(client, organiser, host, "Asia/Jakarta", starts)
    open_registration(client, organiser, cid, starts - timedelta(days=1))
    cut = register(client, organiser, cid, "Nguyễn Thị Hoa", "hoa@example.org")
    plain = register(client, organiser, cid, "Siti Rahma", "siti@example.org")
    reminders = Reminders(system, mail=Smtp(smtp.url, 10))
    now = datetime.now(UTC)
    handed = reminders.tick(now)
    assert len(handed) == 2
    [cut_key] = [k for k in handed if cut["id"] in k]
    [plain_key] = [k for k in handed if plain["id"] in k]
    # A worker claims one message and dies: it may or may not have handed the mail over.
    assert reminders._claim(cut_key, now, task_id="task-1") is not None
    for person in (cut, plain):
        r = client.post(
            f"/v1/consultations/{cid}/registrations/{person['id']}/cancel",
            json={"reason": "visa refused"},
            headers=organiser,
        )
        assert r.status_code == 200, r.text
    redelivered = reminders.send(cut_key, now, task_id="task-1")
    first_try = reminders.send(plain_key, now)
    assert redelivered.status == first_try.status == "skipped"
    assert "may have reached the mail server" in (redelivered.detail or "")
    assert "may have" not in (first_try.detail or "")
    with system.db.read() as conn:
        rows = {r.key: r for r in conn.execute(mail_outbox.select())}
    assert "cut off" in rows[cut_key].last_error
    assert "cut off" not in rows[plain_key].last_error
    assert smtp.inbox.messages == [] and system.store.read_stream(message_stream(cut_key)) == []


def test_the_embedded_maildir_gets_each_message_once(
    client: TestClient, system: System, tmp_path: Path
) -> None:
    keys = Keys(system)
    organiser = keys.organiser
    host = org(client, organiser, "HRWG", "hrwg@example.org")
    starts = datetime.now(UTC) + timedelta(days=9)
    cid = plan(client, organiser, host, "Asia/Jakarta", starts)
    open_registration(client, organiser, cid, starts - timedelta(days=1))
    register(client, organiser, cid, "Trần Văn Ánh", "anh@example.org")
    reminders = Reminders(system)  # no SMTP_URL: the Maildir under the data dir
    assert isinstance(reminders.mail, Maildir)
    assert sent_rules(run(reminders, datetime.now(UTC))) == ["registration_confirmed"]
    [path] = reminders.mail.messages()
    assert path.parent.parent == system.settings.data_dir.resolve() / "mail"
    message = email.message_from_bytes(path.read_bytes(), policy=default)
    assert str(message["To"]) == "Trần Văn Ánh <anh@example.org>"
    # A crash after delivery but before the record: the same key written again is one file.
    reminders.mail.send(message, next(iter(_keys(system))))  # type: ignore[arg-type]
    assert len(reminders.mail.messages()) == 1


def _keys(system: System) -> list[str]:
    with system.db.read() as conn:
        return list(
            conn.execute(mail_outbox.select().with_only_columns(mail_outbox.c.key)).scalars()
        )


def test_smtp_with_starttls_and_a_login(
    system: System, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from email.message import EmailMessage

    with MailServer(tmp_path, tls_login=("concord", "s3cret pass")) as server:
        assert server.cafile is not None
        monkeypatch.setenv("SSL_CERT_FILE", str(server.cafile))
        message = EmailMessage()
        message["From"] = "concord@localhost"
        message["To"] = "someone@example.org"
        message["Subject"] = "Hello"
        message["Message-ID"] = "<x@localhost>"
        message.set_content("Hello")
        url = f"smtp://concord:s3cret%20pass@127.0.0.1:{server.port}?starttls=required"
        Smtp(url, 10).send(message, "k")
        assert len(server.inbox.messages) == 1
        with pytest.raises(Exception):
            Smtp(f"smtp://concord:s3cret%20pass@127.0.0.1:{server.port}?starttls=never", 10).send(
                message, "k"
            )
        assert len(server.inbox.messages) == 1


def pending(system: System) -> dict[str, bool]:
    with system.db.read() as conn:
        rows = conn.execute(select(reminders_table.c.key, reminders_table.c.pending))
        return {r.key: r.pending for r in rows}


def test_a_tick_reads_only_reminders_not_fanned_out_and_none_is_sent_twice(
    client: TestClient, system: System, smtp: MailServer
) -> None:
    """Every reminder is written pending; fanned out, it is not any more, so a tick does not
    wade through every notice a campaign left behind. A rebuild of the projection marks
    pending only what is not fanned out; a reminder written pending again after its fan-out
    (by an older process, or rewritten with the same key) is not sent twice, and the next
    tick clears its mark."""
    starts = open_with_participants(client, system, 4)
    reminders = Reminders(system, mail=Smtp(smtp.url, 10))
    now = datetime.now(UTC)
    system.projector.catch_up(names=["reminders"])
    before = pending(system)
    assert before and all(before.values()), "written pending"
    assert len(run(reminders, now)) == 4
    after = pending(system)
    confirmations = [k for k in after if k.startswith("registration_confirmed/")]
    assert len(confirmations) == 4
    assert not any(after[k] for k in confirmations), "fanned out: no longer pending"
    assert all(v for k, v in after.items() if k not in confirmations), "not due yet: pending"

    rebuild(system.db, system.store, system.projector.projections["reminders"])
    assert pending(system) == after, "a rebuild marks what the scheduler has not fanned out"
    with system.db.write() as conn:
        conn.execute(reminders_table.update().values(pending=True))
    assert run(reminders, now) == [], "fanned out before: not again"
    assert pending(system) == after, "and the tick cleared the marks"
    due = starts - timedelta(days=7) + MINUTE
    assert len(run(reminders, due)) == 4, "the next reminder still goes out"
    assert len(smtp.inbox.messages) == 8
