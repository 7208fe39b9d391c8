"""The MIME message a reminder or invitation goes out as, read back the way a mail client
reads it (the e-mail package's default policy)."""

from __future__ import annotations

import email
from datetime import UTC, datetime
from email.policy import default

from infra.mail.render import Rendered, compose

SENT = datetime(2026, 12, 7, 9, 30, tzinfo=UTC)
CALENDAR = b"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nEND:VCALENDAR\r\n"


def read_back(calendar: bytes | None, subject: str, name: str) -> email.message.EmailMessage:
    message = compose(
        Rendered(subject, f"Halo {name},\n\nSampai jumpa.\n", f"<p>Halo {name},</p>"),
        sender="Concord Jakarta <noreply@concord.example>",
        to_name=name,
        to_address="ha@example.org",
        message_id="<r-1@concord.example>",
        sent_at=SENT,
        calendar=calendar,
        language="id",
    )
    raw = message.as_bytes(policy=message.policy.clone(linesep="\r\n"))
    assert raw.isascii(), "7-bit clean on the wire"
    parsed = email.message_from_bytes(raw, policy=default)
    assert isinstance(parsed, email.message.EmailMessage)
    return parsed


def test_names_and_subjects_with_diacritics_arrive_intact() -> None:
    parsed = read_back(CALENDAR, "Pendaftaran — Konsultasi Nasional", "Nguyễn Thị Hà")
    assert parsed["To"].addresses[0].display_name == "Nguyễn Thị Hà"
    assert parsed["To"].addresses[0].addr_spec == "ha@example.org"
    assert parsed["From"].addresses[0].display_name == "Concord Jakarta"
    assert str(parsed["Subject"]) == "Pendaftaran — Konsultasi Nasional"
    text = parsed.get_body(("plain",))
    html = parsed.get_body(("html",))
    assert text is not None and html is not None
    assert text.get_content() == "Halo Nguyễn Thị Hà,\n\nSampai jumpa.\n"
    assert html.get_content() == "<p>Halo Nguyễn Thị Hà,</p>"


def test_the_headers_say_who_when_which_language_and_that_nobody_should_auto_reply() -> None:
    parsed = read_back(None, "Your registration is confirmed", "Ha")
    assert str(parsed["Subject"]) == "Your registration is confirmed"
    assert parsed["Message-ID"] == "<r-1@concord.example>"
    assert parsed["Date"].datetime == SENT
    assert parsed["Content-Language"] == "id"
    assert parsed["Auto-Submitted"] == "auto-generated"
    assert parsed["X-Auto-Response-Suppress"] == "All"


def test_without_a_calendar_the_message_is_the_two_alternatives() -> None:
    parsed = read_back(None, "Reminder", "Ha")
    assert parsed.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in parsed.iter_parts()] == ["text/plain", "text/html"]
    assert list(parsed.iter_attachments()) == []


def test_the_calendar_is_an_attachment_beside_the_alternatives() -> None:
    parsed = read_back(CALENDAR, "Reminder", "Ha")
    assert parsed.get_content_type() == "multipart/mixed"
    [invitation] = list(parsed.iter_attachments())
    assert invitation.get_content_type() == "text/calendar"
    assert invitation.get_param("method") == "PUBLISH"
    assert invitation.get_filename() == "invitation.ics"
    assert invitation.get_content().encode() == CALENDAR


def test_an_internationalised_address_goes_through_the_newer_api_intact() -> None:
    message = compose(
        Rendered("Undangan", "Halo,\n", "<p>Halo,</p>"),
        sender="Concord <noreply@concord.example>",
        to_name="ရန်ကုန် Migrant Workers Association",
        to_address="điều.phối@yangon.example.org",
        message_id="<r-2@concord.example>",
        sent_at=SENT,
        calendar=CALENDAR,
    )
    raw = message.as_bytes(policy=default.clone(utf8=True, linesep="\r\n"))
    parsed = email.message_from_bytes(raw, policy=default)
    assert str(parsed["To"]) == ("ရန်ကုန် Migrant Workers Association <điều.phối@yangon.example.org>")
    [invitation] = list(parsed.iter_attachments())
    assert invitation.get_param("method") == "PUBLISH"
