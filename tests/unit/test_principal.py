"""The caller's principal, worked out once per run of a request (api/deps.py)."""

from __future__ import annotations

import asyncio

import pytest
from starlette.requests import Request

from api.deps import Authentication, current_principal
from api.problems import ProblemError


def test_a_request_run_again_is_judged_on_its_new_authentication() -> None:
    """A read retried after a lost connection (api/middleware.py) runs with the same scope and
    is authenticated again: a key refused by then is refused, not served as the first run's."""
    state = {"auth": Authentication()}
    request = Request({"type": "http", "state": state, "headers": []})
    first = asyncio.run(current_principal(request))
    assert not first.authenticated
    assert asyncio.run(current_principal(request)) is first, "the same run: worked out once"
    state["auth"] = Authentication("revoked", refusal="The API key is unknown or revoked.")
    with pytest.raises(ProblemError) as refused:
        asyncio.run(current_principal(request))
    assert refused.value.status == 401
