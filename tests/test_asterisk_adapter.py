"""The Asterisk adapter against the AMI replay peer (tests/peers/ami.py).

Captures: tests/peers/captures/asterisk-22.10.1/ (copies of tests/peers/captures/asterisk-22.10.1/);
each test names the capture its peer replays.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from bus.calls import CallRef
from bus.errors import AuthFailed, CallRejected, InvalidInput, OutcomeUnknown, Unreachable
from bus.server import ServerEntry
from tests.lab import wait_for
from tests.peers.ami import AmiPeer
from workers.adapters import adapter_class, ami
from workers.adapters.asterisk import AsteriskAdapter
from workers.adapters.base import Answer

T = 10.0


def adapter(peer: AmiPeer | None, secret: str = "pass123", port: int | None = None, **options: str) -> AsteriskAdapter:
    entry = ServerEntry.build(
        "asterisk",
        {"user": "admin", "secret": secret},
        host="127.0.0.1",
        port=peer.port if peer else port,
        options=options,
    )
    return AsteriskAdapter("myast", entry)


def call(a: AsteriskAdapter, from_: str = "PJSIP/sipp", to: str = "2000") -> tuple[CallRef, object]:
    ref = a.originate(from_, to, {}, time.monotonic() + T)
    try:
        return ref, a.follow(ref, time.monotonic() + T)
    except Exception as exc:  # returned, so tests can look at it beside the ref
        return ref, exc


def test_registered_for_type_asterisk() -> None:
    assert adapter_class("asterisk") is AsteriskAdapter


def test_test_reports_version_over_a_hostile_wire() -> None:
    """ami_core_show_version_transcript.txt (CoreSettings) and ami_transcript.txt (Ping): byte-by-byte
    writes with other channels' events between every message."""
    with AmiPeer(chunk=1, noise=True) as peer:
        a = adapter(peer)
        answer = a.test()
        assert answer.message == "Asterisk 22.10.1 (AMI 11.0.0) on myast"
        assert answer.data["version"] == "22.10.1" and answer.data["ami_version"] == "11.0.0"
        assert [x["Action"] for x in peer.actions[0]] == ["Login", "CoreSettings", "Ping"]
        login = peer.actions[0][0]
        assert (login["Username"], login["Events"]) == ("admin", "call")
        a.close()
        assert peer.actions[0][-1]["Action"] == "Logoff"


def test_session_is_reused_and_reopened_after_a_drop() -> None:
    """ami_transcript.txt: one Login serves every later job; when Asterisk drops the socket (restart),
    the next job logs in again on a new connection."""
    with AmiPeer() as peer:
        a = adapter(peer)
        a.test()
        a.test()
        assert (peer.logins, len(peer.actions)) == (1, 1)
        peer.drop_all()
        assert peer.connections.acquire(timeout=T)
        deadline = time.monotonic() + T
        while a.session().alive() and time.monotonic() < deadline:  # the reader notices the close
            time.sleep(0.01)
        a.test()
        assert (peer.logins, len(peer.actions)) == (2, 2)
        a.close()


def test_wrong_secret_is_auth_failed_after_asterisks_delay() -> None:
    """ami_auth_fail_transcript.txt: `Authentication failed` after ~1 s, then the server closes."""
    with AmiPeer() as peer:
        a = adapter(peer, secret="wrong-secret-value")
        start = time.monotonic()
        with pytest.raises(AuthFailed) as err:
            a.test()
        assert time.monotonic() - start >= 0.9
        assert err.value.exit_code == 3
        assert "user=… secret=…" in err.value.message and "Authentication failed" in err.value.message
        assert "wrong-secret-value" not in err.value.message
        assert peer.count("CoreSettings") == 0


