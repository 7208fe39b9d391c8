"""Where e-mail goes: an SMTP server (``SMTP_URL``) or, by default, a Maildir under the data dir.

``SMTP_URL`` forms:

* ``smtp://host[:port]`` — port 25 by default; STARTTLS is used when the server offers it.
* ``smtp://user:password@host:587?starttls=required`` — refuse to send without STARTTLS
  (``starttls=never`` turns it off). User and password are percent-decoded.
* ``smtps://user:password@host[:465]`` — TLS from the first byte.

Certificates are verified against the system's trust store (``SSL_CERT_FILE`` overrides it).
The Maildir writes each message under a name derived from its key, so writing the same
message twice leaves one file: there the send is exactly once.
"""

from __future__ import annotations

import hashlib
import os
import smtplib
import ssl
from email.message import Message
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from infra.settings import Settings


class Transport(Protocol):
    """Hands one message to the world. Raises on failure (the caller retries later)."""

    name: str

    def send(self, message: Message, key: str) -> None: ...


class Maildir:
    """A Maildir a person can open with any mail client (``mutt -f var/mail``)."""

    name = "maildir"

    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("tmp", "new", "cur"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    def filename(self, key: str) -> str:
        return "concord-" + hashlib.sha256(key.encode()).hexdigest()[:32]

    def send(self, message: Message, key: str) -> None:
        name = self.filename(key)
        if (self.root / "new" / name).exists() or any((self.root / "cur").glob(name + ":*")):
            return
        tmp = self.root / "tmp" / f"{name}.{os.getpid()}"
        with open(tmp, "wb") as out:
            # CRLF line ends, with the message's own policy (flattening with the newer SMTP
            # policy would parse every header again: infra/mail/render.py).
            out.write(message.as_bytes(policy=message.policy.clone(linesep="\r\n")))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.root / "new" / name)

    def messages(self) -> list[Path]:
        """Every delivered message file (new and already read)."""
        return sorted([*(self.root / "new").iterdir(), *(self.root / "cur").iterdir()])


class Smtp:
    """Sends through an SMTP server, one connection per message."""

    name = "smtp"

    def __init__(self, url: str, timeout_s: float) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError("SMTP_URL must look like smtp://host:port or smtps://host:port")
        self.implicit_tls = parts.scheme == "smtps"
        self.host = parts.hostname
        self.port = parts.port or (465 if self.implicit_tls else 25)
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        starttls = parse_qs(parts.query).get("starttls", ["auto"])[0]
        if starttls not in ("auto", "required", "never"):
            raise ValueError("SMTP_URL: starttls must be auto, required or never")
        self.starttls = starttls
        self.timeout_s = timeout_s

    def send(self, message: Message, key: str) -> None:
        context = ssl.create_default_context()
        client: smtplib.SMTP
        if self.implicit_tls:
            client = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout_s, context=context)
        else:
            client = smtplib.SMTP(self.host, self.port, timeout=self.timeout_s)
        with client:
            client.ehlo()
            if not self.implicit_tls and self.starttls != "never":
                if client.has_extn("starttls"):
                    client.starttls(context=context)
                    client.ehlo()
                elif self.starttls == "required":
                    raise smtplib.SMTPNotSupportedError("the server does not offer STARTTLS")
            if self.username is not None:
                client.login(self.username, self.password or "")
            client.send_message(message)


def transport(settings: Settings) -> Transport:
    """SMTP when ``SMTP_URL`` is set, else the Maildir under the data dir."""
    if settings.smtp_url:
        return Smtp(settings.smtp_url, settings.smtp_timeout_s)
    return Maildir(settings.data_dir.resolve() / "mail")
