"""The one rule of workers.jobs, tested once with a scripted adapter (workers.testing):

before the server accepted a call, a failure keeps its class (retried, failed over, or final);
once it accepted, the CallRef is in the ledger and anything but a final answer is "outcome unknown"
naming the server and the call — never a second originate. Hangup goes where the CallRef says.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bus.calls import CallRef
from bus.errors import AuthFailed, CallRejected, OutcomeUnknown, Overloaded, Unreachable
from bus.registry import open_registry
from bus.server import ServerEntry
from workers import jobs
from workers.adapters.base import Answer
from workers.pool import POOL
from workers.testing import ScriptedAdapter, call_once, install


@pytest.fixture(autouse=True)
def empty_pool() -> Iterator[None]:
    POOL.close_all()
    yield
    POOL.close_all()


def server(name: str, **steps: list) -> ScriptedAdapter:
    """Register `name` (a Kamailio entry, one attempt budget of 2) and serve it with a script."""
    entry = ServerEntry.build("kamailio", {"token": "t"}, options={"attempts": "2", "breaker_threshold": "9"})
    open_registry().add(name, entry)
    adapter = ScriptedAdapter(name, open_registry().get(name), **steps)
    install(adapter)
    return adapter


def call(name: str, until: str = "answered") -> dict:
    return jobs.execute({"op": "call", "server": name, "from": "1001", "to": "2000", "until": until})


def test_answered_call_returns_the_follow_answer_and_records_the_call_id() -> None:
    a = server("a", originate=[CallRef("a", None, {"tracking_id": "t1"})], follow=[Answer("up", call_id="sip-1")])
    result = call("a")
    assert (result["exit_code"], result["call_id"], result["server"]) == (0, "sip-1", "a")
    ledger = jobs.inline_context().ledger
    assert ledger.call_ref("sip-1") == CallRef("a", "sip-1", {"tracking_id": "t1"})
    assert ledger.call_ref("t1") is not None  # the tracking id a user may have been shown also routes
    assert a.calls == [("originate", "1001", "2000"), ("follow", "t1")]


@pytest.mark.parametrize(
    "failure",
    [Unreachable("follow: connection refused"), Overloaded("follow: 503"), AuthFailed("follow: 401"),
     RuntimeError("a bug in follow")],
    ids=["unreachable", "overloaded", "auth", "bug"],
)
def test_after_acceptance_any_failure_is_outcome_unknown_never_a_second_originate(failure: Exception) -> None:
    a = server("a", originate=[CallRef("a", "chan-9")], follow=[failure])
    b = server("b")  # same pool: a failover would reach it
    result = call("a")
    assert result["exit_code"] == 6 and result["outcome"] == "ambiguous"
    assert result["server"] == "a" and result["call_id"] == "chan-9"
    assert "chan-9" in result["message"]
    assert [c[0] for c in a.calls] == ["originate", "follow"] and b.calls == []


def test_refusal_after_acceptance_is_final_with_the_sip_code_and_call_id() -> None:
    server("a", originate=[CallRef("a", "chan-2")], follow=[CallRejected(486, "Busy Here")])
    result = call("a")
    assert (result["exit_code"], result["sip_code"], result["call_id"]) == (5, 486, "chan-2")


def test_before_acceptance_unreachable_is_retried_then_failed_over() -> None:
    a = server("a", originate=[Unreachable("refused"), Unreachable("refused")])
    b = server("b", originate=[CallRef("b", "c-b")], follow=[Answer("up", call_id="c-b")])
    result = call("a")
    assert (result["exit_code"], result["server"], result["attempts"]) == (0, "b", {"a": 2, "b": 1})
    assert len(a.calls) == 2 and b.calls[0] == ("originate", "1001", "2000")


def test_before_acceptance_auth_fails_over_without_retry() -> None:
    a = server("a", originate=[AuthFailed("bad token")])
    server("b", originate=[CallRef("b", "c-b")], follow=[Answer("up", call_id="c-b")])
    assert call("a")["server"] == "b" and len(a.calls) == 1


def test_originate_without_an_answer_is_outcome_unknown_and_never_resent() -> None:
    a = server("a", originate=[OutcomeUnknown("sent, then the socket closed")])
    b = server("b")
    result = call("a")
    assert result["exit_code"] == 6 and len(a.calls) == 1 and b.calls == []


def test_until_accepted_returns_after_originate_without_following() -> None:
    a = server("a", originate=[CallRef("a", "chan-5", {"channel": "PJSIP/1001-0001"})])
    result = call("a", until="accepted")
    assert (result["exit_code"], result["call_id"]) == (0, "chan-5")
    assert [c[0] for c in a.calls] == ["originate"]


def test_hangup_after_outcome_unknown_goes_to_the_server_in_the_callref() -> None:
    a = server(
        "a",
        originate=[CallRef("a", "chan-7")],
        follow=[OutcomeUnknown("still ringing when the wait ended")],
        hangup=[Answer("Hung up chan-7", call_id="chan-7")],
    )
    b = server("b")  # no hangup scripted: asking b would fail the test
    assert call("a")["exit_code"] == 6
    result = jobs.execute({"op": "hangup", "server": "b", "call_id": "chan-7"})  # the user names the other one
    assert (result["exit_code"], result["server"]) == (0, "a")
    assert a.calls[-1] == ("hangup", "chan-7", "a") and b.calls == []  # a got the CallRef


def test_call_once_applies_the_same_rule_without_a_queue() -> None:
    adapter = ScriptedAdapter(
        "x", ServerEntry.build("kamailio", {"token": "t"}), originate=[CallRef("x", "c")], follow=[TimeoutError()]
    )
    with pytest.raises(OutcomeUnknown) as info:
        call_once(adapter, "1001", "2000")
    assert info.value.details["call_id"] == "c" and info.value.details["server"] == "x"
