"""The stream transport against a replay of real AMI sessions (tests/peers/ami.py).

Captures: tests/peers/captures/asterisk-22.10.1/ (copies of tests/peers/captures/asterisk-22.10.1/).
Each test names the capture whose bytes it replays.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import pytest

from bus.errors import OutcomeUnknown, Unreachable
from tests.peers.ami import AmiPeer, _static, encode, load, noise_events, with_id
from workers.adapters import ami
from workers.transports.stream import SessionLost, StreamTransport

T = 5.0  # generous deadline for a busy 2-core machine; tests wait on replies, never on sleeps


def transport(peer: AmiPeer, **kw: object) -> StreamTransport[ami.AmiMessage]:
    return StreamTransport("myast", "127.0.0.1", peer.port, ami.AmiFraming, ami.route, connect_timeout=2, **kw)


def login(t: StreamTransport[ami.AmiMessage], secret: str = "pass123") -> ami.AmiMessage:
    data = ami.action("Login", "login-1", [("Username", "admin"), ("Secret", secret), ("Events", "call")])
    return t.request(data, time.monotonic() + T, "login-1")


def originate(cid: str, target: str = "PJSIP/sipp") -> bytes:
    return ami.action(
        "Originate",
        f"o-{cid}",
        [
            ("Channel", target),
            ("Context", "ctx"),
            ("Exten", "park"),
            ("Priority", "1"),
            ("Async", "true"),
            ("ChannelId", cid),
        ],
    )


def mine(cid: str):
    return lambda m: cid in (m.get("Uniqueid"), m.get("DestUniqueid"))


def test_framing_byte_by_byte_equals_whole_feed() -> None:
    """ami_transcript.txt: the whole captured server stream, fed one byte at a time or at once, gives the
    same messages — a reply split anywhere (inside a key, between CR and LF) is reassembled."""
    wire = b"".join(encode(m) for m in load("ami_transcript.txt") if m.conn == "ami")
    whole = ami.AmiFraming().feed(wire)
    f = ami.AmiFraming()
    pieces = [m for i in range(len(wire)) for m in f.feed(wire[i : i + 1])]
    assert pieces == whole
    assert whole[0].banner == "Asterisk Call Manager/11.0.0"
    assert sum(1 for m in whole if m.event == "OriginateResponse") == 3  # orig-1, -2, -4 (orig-3 is synchronous)
    assert whole[-1].response == "Goodbye"


def test_reply_matched_by_actionid_byte_by_byte_with_interleaved_events() -> None:
    """ami_transcript.txt (login, Ping, CoreSettings): every byte written separately, unrelated events of
    other channels between every reply; each reply still reaches its own request by ActionID."""
    with AmiPeer(chunk=1, noise=True) as peer:
        t = transport(peer)
        assert t.connect(time.monotonic() + T).banner == "Asterisk Call Manager/11.0.0"
        assert login(t).get("Message") == "Authentication accepted"
        pong = t.request(ami.action("Ping", "p1"), time.monotonic() + T, "p1")
        assert pong.get("Ping") == "Pong"
        cs = t.request(ami.action("CoreSettings", "c1"), time.monotonic() + T, "c1")
        assert (cs.get("AsteriskVersion"), cs.get("AMIversion")) == ("22.10.1", "11.0.0")
        t.close()


def test_concurrent_requests_each_get_their_reply() -> None:
    """ami_transcript.txt (Ping): eight threads share one session; replies never cross."""
    with AmiPeer(noise=True) as peer:
        t = transport(peer)
        t.connect(time.monotonic() + T)
        login(t)
        got: dict[str, str | None] = {}

        def ping(i: int) -> None:
            got[f"p{i}"] = t.request(ami.action("Ping", f"p{i}"), time.monotonic() + T, f"p{i}").action_id

        threads = [threading.Thread(target=ping, args=(i,)) for i in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert got == {f"p{i}": f"p{i}" for i in range(8)}
        t.close()


def test_events_before_the_reply_reach_an_earlier_subscription() -> None:
    """ami_originate_answered_transcript.txt: call events may beat the `Originate successfully queued`
    reply; a subscription made before sending sees all of them, in order, and only its call's."""
    with AmiPeer(noise=True, events_before_reply=4) as peer:
        t = transport(peer)
        t.connect(time.monotonic() + T)
        login(t)
        sub = t.subscribe(mine("c-1"))
        reply = t.request(originate("c-1"), time.monotonic() + T, "o-c-1")
        assert reply.get("Message") == "Originate successfully queued"
        seen = []
        while not seen or seen[-1] != "DialEnd":
            seen.append(sub.get(time.monotonic() + T).event)
        assert seen == [
            "Newchannel",
            "NewCallerid",
            "NewConnectedLine",
            "DialBegin",
            "Newstate",
            "DialState",
            "OriginateResponse",
            "Newstate",
            "DialEnd",
        ]
        sub.close()
        t.close()


