"""The SIP response parser (bus/sip/message.py): RFC 3261 §7 forms, limits, and hostile input.

Fixtures are byte-exact replies captured from real servers:
- tests/peers/captures/asterisk-22.10.1/options_asterisk_ident.txt (Asterisk 22.10.1 chan_pjsip, 200)
- tests/peers/captures/asterisk-22.10.1/options_asterisk.txt (401 with WWW-Authenticate)
- tests/peers/captures/opensips-3.4.18/options_opensips.txt (OpenSIPS 3.4.18, 200)
- docs/reference/kamailio-lab.md §5(a) (Kamailio 5.6.3, 200, empty `Accept-Encoding:` / `Supported:`)
"""

from __future__ import annotations

import contextlib
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bus.sip.message import (
    MAX_HEADERS,
    MAX_MESSAGE,
    SipParseError,
    SipResponse,
    header_param,
    parse_response,
    split_list,
    take_message,
)


def wire(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


ASTERISK_200 = wire(
    "SIP/2.0 200 OK",
    "Via: SIP/2.0/UDP 127.0.0.1:35031;rport=35031;received=127.0.0.1;branch=z9hG4bK78a2afb5",
    "Call-ID: db135a47@127.0.0.1",
    "From: <sip:sipp@127.0.0.1>;tag=b234c5f4",
    "To: <sip:127.0.0.1>;tag=z9hG4bK78a2afb5",
    "CSeq: 1 OPTIONS",
    "Accept: application/sdp",
    "Allow: OPTIONS, REGISTER, SUBSCRIBE, NOTIFY, PUBLISH, INVITE, ACK, BYE, CANCEL, UPDATE, PRACK, INFO",
    "Supported: 100rel, timer",
    "Accept-Encoding: identity",
    "Accept-Language: en",
    "Server: Asterisk PBX 22.10.1",
    "Content-Length:  0",
)
ASTERISK_401 = wire(
    "SIP/2.0 401 Unauthorized",
    "Via: SIP/2.0/UDP 127.0.0.1:58712;rport=58712;received=127.0.0.1;branch=z9hG4bK8e52f999",
    "Call-ID: 422dc2ed@127.0.0.1",
    "From: <sip:probe@127.0.0.1>;tag=e9ec9330",
    "To: <sip:127.0.0.1>;tag=z9hG4bK8e52f999",
    "CSeq: 1 OPTIONS",
    'WWW-Authenticate: Digest realm="asterisk",nonce="1795671755/09a3c9668b360f61627906577578e1b0",'
    'opaque="5b6baac675065682",algorithm=MD5,qop="auth"',
    "Server: Asterisk-lab-peer",
    "Content-Length:  0",
)
OPENSIPS_200 = wire(
    "SIP/2.0 200 OK",
    "Via: SIP/2.0/UDP 127.0.0.1:55093;received=127.0.0.1;branch=z9hG4bK5294976b;rport=55093",
    "To: <sip:127.0.0.1:25060>;tag=e8ab.4e296f703fdb0a622748fb910f5052a7",
    "From: <sip:probe@127.0.0.1:55093>;tag=3e69a42e",
    "Call-ID: be36b666@127.0.0.1",
    "CSeq: 1 OPTIONS",
    "Server: OpenSIPS (3.4.18 (x86_64/linux))",
    "Content-Length: 0",
)
KAMAILIO_200 = wire(
    "SIP/2.0 200 OK",
    "Via: SIP/2.0/UDP 127.0.0.1:35323;branch=z9hG4bK-2026e905;rport=35323;received=127.0.0.1",
    "From: <sip:probe@127.0.0.1>;tag=712e1a67",
    "To: <sip:127.0.0.1:15060>;tag=a45363010201c12697c26728a1ea42a4.8225b33b",
    "Call-ID: f70d320736486a01@127.0.0.1",
    "CSeq: 1 OPTIONS",
    "Accept: */*",
    "Accept-Encoding:",
    "Accept-Language: en",
    "Supported:",
    "Server: kamailio (5.6.3 (x86_64/linux))",
    "Content-Length: 0",
)


def test_real_asterisk_reply() -> None:
    r = parse_response(ASTERISK_200)
    assert (r.code, r.reason) == (200, "OK")
    assert r.get("server") == "Asterisk PBX 22.10.1"
    assert r.get_all("allow")[:3] == ["OPTIONS", "REGISTER", "SUBSCRIBE"]
    assert r.get_all("supported") == ["100rel", "timer"]
    assert r.top_via_branch == "z9hG4bK78a2afb5"
    assert r.cseq == (1, "OPTIONS")
    assert r.get("content-length") == "0"
    assert r.body == b""


def test_real_asterisk_401_keeps_quoted_commas_together() -> None:
    r = parse_response(ASTERISK_401)
    assert (r.code, r.reason) == (401, "Unauthorized")
    challenge = r.get("www-authenticate")
    assert challenge is not None and challenge.startswith('Digest realm="asterisk"')
    assert r.get("Server") == "Asterisk-lab-peer"


def test_real_opensips_and_kamailio_replies() -> None:
    assert parse_response(OPENSIPS_200).get("server") == "OpenSIPS (3.4.18 (x86_64/linux))"
    kam = parse_response(KAMAILIO_200)
    assert kam.get("server") == "kamailio (5.6.3 (x86_64/linux))"
    assert kam.get("supported") == "" and kam.get_all("supported") == []
    assert kam.top_via_branch == "z9hG4bK-2026e905"


def test_folded_headers_are_unfolded() -> None:
    r = parse_response(wire("SIP/2.0 200 OK", "Server: Asterisk", " PBX", "\t20.5.0", "Content-Length: 0"))
    assert r.get("server") == "Asterisk PBX 20.5.0"


def test_compact_forms_and_case() -> None:
    r = parse_response(
        wire(
            "sip/2.0 180 Ringing",
            "v: SIP/2.0/TCP a;branch=z9hG4bKone",
            "f: <sip:a@b>;tag=1",
            "t: <sip:c@d>",
            "i: abc@host",
            "k: timer",
            "m: <sip:x@y>",
            "s: hello",
            "e: gzip",
            "c: application/sdp",
            "CSEQ: 7 options",
            "l: 0",
        )
    )
    assert r.code == 180
    assert r.get("Call-ID") == r.get("i") == "abc@host"
    assert r.get("VIA") == "SIP/2.0/TCP a;branch=z9hG4bKone"
    assert r.get("supported") == "timer" and r.get("subject") == "hello"
    assert r.get("content-encoding") == "gzip" and r.get("content-type") == "application/sdp"
    assert r.cseq == (7, "OPTIONS")


def test_multiple_vias_in_lines_and_lists() -> None:
    r = parse_response(
        wire(
            "SIP/2.0 200 OK",
            "Via: SIP/2.0/UDP p1;branch=z9hG4bKtop, SIP/2.0/UDP p2;branch=z9hG4bKmid",
            "v: SIP/2.0/UDP p3;branch=z9hG4bKlow",
            "Content-Length: 0",
        )
    )
    assert [header_param(v, "branch") for v in r.vias] == ["z9hG4bKtop", "z9hG4bKmid", "z9hG4bKlow"]
    assert r.top_via_branch == "z9hG4bKtop"


def test_bare_lf_and_leading_crlf_are_accepted() -> None:
    r = parse_response(b"\r\n\r\nSIP/2.0 404 Not Found\nServer: x\n\n")
    assert (r.code, r.get("server")) == (404, "x")


def test_body_and_content_length() -> None:
    assert parse_response(b"SIP/2.0 200 OK\r\nContent-Length: 3\r\n\r\nabcdef").body == b"abc"  # §18.3: cut
    with pytest.raises(SipParseError, match="truncated"):
        parse_response(b"SIP/2.0 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    with pytest.raises(SipParseError, match="conflicting"):
        parse_response(b"SIP/2.0 200 OK\r\nContent-Length: 0\r\nl: 3\r\n\r\nabc")
    with pytest.raises(SipParseError):
        parse_response("SIP/2.0 200 OK\r\nContent-Length: ²\r\n\r\n".encode())


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"SIP/2.0 200 OK\r\nServer: x\r\n",  # no blank line
        b"OPTIONS sip:a SIP/2.0\r\n\r\n",  # a request
        b"SIP/2.0 99 Low\r\n\r\n",
        b"SIP/2.0 700 High\r\n\r\n",
        b"SIP/3.0 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n",
        b"SIP/2.0 200 OK\r\n folded-first\r\n\r\n",
        b"SIP/2.0 200 OK\r\nNo colon here\r\n\r\n",
        b"SIP/2.0 200 OK\r\nBad Name: x\r\n\r\n",
        b"SIP/2.0 200 OK\r\nServer: a\rInjected: b\r\n\r\n",  # bare CR inside a line
        b"SIP/2.0 200 OK\r\nServer: a\x00b\r\n\r\n",
        b"SIP/2.0 200 OK\r\nServer: \x1b[31mred\r\n\r\n",  # terminal escape
        b"SIP/2.0 200 OK\r\nServer: \xff\xfe\r\n\r\n",  # not UTF-8
    ],
)
def test_malformed_is_refused_with_the_parser_error(data: bytes) -> None:
    with pytest.raises(SipParseError):
        parse_response(data)