def test_missing_permission_names_manager_conf() -> None:
    """ami_auth_fail_transcript.txt: an action the user may not run gets `Permission denied`."""
    with AmiPeer(deny={"CoreSettings", "Originate"}) as peer:
        a = adapter(peer)
        with pytest.raises(AuthFailed, match="system or reporting"):
            a.test()
        with pytest.raises(AuthFailed, match="add originate to its write="):
            a.originate("PJSIP/sipp", "2000", {}, time.monotonic() + T)
        a.close()


def test_unreachable_when_nothing_listens() -> None:
    with AmiPeer() as peer:
        port = peer.port
    a = adapter(None, port=port)
    with pytest.raises(Unreachable, match="Cannot reach myast"):
        a.test()


@pytest.mark.parametrize("order", ["captured", "first", "last"])
def test_answered_call(order: str) -> None:
    """ami_originate_answered_transcript.txt: Reason 4 = answered, wherever OriginateResponse falls."""
    with AmiPeer(order=order, noise=True) as peer:
        a = adapter(peer)
        ref, answer = call(a)
        assert ref.call_id and ref.call_id.startswith("ifbus-")
        assert answer.call_id == ref.call_id and answer.message == f"Call {ref.call_id} answered on myast"
        sent = peer.actions[0][1]
        assert list(sent) == [
            "Action",
            "ActionID",
            "Channel",
            "Context",
            "Exten",
            "Priority",
            "CallerID",
            "Timeout",
            "Async",
            "ChannelId",
        ]
        assert (sent["Channel"], sent["Context"], sent["Exten"], sent["Async"]) == (
            "PJSIP/sipp",
            "from-internal",
            "2000",
            "true",
        )
        assert (sent["CallerID"], sent["Timeout"], sent["ChannelId"]) == ('"Click2Call" <2000>', "30000", ref.call_id)
        a.close()


def test_every_call_event_before_the_reply() -> None:
    """ami_originate_answered_transcript.txt with all nine call events (OriginateResponse among them)
    sent before `Originate successfully queued`: the subscription made before sending keeps them."""
    with AmiPeer(events_before_reply=9) as peer:
        a = adapter(peer)
        ref, answer = call(a)
        assert answer.call_id == ref.call_id
        a.close()


@pytest.mark.parametrize("order", ["captured", "first", "last"])
def test_busy_pjsip_callee_is_486_from_the_hangup_event(order: str) -> None:
    """ami_pjsip_busy_transcript.txt: OriginateResponse says only Reason 0; Hangup has Cause 17 and
    TechCause 486. With order "first" the Reason arrives before any channel event."""
    with AmiPeer(order=order, noise=True) as peer:
        a = adapter(peer)
        ref, exc = call(a, "PJSIP/sippbusy")
        assert isinstance(exc, CallRejected)
        assert exc.message == "Call failed: SIP 486 Busy Here" and exc.exit_code == 5
        assert exc.details["call_id"] == ref.call_id and exc.details["tech_cause"] == "486"
        a.close()


def test_no_answer_is_480() -> None:
    """ami_originate_noanswer_transcript.txt: Reason 3, Hangup Cause 19 / TechCause 480."""
    with AmiPeer(noise=True) as peer:
        a = adapter(peer, answer_timeout="5")
        _, exc = call(a, "PJSIP/sippring")
        assert isinstance(exc, CallRejected) and exc.sip_code == 480
        assert peer.actions[0][1]["Timeout"] == "5000"
        a.close()


def test_unknown_endpoint_is_404_without_a_hangup_event() -> None:
    """ami_originate_unknown_transcript.txt: Reason 0 and no channel event at all: the channel never
    existed (chan_pjsip's cause NO_ROUTE_DESTINATION), settled after a bounded grace."""
    with AmiPeer() as peer:
        a = adapter(peer)
        start = time.monotonic()
        _, exc = call(a, "PJSIP/nosuch")
        assert isinstance(exc, CallRejected) and exc.sip_code == 404
        assert time.monotonic() - start < 5
        a.close()


