"""Messages from Jinja2 templates: a subject, a plain-text body and an HTML body per rule.

Each rule has one template (``templates/<rule>.j2``) that fills the ``subject`` and ``body``
blocks of ``layout.j2``; the layout is rendered twice, as text and as autoescaped HTML.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup, escape

TEMPLATES = Path(__file__).parent / "templates"


def _paragraphs(value: str) -> Markup:
    """Blank-line separated text as HTML paragraphs (rendered Markup stays as it is; plain
    text is escaped first)."""
    text = escape(value)
    parts = [p.strip() for p in text.split("\n\n") if p.strip()]
    return Markup("\n").join(Markup("<p>%s</p>") % p for p in parts)


def _environment(html: bool) -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=html,  # noqa: S701  (the text body is text/plain: escaping would garble it)
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters["paragraphs"] = _paragraphs
    return env


_TEXT = _environment(html=False)
_HTML = _environment(html=True)


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str


def render(rule: str, context: dict[str, Any]) -> Rendered:
    """The subject and both bodies for ``rule`` with ``context``."""
    name = f"{rule}.j2"
    text_template = _TEXT.get_template(name)
    subject = "".join(text_template.blocks["subject"](text_template.new_context(context)))
    text = text_template.render(html=False, **context)
    html = _HTML.get_template(name).render(html=True, **context)
    return Rendered(" ".join(subject.split()), text, html)


def compose(
    rendered: Rendered,
    *,
    sender: str,
    to_name: str,
    to_address: str,
    message_id: str,
    sent_at: datetime,
    calendar: bytes | None = None,
    language: str = "en",
) -> EmailMessage:
    """A MIME message: text and HTML alternatives, an optional ``.ics`` attachment.

    Display names with diacritics are encoded per RFC 2047 by the e-mail package's policy, so
    "Nguyễn Thị Hà" arrives intact through any server.
    """
    message = EmailMessage()
    sender_name, sender_address = parseaddr(sender)
    message["From"] = _address(sender_name, sender_address)
    message["To"] = _address(to_name, to_address)
    message["Subject"] = rendered.subject
    message["Date"] = format_datetime(sent_at)
    message["Message-ID"] = message_id
    message["Auto-Submitted"] = "auto-generated"
    message["X-Auto-Response-Suppress"] = "All"
    message["Content-Language"] = language
    message.set_content(rendered.text)
    message.add_alternative(rendered.html, subtype="html")
    if calendar is not None:
        message.add_attachment(
            calendar,
            maintype="text",
            subtype="calendar",
            filename="invitation.ics",
            params={"method": "PUBLISH"},
        )
    return message


def _address(name: str, address: str) -> Address:
    local, _, domain = address.rpartition("@")
    return Address(display_name=name, username=local, domain=domain)


__all__ = ["Rendered", "compose", "escape", "render"]
