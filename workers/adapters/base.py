"""The vendor seam: what every adapter does, whatever protocol it speaks.

A click-to-call has two halves with different failure rules, so adapters expose them separately:

- `originate(...) -> CallRef` returns as soon as the server *accepted* the call (or raises: a refusal
  before acceptance keeps its class — unreachable and overloaded are retried, auth fails over, a SIP
  refusal is final; a request that left us and got no answer is `OutcomeUnknown`).
- `follow(ref, deadline) -> Answer` waits for the call's setup outcome: answered → `Answer`; refused
  by a party → `CallRejected`. Anything else it raises, workers.jobs turns into "outcome unknown"
  naming the server and the call: once the server accepted, nothing is ever retried.

The rule lives once, in workers.jobs; adapters only say what happened. A server's connection
lifetime (log in once, keep-alive, reconnect) lives in its `Session`, one per server per worker
process, owned by workers.pool.AdapterPool, which closes them on shutdown.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from bus.calls import CallRef
from bus.errors import AuthFailed, InvalidInput, OutcomeUnknown
from bus.server import ServerEntry
from bus.vendors import vendor

Until = Literal["answered", "accepted"]
__all__ = ["Adapter", "Answer", "CallRef", "Pending", "Session", "Until"]


@dataclass
class Answer:
    """A successful operation: a line for humans, a call id when there is one, facts for --json."""

    message: str
    call_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(eq=False)
class Pending:
    """A call the process's follower (workers.follower) waits on, as a batched poll sees it.

    `since` is when the server accepted the call (time.monotonic(); for an adopted call, estimated
    from the ledger's wall-clock record), so an adapter's own timers (Kamailio's fr_timer) keep
    counting across a worker's death; `notes` is the adapter's memory between two polls.
    """

    ref: CallRef
    since: float
    deadline: float
    notes: dict[str, Any] = field(default_factory=dict)


class Session(abc.ABC):
    """One server's connection lifetime in one worker process.

    `open` connects and logs in, raising `AuthFailed` or `Unreachable` (nothing was sent); `alive`
    says whether the connection can carry a request now; `close` releases it. Adapters call
    `ensure()` before each operation, so a dropped session is re-opened on the next job — the
    retry policy of workers.jobs decides how often.
    """

    @abc.abstractmethod
    def open(self) -> None: ...

    @abc.abstractmethod
    def alive(self) -> bool: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    def ensure(self) -> None:
        if not self.alive():
            self.close()
            self.open()


class Adapter(abc.ABC):
    """One server of one vendor type; a worker keeps it (and its session) between jobs."""

    type: ClassVar[str]
    #: extra `key=value` words `call` accepts beyond from/to (e.g. Twilio's twiml=, url=).
    call_extras: ClassVar[frozenset[str]] = frozenset()
    hangup_extras: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, name: str, entry: ServerEntry) -> None:
        """No I/O here: a session opens on first use."""
        self.name = name
        self.entry = entry
        self.options = entry.effective_options

    @abc.abstractmethod
    def test(self) -> Answer:
        """Reach the management API and prove the credentials work; report the server's version."""

    @abc.abstractmethod
    def originate(self, from_: str, to: str, extras: dict[str, str], deadline: float) -> CallRef:
        """Ask the server to place the call; return once it accepted (see the module docstring).
        `deadline` is a time.monotonic() value no wait may pass."""

    @abc.abstractmethod
    def follow(self, ref: CallRef, deadline: float) -> Answer:
        """Wait (not past `deadline`) for the setup outcome of a call this adapter's server accepted:
        answered → Answer with the call id; refused by a party → CallRejected with its SIP code."""

    @abc.abstractmethod
    def hangup(self, call_id: str, ref: CallRef | None, extras: dict[str, str]) -> Answer:
        """End a call. `ref` is the ledger's record when the bus placed it (else None: the user's id
        alone). Idempotent: a call that already ended answers `self.already_ended(...)`."""

    #: seconds between two `poll_many` rounds; None: no batched poll, the follower runs `follow` (or
    #: `recover`) in a helper thread per call instead (right for event-driven sessions: AMI, ESL).
    poll_interval: ClassVar[float | None] = None

    def poll_many(self, calls: list[Pending]) -> list[Answer | BaseException | None]:
        """One look at many calls of this server, in as few requests as the API allows (Kamailio:
        one htable dump): per call an Answer (answered), an exception (CallRejected, or what went
        wrong — workers.jobs applies the after-acceptance rule), or None (still ringing). Only
        called when `poll_interval` is set; it must not wait longer than one request."""
        raise NotImplementedError(f"{self.type} has no batched poll")

    def recover(self, ref: CallRef, deadline: float) -> Answer:
        """Follow a call this process did not place (its worker died; the follower adopted it from the
        ledger) to its end from the server's own state, never by sending anything that could place it
        again. The default is `follow`, right for vendors whose follow reads server state (polls); an
        adapter whose follow only listens for events that may already have passed must override it
        with a look at the channel or call resource first."""
        return self.follow(ref, deadline)

    def accepted(self, ref: CallRef) -> Answer:
        """The answer for `--until accepted`: the server took the call, nobody waited for it to ring."""
        return Answer(
            f"Call accepted by {self.name} ({self.type}): {ref.label}",
            call_id=ref.call_id,
            data=dict(ref.handle),
        )

    def close(self) -> None:  # noqa: B027 - optional hook: adapters without connections have nothing to close
        """Release the session."""

    def active_calls(self, refs: list[CallRef]) -> list[dict[str, Any]]:
        """Which of these calls (the ledger's, placed here by the bus) the server still carries, for
        `ifbus calls`: one dict per ref with `active` True/False and the server's facts. A vendor
        that has no way to ask answers `active: None` (cannot tell) for each."""
        return [{**ref.to_json(), "active": None} for ref in refs]

    # Helpers shared by adapters.

    def already_ended(self, call_id: str, detail: str = "") -> Answer:
        """One rule for every vendor: hanging up a call that is over reached its goal (exit 0)."""
        suffix = f" ({detail})" if detail else ""
        return Answer(
            f"Call {call_id} had already ended on {self.name}{suffix}",
            call_id=call_id,
            data={"already_ended": True},
        )

    def no_outcome_yet(self, call_id: str, seen: str) -> OutcomeUnknown:
        """One wording for every vendor: the deadline came before the call had an outcome; `seen` says
        how far it got, so an operator knows whether to look at the server or at the party."""
        return OutcomeUnknown(
            f"{self.name}: call {call_id} had no outcome before the deadline ({seen})",
            server=self.name,
            call_id=call_id,
        )

    def gone_without_record(self, call_id: str, why: str) -> OutcomeUnknown:
        """An adopted call that ended before the adopter looked, on a server that keeps no record of how:
        the honest answer is outcome unknown, never "refused" (it may have been answered)."""
        return OutcomeUnknown(
            f"{self.name}: call {call_id} {why} and {vendor(self.type).label} keeps no record of how it ended: "
            "it may have been answered",
            server=self.name,
            call_id=call_id,
        )

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