def test_busy_local_channel_is_486_from_the_reason() -> None:
    """ami_transcript.txt section 5: a Local channel into a busy dialplan: Reason 5, and our channel's
    Hangup has Cause 0 (Unknown), so the Reason decides."""
    with AmiPeer() as peer:
        a = adapter(peer)
        _, exc = call(a, "Local/3000@ctx")
        assert isinstance(exc, CallRejected) and exc.sip_code == 486
        a.close()


def test_session_dropped_mid_call_is_outcome_unknown_and_never_resent() -> None:
    """ami_originate_answered_transcript.txt: Asterisk accepts (`Originate successfully queued`) and the
    session drops before OriginateResponse: follow cannot know the outcome; one Originate only."""
    with AmiPeer(faults={"originate": "after_reply"}) as peer:
        a = adapter(peer)
        _ref, exc = call(a)
        assert isinstance(exc, OutcomeUnknown) and "lost" in exc.message
        assert peer.count("Originate") == 1
        a.close()


def test_session_dropped_mid_reply_is_outcome_unknown_with_the_call_id() -> None:
    """ami_pjsip_busy_transcript.txt: the Originate reply is cut in half by a dropped session."""
    with AmiPeer(faults={"originate": "mid_reply"}) as peer:
        a = adapter(peer)
        with pytest.raises(OutcomeUnknown) as err:
            a.originate("PJSIP/sippbusy", "2000", {}, time.monotonic() + T)
        assert err.value.details["call_id"].startswith("ifbus-")
        assert peer.count("Originate") == 1


def test_silent_originate_is_outcome_unknown_at_the_deadline() -> None:
    with AmiPeer(faults={"originate": "silent"}) as peer:
        a = adapter(peer)
        with pytest.raises(OutcomeUnknown, match="did not answer before the deadline"):
            a.originate("PJSIP/sipp", "2000", {}, time.monotonic() + 0.5)
        a.close()


def test_hangup_then_no_such_channel() -> None:
    """ami_originate_answered_transcript.txt: Hangup by ChannelId = `Channel Hungup`; a second one
    `No such channel`, which is the already-ended answer (exit 0)."""
    with AmiPeer(noise=True) as peer:
        a = adapter(peer)
        ref, _ = call(a)
        assert ref.call_id
        first = a.hangup(ref.call_id, ref, {})
        assert first.message == f"Call {ref.call_id} ended on myast"
        sent = next(x for x in peer.actions[0] if x["Action"] == "Hangup")
        assert (sent["Channel"], sent["Cause"]) == (ref.call_id, "16")
        again = a.hangup(ref.call_id, None, {})
        assert again.data == {"already_ended": True} and "had already ended" in again.message
        a.close()


@pytest.mark.parametrize(
    "from_, to",
    [
        ("1001\r\nApplication: System", "2000"),
        ("1001", "2000\nVariable: x=1"),
        ("PJSIP/1001\x00", "2000"),
        ("1001", "PJSIP/2000"),
        ("sip:1001@pbx.example", "2000"),
    ],
)
def test_injection_and_bad_parties_are_refused_before_any_io(from_: str, to: str) -> None:
    with AmiPeer() as peer:
        a = adapter(peer)
        with pytest.raises(InvalidInput):
            a.originate(from_, to, {}, time.monotonic() + T)
        assert peer.actions == []


@pytest.mark.parametrize(
    "option",
    [
        {"context": "from internal"},
        {"channel_tech": "PJSIP/x"},
        {"caller_id_name": 'a" <1>'},
        {"answer_timeout": "7200"},
    ],
)
def test_bad_options_are_refused(option: dict[str, str]) -> None:
    with AmiPeer() as peer:
        a = adapter(peer, **option)
        with pytest.raises(InvalidInput):
            a.originate("1001", "2000", {}, time.monotonic() + T)
        assert peer.count("Originate") == 0


