"""Link tokens and form tokens: derived, and bound to what they are for."""

from __future__ import annotations

import hashlib
from uuid import uuid4

from infra.tokens import form_token, form_token_valid, link_token, new_nonce, token_hash

SECRET = b"s" * 48


def test_a_link_token_is_derived_per_invitation_and_generation() -> None:
    invitation = uuid4()
    first = link_token(SECRET, invitation, 1)
    assert first == link_token(SECRET, invitation, 1), "the worker renders it again at will"
    assert len(first) == 43 and set(first) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    )
    assert link_token(SECRET, invitation, 2) != first, "a resend makes another"
    assert link_token(SECRET, uuid4(), 1) != first
    assert link_token(b"t" * 48, invitation, 1) != first, "another secret, other links"
    assert token_hash(first) == hashlib.sha256(first.encode()).hexdigest()


def test_a_form_token_matches_its_cookie_and_its_link_only() -> None:
    nonce = new_nonce()
    token = form_token(SECRET, nonce, "link-a")
    assert form_token_valid(SECRET, nonce, token, "link-a")
    assert not form_token_valid(SECRET, None, token, "link-a"), "no cookie"
    assert not form_token_valid(SECRET, new_nonce(), token, "link-a"), "another browser"
    assert not form_token_valid(SECRET, nonce, token, "link-b"), "another link"
    assert not form_token_valid(b"t" * 48, nonce, token, "link-a"), "not made by us"
    assert not form_token_valid(SECRET, nonce, "", "link-a")
    assert not form_token_valid(SECRET, nonce, nonce, "link-a")
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert not form_token_valid(SECRET, nonce, forged, "link-a")
    # The form token is not the link token: one secret, a key per purpose.
    assert form_token(SECRET, nonce, "x").split(".")[1] != link_token(SECRET, uuid4(), 1)
