"""Read models built from the event log."""

from __future__ import annotations

from infra.personal import Keyring
from infra.projections.base import Projection
from infra.projections.catalog import StreamCatalog
from infra.projections.consultations import ConsultationViews
from infra.projections.erasures import KeyShredder
from infra.projections.invitations import InvitationViews
from infra.projections.organisations import OrganisationDirectory
from infra.projections.reminders import ReminderSchedule
from infra.projections.series import SeriesViews
from services.ports import EventStore


def all_projections(store: EventStore, keyring: Keyring | None = None) -> list[Projection]:
    """Every projection the service maintains, in the order they are caught up."""
    projections: list[Projection] = [
        StreamCatalog(),
        OrganisationDirectory(),
        ConsultationViews(store),
        SeriesViews(store),
        ReminderSchedule(),
        InvitationViews(),
    ]
    if keyring is not None:
        projections.append(KeyShredder(keyring))
    return projections
