"""The OPTIONS client (bus/sip/options.py) against small Python peers on 127.0.0.1 (no binaries needed).

Each peer copies Via/From/To/Call-ID/CSeq from the request, as a real UAS does (RFC 3261 §8.2.6.2);
reply shapes follow tests/peers/captures/opensips-3.4.18/options_opensips.txt.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bus.errors import InvalidInput, Unreachable
from bus.sip.options import build_options, options
from tests.lab import free_port

COPIED = ("via", "from", "to", "call-id", "cseq")


def reply(request: bytes, status: str = "200 OK", *extra: str, branch: str | None = None) -> bytes:
    lines = []
    for line in request.decode().split("\r\n")[1:]:
        name = line.split(":", 1)[0].strip().lower()
        if name in COPIED:
            if name == "via" and branch:
                line = line.split(";branch=")[0] + f";branch={branch}"
            lines.append(line)
    return ("\r\n".join([f"SIP/2.0 {status}", *lines, *extra, "Content-Length: 0"]) + "\r\n\r\n").encode()


class UdpPeer:
    """Records every datagram (with its arrival time) and answers with what `respond` returns."""

    def __init__(self, respond: Callable[[int, bytes], list[bytes]]) -> None:
        self.respond = respond
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.arrivals: list[float] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(65_535)
            except OSError:
                return
            self.arrivals.append(time.monotonic())
            for answer in self.respond(len(self.arrivals), data):
                self.sock.sendto(answer, addr)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def udp_peer() -> Iterator[Callable[[Callable[[int, bytes], list[bytes]]], UdpPeer]]:
    peers: list[UdpPeer] = []

    def make(respond: Callable[[int, bytes], list[bytes]]) -> UdpPeer:
        peers.append(UdpPeer(respond))
        return peers[-1]

    yield make
    for peer in peers:
        peer.close()


def test_request_shape() -> None:
    data, branch, call_id = build_options("127.0.0.1", 5060, "udp", ("127.0.0.1", 40000))
    text = data.decode()
    assert text.startswith("OPTIONS sip:127.0.0.1:5060 SIP/2.0\r\n") and text.endswith("\r\n\r\n")
    assert f"Via: SIP/2.0/UDP 127.0.0.1:40000;branch={branch};rport\r\n" in text
    assert branch.startswith("z9hG4bK") and f"Call-ID: {call_id}\r\n" in text
    assert "CSeq: 1 OPTIONS\r\n" in text and "Max-Forwards: 70\r\n" in text
    tcp, _, _ = build_options("::1", 5060, "tcp", ("::1", 4))
    assert tcp.startswith(b"OPTIONS sip:[::1]:5060;transport=tcp SIP/2.0") and b"SIP/2.0/TCP [::1]:4;" in tcp


def test_retransmission_schedule_and_give_up(udp_peer) -> None:
    """T1 doubling capped at T2, bounded by the timeout (RFC 3261 §17.1.2.2), with scaled timers."""
    peer = udp_peer(lambda n, data: [])  # records and drops
    started = time.monotonic()
    with pytest.raises(Unreachable) as caught:
        options("127.0.0.1", peer.port, timeout=1.5, t1=0.1, t2=0.4)
    elapsed = time.monotonic() - started
    assert 1.45 <= elapsed < 1.8
    gaps = [b - a for a, b in zip(peer.arrivals, peer.arrivals[1:], strict=False)]
    assert len(peer.arrivals) == 5, gaps  # at 0, 0.1, 0.3, 0.7, 1.1
    for gap, expected in zip(gaps, [0.1, 0.2, 0.4, 0.4], strict=True):
        assert expected - 0.02 <= gap <= expected + 0.08, gaps
    exc = caught.value
    assert exc.exit_code == 4
    assert exc.details["transmissions"] == 5 and exc.details["transport"] == "udp"
    assert f"127.0.0.1:{peer.port} over udp (5 transmissions over 1.5 s" in exc.message


def test_default_timers_over_two_seconds(udp_peer) -> None:
    peer = udp_peer(lambda n, data: [])
    with pytest.raises(Unreachable) as caught:
        options("127.0.0.1", peer.port, timeout=2.0)
    assert len(peer.arrivals) == 3 == caught.value.details["transmissions"]  # 0, T1, 3·T1
    assert abs(peer.arrivals[1] - peer.arrivals[0] - 0.5) < 0.08
    assert abs(peer.arrivals[2] - peer.arrivals[1] - 1.0) < 0.08


def test_nobody_listening_retransmits_until_the_timeout() -> None:
    started = time.monotonic()
    with pytest.raises(Unreachable) as caught:
        options("127.0.0.1", free_port(), timeout=0.8, t1=0.1)
    assert time.monotonic() - started >= 0.75
    assert caught.value.details["transmissions"] >= 3
    assert "ICMP port-unreachable" in caught.value.message


def test_lost_first_datagram_is_retransmitted(udp_peer) -> None:
    peer = udp_peer(lambda n, data: [] if n == 1 else [reply(data, "200 OK", "Server: x")])
    result = options("127.0.0.1", peer.port, timeout=2.0, t1=0.05)
    assert (result.code, result.transmissions, result.server) == (200, 2, "x")
    assert result.rtt_ms >= 45


def test_strays_and_provisionals_are_skipped(udp_peer) -> None:
    def respond(n: int, data: bytes) -> list[bytes]:
        return [
            b"\x00\xffgarbage",
            reply(data, "200 OK", "Server: impostor", branch="z9hG4bKother"),  # another transaction
            reply(data, "100 Trying"),
            reply(data, "200 OK", "Server: OpenSIPS (3.4.18 (x86_64/linux))", "Allow: options, INVITE", "k: timer"),
        ]

    peer = udp_peer(respond)
    result = options("127.0.0.1", peer.port, timeout=2.0)
    assert result.code == 200 and result.server == "OpenSIPS (3.4.18 (x86_64/linux))"
    assert result.provisional == (100,) and result.allow == ("OPTIONS", "INVITE") and result.supported == ("timer",)
    assert result.banner == result.server and result.to_dict()["target"] == f"127.0.0.1:{peer.port}"


def test_only_provisional_then_timeout_retransmits_at_t2(udp_peer) -> None:
    peer = udp_peer(lambda n, data: [reply(data, "100 Trying")])
    with pytest.raises(Unreachable) as caught:
        options("127.0.0.1", peer.port, timeout=1.0, t1=0.05, t2=0.3)
    gaps = [b - a for a, b in zip(peer.arrivals, peer.arrivals[1:], strict=False)]
    assert gaps and all(0.25 <= g <= 0.4 for g in gaps), gaps
    assert "only provisional 100" in caught.value.message


def test_final_error_codes_are_answers(udp_peer) -> None:
    peer = udp_peer(lambda n, data: [reply(data, "401 Unauthorized", "Server: Asterisk PBX 22.10.1")])
    result = options("127.0.0.1", peer.port)
    assert (result.code, result.reason, result.server) == (401, "Unauthorized", "Asterisk PBX 22.10.1")


def test_bad_arguments() -> None:
    with pytest.raises(InvalidInput):
        options("127.0.0.1", 5060, transport="sctp")
    with pytest.raises(InvalidInput):
        options("127.0.0.1", 70000)
    with pytest.raises(InvalidInput):
        options("127.0.0.1", 5060, timeout=0)


def test_unresolvable_host() -> None:
    with pytest.raises(Unreachable, match="cannot resolve"):
        options("no-such-host.invalid", 5060, timeout=0.5)


# ---------------------------------------------------------------- TCP and TLS


def serve_once(listener: socket.socket, handle: Callable[[socket.socket], None]) -> threading.Thread:
    def run() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            handle(conn)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_tcp_reply_in_pieces_with_a_provisional_first() -> None:
    listener = socket.create_server(("127.0.0.1", 0))

    def handle(conn: socket.socket) -> None:
        request = read_request(conn)
        wire = (
            b"\r\n" + reply(request, "100 Trying") + reply(request, "200 OK", "Server: kamailio (5.6.3 (x86_64/linux))")
        )
        for i in range(0, len(wire), 7):
            conn.sendall(wire[i : i + 7])
            time.sleep(0.001)

    serve_once(listener, handle)
    try:
        result = options("127.0.0.1", listener.getsockname()[1], transport="tcp", timeout=2.0)
    finally:
        listener.close()
    assert (result.code, result.transport, result.provisional) == (200, "tcp", (100,))
    assert result.server == "kamailio (5.6.3 (x86_64/linux))"


def test_tcp_refused_and_closed_and_garbage() -> None:
    with pytest.raises(Unreachable, match="refused") as caught:
        options("127.0.0.1", free_port(), transport="tcp", timeout=1.0)
    assert caught.value.details["transmissions"] == 0

    listener = socket.create_server(("127.0.0.1", 0))
    serve_once(listener, lambda conn: read_request(conn))  # reads, then closes
    with pytest.raises(Unreachable, match="closed"):
        options("127.0.0.1", listener.getsockname()[1], transport="tcp", timeout=1.0)
    serve_once(listener, lambda conn: (read_request(conn), conn.sendall(b"HTTP/1.1 400 Bad\r\n\r\n")))
    with pytest.raises(Unreachable, match="not SIP"):
        options("127.0.0.1", listener.getsockname()[1], transport="tcp", timeout=1.0)
    serve_once(listener, lambda conn: (read_request(conn), time.sleep(1.0)))
    started = time.monotonic()
    with pytest.raises(Unreachable, match="no final response"):
        options("127.0.0.1", listener.getsockname()[1], transport="tcp", timeout=0.4)
    assert time.monotonic() - started < 0.9
    listener.close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed (needed for a test cert)")
def test_tls(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))

    def handle(conn: socket.socket) -> None:
        with contextlib.suppress(ssl.SSLError), server_ctx.wrap_socket(conn, server_side=True) as tls:
            tls.sendall(reply(read_request(tls), "200 OK", "Server: OpenSIPS (3.4.18 (x86_64/linux))"))

    port = listener.getsockname()[1]
    serve_once(listener, handle)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    result = options("127.0.0.1", port, transport="tls", timeout=3.0, ssl_context=client_ctx)
    assert (result.code, result.transport) == (200, "tls")

    serve_once(listener, handle)  # an untrusted certificate is a failed handshake, reported as such
    with pytest.raises(Unreachable, match="TLS handshake failed"):
        options("127.0.0.1", port, transport="tls", timeout=3.0)
    listener.close()
