"""docs/producers-python.md's example, run against a scripted server (workers.testing), so the
documented API stays true: submit, read the result, hang up through the CallRef."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bus.calls import CallRef
from bus.errors import CallRejected, Unreachable
from bus.registry import open_registry
from bus.server import ServerEntry
from bus.settings import Settings
from workers import jobs
from workers.adapters.base import Answer
from workers.pool import POOL
from workers.testing import ScriptedAdapter, install


@pytest.fixture(autouse=True)
def empty_pool() -> Iterator[None]:
    POOL.close_all()
    yield
    POOL.close_all()


def scripted(**steps: list) -> ScriptedAdapter:
    open_registry().add("mykam", ServerEntry.build("kamailio", {"token": "t"}))
    adapter = ScriptedAdapter("mykam", open_registry().get("mykam"), **steps)
    install(adapter)
    return adapter


def test_documented_example_runs() -> None:
    from producer import CallRequest, HangupRequest, Producer, TestRequest

    adapter = scripted(
        test=[Answer("kamailio 5.6.3")],
        originate=[CallRef("mykam", "call-1")],
        follow=[Answer("Call connected", call_id="call-1")],
        hangup=[Answer("Hung up call-1", call_id="call-1")],
    )
    producer = Producer(runner=jobs.execute)
    assert producer.submit(TestRequest(server="mykam")).message.startswith("kamailio 5.6.3")
    result = producer.submit(CallRequest(server="mykam", **{"from": "1001", "to": "2000"}), wait=True)
    assert result.ok and result.call_id == "call-1"
    assert producer.submit(HangupRequest(server="mykam", call_id=result.call_id)).ok
    assert [c[0] for c in adapter.calls] == ["test", "originate", "follow", "hangup"]


def test_refusal_reaches_the_producer_as_exit_5() -> None:
    from producer import CallRequest, Producer

    scripted(originate=[CallRef("mykam", "call-2")], follow=[CallRejected(486, "Busy Here")])
    result = Producer(runner=jobs.execute).submit(CallRequest(server="mykam", **{"from": "1", "to": "2"}))
    assert (result.exit_code, result.message) == (5, "Call failed: SIP 486 Busy Here")


def test_without_a_runner_or_redis_the_producer_says_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    from producer import Producer, TestRequest

    scripted()
    monkeypatch.setenv("IFBUS_MODE", "auto")
    monkeypatch.setenv("IFBUS_REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens on port 1
    with pytest.raises(Unreachable, match="not reachable"):
        Producer(Settings()).submit(TestRequest(server="mykam"))
