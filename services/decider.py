"""How an aggregate is written: ``decide`` returns events, ``evolve`` applies one.

Deciding is separate from applying: replaying history runs only ``evolve``; a command runs
``decide`` on the state that history produced. Both are pure functions of their arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar
from uuid import UUID

from services.messages import DomainEvent

S = TypeVar("S")
C = TypeVar("C")


@dataclass(frozen=True, slots=True)
class Context:
    """What a decision may know besides state and command: the time and who is acting."""

    now: datetime
    actor: str | None = None
    #: The organisation the caller acts for (keys of role ``organisation``), else None.
    organisation_id: UUID | None = None


@dataclass(frozen=True)
class Decider(Generic[S, C]):
    """One aggregate type: its stream type, empty state, evolve and decide."""

    stream_type: str
    initial: Callable[[], S]
    evolve: Callable[[S, DomainEvent], S]
    decide: Callable[[S, C, Context], Sequence[DomainEvent]]
    #: Applies many events at once with the same result as ``evolve`` one by one, for an
    #: aggregate whose state grows with its stream (where evolving one event at a time
    #: would copy the growing part once per event: quadratic in the stream's length).
    evolve_all: Callable[[S, Iterable[DomainEvent]], S] | None = None

    def fold(self, events: Iterable[DomainEvent], state: S | None = None) -> S:
        """The state after ``events`` (from the empty state unless ``state`` is given)."""
        current = self.initial() if state is None else state
        if self.evolve_all is not None:
            return self.evolve_all(current, events)
        for event in events:
            current = self.evolve(current, event)
        return current
