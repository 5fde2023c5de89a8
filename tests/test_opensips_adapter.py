"""The OpenSIPS adapter against an mi_http peer shaped on real OpenSIPS 3.4.18 captures (tests/peers/mi_http.py).

Each test names the capture its wire shapes come from (tests/peers/captures/opensips-3.4.18/). The peer also
plays what deploy/opensips/opensips.cfg records in cachedb_local, on per-party schedules measured on the lab
(docs/opensips.md). Nothing here waits on a fixed sleep: follow() polls until the peer's timers fire.
"""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Iterator

import pytest

from bus.calls import CallRef
from bus.errors import AuthFailed, CallRejected, InvalidInput, OutcomeUnknown, Unreachable
from bus.server import ServerEntry
from tests.peers.mi_http import MiHttpPeer
from workers.adapters import adapter_class
from workers.adapters.opensips import OpensipsAdapter


@pytest.fixture
def peer() -> Iterator[MiHttpPeer]:
    with MiHttpPeer() as p:
        yield p


def make(peer: MiHttpPeer, auth: dict[str, str] | None = None, **options: str) -> OpensipsAdapter:
    auth = auth if auth is not None else {"user": "admin", "secret": "pass", "domain": "opensips.local"}
    entry = ServerEntry.build("opensips", auth, host="127.0.0.1", port=peer.port, options=options or None)
    return OpensipsAdapter("myopensips", entry)


def soon(seconds: float = 10.0) -> float:
    return time.monotonic() + seconds


def place(adapter: OpensipsAdapter, from_: str, to: str) -> tuple[CallRef, object]:
    ref = adapter.originate(from_, to, {}, soon())
    try:
        return ref, adapter.follow(ref, soon())
    except CallRejected as exc:
        return ref, exc


def test_registered_for_the_opensips_type() -> None:
    assert adapter_class("opensips") is OpensipsAdapter


def test_test_names_version_and_uptime(peer: MiHttpPeer) -> None:
    """mi_basic_transcript.txt: `version` → Server "OpenSIPS (3.4.18 (x86_64/linux))", `uptime` "N [sec]"."""
    answer = make(peer).test()
    assert answer.message == "OpenSIPS 3.4.18 (x86_64/linux), up 2 h"
    assert answer.data["version"] == "3.4.18"
    assert [r.rpc for r in peer.requests] == ["version", "uptime"]
    # Never a GET (mi_errors_transcript.txt: it never completes); always JSON POSTs to the MI root.
    assert {(r.method, r.path, r.headers["content-type"]) for r in peer.requests} == {
        ("POST", "/mi", "application/json")
    }


def test_credentials_go_as_http_basic_for_a_reverse_proxy(peer: MiHttpPeer) -> None:
    """mi_http has no auth (mi_basic_transcript.txt answers without any); a proxy in front may ask for Basic."""
    make(peer).test()
    expected = "Basic " + base64.b64encode(b"admin:pass").decode()
    assert peer.requests[0].headers["authorization"] == expected
    peer.require_basic = "admin:other"
    with pytest.raises(AuthFailed) as err:
        make(peer).test()
    assert "pass" not in err.value.message


def test_no_credentials_no_authorization_header(peer: MiHttpPeer) -> None:
    make(peer, {"domain": "opensips.local"}).test()
    assert "authorization" not in peer.requests[0].headers


def test_answered_call_reports_the_b2b_key(peer: MiHttpPeer) -> None:
    """mi_b2b_transcript.txt: trigger answers only "OK"; the key comes from the config's cache entries."""
    adapter = make(peer)
    ref, answer = place(adapter, "1001", "1002")
    trigger = peer.calls("b2b_trigger_scenario")[0].json["params"]
    tag = ref.handle["tag"]
    assert trigger == {
        "scenario_id": "ifbus-c2c",
        "entity1": "a,sip:1001@opensips.local",
        "entity2": "b,sip:1002@opensips.local",
        "context": [f"ifbus={tag}"],
    }
    assert ref.call_id == "415.0" and ref.handle == {"tag": tag, "key": "415.0"}
    assert answer.call_id == "415.0"
    assert answer.data["sip_code"] == 200
    assert peer.sessions["415.0"].state == 4


