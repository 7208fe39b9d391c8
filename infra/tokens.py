"""Secrets for the sign-on links: the service's key, invitation link tokens and form tokens.

An invitation link carries a token derived from the service's secret key, the invitation and
the link's *generation* (a resend makes the next one):

    token = base64url(HMAC-SHA256(key("invitation-link"), "<invitation id>:<generation>"))

so the mail worker can render the e-mail at any time without the token ever being stored:
the log keeps only ``sha256(token)``, which is how a link is looked up. The sign-on form is
protected by a signed double-submit token: a random nonce in a cookie, and in the form that
nonce with an HMAC binding it to the link (:func:`form_token`). Each purpose uses its own key,
derived from the secret, so a value made for one can never pass for another.

The secret comes from ``CONCORD_SECRET_KEY``. In embedded mode (no Redis: one machine, the
worker a child of the server) it may be left unset: it is generated once into
``<data dir>/secret.key`` (mode 0600) and reused. A deployment of several processes must set
it — each process would otherwise make its own and the links would not verify.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
from pathlib import Path
from uuid import UUID

from infra.settings import Settings

#: Shortest ``CONCORD_SECRET_KEY`` accepted.
MIN_SECRET_LENGTH = 32
SECRET_FILE = "secret.key"  # noqa: S105  (a file name, not a secret)


class SecretKeyMissing(RuntimeError):
    """No ``CONCORD_SECRET_KEY`` where one is required (several processes share Redis)."""


def secret_key(settings: Settings) -> bytes:
    """The service's secret: ``CONCORD_SECRET_KEY``, or the embedded mode's generated file."""
    if settings.secret_key is not None:
        value = settings.secret_key.get_secret_value().strip()
        if len(value) < MIN_SECRET_LENGTH:
            raise SecretKeyMissing(
                f"CONCORD_SECRET_KEY must be at least {MIN_SECRET_LENGTH} characters long"
            )
        return value.encode()
    if not settings.embedded:
        raise SecretKeyMissing(
            "set CONCORD_SECRET_KEY (the same value in every API and worker process): "
            "invitation links are signed with it"
        )
    return _generated(settings.data_dir.resolve() / SECRET_FILE)


_GENERATED: dict[Path, bytes] = {}


def _generated(path: Path) -> bytes:
    """The key in ``path``, made once. Written to a private temporary file, then linked into
    place: a process starting at the same moment finds either no file or the whole key."""
    known = _GENERATED.get(path)
    if known is not None:
        return known
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(48) + "\n")
            with contextlib.suppress(FileExistsError):  # another process was first: use its key
                os.link(draft, path)
        finally:
            draft.unlink(missing_ok=True)
    key = _GENERATED[path] = _read(path)
    return key


def _read(path: Path) -> bytes:
    value = path.read_text().strip()
    if len(value) < MIN_SECRET_LENGTH:  # a half-written file from a crash: never sign with it
        raise SecretKeyMissing(f"{path} holds no usable key; delete it to make a new one")
    return value.encode()


def _subkey(secret: bytes, purpose: str) -> bytes:
    return hmac.new(secret, f"concord/{purpose}".encode(), hashlib.sha256).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def link_token(secret: bytes, invitation_id: UUID, generation: int) -> str:
    """The token of an invitation's link of ``generation`` (43 URL-safe characters)."""
    message = f"{invitation_id}:{generation}".encode()
    return _b64(hmac.new(_subkey(secret, "invitation-link"), message, hashlib.sha256).digest())


def token_hash(token: str) -> str:
    """What the log keeps of a link token: its SHA-256, hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_nonce() -> str:
    return secrets.token_urlsafe(24)


def form_token(secret: bytes, nonce: str, binding: str) -> str:
    """The form's CSRF token: the cookie's nonce and an HMAC binding it to ``binding``."""
    mac = hmac.new(_subkey(secret, "signon-form"), f"{binding}:{nonce}".encode(), hashlib.sha256)
    return f"{nonce}.{_b64(mac.digest())}"


def form_token_valid(secret: bytes, cookie_nonce: str | None, token: str, binding: str) -> bool:
    """The form's token was made by us for ``binding`` and matches the cookie's nonce."""
    if not cookie_nonce or "." not in token:
        return False
    nonce = token.split(".", 1)[0]
    if not hmac.compare_digest(nonce.encode(), cookie_nonce.encode()):
        return False
    return hmac.compare_digest(form_token(secret, nonce, binding).encode(), token.encode())