def test_limits() -> None:
    with pytest.raises(SipParseError, match="exceeds"):
        parse_response(b"SIP/2.0 200 OK\r\nX: " + b"a" * MAX_MESSAGE + b"\r\n\r\n")
    many = wire("SIP/2.0 200 OK", *[f"X-{i}: v" for i in range(MAX_HEADERS + 1)])
    with pytest.raises(SipParseError, match="headers"):
        parse_response(many)
    assert issubclass(SipParseError, ValueError)


def test_stream_framing() -> None:
    buffer = bytearray(b"\r\n\r\n" + OPENSIPS_200 + b"SIP/2.0 200 OK\r\nl: 5\r\n\r\nhel")
    assert take_message(buffer) == OPENSIPS_200
    assert take_message(buffer) is None  # body incomplete
    buffer += b"lo"
    message = take_message(buffer)
    assert message is not None and parse_response(message).body == b"hello"
    assert buffer == bytearray()


def test_stream_refuses_unbounded_input() -> None:
    with pytest.raises(SipParseError):
        take_message(bytearray(b"SIP/2.0 200 OK\r\nX: " + b"a" * (MAX_MESSAGE + 10)))
    with pytest.raises(SipParseError):
        take_message(bytearray(b"SIP/2.0 200 OK\r\nContent-Length: 9999999\r\n\r\n"))
    with pytest.raises(SipParseError):
        take_message(bytearray(b"SIP/2.0 200 OK\r\nContent-Length: -1\r\n\r\n"))


