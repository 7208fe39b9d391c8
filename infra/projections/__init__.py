"""Read models built from the event log."""

from __future__ import annotations

from infra.projections.base import Projection
from infra.projections.catalog import StreamCatalog
from infra.projections.organisations import OrganisationDirectory


def all_projections() -> list[Projection]:
    """Every projection the service maintains, in the order they are caught up."""
    return [StreamCatalog(), OrganisationDirectory()]
