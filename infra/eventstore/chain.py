"""Tamper evidence: every stream's events form a hash chain.

Each event stores two SHA-256 hashes (hex):

* ``content_hash`` over its canonical content *as stored* — id, stream, type, schema version,
  data (with personal data sealed, so erasing a person keeps every hash valid), metadata and
  time — as sorted-key compact JSON;
* ``chain_hash`` = SHA-256(previous event's ``chain_hash`` ‖ ``content_hash``), with 32 zero
  bytes before a stream's first event.

Changing, removing or reordering any stored event breaks its own content hash or the link of
the next event; ``concord verify`` (:func:`infra.eventstore.verify.verify`) walks the whole log
and names the first broken link. On PostgreSQL the chain is computed inside the append
statement (``concord_chain()``, created by migration 0008) from the stream's actual last row,
so no writer can link to the wrong predecessor.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson

GENESIS = "0" * 64


def canonical(
    event_id: UUID,
    stream_id: UUID,
    stream_type: str,
    event_type: str,
    schema_version: int,
    data: Any,
    metadata: Mapping[str, Any],
    recorded_at: datetime,
) -> bytes:
    """The bytes an event's content hash covers (stable across both back ends' JSON types)."""
    return orjson.dumps(
        {
            "data": data,
            "event_id": str(event_id),
            "event_type": event_type,
            "metadata": metadata,
            "recorded_at": recorded_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "schema_version": schema_version,
            "stream_id": str(stream_id),
            "stream_type": stream_type,
        },
        option=orjson.OPT_SORT_KEYS,
    )


def content_hash(*content: Any) -> str:
    """SHA-256 (hex) of :func:`canonical` for the same arguments."""
    return hashlib.sha256(canonical(*content)).hexdigest()


def link(previous: str, content: str) -> str:
    """The chain hash of an event whose predecessor's chain hash is ``previous``."""
    return hashlib.sha256(bytes.fromhex(previous) + bytes.fromhex(content)).hexdigest()


def chain(previous: str, contents: Sequence[str]) -> list[str]:
    """Chain hashes for consecutive events after one whose chain hash is ``previous``."""
    out = []
    for content in contents:
        previous = link(previous, content)
        out.append(previous)
    return out


#: The same chain step in SQL, for the PostgreSQL append (created by migration 0008).
PG_CHAIN_FUNCTION = """
CREATE OR REPLACE FUNCTION concord_chain(previous text, contents text[]) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    hashes text[] := '{}';
    current text := previous;
    content text;
BEGIN
    FOREACH content IN ARRAY contents LOOP
        current := encode(sha256(decode(current, 'hex') || decode(content, 'hex')), 'hex');
        hashes := hashes || current;
    END LOOP;
    RETURN hashes;
END
$$
"""
