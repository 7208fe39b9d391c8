"""Who a piece of personal data belongs to (one stable id per person), and erasure."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

from services.decider import Context, Decider
from services.errors import DomainError
from services.messages import DomainEvent
from services.registry import EVENTS

_PEOPLE = uuid.UUID("6f0c4d3e-8a1b-4c55-9e0e-3b1d2f9a7c10")


def person_id(identity: str) -> UUID:
    """The person id for an identity (an e-mail address, or organisation/name for a signatory).

    Case and surrounding blanks do not matter: the same person always gets the same id, so a
    second registration is recognised and their data can later be erased in one place.
    """
    return uuid.uuid5(_PEOPLE, identity.strip().casefold())


# -- erasure -----------------------------------------------------------------------------------

#: A person's stream (its id is the person id) holds what happened to their data as a whole.
STREAM_TYPE = "person"


@EVENTS.register
@dataclass(frozen=True)
class PersonErased(DomainEvent):
    """The person's key was deleted: their names, e-mails and titles read as erased from now
    on, everywhere. Counts, endorsements by organisations and the log's hashes stay intact."""

    type = "person.erased"
    person_id: UUID
    #: Why, in the requester's words (no personal data here, please).
    reason: str | None


@dataclass(frozen=True)
class ErasePerson:
    person_id: UUID
    reason: str | None = None


class AlreadyErased(DomainError):
    code = "already-erased"

    def __init__(self, person_id: UUID) -> None:
        self.person_id = person_id
        super().__init__(f"person {person_id} is already erased")


@dataclass(frozen=True)
class PersonRecord:
    erased: bool = False


def _evolve(state: PersonRecord, event: DomainEvent) -> PersonRecord:
    return PersonRecord(erased=True) if isinstance(event, PersonErased) else state


def _decide(state: PersonRecord, command: ErasePerson, ctx: Context) -> Sequence[DomainEvent]:
    if state.erased:
        raise AlreadyErased(command.person_id)
    return [PersonErased(person_id=command.person_id, reason=command.reason)]


PERSON: Decider[PersonRecord, ErasePerson] = Decider(STREAM_TYPE, PersonRecord, _evolve, _decide)