def test_hangup_call_id_is_checked_against_the_line_grammar() -> None:
    with AmiPeer() as peer:
        a = adapter(peer)
        with pytest.raises(InvalidInput, match="control characters"):
            a.hangup("chan-1\r\nAction: Originate", None, {})
        assert peer.count("Hangup") == 0


def test_dial_string_rules() -> None:
    a = adapter(None, port=1)
    assert a.channel("1001") == "PJSIP/1001"
    assert a.channel("PJSIP/1001") == "PJSIP/1001"
    assert a.channel("Local/1001@from-internal") == "Local/1001@from-internal"
    assert a.channel("tel:+1-415-555-0100") == "PJSIP/+14155550100"
    assert adapter(None, port=1, channel_tech="SIP").channel("1001") == "SIP/1001"
    assert a.extension("2000") == "2000"
    fields = dict(a.originate_fields("1001", "s", "ifbus-x"))
    assert fields["CallerID"] == '"Click2Call"'  # a non-numeric extension is no caller-id number


def test_check_field_grammar() -> None:
    assert ami.check_field("Channel", "PJSIP/1001") == "Channel: PJSIP/1001"
    for key in ("Chan nel", "Channel:", "", "X\r\nY"):
        with pytest.raises(InvalidInput):
            ami.check_field(key, "v")
    for value in ("a\rb", "a\nb", "a\x00", "x" * 1100):
        with pytest.raises(InvalidInput):
            ami.check_field("Variable", value)
    with pytest.raises(InvalidInput, match="Secret"):
        ami.check_field("Secret", "pass\n")
    assert ami.action("Ping", "p-1") == b"Action: Ping\r\nActionID: p-1\r\n\r\n"


def test_accepted_releases_the_subscription() -> None:
    """`--until accepted`: the call's event subscription is dropped at once."""
    with AmiPeer() as peer:
        a = adapter(peer)
        ref = a.originate("PJSIP/sipp", "2000", {}, time.monotonic() + T)
        answer = a.accepted(ref)
        assert answer.call_id == ref.call_id
        assert a._calls == {}
        with pytest.raises(OutcomeUnknown, match="not placed through this worker"):
            a.follow(ref, time.monotonic() + 1)
        a.close()


# ---------------------------------------------------------------- recover (a call adopted from a dead worker)
#
# ami_status_transcript.txt: a second AMI session receives every event of a call placed by another one,
# `Status` `Channel: <ChannelId>` shows it ringing (ChannelState 5) or Up (6), and after its Hangup
# answers only `No such channel`. The worker that placed the call is one adapter; the adopter is a fresh
# adapter on its own connection (another process's view), which never saw the Originate.


class Recovering:
    """`adopter.recover(ref)` in a thread, so the test can move the call on meanwhile."""

    def __init__(self, adopter: AsteriskAdapter, ref: CallRef, wait: float = T) -> None:
        self.outcome: object = None
        self._thread = threading.Thread(target=self._run, args=(adopter, ref, wait), daemon=True)
        self._thread.start()

    def _run(self, adopter: AsteriskAdapter, ref: CallRef, wait: float) -> None:
        try:
            self.outcome = adopter.recover(ref, time.monotonic() + wait)
        except Exception as exc:  # kept for the test to look at
            self.outcome = exc

    def result(self) -> object:
        self._thread.join(T)
        assert not self._thread.is_alive(), "recover did not return"
        return self.outcome


def _ringing(peer: AmiPeer, ref: CallRef) -> bool:
    """The peer has sent the call's events up to `Newstate` Ringing (the worker's thread writes them)."""
    return dict(peer.channels.get(ref.call_id or "", [])).get("ChannelState") == "5"


def _looked(peer: AmiPeer, ref: CallRef) -> bool:
    """The adopter's Status reached the peer (its subscription was made before it was sent)."""
    return any(a.get("Action") == "Status" and a.get("Channel") == ref.call_id for conn in peer.actions for a in conn)


