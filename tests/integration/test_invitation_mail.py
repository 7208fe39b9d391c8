"""Invitation e-mails through the mail outbox, to a real SMTP server (aiosmtpd): sent once, with
a link that is derived when the message is rendered and stored nowhere; a resend sends the new
link, and a message whose link died before it went out is not sent."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.main import create_app
from infra.bootstrap import System
from infra.mail.transport import Smtp
from infra.reminders import Reminders
from infra.schema import mail_outbox
from infra.tokens import link_token, secret_key, token_hash
from services.reminders.events import message_stream
from tests.e2e.conftest import Keys
from tests.e2e.test_invitations_api import finalised_statement, invite
from tests.mailserver import MailServer

LINK = re.compile(r"http://[^\s\"<]+/s/([0-9a-f-]{36})/sign/([A-Za-z0-9_-]{43})")


@pytest.fixture
def client(system: System) -> Iterator[TestClient]:
    with TestClient(create_app(system), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def smtp() -> Iterator[MailServer]:
    with MailServer() as server:
        yield server


def send_due(reminders: Reminders, now: datetime | None = None) -> list[str]:
    now = now or datetime.now(UTC)
    return [k for k in reminders.tick(now) if reminders.send(k, now).status == "sent"]


def test_the_invitation_mail_carries_the_link_and_is_sent_once(
    client: TestClient, system: System, smtp: MailServer
) -> None:
    organiser = Keys(system).organiser
    world = finalised_statement(client, organiser)
    invitation = invite(client, organiser, world, email="điều.phối@yangon.example.org")
    reminders = Reminders(system, mail=Smtp(smtp.url, 10))
    sent = send_due(reminders)
    assert [k.split("/")[0] for k in sent] == ["invitation_sent"]
    assert send_due(reminders) == [], "sent once"
    (message,) = smtp.inbox.messages
    assert str(message["To"]) == ("ရန်ကုန် Migrant Workers Association <điều.phối@yangon.example.org>")
    assert str(message["Subject"]).startswith("Invitation to endorse")
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    (found,) = set(LINK.findall(text))
    assert found in set(LINK.findall(html))
    sid, token = found
    assert sid == world["sid"]
    iid = UUID(invitation["id"])
    assert token == link_token(secret_key(system.settings), iid, 1)
    assert world["content_hash"] in text
    assert "Regional CSO Consultation on the ASEAN Consensus" in text
    assert "Human Rights Working Group" in text, "the organiser is named"
    assert f"/s/{sid}\r\n" in text, "the public page is linked"
    # The link is nowhere but in the message: not in the log, the outbox or the read side.
    (key,) = sent
    (record,) = system.store.read_stream(message_stream(key))
    assert record.type == "reminder.sent"
    assert record.data["recipient_kind"] == "invitation"
    everything = str([e.data for e in system.store.read_all(0, 10_000)])
    assert token not in everything
    assert "yangon.example.org" not in str(record.data)
    with system.db.read() as conn:
        rows = conn.execute(select(mail_outbox)).all()
    assert token not in str(rows)
    assert token_hash(token) in everything, "only its hash is logged"


def test_a_resend_sends_the_new_link_and_a_dead_link_is_not_sent(
    client: TestClient, system: System, smtp: MailServer
) -> None:
    organiser = Keys(system).organiser
    world = finalised_statement(client, organiser)
    first = invite(client, organiser, world)
    url = f"/v1/statements/{world['sid']}/invitations/{first['id']}"
    reminders = Reminders(system, mail=Smtp(smtp.url, 10))
    assert len(send_due(reminders)) == 1
    assert client.post(f"{url}/resend", headers=organiser).status_code == 200
    sent = send_due(reminders)
    assert [k.split("/")[0] for k in sent] == ["invitation_resent"]
    old, new = smtp.inbox.messages
    assert str(new["Subject"]).startswith("A new link to endorse")
    old_token = LINK.findall(old.get_body(("plain",)).get_content())[0][1]
    new_text = new.get_body(("plain",)).get_content()
    new_token = LINK.findall(new_text)[0][1]
    assert old_token != new_token
    assert new_token == link_token(secret_key(system.settings), UUID(first["id"]), 2)
    assert "replaces the one sent before" in new_text

    # Two resends before the worker gets to them: only the newest link goes out.
    assert client.post(f"{url}/resend", headers=organiser).status_code == 200
    assert client.post(f"{url}/resend", headers=organiser).status_code == 200
    keys = reminders.tick()
    outcomes = sorted(reminders.send(k).status for k in keys)
    assert outcomes == ["sent", "skipped"]
    assert len(smtp.inbox.messages) == 3
    newest = LINK.findall(smtp.inbox.messages[-1].get_body(("plain",)).get_content())[0][1]
    assert newest == link_token(secret_key(system.settings), UUID(first["id"]), 4)

    # Revoked before the message went out: nothing is sent.
    second = invite(client, organiser, world, email="second@yangon.example.org")
    revoke = f"/v1/statements/{world['sid']}/invitations/{second['id']}/revoke"
    assert client.post(revoke, headers=organiser).status_code == 200
    (key,) = reminders.tick()
    assert reminders.send(key).status == "skipped"
    with system.db.read() as conn:
        error = conn.execute(
            select(mail_outbox.c.last_error).where(mail_outbox.c.key == key)
        ).scalar_one()
    assert "revoked" in error
    assert len(smtp.inbox.messages) == 3


def test_an_invitation_to_a_statement_that_closed_meanwhile_is_not_sent(
    client: TestClient, system: System, smtp: MailServer
) -> None:
    organiser = Keys(system).organiser
    world = finalised_statement(client, organiser)
    invite(client, organiser, world)
    closed = client.post(f"/v1/statements/{world['sid']}/close-endorsements", headers=organiser)
    assert closed.status_code == 200
    reminders = Reminders(system, mail=Smtp(smtp.url, 10))
    (key,) = reminders.tick()
    assert reminders.send(key).status == "skipped"
    assert smtp.inbox.messages == []
    # An expired link is not sent either (the message would only lead to an "expired" page).
    world = finalised_statement(client, organiser)
    invite(client, organiser, world, expires_in="PT1H")
    later = datetime.now(UTC) + timedelta(hours=2)
    keys = reminders.tick(later)
    assert [reminders.send(k, later).status for k in keys] == ["skipped"]
    assert smtp.inbox.messages == []


def test_a_worker_without_the_secret_key_retries_instead_of_sending_a_wrong_link(
    client: TestClient, system: System, smtp: MailServer
) -> None:
    organiser = Keys(system).organiser
    world = finalised_statement(client, organiser)
    invite(client, organiser, world)
    # Several processes (Redis) and no CONCORD_SECRET_KEY: no link can be made here.
    unset = dataclasses.replace(
        system, settings=system.settings.model_copy(update={"redis_url": "redis://unused"})
    )
    reminders = Reminders(unset, mail=Smtp(smtp.url, 10))
    (key,) = reminders.tick()
    result = reminders.send(key)
    assert result.status == "retry"
    assert "CONCORD_SECRET_KEY" in (result.detail or "")
    assert smtp.inbox.messages == []
    # Once the worker has the secret, the message goes out (after its back-off).
    later = datetime.now(UTC) + timedelta(hours=1)
    assert send_due(Reminders(system, mail=Smtp(smtp.url, 10)), later) == [key]