def test_session_dropped_mid_reply_is_outcome_unknown_and_never_resent() -> None:
    """ami_pjsip_busy_transcript.txt: the server closes after half of the Originate reply. The request
    left us, so it is OutcomeUnknown; the subscription reports SessionLost; the next request is
    Unreachable (nothing written) and the peer saw exactly one Originate."""
    with AmiPeer(faults={"originate": "mid_reply"}) as peer:
        t = transport(peer)
        t.connect(time.monotonic() + T)
        login(t)
        sub = t.subscribe(mine("c-2"))
        with pytest.raises(OutcomeUnknown, match="myast") as err:
            t.request(originate("c-2", "PJSIP/sippbusy"), time.monotonic() + T, "o-c-2")
        assert err.value.details["server"] == "myast"
        with pytest.raises(SessionLost):
            sub.get(time.monotonic() + T)
        assert not t.alive()
        with pytest.raises(Unreachable, match="nothing was sent"):
            t.request(ami.action("Ping", "p"), time.monotonic() + T, "p")
        assert peer.count("Originate") == 1
        t.close()


def test_session_dropped_before_any_reply_is_outcome_unknown() -> None:
    """ami_originate_answered_transcript.txt: the server reads the Originate and closes at once."""
    with AmiPeer(faults={"originate": "drop"}) as peer:
        t = transport(peer)
        t.connect(time.monotonic() + T)
        login(t)
        with pytest.raises(OutcomeUnknown, match="lost after the request was sent"):
            t.request(originate("c-3"), time.monotonic() + T, "o-c-3")
        assert peer.count("Originate") == 1


def test_silent_peer_after_write_is_outcome_unknown_at_the_deadline() -> None:
    """ami_transcript.txt (Ping): the peer reads the Ping and never answers; the deadline ends the wait
    with OutcomeUnknown, and a late reply could not be mistaken for another request's (keys)."""
    with AmiPeer(faults={"ping": "silent"}) as peer:
        t = transport(peer)
        t.connect(time.monotonic() + T)
        login(t)
        start = time.monotonic()
        with pytest.raises(OutcomeUnknown, match="did not answer before the deadline"):
            t.request(ami.action("Ping", "p"), start + 0.3, "p")
        assert 0.25 < time.monotonic() - start < 3
        assert t.request(ami.action("CoreSettings", "c"), time.monotonic() + T, "c").get("AMIversion") == "11.0.0"
        t.close()


def test_silent_peer_without_greeting_is_unreachable() -> None:
    """ami_auth_fail_transcript.txt shows the banner comes first; a port that accepts and stays silent
    is no AMI: Unreachable at the deadline, nothing was sent."""
    with AmiPeer(greet=False) as peer:
        t = transport(peer)
        with pytest.raises(Unreachable, match="no greeting"):
            t.connect(time.monotonic() + 0.3)
        assert peer.actions == [[]]


