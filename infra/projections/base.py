"""What a projection is: a named set of tables kept in step with the log by ``apply``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from sqlalchemy import Connection, Table

from services.ports import RecordedEvent

#: The tables a projection writes to, by their live name. During a rebuild the same code
#: writes to shadow tables, so ``apply`` must address tables only through this mapping.
Tables = Mapping[str, Table]


class Projection(Protocol):
    """A read model. ``apply`` runs inside the transaction that also moves the checkpoint.

    Optional attributes: ``inline = False`` takes a projection off the command path (every
    command otherwise waits until each projection includes its events; such a one is caught
    up by the worker's loop and by its readers, see ``Projector.inline``); ``streams``, the
    stream types whose events it reads (a command on any other stream does not wait for it);
    and ``observe(events)`` shows a projection events it has already applied in another process,
    so a cache it keeps in memory can follow along instead of reading the log again;
    ``payload = False`` says it reads only the events' headers (stream, type, version,
    position, time), so it is fed events with empty ``data`` and ``metadata``, read without
    their JSON; ``personal = False`` says it reads the payload but none of the personal data in
    it, which is left sealed (no key lookup, nothing decrypted: a relay has no use for a name;
    an upcaster then sees those fields sealed); ``before_swap(conn, tables)`` finishes a
    rebuilt copy inside the transaction that swaps it in (for state another component keeps
    on the rows, such as the scheduler's mark of what is fanned out).
    """

    name: str

    @property
    def tables(self) -> Sequence[Table]:
        """The tables this projection owns (created by migrations)."""
        ...

    def apply(self, conn: Connection, tables: Tables, events: Sequence[RecordedEvent]) -> None:
        """Apply a batch of events, in position order, to ``tables``."""
        ...


def reads_payload(projection: Projection) -> bool:
    """False if the projection declares it needs only the events' headers."""
    return bool(getattr(projection, "payload", True))


def reads_personal(projection: Projection) -> bool:
    """False if the projection declares it never reads the personal data in a payload."""
    return reads_payload(projection) and bool(getattr(projection, "personal", True))


def live_tables(projection: Projection) -> dict[str, Table]:
    return {t.name: t for t in projection.tables}
