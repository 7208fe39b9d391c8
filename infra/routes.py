"""Which committed events start which background task (by task name)."""

from __future__ import annotations

from infra.dispatch import Route

ROUTES: dict[str, Route] = {}
