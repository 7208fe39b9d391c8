"""Read models built from the event log."""

from __future__ import annotations

from infra.projections.base import Projection
from infra.projections.catalog import StreamCatalog
from infra.projections.consultations import ConsultationViews
from infra.projections.organisations import OrganisationDirectory
from infra.projections.reminders import ReminderSchedule
from infra.projections.series import SeriesViews
from services.ports import EventStore


def all_projections(store: EventStore) -> list[Projection]:
    """Every projection the service maintains, in the order they are caught up."""
    return [
        StreamCatalog(),
        OrganisationDirectory(),
        ConsultationViews(store),
        SeriesViews(store),
        ReminderSchedule(),
    ]
