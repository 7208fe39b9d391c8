"""The rows every contender writes and the fold every contender reads them with.

The same pre-generated events go to our store, to the plain table and to the eventsourcing
library, so the three differ only in how they store and read them.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

STREAM_TYPE = "bench"
#: Events per stream in the one-event-per-transaction workloads: each append names the
#: stream's current version, as a command handler does after loading the stream.
STREAM_LENGTH = 10
#: Events per transaction in the batched workload (one new stream per batch).
BATCH_SIZE = 100
#: The metadata every event carries (the store writes the same shape for every append).
METADATA: dict[str, Any] = {
    "actor": "bench",
    "api_key_id": None,
    "causation_id": None,
    "correlation_id": None,
}

_NAMES = (
    "Hà Thị Minh Đức",
    "Nguyễn Văn An",
    "Zoë Ødegård",
    "Łukasz Żółkiewski",
    "Aoife Ní Bhriain",
    "Çağla Öztürk",
    "José María Peña",
    "Søren Kierkegård",
    "Amélie Poulain-Lefèvre",
    "Ngozi Okonkwo-Adébáyọ̀",
)
_ORGS = (
    "Hội Bảo vệ Thiên nhiên",
    "Collectif Écologie Urbaine",
    "Stowarzyszenie Sąsiedzkie",
    "Friends of the Earth",
    "Associação Moradores do Bairro",
)
_COMMENTS = (
    "Je soutiens cette déclaration et demande une réponse écrite avant la réunion.",
    "We need the consultation period extended by two weeks — many members are away.",
    "Chúng tôi đồng ý với đề xuất này, nhưng cần thêm thông tin về ngân sách.",
    "Popieramy wniosek; prosimy o udostępnienie protokołu z posiedzenia.",
)
_TYPES = ("SignatoryAdded", "StatementEndorsed", "CommentSubmitted", "ConsultationPlanned")


@dataclass(frozen=True, slots=True)
class BenchEvent:
    """One event as every contender receives it."""

    event_id: UUID
    stream_id: UUID
    version: int
    type: str
    data: dict[str, Any]
    recorded_at: datetime


@dataclass
class Fold:
    """What every reader computes from the whole log: counts per type and name lengths."""

    count: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    name_chars: int = 0

    def add(self, event_type: str, data: Mapping[str, Any]) -> None:
        self.count += 1
        self.by_type[event_type] += 1
        self.name_chars += len(data["name"]["$personal"]["value"])

    def summary(self) -> dict[str, Any]:
        return {"count": self.count, "types": dict(self.by_type), "name_chars": self.name_chars}


def make_events(
    total: int, *, stream_length: int, rng: random.Random, start: datetime | None = None
) -> list[BenchEvent]:
    """``total`` events in streams of ``stream_length``, with realistic ~300-byte payloads."""
    when = start or datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
    events: list[BenchEvent] = []
    stream_id = uuid4()
    consultation = uuid4()
    for i in range(total):
        version = i % stream_length + 1
        if version == 1:
            stream_id, consultation = uuid4(), uuid4()
        person = UUID(int=rng.getrandbits(128), version=4)
        data = {
            "consultation_id": str(consultation),
            "person_id": str(person),
            "name": {"$personal": {"subject": str(person), "value": rng.choice(_NAMES)}},
            "organisation": rng.choice(_ORGS),
            "comment": rng.choice(_COMMENTS),
            "tags": rng.sample(["santé", "mobilité", "logement", "éducation", "eau"], 2),
            "at": (when + timedelta(seconds=i)).isoformat(),
        }
        events.append(
            BenchEvent(
                event_id=uuid4(),
                stream_id=stream_id,
                version=version,
                type=_TYPES[i % len(_TYPES)],
                data=data,
                recorded_at=when + timedelta(seconds=i),
            )
        )
    return events


def chunks(events: Sequence[BenchEvent], size: int) -> Iterator[Sequence[BenchEvent]]:
    """Consecutive slices of ``size`` events (the last may be shorter)."""
    for i in range(0, len(events), size):
        yield events[i : i + size]


def split(events: Sequence[BenchEvent], parts: int) -> list[Sequence[BenchEvent]]:
    """``parts`` shares of whole streams, one per writer, so writers never share a stream."""
    streams: dict[UUID, list[BenchEvent]] = {}
    for e in events:
        streams.setdefault(e.stream_id, []).append(e)
    shares: list[list[BenchEvent]] = [[] for _ in range(parts)]
    for i, stream in enumerate(streams.values()):
        shares[i % parts].extend(stream)
    return list(shares)
