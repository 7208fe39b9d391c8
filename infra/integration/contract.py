"""The public event contract: what integrators may rely on, versioned apart from internal classes.

Internal event classes (``services/*/events.py``) may be renamed, split or reshaped; the public
contract changes only by adding a new version. Each public event type is named

    ``org.concord.<name>.v<version>``     e.g. ``org.concord.statement.endorsed.v1``

— reverse-DNS as CloudEvents recommends, with the major version last, so a consumer can route on
the whole string. ``<name>`` is the dotted name the feed's ``type`` field shows
(``statement.endorsed``). The versioned type is the CloudEvents ``type``, the SSE ``event:``
field, the key of ``GET /v1/event-types`` and the envelope's ``public_type``.

Compatibility: adding a field to ``data`` or a new event type is not a breaking change (schemas
allow additional properties; consumers must ignore what they do not know). Removing, renaming
or retyping a field is: it gets a new version (``…v2``) with its own entry, renderer and schema,
served next to ``v1`` for a deprecation period.

Every registered internal type is either in :data:`PUBLIC` or in :data:`INTERNAL` (a unit test
holds us to it), so a new event type cannot silently go unmapped — or silently go public.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import ConfigDict, Field, create_model
from pydantic.json_schema import GenerateJsonSchema

from services.messages import PERSONAL_KEY, DomainEvent, EventRegistry, Personal
from services.ports import RecordedEvent

#: Reverse-DNS prefix of every public event type.
TYPE_PREFIX = "org.concord"
#: JSON Schema dialect of the payload schemas (draft-07 is what AsyncAPI 3.0 tools read; the
#: schemas use only keywords that mean the same in 2020-12).
SCHEMA_DIALECT = "http://json-schema.org/draft-07/schema#"


@dataclass(frozen=True, slots=True)
class PublicEventType:
    """One public event type: the internal type it renders, its public name and version.

    ``hidden`` names fields of the internal event that never leave the service (a token's
    hash, say): they are left out of the rendered ``data`` and of the schema.
    """

    internal: str
    name: str
    version: int
    description: str
    hidden: frozenset[str] = frozenset()

    @property
    def type(self) -> str:
        """The versioned public type, e.g. ``org.concord.statement.endorsed.v1``."""
        return f"{TYPE_PREFIX}.{self.name}.v{self.version}"


def _v1(internal: str, description: str, hidden: tuple[str, ...] = ()) -> PublicEventType:
    return PublicEventType(internal, internal, 1, description, frozenset(hidden))


#: Every public event type. Today each renders one internal type of the same name.
PUBLIC: tuple[PublicEventType, ...] = (
    _v1("organisation.registered", "An organisation was registered."),
    _v1("organisation.revised", "An organisation's details changed; null fields did not."),
    _v1(
        "person.erased",
        "A person's data was erased: from now on their names, e-mails and titles read as null "
        "everywhere. Delete your copies of what you stored about `person_id`.",
    ),
    _v1("series.launched", "A series of consultations was launched with its planned countries."),
    _v1("series.plan_extended", "Countries were added to a series' plan."),
    _v1("series.consultation_joined", "A consultation became part of a series."),
    _v1("consultation.planned", "A consultation was planned (dates in UTC, with its time zone)."),
    _v1(
        "consultation.revised",
        "A consultation's details changed; null fields did not, `cleared` names emptied ones.",
    ),
    _v1("consultation.rescheduled", "A consultation moved to new dates."),
    _v1("consultation.registration_opened", "Registration opened (or its deadline moved)."),
    _v1("consultation.registration_closed", "Registration closed."),
    _v1("consultation.session_scheduled", "A session was added to the agenda."),
    _v1("consultation.session_changed", "An agenda session changed (the whole session as now)."),
    _v1("consultation.session_removed", "An agenda session was removed."),
    _v1("consultation.working_group_formed", "A working group formed for a thematic area."),
    _v1("consultation.participant_registered", "Someone registered and got a seat."),
    _v1("consultation.participant_waitlisted", "Someone registered beyond capacity (waitlist)."),
    _v1("consultation.participant_promoted", "A waitlisted participant got a seat."),
    _v1("consultation.registration_cancelled", "A registration was cancelled."),
    _v1("consultation.participant_checked_in", "A participant checked in."),
    _v1("consultation.participant_assigned", "A participant joined a working group."),
    _v1("consultation.completed", "The consultation was held."),
    _v1("consultation.cancelled", "The consultation was cancelled."),
    _v1("statement.drafting_started", "Drafting of a joint statement started."),
    _v1("statement.section_added", "A section (one thematic area) was added to a statement."),
    _v1("statement.recommendation_added", "A recommendation was added to a section."),
    _v1("statement.recommendation_revised", "A recommendation was revised (its whole text)."),
    _v1("statement.recommendation_withdrawn", "A recommendation was withdrawn."),
    _v1("statement.amendment_proposed", "An organisation proposed an amendment."),
    _v1("statement.amendment_accepted", "An amendment was accepted; its text now applies."),
    _v1("statement.amendment_rejected", "An amendment was rejected, with a reason."),
    _v1("statement.finalised", "The text was frozen (content hash); endorsements are open."),
    _v1("statement.endorsed", "An organisation endorsed the finalised text."),
    _v1("statement.endorsement_withdrawn", "An organisation withdrew its endorsement."),
    _v1("statement.reopened", "The statement went back to drafting; endorsements were voided."),
    _v1("statement.endorsements_closed", "Endorsements closed."),
    _v1("statement.published", "The statement's documents (Markdown, HTML, PDF) are public."),
    _v1(
        "invitation.issued",
        "An organisation was invited by e-mail to endorse a statement through a single-use link.",
        hidden=("token_hash",),
    ),
    _v1(
        "invitation.resent",
        "A fresh invitation link was sent; earlier links of the invitation stopped working.",
        hidden=("token_hash",),
    ),
    _v1(
        "invitation.opened", "The invitee acted on the link's page (a plain fetch records nothing)."
    ),
    _v1(
        "invitation.used", "The invitation link endorsed the statement (the endorsement's version)."
    ),
    _v1("invitation.expired", "The invitation link expired unused."),
    _v1("invitation.revoked", "The organisers revoked the invitation; its links stopped working."),
)

#: Internal event types that are not part of the contract, and why.
INTERNAL: Mapping[str, str] = {
    "statement.publication_requested": "the worker's cue to compile; `published` follows",
    "statement.compiled": "an intermediate build step; `published` carries the files",
    "consultation.reminders_configured": "operational settings of the reminder schedule",
    "reminder.sent": "a record that a mail went out, kept for idempotency",
    "webhook.delivery_failed": "about one key's subscription, not for every integrator",
    "webhook.endpoint_disabled": "about one key's subscription, not for every integrator",
}

_BY_INTERNAL: dict[str, PublicEventType] = {p.internal: p for p in PUBLIC}
_BY_TYPE: dict[str, PublicEventType] = {p.type: p for p in PUBLIC}


def public_types() -> tuple[PublicEventType, ...]:
    """Every public event type, in catalogue order."""
    return PUBLIC


def for_internal(internal_type: str) -> PublicEventType | None:
    """The public type an internal event type renders as, or None if it is not public."""
    return _BY_INTERNAL.get(internal_type)


def by_type(public_type: str) -> PublicEventType | None:
    """The entry for a versioned public type (``org.concord.….v1``)."""
    return _BY_TYPE.get(public_type)


def internal_types(names: Iterable[str]) -> list[str]:
    """Stored type names for a filter that may use versioned public types or plain names."""
    out: list[str] = []
    for name in names:
        entry = _BY_TYPE.get(name)
        out.append(entry.internal if entry is not None else name)
    return list(dict.fromkeys(out))


# -- personal data --------------------------------------------------------------------------


def reveal_personal(value: Any) -> Any:
    """THE place where personal data leaves the log for integrators: each
    ``{"$personal": {"subject", "value"}}`` marker becomes its plain value.

    The store has already opened each person's sealed data with their key; an erased person's
    marker has no value and renders as null — so the feed, the stream and webhooks all follow.
    """
    if isinstance(value, dict):
        marker = value.get(PERSONAL_KEY)
        if marker is not None and len(value) == 1:
            return None if "value" not in marker else reveal_personal(marker["value"])
        return {k: reveal_personal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [reveal_personal(v) for v in value]
    return value


# -- the JSON an integrator receives --------------------------------------------------------


def rfc3339(when: datetime) -> str:
    """A UTC time as RFC 3339 with ``Z`` (the form the JSON API uses everywhere)."""
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def envelope(event: RecordedEvent) -> dict[str, Any]:
    """Any logged event as JSON (the raw feed also shows internal and unknown types)."""
    entry = _BY_INTERNAL.get(event.type)
    meta = event.metadata
    return {
        "id": str(event.id),
        "type": entry.name if entry is not None else event.type,
        "public_type": entry.type if entry is not None else None,
        "stream_id": str(event.stream_id),
        "stream_type": event.stream_type,
        "version": event.version,
        "position": event.position or 0,
        "schema_version": event.schema_version,
        "recorded_at": rfc3339(event.recorded_at),
        "data": _data(event, entry),
        "metadata": {
            "actor": meta.get("actor"),
            "api_key_id": meta.get("api_key_id"),
            "causation_id": meta.get("causation_id"),
            "correlation_id": meta.get("correlation_id"),
        },
    }


def public_event(event: RecordedEvent) -> dict[str, Any] | None:
    """The integrator-facing JSON of a public event; None for internal or unknown types."""
    if event.type not in _BY_INTERNAL:
        return None
    return envelope(event)


def cloudevent(event: RecordedEvent, source: str) -> dict[str, Any]:
    """A CloudEvents 1.0 structured-mode JSON object for a public event.

    ``source`` is the service's public URL; the event's ``source`` is that URL plus the path of
    its stream. Extensions: ``position`` (global feed order), ``streamtype``, ``streamversion``.
    Raises ValueError for an event that is not public.
    """
    entry = _BY_INTERNAL.get(event.type)
    if entry is None:
        raise ValueError(f"event type {event.type!r} is not public")
    return {
        "specversion": "1.0",
        "id": str(event.id),
        "source": f"{source.rstrip('/')}/v1/streams/{event.stream_id}",
        "type": entry.type,
        "time": rfc3339(event.recorded_at),
        "subject": str(event.stream_id),
        "datacontenttype": "application/json",
        "position": event.position or 0,
        "streamtype": event.stream_type,
        "streamversion": event.version,
        "data": _data(event, entry),
    }


def _data(event: RecordedEvent, entry: PublicEventType | None) -> Any:
    """An event's ``data`` as integrators see it: plain personal data, hidden fields left out."""
    data = reveal_personal(event.data)
    if entry is not None and entry.hidden and isinstance(data, dict):
        return {k: v for k, v in data.items() if k not in entry.hidden}
    return data


