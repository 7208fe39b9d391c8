"""The one registry of domain event classes. Each context registers its events here."""

from __future__ import annotations

from services.messages import EventRegistry

EVENTS = EventRegistry()