def test_split_list_respects_quotes_and_angles() -> None:
    assert split_list('a, "b,c" <sip:x@y;p=1,2>, d') == ["a", '"b,c" <sip:x@y;p=1,2>', "d"]


# ---------------------------------------------------------------- property-based: never a crash, never a hang

HYPOTHESIS = settings(database=None, max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check(data: bytes) -> SipResponse | None:
    started = time.monotonic()
    try:
        result = parse_response(data)
    except SipParseError:
        result = None
    assert time.monotonic() - started < 1.0
    if result is not None:
        for name, value in result.headers:
            assert "\r" not in value and "\n" not in value and "\x00" not in value and "\x1b" not in value
            assert name == name.lower()
    return result


@HYPOTHESIS
@given(st.binary(max_size=2048))
def test_random_bytes(data: bytes) -> None:
    _check(data)


@HYPOTHESIS
@given(st.integers(min_value=0, max_value=len(ASTERISK_200)))
def test_every_truncation_of_a_real_reply(cut: int) -> None:
    result = _check(ASTERISK_200[:cut])
    if result is not None:
        assert result.code == 200


header_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=80)


@HYPOTHESIS
@given(st.lists(st.tuples(header_text, header_text), max_size=20), st.binary(max_size=64))
def test_hostile_headers_and_injection(pairs: list[tuple[str, str]], body: bytes) -> None:
    lines = ["SIP/2.0 200 OK"] + [f"{name}: {value}" for name, value in pairs]
    data = "\r\n".join(lines).encode() + b"\r\n\r\n" + body
    _check(data)
    buffer = bytearray(data)
    with contextlib.suppress(SipParseError):
        take_message(buffer)


@HYPOTHESIS
@given(st.integers(min_value=MAX_MESSAGE - 64, max_value=MAX_MESSAGE * 2), st.sampled_from([b"a", b"\r\n", b" "]))
def test_oversized(size: int, filler: bytes) -> None:
    data = b"SIP/2.0 200 OK\r\nX: " + filler * (size // len(filler))
    _check(data + b"\r\n\r\n")
    with contextlib.suppress(SipParseError):
        take_message(bytearray(data))


@HYPOTHESIS
@given(st.binary(max_size=512), st.integers(min_value=0, max_value=600))
def test_mutated_real_reply(noise: bytes, at: int) -> None:
    base = KAMAILIO_200
    at = min(at, len(base))
    _check(base[:at] + noise + base[at:])
