"""Importing this module registers every context's events on ``services.registry.EVENTS``."""

from __future__ import annotations

import services.consultations.events
import services.invitations.events
import services.organisations.events
import services.people
import services.reminders.events
import services.series.events
import services.statements.events
import services.webhooks.events  # noqa: F401
