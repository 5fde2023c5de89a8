"""Test doubles shipped for users' own tests, as httpx ships MockTransport and dramatiq a StubBroker.

`ScriptedAdapter` plays a server: each operation takes its next scripted step (a value to return
or an exception to raise), and records what it was asked. Install it for a registry name and the
real job path runs against it — retries, failover, the after-acceptance rule, the ledger:

    from bus.calls import CallRef
    from bus.errors import CallRejected
    from workers.testing import ScriptedAdapter, install

    adapter = ScriptedAdapter(
        "mykam", entry, originate=[CallRef("mykam", "c-1")], follow=[CallRejected(486, "Busy Here")]
    )
    install(adapter)
    result = workers.jobs.execute({"op": "call", "server": "mykam", "from": "1001", "to": "2000"})
    assert result["sip_code"] == 486 and adapter.calls == [("originate", "1001", "2000")]

`call_once` places one call on any adapter through the same rule the jobs apply, without a queue.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import Any, ClassVar

from bus.calls import CallRef
from bus.ledger import MemoryLedger
from bus.server import ServerEntry
from workers.adapters.base import Adapter, Answer, Until
from workers.pool import POOL

Step = Any  # a return value, or an exception instance to raise


class ScriptedAdapter(Adapter):
    """An adapter that answers from a script; `calls` lists every operation it was asked for."""

    type: ClassVar[str] = "scripted"

    def __init__(
        self,
        name: str,
        entry: ServerEntry,
        *,
        test: Iterable[Step] = (),
        originate: Iterable[Step] = (),
        follow: Iterable[Step] = (),
        hangup: Iterable[Step] = (),
    ) -> None:
        super().__init__(name, entry)
        self.type = entry.type  # type: ignore[misc]  # it stands in for a server of that type
        self.script: dict[str, list[Step]] = {
            "test": list(test),
            "originate": list(originate),
            "follow": list(follow),
            "hangup": list(hangup),
        }
        self.calls: list[tuple[Any, ...]] = []
        self.closed = False

    def test(self) -> Answer:
        self.calls.append(("test",))
        return self._next("test")

    def originate(self, from_: str, to: str, extras: dict[str, str], deadline: float) -> CallRef:
        self.calls.append(("originate", from_, to))
        return self._next("originate")

    def follow(self, ref: CallRef, deadline: float) -> Answer:
        self.calls.append(("follow", ref.label))
        return self._next("follow")

    def hangup(self, call_id: str, ref: CallRef | None, extras: dict[str, str]) -> Answer:
        self.calls.append(("hangup", call_id, ref.server if ref else None))
        return self._next("hangup")

    def close(self) -> None:
        self.closed = True

    def _next(self, op: str) -> Any:
        steps = self.script[op]
        if not steps:
            raise AssertionError(f"ScriptedAdapter {self.name}: no scripted step left for {op}")
        step = steps.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step


def install(adapter: Adapter) -> None:
    """Make the job path use `adapter` for its server name (until its registry entry changes)."""
    POOL.install(adapter.name, adapter.entry, adapter)


def call_once(
    adapter: Adapter,
    from_: str,
    to: str,
    until: Until = "answered",
    extras: dict[str, str] | None = None,
    deadline: float | None = None,
) -> Answer:
    """Place one call through the jobs' originate → follow rule, with a private in-memory ledger."""
    from workers.jobs import place_call

    adapter.check_extras(extras or {}, adapter.call_extras, "call")
    return place_call(
        adapter, MemoryLedger(), uuid.uuid4().hex, from_, to, until, dict(extras or {}),
        deadline if deadline is not None else time.monotonic() + 60,
    )  # fmt: skip