def test_busy_callee_is_486_on_the_to_leg(peer: MiHttpPeer) -> None:
    """mi_b2b_busy_transcript.txt: the callee's refusal; the tuple lingers (state 5) but the code is read."""
    ref, outcome = place(make(peer), "alice@127.0.0.1:5090", "busy@127.0.0.1:5091")
    assert isinstance(outcome, CallRejected)
    assert (outcome.sip_code, outcome.details["leg"], outcome.exit_code) == (486, "to", 5)
    assert peer.sessions[ref.call_id].state == 5


def test_busy_caller_is_486_on_the_from_leg(peer: MiHttpPeer) -> None:
    """mi_b2b_busy_transcript.txt: a refusing first party leaves b2b_list empty at once."""
    _, outcome = place(make(peer), "busy@127.0.0.1:5091", "bob@127.0.0.1:5092")
    assert isinstance(outcome, CallRejected) and outcome.sip_code == 486 and outcome.details["leg"] == "from"
    assert peer.sessions == {}


@pytest.mark.parametrize(("to", "code"), [("ring@127.0.0.1:5093", 408), ("unknown@127.0.0.1", 404)])
def test_callee_timer_and_refusals_keep_their_code(peer: MiHttpPeer, to: str, code: int) -> None:
    """mi_b2b_ringing_transcript.txt (tuple state 3 while ringing); tm's own 408 when fr_inv_timeout fires."""
    _, outcome = place(make(peer), "alice@127.0.0.1:5090", to)
    assert isinstance(outcome, CallRejected) and outcome.sip_code == code and outcome.details["leg"] == "to"


def test_unresolvable_host_is_a_synchronous_refusal(peer: MiHttpPeer) -> None:
    """mi_b2b_transcript.txt error shape (code + message in HTTP 200); lab capture in docs/opensips.md."""
    with pytest.raises(CallRejected) as err:
        make(peer).originate("alice@nosuch.invalid", "bob@127.0.0.1", {}, soon())
    assert err.value.sip_code == 500 and "Failed to initialize scenario" in err.value.reason


def test_hangup_targets_the_answered_dialog_then_says_already_ended(peer: MiHttpPeer) -> None:
    """mi_b2b_transcript.txt: b2b_terminate_call "OK", then 404 "B2B session not found"."""
    adapter = make(peer)
    ref, _ = place(adapter, "alice@127.0.0.1:5090", "bob@127.0.0.1:5092")
    answer = adapter.hangup(ref.call_id or "", ref, {})
    assert answer.message == "Hung up 415.0 on myopensips"
    assert peer.calls("b2b_terminate_call")[0].json["params"]["key"] == peer.cache[f"ifbus:{ref.handle['tag']}:dlg"]
    assert peer.terminated == ["415.0"]
    again = adapter.hangup(ref.call_id or "", ref, {})
    assert again.data["already_ended"] is True


def test_a_reused_key_never_ends_another_call(peer: MiHttpPeer) -> None:
    """b2b_logic hands a key out again once its session is gone (547.0 three times on the lab)."""
    peer.reuse_keys = True
    adapter = make(peer)
    refused, outcome = place(adapter, "busy@127.0.0.1:5091", "bob@127.0.0.1:5092")
    assert isinstance(outcome, CallRejected) and refused.call_id == "547.0"
    live, _ = place(adapter, "alice@127.0.0.1:5090", "bob@127.0.0.1:5092")
    assert live.call_id == "547.0"
    assert adapter.hangup("547.0", refused, {}).data["already_ended"] is True
    assert peer.terminated == [] and "547.0" in peer.sessions
    assert adapter.hangup("547.0", live, {}).message.startswith("Hung up")
    assert peer.terminated == ["547.0"]


def test_hangup_without_a_ledger_record(peer: MiHttpPeer) -> None:
    """A user's own b2b key goes as given; an unknown one is 404 → already ended (mi_b2b_transcript.txt)."""
    adapter = make(peer)
    ref, _ = place(adapter, "alice@127.0.0.1:5090", "bob@127.0.0.1:5092")
    assert adapter.hangup(ref.handle["tag"], None, {}).message.startswith("Hung up")
    assert adapter.hangup("999.9", None, {}).data["already_ended"] is True
    with pytest.raises(InvalidInput):
        adapter.hangup("not-an-id", None, {})


