"""The core every side shares: registry, message models, queue names, errors, settings.

Nothing in here imports click, RQ workers or a vendor protocol, so producers and workers
can both depend on it without depending on each other. The public names below are loaded on first
use (PEP 562), so `import bus.vendors` on the CLI's hot path does not pay for pydantic.
"""

from __future__ import annotations

from typing import Any

from bus.lazy import lazy_exports

_HOMES = {
    "BusError": "bus.errors",
    "Outcome": "bus.errors",
    "NotFound": "bus.errors",
    "InvalidInput": "bus.errors",
    "AuthFailed": "bus.errors",
    "Unreachable": "bus.errors",
    "Overloaded": "bus.errors",
    "CallRejected": "bus.errors",
    "OutcomeUnknown": "bus.errors",
    "CallRef": "bus.calls",
    "TestRequest": "bus.models",
    "CallRequest": "bus.models",
    "HangupRequest": "bus.models",
    "JobResult": "bus.models",
    "ServerEntry": "bus.server",
    "open_registry": "bus.registry",
    "Settings": "bus.settings",
}

__all__ = sorted(_HOMES)
_lazy = lazy_exports(__name__, _HOMES)


def __getattr__(name: str) -> Any:  # a def, so type checkers see the PEP 562 hook
    return _lazy(name)
