"""structlog set-up for workers: JSON lines on stderr, secrets redacted by a processor.

Redaction is a processor rather than discipline at each call site, so a credential that slips
into an event (an auth dict, a URL with a password) is still masked on the way out. What counts as
a secret is bus.secrets' one list, the same `list` and results use.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from bus.secrets import redact

__all__ = ["configure", "get_logger", "redact", "redact_secrets"]


def redact_secrets(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    return {k: redact(v, k) for k, v in event.items()}


def configure(level: str = "INFO") -> None:
    """Our events and every stdlib logger (RQ's included) come out as one JSON object a line."""
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.processors.add_log_level, stamp],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,  # RQ's tracebacks as text, not a tuple's repr
                redact_secrets,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(numeric)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            stamp,
            redact_secrets,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # One write per line (message and newline together): PrintLogger prints them apart, and a line
        # the stdlib handler writes from another thread (RQ's) could land between them, gluing two JSON lines.
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
