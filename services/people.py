"""Who a piece of personal data belongs to: one stable id per person."""

from __future__ import annotations

import uuid
from uuid import UUID

_PEOPLE = uuid.UUID("6f0c4d3e-8a1b-4c55-9e0e-3b1d2f9a7c10")


def person_id(identity: str) -> UUID:
    """The person id for an identity (an e-mail address, or organisation/name for a signatory).

    Case and surrounding blanks do not matter: the same person always gets the same id, so a
    second registration is recognised and their data can later be erased in one place.
    """
    return uuid.uuid5(_PEOPLE, identity.strip().casefold())