@contextmanager
def ringing_call(
    peer: AmiPeer, channel: str = "PJSIP/sipp", **options: str
) -> Iterator[tuple[CallRef, AsteriskAdapter]]:
    """A call that one adapter (the worker that dies) placed and that now rings at the peer, and a fresh
    adapter on its own session to adopt it. The wait matters: Asterisk queues an async Originate before
    the channel exists, and a real adoption comes at least the lease (3 s) later."""
    worker = adapter(peer, **options)
    try:
        ref = worker.originate(channel, "2000", {}, time.monotonic() + T)
        assert wait_for(lambda: _ringing(peer, ref), T)
        adopter = adapter(peer)  # made only now, as in a worker that adopts the call
        try:
            yield ref, adopter
        finally:
            adopter.close()
    finally:
        worker.close()


def looking(peer: AmiPeer, adopter: AsteriskAdapter, ref: CallRef) -> Recovering:
    """`recover` under way, once its Status has reached the peer (so what the test does next is news)."""
    recovering = Recovering(adopter, ref)
    assert wait_for(lambda: _looked(peer, ref), T)
    return recovering


def test_recover_a_ringing_call_that_is_then_answered() -> None:
    """The call rings when its worker dies: Status says `ChannelState: 5` (Ringing), so the adopter keeps
    listening; the rest of ami_originate_answered_transcript.txt (OriginateResponse Reason 4, Newstate Up)
    then reaches its session, split into 3-byte pieces among other channels' events: answered. Nothing that
    could place a call is sent again."""
    with AmiPeer(ring=True, noise=True, chunk=3) as peer, ringing_call(peer) as (ref, adopter):
        recovering = looking(peer, adopter, ref)
        peer.release()
        answer = recovering.result()
        assert isinstance(answer, Answer), answer
        assert answer.message == f"Call {ref.call_id} answered on myast"
        assert answer.call_id == ref.call_id and answer.data["recovered"] is True
        assert answer.data["state_at_adoption"] == "Ringing"
        assert [a["Action"] for a in peer.actions[1]] == ["Login", "Status"]
        assert peer.count("Originate") == 1


def test_recover_a_ringing_call_that_is_then_not_answered() -> None:
    """ami_originate_noanswer_transcript.txt held while it rings, then released: OriginateResponse
    Reason 3 and Hangup Cause 19 / TechCause 480 reach the adopter → SIP 480, as `follow` says."""
    with (
        AmiPeer(ring=True, noise=True) as peer,
        ringing_call(peer, "PJSIP/sippring", answer_timeout="5") as (ref, adopter),
    ):
        recovering = looking(peer, adopter, ref)
        peer.release()
        exc = recovering.result()
        assert isinstance(exc, CallRejected) and exc.sip_code == 480, exc
        assert exc.details["tech_cause"] == "480" and exc.details["call_id"] == ref.call_id


def test_recover_a_call_already_answered_at_adoption() -> None:
    """The worker saw the answer and died before recording it: Status says `ChannelState: 6` (Up) →
    answered at once, over replies split into 3-byte pieces among other channels' events."""
    with AmiPeer(noise=True, chunk=3) as peer:
        worker = adapter(peer)
        ref, first = call(worker)
        assert isinstance(first, Answer)
        adopter = adapter(peer)
        answer = adopter.recover(ref, time.monotonic() + T)
        assert answer.message == f"Call {ref.call_id} answered on myast"
        assert answer.data["channel"].startswith("PJSIP/sipp-") and answer.data["state_at_adoption"] == "Up"
        assert peer.count("Originate") == 1
        worker.close()
        adopter.close()


