"""Who enqueues: the Python API other services call, and the thin click CLI on top of it.

    from producer import CallRequest, Producer
    result = Producer().submit(CallRequest(server="mykam", **{"from": "1001", "to": "2000"}))

docs/producers-python.md has the runnable version. Names load on first use (PEP 562), so the CLI's
`list` and `--help` do not import redis or pydantic.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "Producer": "producer.api",
    "job_status": "producer.api",
    "TestRequest": "bus.models",
    "CallRequest": "bus.models",
    "HangupRequest": "bus.models",
    "JobResult": "bus.models",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'producer' has no attribute {name!r}")
