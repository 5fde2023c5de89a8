"""ESL framing, event parsing and command builders (workers/adapters/esl.py).

Frames come from the real captures in tests/peers/captures/freeswitch-1.10.12/ (through
tests/peers/esl.py, which rebuilds them byte for byte); each test names the capture it uses.
"""

from __future__ import annotations

import pytest

from bus.errors import InvalidInput
from tests.peers import esl as peer
from workers.adapters import esl
from workers.transports.stream import ProtocolError


def feed_bytewise(data: bytes) -> list[esl.EslFrame]:
    framing = esl.EslFraming()
    frames: list[esl.EslFrame] = []
    for i in range(len(data)):
        frames += framing.feed(data[i : i + 1])
    return frames


def test_auth_exchange_frames_one_byte_at_a_time() -> None:
    """esl_auth_transcript.txt §1: greeting, `-ERR invalid`, then the 67-byte disconnect notice."""
    frames = feed_bytewise(peer.GREETING + peer.AUTH_BAD + peer.DISCONNECT)
    assert [f.content_type for f in frames] == ["auth/request", "command/reply", "text/disconnect-notice"]
    assert frames[1].reply_text == "-ERR invalid" and not frames[1].ok
    assert len(frames[2].body) == 67 and frames[2].body.endswith(b"cluecon.com/\n")
    assert [esl.route(f)[0] for f in frames] == ["ignore", "reply", "ignore"]


def test_api_bodies_keep_their_exact_bytes() -> None:
    """esl_api_transcript.txt: api status (337 bytes, tabs and trailing spaces kept), global_getvar (no final LF)."""
    frames = feed_bytewise(peer.API["status"] + peer.API["global_getvar domain"])
    assert len(frames[0].body) == 337
    assert "FreeSWITCH (Version 1.10.12-release  64bit) is ready" in frames[0].text
    assert frames[1].body == b"lab.test"
    assert esl.route(frames[0]) == ("reply", None)


def test_background_job_nests_its_result_and_headers_are_url_decoded() -> None:
    """esl_api_transcript.txt, bgapi status: BACKGROUND_JOB carries a second Content-Length and body;
    esl_originate_answer_kill_transcript.txt: Job-Command-Arg and Channel-Name are URL-encoded."""
    status_job = peer.load("esl_api_transcript.txt")[
        "bgapi status (reply, then BACKGROUND_JOB is only delivered if subscribed)"
    ][2]
    (frame,) = feed_bytewise(status_job)
    assert esl.route(frame) == ("event", None)
    assert frame.event is not None and frame.event.name == "BACKGROUND_JOB"
    assert frame.event.body is not None and len(frame.event.body.encode()) == 337
    assert frame.event.get("FreeSWITCH-IPv6") == "::1"

    answer = peer.SCENARIOS["5070"]
    frames = feed_bytewise(answer.reply + b"".join(answer.events))
    assert frames[0].reply_text == f"+OK Job-UUID: {answer.job}"
    channel_answer, job = frames[1].event, frames[2].event
    assert channel_answer is not None and job is not None
    assert channel_answer.get("Channel-Name") == "sofia/internal/sipp@127.0.0.1:5070"
    assert channel_answer.get("Unique-ID") == answer.channel
    assert job.get("Job-Command-Arg") == "sofia/internal/sipp@127.0.0.1:5070 &park()"
    assert job.body == f"+OK {answer.channel}\n"


def test_busy_hangup_event_carries_the_sip_code() -> None:
    """esl_originate_busy_transcript.txt: CHANNEL_HANGUP_COMPLETE (486) before BACKGROUND_JOB (-ERR USER_BUSY)."""
    busy = peer.SCENARIOS["5071"]
    frames = esl.EslFraming().feed(b"".join(busy.events))
    hangup, job = frames[0].event, frames[1].event
    assert hangup is not None and job is not None
    assert hangup.name == "CHANNEL_HANGUP_COMPLETE" and hangup.get("variable_sip_term_status") == "486"
    assert hangup.get("variable_proto_specific_hangup_cause") == "sip:486"
    assert job.body == "-ERR USER_BUSY\n"


@pytest.mark.parametrize(
    "data",
    [
        b"this is not esl\n\n",  # a header line without ": "
        b"Content-Type: api/response\nContent-Length: twelve\n\n",
        b"Content-Type: api/response\r\nContent-Length: 3\r\n\r\n+OK",  # CRLF: not FreeSWITCH
        b"Reply-Text: +OK\n\n",  # no Content-Type
    ],
)
def test_garbage_is_a_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        esl.EslFraming().feed(data)


