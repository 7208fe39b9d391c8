"""Importing this module registers every context's events on ``services.registry.EVENTS``."""

from __future__ import annotations

import services.organisations.events  # noqa: F401
