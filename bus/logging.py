"""structlog set-up for workers: JSON lines on stderr, secrets redacted by a processor.

Redaction is a processor rather than discipline at each call site, so a credential that slips
into an event (an auth dict, a URL with a password) is still masked on the way out.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog

_SECRET_KEY = re.compile(r"secret|token|password|passwd|apikey|api_secret|private|authorization", re.I)
_URL_PASSWORD = re.compile(r"(\w+://[^:/@\s]*:)[^@\s]+@")
_INLINE_SECRET = re.compile(r"(?i)\b((?:auth_)?token|secret|api_secret|password|passwd|apikey)([=:]\s*)[^\s&,;\"']+")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")


def redact(value: Any, key: str = "") -> Any:
    if key and _SECRET_KEY.search(key):
        return "****"
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    if isinstance(value, str):
        value = _URL_PASSWORD.sub(r"\1****@", value)
        value = _INLINE_SECRET.sub(r"\1\2****", value)
        return _BEARER.sub(r"\1 ****", value)
    return value


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
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
