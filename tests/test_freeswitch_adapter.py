"""FreeSWITCH adapter against tests/peers/esl.py, which replays the real FreeSWITCH 1.10.12 captures in
tests/peers/captures/freeswitch-1.10.12/ (writes split into small pieces, another call's event
interleaved). Each test names the capture it replays.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator

import pytest

from bus.calls import CallRef
from bus.errors import AuthFailed, CallRejected, InvalidInput, OutcomeUnknown, Unreachable
from bus.server import ServerEntry
from tests.lab import wait_for
from tests.peers.esl import EslPeer
from workers.adapters import adapter_class
from workers.adapters.base import Answer
from workers.adapters.freeswitch import FreeSwitchAdapter

SIPP = "sofia/internal/sipp@127.0.0.1"


@pytest.fixture
def peer() -> Iterator[EslPeer]:
    with EslPeer(password="labpass") as p:
        yield p


def make(peer: EslPeer, password: str = "labpass", **options: str) -> FreeSwitchAdapter:
    entry = ServerEntry.build(
        "freeswitch", {"apikey": password, "domain": "lab.test"}, host="127.0.0.1", port=peer.port, options=options
    )
    return FreeSwitchAdapter("myfs", entry)


def soon() -> float:
    return time.monotonic() + 10


def bgapi_lines(peer: EslPeer) -> list[str]:
    return [r for r in peer.received if r.startswith("bgapi ")]


def test_registered_for_its_type() -> None:
    assert adapter_class("freeswitch") is FreeSwitchAdapter


def test_test_reports_version_and_ready(peer: EslPeer) -> None:
    """esl_api_transcript.txt: api version / api status."""
    adapter = make(peer)
    answer = adapter.test()
    assert answer.message.startswith("FreeSWITCH 1.10.12-release~64bit on myfs is ready (UP 0 years")
    assert answer.data["version"] == "1.10.12-release~64bit"
    assert peer.received[:3] == [
        "auth labpass",
        "event plain BACKGROUND_JOB CHANNEL_ANSWER CHANNEL_HANGUP_COMPLETE",
        "filter Unique-ID 00000000-0000-0000-0000-000000000000",
    ]
    adapter.close()


def test_wrong_password_is_auth_failed(peer: EslPeer) -> None:
    """esl_auth_transcript.txt §1: `-ERR invalid`, disconnect notice, close."""
    adapter = make(peer, password="wrongpass")
    with pytest.raises(AuthFailed) as info:
        adapter.test()
    assert info.value.exit_code == 3
    assert "wrongpass" not in info.value.message
    assert "-ERR invalid" in info.value.message


def test_nothing_listening_is_unreachable() -> None:
    with EslPeer() as p:
        port = p.port
    entry = ServerEntry.build("freeswitch", {"apikey": "x", "domain": "d"}, host="127.0.0.1", port=port)
    with pytest.raises(Unreachable):
        FreeSwitchAdapter("myfs", entry).test()


def test_answered_call_then_hangup(peer: EslPeer) -> None:
    """esl_originate_answer_kill_transcript.txt: CHANNEL_ANSWER, BACKGROUND_JOB `+OK <uuid>`, uuid_kill `+OK`,
    then a second uuid_kill `-ERR No such channel!`."""
    adapter = make(peer)
    ref = adapter.originate(f"{SIPP}:5070", "9196", {}, soon())
    assert ref.call_id is not None and re.fullmatch(r"[0-9a-f-]{36}", ref.call_id)
    (line,) = bgapi_lines(peer)
    job = ref.handle["job_uuid"]
    assert line == (
        f"bgapi originate {{origination_uuid={ref.call_id},originate_timeout=60,ignore_early_media=true}}"
        f"{SIPP}:5070 9196 XML default\nJob-UUID: {job}"
    )
    answer = adapter.follow(ref, soon())
    assert answer.call_id == ref.call_id and "answered" in answer.message
    assert peer.sessions[0].filters == [("Unique-ID", "00000000-0000-0000-0000-000000000000")]  # released
    ended = adapter.hangup(ref.call_id, ref, {})
    assert ended.message == f"Call {ref.call_id} ended on myfs"
    again = adapter.hangup(ref.call_id, ref, {})
    assert again.data == {"already_ended": True}
    adapter.close()


@pytest.mark.parametrize(
    ("port", "code", "cause"),
    [
        ("5071", 486, "USER_BUSY"),  # esl_originate_busy_transcript.txt: hangup event first, sip_term_status 486
        ("5072", 480, "NO_ANSWER"),  # esl_originate_noanswer_transcript.txt: BACKGROUND_JOB first, no SIP code
        ("5073", 408, "RECOVERY_ON_TIMER_EXPIRE"),  # esl_originate_silent_timerb_transcript.txt: 408
    ],
)
def test_refused_calls_carry_the_sip_code(peer: EslPeer, port: str, code: int, cause: str) -> None:
    adapter = make(peer)
    ref = adapter.originate(f"{SIPP}:{port}", "9196", {}, soon())
    with pytest.raises(CallRejected) as info:
        adapter.follow(ref, soon())
    assert info.value.sip_code == code
    assert info.value.details["cause"] == cause
    assert info.value.details["call_id"] == ref.call_id
    adapter.close()


def test_events_before_the_bgapi_reply_are_not_lost(peer: EslPeer) -> None:
    """The busy capture's hangup event may be on the wire before our follow starts; the subscription
    exists before the bgapi is written, so it is kept (esl_originate_busy_transcript.txt)."""
    peer.interleave = False
    adapter = make(peer)
    ref = adapter.originate(f"{SIPP}:5071", "9196", {}, soon())
    time.sleep(0)  # no wait: the events may or may not have arrived; both orders must work
    with pytest.raises(CallRejected):
        adapter.follow(ref, soon())


def test_dial_string_forms(peer: EslPeer) -> None:
    adapter = make(peer, profile="internal", context="public")
    assert adapter.a_leg("sofia/1001") == "sofia/internal/1001@lab.test"
    assert adapter.a_leg("1001") == "user/1001@lab.test"
    assert adapter.a_leg("user/1001@other.test") == "user/1001@other.test"
    assert adapter.a_leg("sofia/internal/u@127.0.0.1:5070") == "sofia/internal/u@127.0.0.1:5070"
    assert adapter.a_leg("loopback/9196/public") == "loopback/9196/public"
    assert adapter.b_part("2000") == "2000 XML public"
    assert adapter.b_part("sofia/2000") == "&bridge(sofia/internal/2000@lab.test)"
    assert adapter.b_part("user/2000@lab.test") == "&bridge(user/2000@lab.test)"


@pytest.mark.parametrize(
    ("from_", "to"),
    [
        ("1001,sofia/internal/666@evil", "2000"),
        ("1001", "2000 XML evil"),
        ("{origination_caller_id_number=1}user/1001@d", "2000"),
        ("user/1001@d", "2000&bridge(user/666@d)"),
        ("1001\napi shutdown", "2000"),
        ("1001", "user/2000@d|user/666@d"),
        ("1001", "${sip_profile}"),
    ],
)
def test_injection_is_refused_before_anything_is_sent(peer: EslPeer, from_: str, to: str) -> None:
    adapter = make(peer)
    with pytest.raises(InvalidInput):
        adapter.originate(from_, to, {}, soon())
    assert bgapi_lines(peer) == []


def test_bad_call_id_is_refused(peer: EslPeer) -> None:
    with pytest.raises(InvalidInput):
        make(peer).hangup("1234; api shutdown", None, {})
    assert not any(r.startswith("api uuid_kill") for r in peer.received)


def test_session_lost_after_the_bgapi_left_is_outcome_unknown(peer: EslPeer) -> None:
    """The server closes right after reading the originate: it may have placed the call."""
    peer.drop_after = "bgapi originate"
    adapter = make(peer)
    with pytest.raises(OutcomeUnknown) as info:
        adapter.originate(f"{SIPP}:5070", "9196", {}, soon())
    assert re.fullmatch(r"[0-9a-f-]{36}", info.value.details["call_id"])


def test_session_lost_while_following_is_outcome_unknown(peer: EslPeer) -> None:
    peer.hold.clear()  # the call's events are held back until the session is gone
    adapter = make(peer)
    ref = adapter.originate(f"{SIPP}:5070", "9196", {}, soon())
    peer.drop()
    with pytest.raises(OutcomeUnknown):
        adapter.follow(ref, soon())
    peer.hold.set()


def test_reconnects_after_a_drop(peer: EslPeer) -> None:
    adapter = make(peer)
    adapter.test()
    peer.drop()
    deadline = soon()
    while adapter.session().alive() and time.monotonic() < deadline:
        time.sleep(0.01)  # waits on the reader noticing the close (an event), bounded
    assert adapter.test().data["state"] == "ready"
    assert len(peer.sessions) == 2
    adapter.close()


def test_reconnects_after_the_server_shuts_down(peer: EslPeer) -> None:
    """A stopping FreeSWITCH sends `text/disconnect-notice` "The system is being shut down." and closes
    (tests/peers/captures/freeswitch-1.10.12/esl_filters_transcript.txt, last section, recorded on the lab);
    the next job opens a new session with the same set-up."""
    adapter = make(peer)
    adapter.test()
    peer.shutdown()
    deadline = soon()
    while adapter.session().alive() and time.monotonic() < deadline:
        time.sleep(0.01)  # waits on the reader seeing the close (an event), bounded
    assert not adapter.session().alive()
    assert adapter.test().data["state"] == "ready"
    assert len(peer.sessions) == 2
    adapter.close()


def test_filter_commands_are_the_ones_the_real_server_accepted(peer: EslPeer) -> None:
    """The lab FreeSWITCH answered exactly these commands with `+OK filter added. [H]=[V]` / `+OK filter
    deleted. [H][V]` (esl_filters_transcript.txt); the peer answers in those bytes, and the call's filters
    are added before the bgapi and deleted once the call is settled."""
    adapter = make(peer)
    ref = adapter.originate(f"{SIPP}:5070", "9196", {}, soon())
    adapter.follow(ref, soon())
    job = ref.handle["job_uuid"]
    commands = [r.split("\n")[0] for r in peer.received]
    assert commands[2:] == [
        "filter Unique-ID 00000000-0000-0000-0000-000000000000",
        f"filter Unique-ID {ref.call_id}",
        f"filter Job-UUID {job}",
        commands[5],
        f"filter delete Unique-ID {ref.call_id}",
        f"filter delete Job-UUID {job}",
    ]
    assert commands[5].startswith(f"bgapi originate {{origination_uuid={ref.call_id},")
    adapter.close()


# ---------------------------------------------------------------- recover (a call adopted from a dead worker)
#
# esl_adopt_transcript.txt: another connection with the call's filters gets its events, and `api uuid_dump
# <uuid>` shows `Answer-State: ringing` or `answered`, or `-ERR No such channel!` once it is gone. The worker
# that placed the call is one adapter; the adopter is a fresh adapter on its own socket, which never sent
# the bgapi. The peer splits every write into small pieces and interleaves another call's event.

ZERO = "00000000-0000-0000-0000-000000000000"


class Recovering:
    """`adopter.recover(ref)` in a thread, so the test can move the call on meanwhile."""

    def __init__(self, adopter: FreeSwitchAdapter, ref: CallRef, wait: float = 10) -> None:
        self.outcome: object = None
        self._thread = threading.Thread(target=self._run, args=(adopter, ref, wait), daemon=True)
        self._thread.start()

    def _run(self, adopter: FreeSwitchAdapter, ref: CallRef, wait: float) -> None:
        try:
            self.outcome = adopter.recover(ref, time.monotonic() + wait)
        except Exception as exc:  # kept for the test to look at
            self.outcome = exc

    def result(self) -> object:
        self._thread.join(15)
        assert not self._thread.is_alive(), "recover did not return"
        return self.outcome


def _dumped(peer: EslPeer, ref: CallRef) -> bool:
    return f"api uuid_dump {ref.call_id}" in peer.received


@pytest.mark.parametrize(
    ("port", "outcome"),
    [
        ("5070", "answered"),  # esl_originate_answer_kill_transcript.txt: CHANNEL_ANSWER, BACKGROUND_JOB +OK
        ("5072", 480),  # esl_originate_noanswer_transcript.txt: BACKGROUND_JOB -ERR NO_ANSWER, then the hangup
        ("5071", 486),  # esl_originate_busy_transcript.txt: hangup (sip_term_status 486), then -ERR USER_BUSY
    ],
)
def test_recover_a_ringing_call_to_its_end(peer: EslPeer, port: str, outcome: object) -> None:
    """The call still rings when its worker dies (the peer holds its events): the dump says `ringing`, so
    the adopter keeps listening; the held events then reach it through its own filters, and it ends as
    `follow` would have. Nothing that could place a call is sent again; the filters go afterwards."""
    peer.hold.clear()
    worker = make(peer)
    ref = worker.originate(f"{SIPP}:{port}", "9196", {}, soon())
    adopter = make(peer)
    recovering = Recovering(adopter, ref)
    assert wait_for(lambda: _dumped(peer, ref), 10)
    peer.hold.set()
    result = recovering.result()
    if outcome == "answered":
        assert isinstance(result, Answer), result
        assert result.message == f"Call {ref.call_id} answered on myfs"
        assert result.data == {"job_uuid": ref.handle["job_uuid"], "recovered": True, "state_at_adoption": "ringing"}
    else:
        assert isinstance(result, CallRejected) and result.sip_code == outcome, result
        assert result.details["call_id"] == ref.call_id
    assert len(bgapi_lines(peer)) == 1
    assert peer.sessions[1].filters == [("Unique-ID", ZERO)]  # the call's own filters were deleted
    worker.close()
    adopter.close()


def test_recover_a_call_already_answered_at_adoption(peer: EslPeer) -> None:
    """The worker saw the answer and died before recording it: the dump says `Answer-State: answered`."""
    worker = make(peer)
    ref = worker.originate(f"{SIPP}:5070", "9196", {}, soon())
    assert isinstance(worker.follow(ref, soon()), Answer)
    adopter = make(peer)
    answer = adopter.recover(ref, soon())
    assert answer.message == f"Call {ref.call_id} answered on myfs"
    assert answer.data["state_at_adoption"] == "answered"
    assert len(bgapi_lines(peer)) == 1
    worker.close()
    adopter.close()


def test_recover_a_call_that_is_gone_is_outcome_unknown(peer: EslPeer) -> None:
    """The busy call ended before adoption: `-ERR No such channel!` and FreeSWITCH keeps no record of how
    it ended, so the honest answer is outcome unknown (never "refused", never a second originate)."""
    worker = make(peer)
    ref = worker.originate(f"{SIPP}:5071", "9196", {}, soon())
    with pytest.raises(CallRejected):
        worker.follow(ref, soon())
    adopter = make(peer)
    with pytest.raises(OutcomeUnknown, match="No such channel") as info:
        adopter.recover(ref, soon())
    assert info.value.exit_code == 6 and info.value.details["call_id"] == ref.call_id
    assert "may have been answered" in info.value.message
    assert len(bgapi_lines(peer)) == 1
    worker.close()
    adopter.close()


def test_recover_still_ringing_at_the_deadline_is_outcome_unknown(peer: EslPeer) -> None:
    peer.hold.clear()
    worker = make(peer)
    ref = worker.originate(f"{SIPP}:5070", "9196", {}, soon())
    adopter = make(peer)
    with pytest.raises(OutcomeUnknown, match="no outcome before the deadline"):
        adopter.recover(ref, time.monotonic() + 0.5)
    peer.hold.set()
    worker.close()
    adopter.close()


def test_recover_refuses_a_call_id_that_is_not_a_uuid(peer: EslPeer) -> None:
    adopter = make(peer)
    with pytest.raises(InvalidInput):
        adopter.recover(CallRef("myfs", "1234 api shutdown", {}), soon())
    assert not any("uuid_dump" in r for r in peer.received)
