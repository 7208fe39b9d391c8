"""A JSON response written once, by orjson.

A route that returns a plain ``dict`` has FastAPI validate it against its return type and then
encode it (pydantic, then ``json.dumps``): for a document that is already JSON that is twice the
work for nothing. A read route returns :class:`Json` instead and names its schema in
``response_model`` (or ``responses``), so the OpenAPI document still says what it answers.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


class Json(Response):
    """``application/json`` of an already JSON-shaped value (str keys, no datetimes)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def tagged(content: Any, version: Any) -> Json:
    """``content`` with ``ETag`` naming the stream version it reflects (none if unknown)."""
    headers = {"ETag": f'"{version}"'} if version is not None else None
    return Json(content, headers=headers)