def test_connect_refused_is_unreachable() -> None:
    s = socket.create_server(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    t = StreamTransport("myast", "127.0.0.1", port, ami.AmiFraming, ami.route, connect_timeout=2)
    with pytest.raises(Unreachable, match=r"Cannot reach myast \(127.0.0.1:\d+\)"):
        t.connect(time.monotonic() + T)


def test_not_an_ami_port_is_unreachable() -> None:
    """tests/peers/captures/freeswitch-1.10.12/esl_auth_transcript.txt: an ESL greeting is not AMI."""
    srv = socket.create_server(("127.0.0.1", 0))

    def greet() -> None:
        c, _ = srv.accept()
        c.sendall(b"Content-Type: auth/request\n\n" + b"x" * 300)
        c.recv(10)
        c.close()

    threading.Thread(target=greet, daemon=True).start()
    t = StreamTransport("myast", "127.0.0.1", srv.getsockname()[1], ami.AmiFraming, ami.route, connect_timeout=2)
    with pytest.raises(Unreachable, match="does not speak the expected protocol"):
        t.connect(time.monotonic() + T)
    srv.close()


def test_failed_login_closes_the_session() -> None:
    """ami_auth_fail_transcript.txt: `Authentication failed` arrives after ~1 s, then the server closes."""
    with AmiPeer(auth_delay=0.2) as peer:
        t = transport(peer)
        t.connect(time.monotonic() + T)
        reply = login(t, secret="wrong")
        assert (reply.response, reply.get("Message")) == ("Error", "Authentication failed")
        sub = t.subscribe(lambda m: True)
        with pytest.raises(SessionLost, match="closed by the server"):
            sub.get(time.monotonic() + T)  # may already be lost: then get raises at once
        assert not t.alive()


def test_heartbeat_proves_an_idle_session_and_finds_a_dead_one() -> None:
    """ami_transcript.txt (Ping/Pong): alive() on an idle session sends one Ping; after the server
    dropped every connection, alive() is False and the session is closed."""
    n = iter(range(1000))
    with AmiPeer() as peer:
        t = transport(
            peer,
            heartbeat=lambda: (ami.action("Ping", f"hb-{(i := next(n))}"), f"hb-{i}"),
            heartbeat_idle=0.0,
            heartbeat_timeout=1.0,
        )
        t.connect(time.monotonic() + T)
        login(t)
        assert t.alive()
        assert peer.count("Ping") == 1
        peer.drop_all()
        sub = t.subscribe(lambda m: True)
        with pytest.raises(SessionLost):
            sub.get(time.monotonic() + T)
        assert not t.alive()


def test_fifo_replies_and_a_timeout_that_breaks_the_pairing() -> None:
    """ami_transcript.txt (Ping, CoreSettings) routed in FIFO order (as ESL answers): replies pair with
    requests in order; once one times out, later replies cannot be paired, so the session closes."""

    def fifo(m: ami.AmiMessage) -> tuple[str, None]:
        if m.banner is not None or m.event:
            return ("ignore", None)
        return ("reply", None)

    with AmiPeer(faults={"ping": "silent"}) as peer:
        t = StreamTransport("myast", "127.0.0.1", peer.port, ami.AmiFraming, fifo, connect_timeout=2)
        t.connect(time.monotonic() + T)
        assert (
            t.request(
                ami.action("Login", "l", [("Username", "admin"), ("Secret", "pass123")]), time.monotonic() + T
            ).get("Message")
            == "Authentication accepted"
        )
        assert t.request(ami.action("CoreSettings", "c"), time.monotonic() + T).get("AsteriskVersion") == "22.10.1"
        with pytest.raises(OutcomeUnknown):
            t.request(ami.action("Ping", "p"), time.monotonic() + 0.2)
        assert not t.alive()


def test_oversized_frame_drops_the_session() -> None:
    """A peer streaming a message with no end is not AMI: the reader stops at max_frame."""
    srv = socket.create_server(("127.0.0.1", 0))
    go = threading.Event()

    def serve() -> None:
        c, _ = srv.accept()
        c.sendall(b"Asterisk Call Manager/11.0.0\r\n")
        go.wait(T)
        c.sendall(b"Event: X\r\nData: " + b"y" * 5000)
        c.recv(10)
        c.close()

    threading.Thread(target=serve, daemon=True).start()
    t = StreamTransport(
        "myast", "127.0.0.1", srv.getsockname()[1], ami.AmiFraming, ami.route, connect_timeout=2, max_frame=1024
    )
    t.connect(time.monotonic() + T)
    sub = t.subscribe(lambda m: True)
    go.set()
    with pytest.raises(SessionLost, match="exceeds 1024 bytes"):
        sub.get(time.monotonic() + T)
    srv.close()


class PipelinePeer:
    """A one-connection AMI server for pipelining tests: it sends the captured banner, reads until it has
    `expect` actions (so a client that waited for one reply before writing the next would never be
    answered), then plays `script(actions)`: a list of byte strings written one by one with TCP_NODELAY
    and a pause between them, so each is its own read; None in the list closes the connection there.
    Replies are captured bytes (ami_transcript.txt Ping, ami_core_show_version_transcript.txt
    CoreSettings) answering the client's ActionIDs."""

    def __init__(self, expect: int, script: Callable[[list[dict[str, str]]], list[bytes | None]]) -> None:
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.port = self.srv.getsockname()[1]
        self.received: list[dict[str, str]] = []
        self._expect, self._script = expect, script
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.srv.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sendall(b"Asterisk Call Manager/11.0.0\r\n")
        buf = b""
        while buf.count(b"\r\n\r\n") < self._expect:
            data = conn.recv(4096)
            if not data:
                return
            buf += data
        for block in buf.split(b"\r\n\r\n")[: self._expect]:
            self.received.append(dict(line.split(": ", 1) for line in block.decode().split("\r\n")))
        for piece in self._script(self.received):
            if piece is None:
                break
            conn.sendall(piece)
            time.sleep(0.002)  # so the pieces reach the client as separate reads
        conn.close()
        self.srv.close()


def _reply(kind: str, action_id: str) -> bytes:
    return encode(with_id(_static()[kind], action_id))


def _split(data: bytes, size: int = 7) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def _pair() -> list[tuple[bytes, str | None]]:
    return [(ami.action("CoreSettings", "cs-9"), "cs-9"), (ami.action("Ping", "ping-9"), "ping-9")]


def test_request_many_replies_out_of_order_split_with_events_between() -> None:
    """ami_transcript.txt (Ping), ami_core_show_version_transcript.txt (CoreSettings): both actions are
    written before any reply (the peer answers only once it holds both); the Ping reply comes FIRST, an
    unrelated channel's event between, and every message split into 7-byte reads. Each reply still
    reaches its own request, returned in request order."""
    noise = encode(noise_events()[0])

    def script(actions: list[dict[str, str]]) -> list[bytes | None]:
        ids = {a["Action"]: a["ActionID"] for a in actions}
        return _split(_reply("ping", ids["Ping"]) + noise + _reply("coresettings", ids["CoreSettings"]))

    peer = PipelinePeer(2, script)
    t = StreamTransport("myast", "127.0.0.1", peer.port, ami.AmiFraming, ami.route, connect_timeout=2)
    t.connect(time.monotonic() + T)
    settings, pong = t.request_many(_pair(), time.monotonic() + T)
    assert [a["Action"] for a in peer.received] == ["CoreSettings", "Ping"]
    assert (settings.action_id, settings.get("AsteriskVersion")) == ("cs-9", "22.10.1")
    assert (pong.action_id, pong.get("Ping")) == ("ping-9", "Pong")
    t.close()


def test_request_many_session_dropped_between_the_replies_is_outcome_unknown() -> None:
    """ami_core_show_version_transcript.txt: the CoreSettings reply arrives (split), then the server
    closes before the Ping's reply. Both requests left us, so it is OutcomeUnknown (never Unreachable,
    never a half result); the session is down and the next request is Unreachable, nothing sent."""

    def script(actions: list[dict[str, str]]) -> list[bytes | None]:
        return [*_split(_reply("coresettings", actions[0]["ActionID"]), 50), None]

    peer = PipelinePeer(2, script)
    t = StreamTransport("myast", "127.0.0.1", peer.port, ami.AmiFraming, ami.route, connect_timeout=2)
    t.connect(time.monotonic() + T)
    with pytest.raises(OutcomeUnknown, match="lost after the request was sent") as err:
        t.request_many(_pair(), time.monotonic() + T)
    assert err.value.details["server"] == "myast"
    assert len(peer.received) == 2
    with pytest.raises(Unreachable, match="nothing was sent"):
        t.request(ami.action("Ping", "p"), time.monotonic() + T, "p")


def test_request_many_one_reply_missing_is_outcome_unknown_at_the_deadline() -> None:
    """ami_transcript.txt (Ping, CoreSettings) on the replay peer: Ping is never answered. The batch ends
    at its deadline with OutcomeUnknown; keyed replies cannot cross, so the session stays usable."""
    with AmiPeer(faults={"ping": "silent"}) as peer:
        t = transport(peer)
        t.connect(time.monotonic() + T)
        login(t)
        start = time.monotonic()
        with pytest.raises(OutcomeUnknown, match="did not answer before the deadline"):
            t.request_many(_pair(), start + 0.3)
        assert 0.25 < time.monotonic() - start < 3
        assert t.alive()
        assert t.request(ami.action("CoreSettings", "c"), time.monotonic() + T, "c").get("AMIversion") == "11.0.0"
        t.close()


def test_request_many_fifo_pairs_in_write_order_and_refuses_repeated_keys() -> None:
    """ami_transcript.txt routed FIFO (as ESL answers): three pipelined requests get their replies in
    order; a batch repeating a key is a caller bug refused before anything is written."""

    def fifo(m: ami.AmiMessage) -> tuple[str, None]:
        return ("ignore", None) if m.banner is not None or m.event else ("reply", None)

    with AmiPeer(noise=True, chunk=5) as peer:
        t = StreamTransport("myast", "127.0.0.1", peer.port, ami.AmiFraming, fifo, connect_timeout=2)
        t.connect(time.monotonic() + T)
        batch = [
            (ami.action("Login", "l", [("Username", "admin"), ("Secret", "pass123")]), None),
            (ami.action("CoreSettings", "c"), None),
            (ami.action("Ping", "p"), None),
        ]
        login_ok, cs, pong = t.request_many(batch, time.monotonic() + T)
        assert [m.action_id for m in (login_ok, cs, pong)] == ["l", "c", "p"]
        assert cs.get("AMIversion") == "11.0.0" and pong.get("Ping") == "Pong"
        with pytest.raises(RuntimeError, match="repeated"):
            t.request_many([(ami.action("Ping", "x"), "x"), (ami.action("Ping", "x"), "x")], time.monotonic() + T)
        assert peer.count("Ping") == 1 and t.alive()
        t.close()
