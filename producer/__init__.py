"""Who enqueues: the Python API other services call, and the thin click CLI on top of it.

    from producer import CallRequest, Producer
    result = Producer().submit(CallRequest(server="mykam", **{"from": "1001", "to": "2000"}))

docs/producers-python.md has the runnable version. Names load on first use (PEP 562), so the CLI's
`list` and `--help` do not import redis or pydantic.
"""

from __future__ import annotations

from typing import Any

from bus.lazy import lazy_exports

_HOMES = {
    "Producer": "producer.api",
    "job_status": "producer.api",
    # the message models, from where bus exports them
    **{name: "bus" for name in ("TestRequest", "CallRequest", "HangupRequest", "JobResult")},
}

__all__ = sorted(_HOMES)
_lazy = lazy_exports(__name__, _HOMES)


def __getattr__(name: str) -> Any:  # a def, so type checkers see the PEP 562 hook
    return _lazy(name)