def test_frames_over_the_cap_are_refused() -> None:
    framing = esl.EslFraming(max_frame=1000)
    with pytest.raises(ProtocolError):
        framing.feed(b"Content-Type: api/response\nContent-Length: 1001\n\n")
    with pytest.raises(ProtocolError):
        esl.EslFraming(max_frame=1000).feed(b"Content-Type: x" + b"y" * 2000)


def test_commands_are_one_line_and_a_blank_line() -> None:
    """esl_api_transcript.txt: `api status\\n\\n`; vendors.md §2.2: bgapi with a Job-UUID header line."""
    assert esl.api("status") == b"api status\n\n"
    assert esl.auth("labpass") == b"auth labpass\n\n"
    job = "eb0b1508-3f9f-43fe-877c-d7d10210a13d"
    assert esl.bgapi("status", job) == f"bgapi status\nJob-UUID: {job}\n\n".encode()
    assert esl.event_plain(["BACKGROUND_JOB"]) == b"event plain BACKGROUND_JOB\n\n"
    assert esl.filter_add("Unique-ID", job) == f"filter Unique-ID {job}\n\n".encode()
    assert esl.filter_delete("Job-UUID", job) == f"filter delete Job-UUID {job}\n\n".encode()


@pytest.mark.parametrize("bad", ["pass\nword", "pass\rword", "x\n\napi status"])
def test_line_breaks_never_reach_the_socket(bad: str) -> None:
    with pytest.raises(InvalidInput):
        esl.auth(bad)
    with pytest.raises(InvalidInput):
        esl.api(bad)


@pytest.mark.parametrize(
    "dial",
    [
        "sofia/internal/1001@h,sofia/internal/1002@h",  # a second, simultaneous leg
        "sofia/internal/1001@h|user/1002@d",  # a failover leg
        "{origination_caller_id_number=666}user/1001@d",
        "[leg_var=x]user/1001@d",
        "user/1001@d &bridge(user/666@d)",
        "user/${hacked}@d",
        "user/1001@d:_:user/1002@d",
        "user/'1001'@d",
        "user/1001@d)",
        "1001",  # not a dial string at all (no technology)
    ],
)
def test_dial_strings_that_change_the_command_are_refused(dial: str) -> None:
    with pytest.raises(InvalidInput):
        esl.check_dial_string(dial, "from")


def test_originate_arguments() -> None:
    uuid = "eaa3ea18-2b2b-4133-9ebf-d5e5c1c80aa9"
    args = esl.originate_args(
        {"origination_uuid": uuid, "originate_timeout": "30"},
        "sofia/internal/1001@lab.test",
        esl.dialplan_part("2000", "default"),
    )
    assert args == f"{{origination_uuid={uuid},originate_timeout=30}}sofia/internal/1001@lab.test 2000 XML default"
    assert esl.bridge_part("user/2000@lab.test") == "&bridge(user/2000@lab.test)"
    with pytest.raises(InvalidInput):
        esl.originate_args({"x": "a,b"}, "user/1@d", "2 XML default")
    with pytest.raises(InvalidInput):
        esl.dialplan_part("2000 XML evil", "default")
    with pytest.raises(InvalidInput):
        esl.dialplan_part("2000", "default evil")
    with pytest.raises(InvalidInput):
        esl.uuid_kill("not-a-uuid; api shutdown")


def test_uuid_dump_is_read_as_an_event_header_block() -> None:
    """esl_adopt_transcript.txt: `api uuid_dump <uuid>` answers an api/response whose body is the channel
    as URL-encoded event headers ending with a blank line (Answer-State ringing / answered), or
    `-ERR No such channel!`; the builder takes nothing but a channel UUID."""
    uuid = "eaa3ea18-2b2b-4133-9ebf-d5e5c1c80aa9"
    assert esl.uuid_dump(uuid) == f"api uuid_dump {uuid}\n\n".encode()
    with pytest.raises(InvalidInput):
        esl.uuid_dump(f"{uuid} xml")
    ringing, answered, gone = feed_bytewise(peer.DUMP_RINGING + peer.DUMP_ANSWERED + peer.DUMP_NO_SUCH_CHANNEL)
    assert [esl.route(f) for f in (ringing, answered, gone)] == [("reply", None)] * 3
    assert len(ringing.body) == 4498
    dump = esl.parse_event(ringing.body)
    state = (dump.name, dump.get("Answer-State"), dump.get("Channel-Call-State"))
    assert state == ("CHANNEL_DATA", "ringing", "RINGING")
    assert dump.get("Channel-Name") == "sofia/internal/sipp@127.0.0.1:5072"  # URL-decoded
    assert esl.parse_event(answered.body).get("Answer-State") == "answered"
    assert gone.text == "-ERR No such channel!\n"
