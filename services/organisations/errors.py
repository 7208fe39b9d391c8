"""Errors of the organisations context."""

from __future__ import annotations

from services.errors import DomainError


class OrganisationError(DomainError):
    code = "organisation-error"


class OrganisationAlreadyRegistered(OrganisationError):
    code = "organisation-already-registered"


class UnknownOrganisation(OrganisationError):
    code = "unknown-organisation"
