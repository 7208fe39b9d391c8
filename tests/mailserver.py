"""A real SMTP server on loopback (aiosmtpd) that keeps what it receives, for tests."""

from __future__ import annotations

import asyncio
import email
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import default
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.processes import free_port


@dataclass
class Inbox:
    """Messages the server accepted, parsed; ``delay_s`` slows each RCPT (to kill mid-send)."""

    messages: list[EmailMessage] = field(default_factory=list)
    #: When each message arrived (``time.monotonic()``), in the same order.
    arrived: list[float] = field(default_factory=list)
    delay_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Set while a client waits in RCPT (a test may kill the sender right then).
    in_rcpt: threading.Event = field(default_factory=threading.Event)
    #: Recipients refused at RCPT, as a real server refuses an unknown mailbox.
    refuse: set[str] = field(default_factory=set)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        self.in_rcpt.set()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if address in self.refuse:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=default)
        assert isinstance(message, EmailMessage)
        with self.lock:
            self.messages.append(message)
            self.arrived.append(time.monotonic())
        return "250 Message accepted for delivery"

    def by_id(self) -> dict[str, list[EmailMessage]]:
        out: dict[str, list[EmailMessage]] = {}
        with self.lock:
            for m in self.messages:
                out.setdefault(str(m["Message-ID"]), []).append(m)
        return out

    def wait_for(self, count: int, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.messages) < count:
            assert time.monotonic() < deadline, f"{len(self.messages)} of {count} messages came"
            time.sleep(0.05)


class MailServer:
    """``with MailServer() as server: server.url …`` — plain, or STARTTLS with a login."""

    def __init__(self, tmp: Path | None = None, *, tls_login: tuple[str, str] | None = None):
        self.inbox = Inbox()
        self.port = free_port()
        kwargs: dict[str, Any] = {}
        self.cafile: Path | None = None
        if tls_login is not None:
            assert tmp is not None
            cert, key = tmp / "cert.pem", tmp / "key.pem"
            subprocess.run(
                [
                    "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert),
                ],
                check=True,
                capture_output=True,
            )  # fmt: skip
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(cert, key)
            self.cafile = cert
            user, password = tls_login

            def authenticate(server: Any, session: Any, envelope: Any, mechanism: str,
                             data: Any) -> AuthResult:  # fmt: skip
                ok = isinstance(data, LoginPassword) and (
                    data.login.decode(),
                    data.password.decode(),
                ) == (user, password)
                return AuthResult(success=ok)

            kwargs = {
                "tls_context": context,
                "require_starttls": True,
                "auth_require_tls": True,
                "authenticator": authenticate,
                "auth_required": True,
            }
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port, **kwargs)

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def __enter__(self) -> MailServer:
        self.controller.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.controller.stop()
