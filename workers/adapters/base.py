"""The vendor seam: what every adapter does, whatever protocol it speaks.

Adapters turn `test`, `call` and `hangup` into their vendor's API calls and raise only
`bus.errors` exceptions, each in exactly one outcome class, so retry and failover rules live in
one place (workers.jobs) instead of seven.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar

from bus.errors import AuthFailed, InvalidInput
from bus.server import ServerEntry
from bus.vendors import vendor


@dataclass
class Answer:
    """A successful operation: a line for humans, a call id when there is one, facts for --json."""

    message: str
    call_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


class Adapter(abc.ABC):
    """One server of one vendor type; a worker keeps it between jobs to reuse its connections."""

    type: ClassVar[str]
    #: extra `key=value` words `call` accepts beyond from/to (e.g. Twilio's twiml=, url=).
    call_extras: ClassVar[frozenset[str]] = frozenset()
    hangup_extras: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, name: str, entry: ServerEntry) -> None:
        self.name = name
        self.entry = entry
        self.options = entry.effective_options

    @abc.abstractmethod
    def test(self) -> Answer:
        """Reach the management API and prove the credentials work; report the server's version."""

    @abc.abstractmethod
    def call(self, from_: str, to: str, until: str, extras: dict[str, str], deadline: float) -> Answer:
        """Place a click-to-call. With until='answered', wait (not past `deadline`, a
        time.monotonic() value) for the setup outcome: answered → Answer with call_id; refused →
        CallRejected with the SIP code. With until='accepted', return once the server took it."""

    @abc.abstractmethod
    def hangup(self, call_id: str, extras: dict[str, str]) -> Answer:
        """End the call `call` returned; idempotent, so a retry is always safe."""

    def close(self) -> None:  # noqa: B027 - optional hook: adapters without connections have nothing to close
        """Release connections."""

    # Helpers shared by adapters.

    def option_float(self, key: str) -> float:
        try:
            return float(self.options[key])
        except (KeyError, ValueError):
            raise InvalidInput(f"{self.name}: option {key}={self.options.get(key)!r} is not a number") from None

    def require_auth(self, *keys: str) -> dict[str, str]:
        missing = [k for k in keys if not self.entry.auth.get(k)]
        if missing:
            raise InvalidInput(
                f"{self.name}: missing --auth {' '.join(k + '=…' for k in missing)} "
                f"(re-add with `ifbus add sip {self.name} --type {self.type} --auth … --replace`)"
            )
        return {k: self.entry.auth[k] for k in keys}

    def auth_failed(self, detail: str) -> AuthFailed:
        keys = " ".join(f"{k}=…" for k in vendor(self.type).auth_keys)
        return AuthFailed(
            f"Authentication refused by {self.name} ({self.type}): {detail}; check credentials: --auth {keys}",
            server=self.name,
        )

    def check_extras(self, extras: dict[str, str], allowed: frozenset[str], op: str) -> None:
        unknown = sorted(set(extras) - allowed)
        if unknown:
            accepted = ", ".join(sorted(allowed)) or "none"
            raise InvalidInput(
                f"{op} on {self.type}: unknown key(s) {', '.join(unknown)} (accepted extras: {accepted})"
            )
