"""Structured logs: JSON lines (or a console format) with the request's correlation id."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

#: An invitation link's token in a path (``/s/<statement>/sign/<token>``): whoever reads the
#: logs must not be able to sign with it, so every line shows it redacted.
_LINK_TOKEN = re.compile(r"(/sign/)[A-Za-z0-9_-]{16,}")


def redact_link_tokens(
    _: object, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A processor: invitation link tokens in any string value become ``[redacted]``."""
    for key, value in event_dict.items():
        if isinstance(value, str) and "/sign/" in value:
            event_dict[key] = _LINK_TOKEN.sub(r"\1[redacted]", value)
    return event_dict


class _Stderr:
    """Whatever ``sys.stderr`` is when a line is written (a test runner swaps it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure(fmt: str = "json", level: str = "INFO") -> None:
    """Configure structlog and the standard library to write one event per line."""
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_link_tokens,  # also over uvicorn's access lines (formatted before this runs)
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(_Stderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(_Stderr())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Alembic: which revisions ran, not how it set itself up.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("alembic.runtime.migration").setLevel(root.level)
    # httpx logs every request it makes at INFO: a bench's load or a worker's webhook
    # deliveries would drown everything else (deliveries have log lines of their own).
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