# -- JSON Schemas, generated from the internal dataclasses ----------------------------------


class _NoTitles(GenerateJsonSchema):
    """Pydantic's generator without the auto-generated ``title`` on every field."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def _public_annotation(tp: Any, models: dict[type, Any]) -> Any:
    """The type of a field as integrators see it: ``Personal[T]`` is a plain ``T``, or null
    once the person is erased."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Annotated:
        return _public_annotation(args[0], models)
    if origin is Personal or tp is Personal:
        inner = _public_annotation(args[0], models) if args else Any
        return Annotated[inner | None, Field(json_schema_extra={"x-personal": True})]
    if origin in (typing.Union, types.UnionType):
        mapped = tuple(_public_annotation(a, models) for a in args)
        return functools.reduce(lambda a, b: a | b, mapped)
    if origin in (tuple, list, set, frozenset) and args:
        return list[_public_annotation(args[0], models)]  # type: ignore[misc]
    if origin in (dict, Mapping) and args:
        return dict[str, _public_annotation(args[1], models)]  # type: ignore[misc]
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _model(tp, models)
    return tp


def _model(cls: type, models: dict[type, Any]) -> Any:
    """A pydantic model mirroring a dataclass (fields with defaults are optional)."""
    if cls in models:
        return models[cls]
    hints = typing.get_type_hints(cls, include_extras=True)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        annotation = _public_annotation(hints[f.name], models)
        if f.default is not dataclasses.MISSING:
            fields[f.name] = (annotation, f.default)
        elif f.default_factory is not dataclasses.MISSING:
            fields[f.name] = (annotation, Field(default_factory=f.default_factory))
        else:
            fields[f.name] = (annotation, ...)
    model = create_model(cls.__name__, __config__=ConfigDict(extra="allow"), **fields)
    models[cls] = model
    return model


def _inline_refs(node: Any, defs: Mapping[str, Any]) -> Any:
    """Replace local ``$ref``s by their definitions, so each schema stands alone anywhere."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline_refs(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inline_refs(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline_refs(v, defs) for v in node]
    return node


def _registry() -> EventRegistry:
    import services.contexts  # noqa: F401  (registers every context's events)
    from services.registry import EVENTS

    return EVENTS


@functools.cache
def data_schema(public_type: str) -> dict[str, Any]:
    """The JSON Schema of ``data`` for a versioned public type (KeyError if there is none)."""
    entry = _BY_TYPE[public_type]
    cls: type[DomainEvent] = _registry().event_class(entry.internal)
    generated = _model(cls, {}).model_json_schema(schema_generator=_NoTitles)
    schema: dict[str, Any] = _inline_refs(generated, generated.get("$defs", {}))
    schema.pop("title", None)
    for name in entry.hidden:
        schema.get("properties", {}).pop(name, None)
        if name in schema.get("required", ()):
            schema["required"] = [r for r in schema["required"] if r != name]
    return {"title": entry.type, "description": entry.description, **schema}
