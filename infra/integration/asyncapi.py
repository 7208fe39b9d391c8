"""The AsyncAPI 3.0.0 document: the webhook and live-stream channels, one message per type.

Built from the contract (:mod:`infra.integration.contract`), so a new public event type shows
up here, in ``GET /v1/event-types`` and in what the channels carry at the same time.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from infra.integration.contract import SCHEMA_DIALECT, data_schema, public_types

_UUID = {"type": "string", "format": "uuid"}
_TIME = {"type": "string", "format": "date-time"}
_NULLABLE_STRING = {"anyOf": [{"type": "string"}, {"type": "null"}]}


def _key(public_type: str) -> str:
    """A component key for a public type (dots are allowed in AsyncAPI component keys)."""
    return public_type.removeprefix("org.concord.")


def _cloudevent_schema(public_type: str, data_ref: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": "A CloudEvents 1.0 event in structured mode.",
        "required": ["specversion", "id", "source", "type", "time", "data", "position"],
        "properties": {
            "specversion": {"const": "1.0"},
            "id": {**_UUID, "description": "The event id; also `webhook-id`."},
            "source": {"type": "string", "format": "uri", "description": "The event's stream."},
            "type": {"const": public_type},
            "time": {**_TIME, "description": "When the event was recorded (RFC 3339)."},
            "subject": {**_UUID, "description": "The stream (aggregate) id."},
            "datacontenttype": {"const": "application/json"},
            "position": {"type": "integer", "minimum": 1, "description": "Global feed order."},
            "streamtype": {"type": "string"},
            "streamversion": {"type": "integer", "minimum": 1},
            "data": {"$ref": data_ref},
        },
    }


def _envelope_schema(public_type: str, name: str, data_ref: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": "The event as `GET /v1/events` shows it.",
        "required": [
            "id",
            "type",
            "public_type",
            "stream_id",
            "stream_type",
            "version",
            "position",
            "recorded_at",
            "data",
            "metadata",
        ],
        "properties": {
            "id": _UUID,
            "type": {"const": name},
            "public_type": {"const": public_type},
            "stream_id": _UUID,
            "stream_type": {"type": "string"},
            "version": {"type": "integer", "minimum": 1},
            "position": {"type": "integer", "minimum": 1},
            "schema_version": {"type": "integer", "minimum": 1},
            "recorded_at": _TIME,
            "data": {"$ref": data_ref},
            "metadata": {
                "type": "object",
                "properties": {
                    "actor": _NULLABLE_STRING,
                    "api_key_id": _NULLABLE_STRING,
                    "causation_id": _NULLABLE_STRING,
                    "correlation_id": _NULLABLE_STRING,
                },
            },
        },
    }


_WEBHOOK_HEADERS = {
    "type": "object",
    "required": ["webhook-id", "webhook-timestamp", "webhook-signature", "content-type"],
    "properties": {
        "webhook-id": {
            "type": "string",
            "description": "The event id: the same on every retry (de-duplicate on it).",
        },
        "webhook-timestamp": {
            "type": "string",
            "pattern": "^[0-9]+$",
            "description": "Unix seconds of this attempt.",
        },
        "webhook-signature": {
            "type": "string",
            "description": "Space-separated `v1,<base64 HMAC-SHA256>` of "
            "`{webhook-id}.{webhook-timestamp}.{body}`, one per active secret (Standard Webhooks).",
        },
        "content-type": {"const": "application/cloudevents+json"},
    },
}


def document(public_url: str) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document for a deployment served at ``public_url``."""
    url = urlsplit(public_url)
    schemas: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    webhook_messages: dict[str, Any] = {}
    stream_messages: dict[str, Any] = {}
    for entry in public_types():
        key = _key(entry.type)
        schemas[key] = data_schema(entry.type)
        data_ref = f"#/components/schemas/{key}"
        messages[f"webhook.{key}"] = {
            "name": entry.type,
            "title": entry.name,
            "summary": entry.description,
            "contentType": "application/cloudevents+json",
            "headers": _WEBHOOK_HEADERS,
            "payload": _cloudevent_schema(entry.type, data_ref),
        }
        messages[f"sse.{key}"] = {
            "name": entry.type,
            "title": entry.name,
            "summary": entry.description,
            "description": f"`event: {entry.type}`, `id:` the position, `data:` this JSON.",
            "contentType": "application/json",
            "payload": _envelope_schema(entry.type, entry.name, data_ref),
        }
        webhook_messages[key] = {"$ref": f"#/components/messages/webhook.{key}"}
        stream_messages[key] = {"$ref": f"#/components/messages/sse.{key}"}
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Concord events",
            "version": "1",
            "description": (
                "Every public event of the log, pushed to webhooks or pulled live over "
                "server-sent events. Payload schemas are JSON Schema "
                f"({SCHEMA_DIALECT}); fields marked `x-personal` hold personal data. Adding "
                "fields or event types is not a breaking change; a breaking change is a new "
                "versioned type (`….v2`). The same types, with their schemas, are listed by "
                "`GET /v1/event-types`."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "concord": {
                "host": url.netloc,
                "pathname": url.path or "/",
                "protocol": url.scheme or "https",
                "description": "This deployment's API.",
                "security": [{"$ref": "#/components/securitySchemes/apiKey"}],
            }
        },
        "channels": {
            "webhook": {
                "address": None,
                "title": "Webhook deliveries",
                "description": (
                    "Each subscription's URL (`POST /v1/subscriptions`) receives an HTTP POST "
                    "per event: the body a CloudEvents 1.0 structured-mode JSON event, signed "
                    "per Standard Webhooks. At least once, in position order per subscription; "
                    "answer 2xx to acknowledge."
                ),
                "messages": webhook_messages,
            },
            "eventStream": {
                "address": "/v1/events/stream",
                "title": "Live event stream (server-sent events)",
                "description": (
                    "`GET /v1/events/stream` with an API key (admin, organiser or integrator): "
                    "`text/event-stream`; each event's `id:` is its position, `event:` its "
                    "public type. Resume with `Last-Event-ID` or `?after=`; filter with "
                    "`types`, `stream_type`, `stream_id`. `: keep-alive` comments come "
                    "periodically; a key may hold a few streams at once (429 beyond)."
                ),
                "servers": [{"$ref": "#/servers/concord"}],
                "messages": stream_messages,
            },
        },
        "operations": {
            "deliverWebhook": {
                "action": "send",
                "title": "Deliver an event to a webhook subscription",
                "channel": {"$ref": "#/channels/webhook"},
                "messages": [
                    {"$ref": f"#/channels/webhook/messages/{k}"} for k in webhook_messages
                ],
            },
            "streamEvents": {
                "action": "send",
                "title": "Stream events to a connected client",
                "channel": {"$ref": "#/channels/eventStream"},
                "messages": [
                    {"$ref": f"#/channels/eventStream/messages/{k}"} for k in stream_messages
                ],
            },
        },
        "components": {
            "schemas": schemas,
            "messages": messages,
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Authorization: Bearer <API key>.",
                }
            },
        },
    }