@pytest.mark.parametrize("bad", ["10,01", 'a"b', "1001\r\nX: y", "sip:a b@host"])
def test_values_that_would_break_the_entity_csv_are_refused(peer: MiHttpPeer, bad: str) -> None:
    with pytest.raises(InvalidInput):
        make(peer).originate("1001", bad, {}, soon())
    assert peer.calls("b2b_trigger_scenario") == []


def test_unknown_extras_are_refused(peer: MiHttpPeer) -> None:
    with pytest.raises(InvalidInput):
        make(peer).originate("1001", "1002", {"twiml": "x"}, soon())


def test_missing_b2b_logic_is_named(peer: MiHttpPeer) -> None:
    """mi_basic_transcript.txt: an unknown method is -32601 "Method not found" inside HTTP 200."""
    peer._m_b2b_trigger_scenario = None  # type: ignore[method-assign,assignment]
    with pytest.raises(InvalidInput, match="b2b_logic"):
        make(peer).originate("1001", "1002", {}, soon())


def test_missing_config_blocks_end_in_outcome_unknown_with_the_reason(peer: MiHttpPeer) -> None:
    """Accepted ("OK", mi_b2b_transcript.txt) but nothing recorded: never "not placed", and say why."""
    peer.config_blocks = False
    adapter = make(peer, fr_timer="0.1")
    ref = adapter.originate("alice@127.0.0.1:5090", "bob@127.0.0.1:5092", {}, soon())
    assert ref.call_id is None
    with pytest.raises(OutcomeUnknown, match=r"IF\.bus c2c block"):
        adapter.follow(ref, soon())


def test_wrong_path_is_named(peer: MiHttpPeer) -> None:
    """mi_errors_transcript.txt: another path gets 400 text/html "Unable to parse URL!"."""
    with pytest.raises(InvalidInput, match="--opt path="):
        make(peer, path="/json").test()


def test_split_replies_and_dropped_keepalives(peer: MiHttpPeer) -> None:
    """Replies trickle in 7-byte pieces; the server closes the connection after each one."""
    peer.split = True
    peer.close_after_reply = True
    _, answer = place(make(peer), "alice@127.0.0.1:5090", "bob@127.0.0.1:5092")
    assert getattr(answer, "call_id", None) == "415.0"


def test_lost_trigger_reply_is_outcome_unknown(peer: MiHttpPeer) -> None:
    peer.drop_next("b2b_trigger_scenario")
    with pytest.raises(OutcomeUnknown):
        make(peer).originate("1001", "1002", {}, soon())


def test_stalled_trigger_is_outcome_unknown_by_the_deadline(peer: MiHttpPeer) -> None:
    peer.stall_next("b2b_trigger_scenario")
    started = time.monotonic()
    with pytest.raises(OutcomeUnknown):
        make(peer).originate("1001", "1002", {}, time.monotonic() + 0.5)
    assert time.monotonic() - started < 3


def test_nothing_listening_is_unreachable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    entry = ServerEntry.build("opensips", {"domain": "d"}, host="127.0.0.1", port=port)
    with pytest.raises(Unreachable):
        OpensipsAdapter("down", entry).originate("1001", "1002", {}, soon())


def test_follow_gives_up_at_the_deadline_while_ringing(peer: MiHttpPeer) -> None:
    """mi_b2b_ringing_transcript.txt: ringing is not an outcome; the wait ends as outcome unknown."""
    peer.behaviour["ring"] = [(0.01, 180)]
    adapter = make(peer)
    ref = adapter.originate("ring@127.0.0.1", "bob@127.0.0.1", {}, soon())
    with pytest.raises(OutcomeUnknown, match="still in progress"):
        adapter.follow(ref, time.monotonic() + 0.3)


def test_peer_get_never_completes(peer: MiHttpPeer) -> None:
    """mi_errors_transcript.txt: the peer is no kinder than OpenSIPS to a GET."""
    with socket.create_connection(("127.0.0.1", peer.port), timeout=0.5) as s:
        s.sendall(b"GET /mi HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        head = s.recv(4096)
        assert head.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n") and b"Transfer-Encoding: chunked" in head
        with pytest.raises(TimeoutError):
            s.recv(4096)