def test_recover_a_call_that_is_gone_is_outcome_unknown() -> None:
    """ami_pjsip_busy_transcript.txt played to its Hangup before adoption: Status answers `No such
    channel` and Asterisk keeps no record of how the call ended, so the honest answer is outcome
    unknown (never "refused", never a second Originate)."""
    with AmiPeer() as peer:
        worker = adapter(peer)
        ref, first = call(worker, "PJSIP/sippbusy")
        assert isinstance(first, CallRejected)
        adopter = adapter(peer)
        with pytest.raises(OutcomeUnknown, match="No such channel") as err:
            adopter.recover(ref, time.monotonic() + T)
        assert err.value.exit_code == 6 and err.value.details["call_id"] == ref.call_id
        assert "may have been answered" in err.value.message
        assert peer.count("Originate") == 1
        worker.close()
        adopter.close()


def test_recover_still_ringing_at_the_deadline_is_outcome_unknown() -> None:
    with AmiPeer(ring=True) as peer, ringing_call(peer) as (ref, adopter):
        with pytest.raises(OutcomeUnknown, match="still ringing"):
            adopter.recover(ref, time.monotonic() + 0.5)
        peer.release()


def test_recover_session_lost_while_ringing_is_outcome_unknown() -> None:
    """The adopter's own session drops while it listens: what the server did since is unknown."""
    with AmiPeer(ring=True) as peer, ringing_call(peer) as (ref, adopter):
        recovering = looking(peer, adopter, ref)
        peer.drop_all()
        exc = recovering.result()
        assert isinstance(exc, OutcomeUnknown) and "lost" in exc.message, exc
        assert peer.count("Originate") == 1


def test_recover_without_permission_names_manager_conf() -> None:
    """ami_auth_fail_transcript.txt's `Permission denied`, for an AMI user without a class Status needs."""
    with AmiPeer(deny={"Status"}) as peer:
        adopter = adapter(peer)
        ref = CallRef("myast", "ifbus-0123456789abcdef0123456789abcdef", {"channel_id": "x"})
        with pytest.raises(AuthFailed, match="call, system or reporting"):
            adopter.recover(ref, time.monotonic() + T)
        adopter.close()


def _cli(*args: str) -> tuple[int, str]:
    import json as _json

    from click.testing import CliRunner

    from producer.cli import cli

    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    try:
        return result.exit_code, _json.loads(result.stdout)
    except ValueError:
        return result.exit_code, result.stdout + result.stderr


def test_queue_mode_failover_and_a_warm_worker(start_worker, queue_mode: str) -> None:
    """ami_originate_answered_transcript.txt through a real `ifbus worker asterisk`: myast1 refuses
    connections, so the call fails over to myast2 (the spec's pair); later jobs on the same worker
    reuse its AMI session (one Login), hangup goes to the server the CallRef names, and SIGTERM ends
    the session with a Logoff (workers.pool closes every session when the worker stops)."""
    with AmiPeer(noise=True) as peer:
        with AmiPeer() as gone:
            dead_port = gone.port
        for name, port in (("myast1", dead_port), ("myast2", peer.port)):
            code, out = _cli("add", "sip", name, "--type", "asterisk", "--auth", "user=admin", "secret=pass123",
                             "--port", str(port))  # fmt: skip
            assert code == 0, out
        worker = start_worker("asterisk")
        code, data = _cli("call", "sip", "myast1", "from=PJSIP/sipp", "to=2000", "--json")
        assert code == 0, data
        assert data["server"] == "myast2" and data["mode"] == "queue"
        call_id = data["call_id"]
        assert call_id.startswith("ifbus-")
        code, data = _cli("test", "sip", "myast2", "--json")
        assert code == 0 and "Asterisk 22.10.1 (AMI 11.0.0)" in data["message"], data
        code, data = _cli("hangup", "sip", "myast1", f"call_id={call_id}", "--json")
        assert code == 0, data
        assert peer.logins == 1 and len(peer.actions) == 1
        assert peer.count("Originate") == 1 and peer.count("Hangup") == 1
        assert peer.count("Logoff") == 0
        assert worker.stop() == 0  # SIGTERM: the worker closes its sessions on the way out
        assert peer.count("Logoff") == 1, peer.actions
