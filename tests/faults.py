"""Fault-injection JSON-RPC peers on loopback, for the failure modes a real Kamailio won't produce
on demand: refusing, accepting and staying silent, resetting mid-response, shedding load with
429/503 + Retry-After, and refusing the token.

When it does answer, it answers as Kamailio's xhttp + jsonrpcs do (bytes as captured in
/work/shared/kamailio-lab.md §5(b): status line, `Content-Type: application/json`,
`Server: kamailio (5.6.3 (x86_64/linux))`, `Content-Length`, JSON-RPC 2.0 body; the 401 body
`{"jsonrpc":"2.0","error":{"code":-32001,"message":"Unauthorized"},"id":null}`; a missing htable
key as error 500 "Key name doesn't exist in htable."). A 429/503 is what a reverse proxy or an
overloaded front end returns (RFC 9110 §15.6.4, RFC 6585 §4), with `Retry-After` in seconds.
Every request is recorded (arrival time, JSON-RPC method) so tests count what each peer received.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

SERVER = "kamailio (5.6.3 (x86_64/linux))"


@dataclass
class Received:
    at: float
    method: str
    params: list[Any]


@dataclass
class FaultPeer:
    """`script` is consumed one entry per request; when it runs out, `default` applies.

    Modes: ok, slow, silent, reset, 429, 503, 401. `codes` are the htable answers for a call:
    {"a": 200, "b": 200} connects; {"a": 486} is a busy first party.
    """

    script: list[str] = field(default_factory=list)
    default: str = "ok"
    codes: dict[str, int] = field(default_factory=lambda: {"a": 200, "b": 200})
    retry_after: int = 1
    delay: float = 1.5  # seconds a "slow" answer takes
    received: list[Received] = field(default_factory=list)
    port: int = 0

    def methods(self, name: str | None = None) -> list[str]:
        return [r.method for r in self.received if name is None or r.method == name]

    def serve(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._sock.close()
        for conn in self._held:
            conn.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        buffer = b""
        while True:
            try:
                request, buffer = _read_request(conn, buffer)
            except (OSError, ValueError):
                conn.close()
                return
            if request is None:
                conn.close()
                return
            body = json.loads(request or b"{}")
            self.received.append(Received(time.monotonic(), body.get("method", ""), body.get("params", [])))
            mode = self.script.pop(0) if self.script else self.default
            if mode == "silent":
                self._held.append(conn)  # accepted, read, never answered
                return
            if mode == "slow":
                time.sleep(self.delay)
                mode = "ok"
            if mode == "reset":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Le")
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()  # RST mid-response
                return
            conn.sendall(self._reply(mode, body))

    def _reply(self, mode: str, body: dict[str, Any]) -> bytes:
        if mode in ("429", "503"):
            reason = "Too Many Requests" if mode == "429" else "Service Unavailable"
            head = f"HTTP/1.1 {mode} {reason}\r\nRetry-After: {self.retry_after}\r\n"
            return (head + "Content-Length: 0\r\n\r\n").encode()
        if mode == "401":
            payload = '{"jsonrpc":"2.0","error":{"code":-32001,"message":"Unauthorized"},"id":null}'
            return _http(401, "Unauthorized", payload, 'WWW-Authenticate: Bearer realm="kamailio-lab"\r\n')
        return _http(200, "OK", json.dumps({"jsonrpc": "2.0", **self._result(body), "id": body.get("id")}))

    def _result(self, body: dict[str, Any]) -> dict[str, Any]:
        method, params = body.get("method"), body.get("params") or []
        if method == "core.version":
            return {"result": "kamailio 5.6.3 (x86_64/linux) "}
        if method in ("dlg.bridge_dlg", "dlg.end_dlg"):
            return {"result": {}}
        if method == "htable.get":
            leg = params[1].split("::", 1)[1]
            value = "fake-call-id@127.0.0.1" if leg == "b::callid" else self.codes.get(leg)
            if value is None:
                return {"error": {"code": 500, "message": "Key name doesn't exist in htable."}}
            return {"result": {"item": {"name": params[1], "value": value}}}
        if method == "dlg.list_match":
            return {"result": [{"h_entry": 1, "h_id": 2, "call-id": params[2], "state": 4}]}
        return {"error": {"code": 500, "message": "Method Not Found"}}


def _http(status: int, reason: str, payload: str, extra: str = "") -> bytes:
    data = payload.encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\n{extra}Content-Type: application/json\r\nServer: {SERVER}\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


def _read_request(conn: socket.socket, buffer: bytes) -> tuple[bytes | None, bytes]:
    while b"\r\n\r\n" not in buffer:
        chunk = conn.recv(65536)
        if not chunk:
            return None, b""
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(rest) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return None, b""
        rest += chunk
    return rest[:length], rest[length:]


@contextmanager
def peer(**kwargs: Any) -> Iterator[FaultPeer]:
    fault = FaultPeer(**kwargs)
    fault.serve()
    try:
        yield fault
    finally:
        fault.close()


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
