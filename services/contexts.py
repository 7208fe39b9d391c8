"""Importing this module registers every context's events on ``services.registry.EVENTS``."""

from __future__ import annotations

import services.consultations.events
import services.organisations.events
import services.series.events
import services.statements.events  # noqa: F401
