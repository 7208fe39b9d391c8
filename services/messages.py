"""Domain events as frozen dataclasses, their JSON form, schema versions and upcasting.

Each event class names its public ``type`` and ``schema_version``. When an event's shape
changes, bump ``schema_version`` and register an upcaster from the old version: events written
long ago are upgraded on read, so deciding and projecting code only ever sees the current shape.

Personal data (names, e-mails, titles) is never a bare field: it is wrapped in
:class:`Personal`, which names the person it belongs to. In JSON it is the marker object
``{"$personal": {"subject": "<person id>", "value": …}}``. The event store encrypts each
marker with that person's own key before it is written and decrypts it on read; once the key
is deleted (erasure) a read gives ``{"$personal": {"subject": …, "erased": true}}``, which
decodes to a :class:`Personal` with ``erased=True`` and no value.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import date, datetime
from typing import Any, ClassVar, Generic, TypeVar
from uuid import UUID

from services.errors import UnknownEventType
from services.ports import JSON, NewEvent, RecordedEvent

T = TypeVar("T")

PERSONAL_KEY = "$personal"


@dataclasses.dataclass(frozen=True, slots=True)
class Personal(Generic[T]):
    """A piece of personal data and the person (subject) it belongs to.

    An erased piece keeps its subject (counts and links survive) but has no value.
    """

    subject: UUID
    value: T
    erased: bool = False


class DomainEvent:
    """Base of every domain event; subclasses are frozen dataclasses."""

    type: ClassVar[str]
    schema_version: ClassVar[int] = 1


E = TypeVar("E", bound=DomainEvent)
Upcaster = Callable[[JSON], JSON]


def to_json(value: Any) -> Any:
    """Turn a dataclass tree into JSON-able values (UUIDs and times as strings)."""
    if isinstance(value, Personal):
        if value.erased:
            return {PERSONAL_KEY: {"subject": str(value.subject), "erased": True}}
        return {PERSONAL_KEY: {"subject": str(value.subject), "value": to_json(value.value)}}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not allowed in events")
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple, frozenset, set)):
        items = [to_json(v) for v in value]
        return sorted(items) if isinstance(value, (set, frozenset)) else items
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    return value


def from_json(tp: Any, value: Any) -> Any:
    """Rebuild a value of type ``tp`` from its JSON form (inverse of :func:`to_json`)."""
    if value is None:
        return None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        return from_json(args[0], value)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return from_json(inner[0], value) if len(inner) == 1 else value
    if origin is Personal or tp is Personal:
        body = value[PERSONAL_KEY]
        if body.get("erased"):
            return Personal(subject=UUID(body["subject"]), value=None, erased=True)
        inner_tp = args[0] if args else Any
        return Personal(subject=UUID(body["subject"]), value=from_json(inner_tp, body["value"]))
    if origin in (tuple,):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(from_json(args[0], v) for v in value)
        return tuple(from_json(a, v) for a, v in zip(args, value, strict=True))
    if origin in (list,):
        return [from_json(args[0], v) for v in value]
    if origin in (frozenset, set):
        return origin(from_json(args[0], v) for v in value)
    if origin in (dict, Mapping):
        return {k: from_json(args[1], v) for k, v in value.items()}
    if isinstance(tp, type):
        if dataclasses.is_dataclass(tp):
            hints = _hints(tp)
            return tp(**{f: from_json(hints[f], value[f]) for f in hints if f in value})
        if issubclass(tp, UUID):
            return UUID(value)
        if issubclass(tp, datetime):
            return datetime.fromisoformat(value)
        if issubclass(tp, date):
            return date.fromisoformat(value)
        if issubclass(tp, enum.Enum):
            return tp(value)
    return value


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """Resolved field types of a dataclass, cached."""
    hints = _HINTS.get(cls)
    if hints is None:
        resolved = typing.get_type_hints(cls, include_extras=True)
        names = [f.name for f in dataclasses.fields(cls)]
        hints = _HINTS[cls] = {n: resolved[n] for n in names}
    return hints


class EventRegistry:
    """Event classes by type name, with the upcasters that bring old payloads up to date."""

    def __init__(self) -> None:
        self._classes: dict[str, type[DomainEvent]] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}
        self._current: dict[str, int] = {}

    def register(self, cls: type[E]) -> type[E]:
        """Class decorator: make an event class known by its ``type``."""
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls.__name__} must be a dataclass")
        existing = self._classes.get(cls.type)
        if existing is not None and existing is not cls:
            raise ValueError(f"event type {cls.type!r} registered twice")
        self._classes[cls.type] = cls
        self._current[cls.type] = cls.schema_version
        return cls

    def upcaster(self, type_name: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Decorator: a pure function turning ``from_version`` data into the next version."""

        def decorate(fn: Upcaster) -> Upcaster:
            self._upcasters[(type_name, from_version)] = fn
            return fn

        return decorate

    def current_version(self, type_name: str) -> int | None:
        return self._current.get(type_name)

    def upcast(self, type_name: str, schema_version: int, data: JSON) -> tuple[int, JSON]:
        """Apply upcasters until the payload has the current schema version."""
        target = self._current.get(type_name)
        if target is None:
            return schema_version, data
        while schema_version < target:
            step = self._upcasters.get((type_name, schema_version))
            if step is None:
                raise UnknownEventType(
                    f"no upcaster for {type_name} v{schema_version} (current v{target})"
                )
            data = step(data)
            schema_version += 1
        return schema_version, data

    def types(self) -> list[str]:
        return sorted(self._classes)

    def event_class(self, type_name: str) -> type[DomainEvent]:
        try:
            return self._classes[type_name]
        except KeyError:
            raise UnknownEventType(type_name) from None

    def to_new_event(self, event: DomainEvent) -> NewEvent:
        """The storable form of a domain event."""
        return NewEvent(type=event.type, data=to_json(event), schema_version=event.schema_version)

    def decode_known(self, records: Iterable[RecordedEvent]) -> Iterator[DomainEvent]:
        """The domain events of ``records``, skipping types this code does not know (a newer
        writer may have added some): for read models, which must not stop on them."""
        return (self.decode(r) for r in records if r.type in self._classes)

    def decode(self, record: RecordedEvent) -> DomainEvent:
        """The domain event a stored record holds (upcasting it first if needed)."""
        cls = self.event_class(record.type)
        _, data = self.upcast(record.type, record.schema_version, record.data)
        decoded: DomainEvent = from_json(cls, data)
        return decoded


def iter_personal(data: Any) -> list[JSON]:
    """Every ``$personal`` marker object inside a JSON payload (for encryption and erasure)."""
    found: list[JSON] = []
    stack = [data]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if PERSONAL_KEY in node:
                found.append(node[PERSONAL_KEY])
            else:
                stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found
