"""The HTTP transport's bounds (issue: endless or trickling peers must not hold a worker) and the
rule that options build paths, never hosts (issue: `--opt path=http://elsewhere/` sent the token).

The peers are raw sockets speaking HTTP/1.1 (RFC 9112) badly on purpose: an endless chunked body,
one byte at a time in the body or in the headers, an answer larger than the cap.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import pytest

from bus.errors import InvalidInput, OutcomeUnknown, Unreachable
from bus.registry import open_registry
from bus.server import ServerEntry
from workers.adapters.kamailio import KamailioAdapter
from workers.transports.http import base_url_option, make_client, path_option, send

OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"


@contextmanager
def raw_peer(behaviour: Callable[[socket.socket, threading.Event], None]) -> Iterator[tuple[int, list[bytes]]]:
    """A one-connection-at-a-time TCP peer; `behaviour` writes whatever it likes until told to stop."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    requests: list[bytes] = []

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                data = _read_request(conn)
                requests.append(data)
                with suppress(OSError):
                    behaviour(conn, stop)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], requests
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def _read_request(conn: socket.socket) -> bytes:
    """Headers and a Content-Length body, so closing the socket afterwards never resets it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                   if line.startswith(b"content-length:")), 0)  # fmt: skip
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def endless_chunks(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
    piece = b"4000\r\n" + b"x" * 0x4000 + b"\r\n"
    while not stop.is_set():
        conn.sendall(piece)


def trickle_body(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(OK_HEAD + b"Content-Length: 1000\r\n\r\n")
    while not stop.wait(0.05):
        conn.sendall(b"x")


def trickle_headers(conn: socket.socket, stop: threading.Event) -> None:
    for byte in OK_HEAD:
        if stop.wait(0.05):
            return
        conn.sendall(bytes([byte]))
    while not stop.wait(0.05):
        conn.sendall(b"X")  # a header line that never ends


@pytest.mark.parametrize("behaviour", [endless_chunks, trickle_body, trickle_headers])
def test_a_bad_peer_costs_at_most_the_deadline_and_the_size_cap(behaviour: Callable) -> None:
    with raw_peer(behaviour) as (port, _):
        client = make_client(f"http://127.0.0.1:{port}", connect_timeout=2, read_timeout=2)
        started = time.monotonic()
        with pytest.raises(OutcomeUnknown) as info:
            send(client, "peer", "POST", "/RPC", json={}, deadline=started + 1.0, max_bytes=256 * 1024)
        took = time.monotonic() - started
        client.close()
    # Each read waits at most the time left, so it ends within a read slice of the deadline; the
    # per-read timeout (2 s) alone would never end a trickle.
    assert took < 1.0 + 1.5, took
    assert "peer" in info.value.message


def test_size_cap_refuses_a_large_answer_even_when_it_ends() -> None:
    body = b'{"result": "' + b"y" * 300_000 + b'"}'

    def large(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(OK_HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body)

    with raw_peer(large) as (port, _):
        client = make_client(f"http://127.0.0.1:{port}", 2, 2)
        with pytest.raises(OutcomeUnknown, match="exceeds 262144 bytes"):
            send(client, "peer", "POST", "/", json={}, max_bytes=256 * 1024)
        assert send(client, "peer", "POST", "/", json={}).json()["result"].startswith("yyy")
        client.close()


def test_nothing_listening_is_unreachable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = make_client(f"http://127.0.0.1:{port}", 1, 1)
    with pytest.raises(Unreachable):
        send(client, "peer", "POST", "/", json={})


@pytest.mark.parametrize(
    "path",
    ["http://127.0.0.1:9/steal", "//127.0.0.1:9/steal", "RPC", "/a?x=1", "/a#f", "/user@host", "/a b", "/a\\b"],
)
def test_path_options_are_paths_only(path: str) -> None:
    with pytest.raises(InvalidInput, match="expected a URL path"):
        path_option("kam", "path", path)


def test_kamailio_never_sends_its_token_to_a_host_given_by_an_option() -> None:
    """Reproduction from the issue: `--opt path=http://127.0.0.1:OTHER/steal` POSTed the Bearer token
    to OTHER. Now the request is refused before anything is sent."""

    def answer(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(OK_HEAD + b'Content-Length: 2\r\n\r\n{}')

    with raw_peer(answer) as (other, stolen):
        entry = ServerEntry.build(
            "kamailio", {"token": "s3cret-token"}, port=1, options={"path": f"http://127.0.0.1:{other}/steal"}
        )
        open_registry().add("kam", entry)
        with pytest.raises(InvalidInput, match="expected a URL path"):
            KamailioAdapter("kam", entry).test()
        assert stolen == []


@pytest.mark.parametrize(
    ("url", "ok"),
    [("https://api.example.com", True), ("http://127.0.0.1:8080", True), ("http://[::1]:1", True),
     ("http://localhost:1", True), ("http://api.example.com", False), ("https://u:p@api.example.com", False),
     ("ftp://api.example.com", False), ("https://api.example.com/?q", False)],
)
def test_base_url_rule(url: str, ok: bool) -> None:
    if ok:
        assert base_url_option("s", url, "https://api.example.com") == url
    else:
        with pytest.raises(InvalidInput):
            base_url_option("s", url, "https://api.example.com")
