"""What every fake vendor REST API in the tests shares: a loopback HTTP/1.1 server, request recording and
the test hooks that script failures.

Why one base: the Twilio and Vonage fakes differ only in their wire shapes (paths, auth, bodies, error
formats); how they start, stop, record requests, stall a request (read in full, never answered: a read
timeout for the client) and inject an answer is one piece of logic and lives here. A vendor fake
subclasses `HttpFake`, sets `name`, `methods` and `server_version`, and implements `route(record)`,
which returns `(status, payload, extra_headers)` and calls `scripted(kind)` once it knows the kind.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Self
from urllib.parse import parse_qs

#: one answer: HTTP status, the JSON payload (None with 204) and extra response headers
Answer = tuple[int, Any, dict[str, str]]


@dataclass
class Recorded:
    """One request as the fake read it, and what it answered."""

    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    kind: str = ""
    #: what the fake answered (None when it stalled)
    response_status: int | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    response_body: bytes = b""

    @property
    def form(self) -> dict[str, list[str]]:
        """The body as a form (application/x-www-form-urlencoded)."""
        return parse_qs(self.body.decode("utf-8"), keep_blank_values=True)

    @property
    def json(self) -> Any:
        """The body as JSON (None when empty)."""
        return json.loads(self.body) if self.body else None


class ScriptedStatus:
    """Mixin for a fake call whose status follows a script: `statuses[fetches]`, staying on the last,
    unless an update set `override` (the class using it declares the three fields)."""

    statuses: list[str]
    fetches: int
    override: str | None

    @property
    def status(self) -> str:
        if self.override is not None:
            return self.override
        return self.statuses[min(self.fetches, len(self.statuses) - 1)]


class Stall(Exception):
    """Raised while routing to leave a request unanswered (the handler holds it until stop())."""


def basic_auth_ok(header: str, user: str, password: str) -> bool:
    """True when an `Authorization` header is HTTP Basic with exactly this user and password."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        got_user, _, got_password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
    except (ValueError, UnicodeDecodeError):
        return False
    return secrets.compare_digest(got_user, user) and secrets.compare_digest(got_password, password)


class HttpFake:
    """Base of a fake REST API on 127.0.0.1 (an ephemeral port), usable as a context manager."""

    name: ClassVar[str] = "fake-http"  # the server thread's name
    methods: ClassVar[tuple[str, ...]] = ("GET", "POST", "DELETE")  # others get the stdlib's 501
    server_version: ClassVar[str] = "FakeHTTP/1.0"
    record_type: ClassVar[type[Recorded]] = Recorded

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._injections: dict[str, list[Answer]] = {}
        self._stalls: dict[str, int] = {}
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # Lifecycle

    def start(self) -> Self:
        handler = type("Handler", (_Handler,), {"owner": self, "server_version": self.server_version})
        for method in self.methods:
            setattr(handler, f"do_{method}", _Handler.serve)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name=self.name, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start() the fake first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # Test hooks

    def answer_next(self, kind: str, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        """The next request of `kind` gets this answer instead of the routed one."""
        with self._lock:
            self._injections.setdefault(kind, []).append((status, payload, dict(headers or {})))

    def stall(self, kind: str, times: int = 1) -> None:
        """The next `times` requests of `kind` are read in full and never answered."""
        with self._lock:
            self._stalls[kind] = self._stalls.get(kind, 0) + times

    def of_kind(self, kind: str) -> list[Recorded]:
        return [r for r in self.requests if r.kind == kind]

    # Request handling (runs on the server's threads)

    def route(self, record: Recorded) -> Answer:
        """Set `record.kind` and answer it; the vendor fake's wire rules."""
        raise NotImplementedError

    def content_type(self, record: Recorded) -> str:
        """Content-Type of a JSON answer (`record.response_status` is set)."""
        return "application/json"

    def per_response_headers(self) -> dict[str, str]:
        """Headers sent with every answer but not recorded (e.g. a fresh trace id)."""
        return {}

    def scripted(self, kind: str) -> Answer | None:
        """Raise Stall or return the injected answer when a hook scripted the next request of `kind`."""
        with self._lock:
            if self._stalls.get(kind):
                self._stalls[kind] -= 1
                raise Stall
            queue = self._injections.get(kind)
            if queue:
                return queue.pop(0)
        return None

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Recorded:
        """Record and answer one request (the answer is in the record); Stall: no answer."""
        record = self.record_type(method, path, headers, body)
        with self._lock:
            self.requests.append(record)
        status, payload, extra = self.route(record)
        record.response_status = status
        if status == 204:
            record.response_headers = dict(extra)
            return record
        record.response_headers = {"Content-Type": self.content_type(record), **extra}
        record.response_body = json.dumps(payload).encode("utf-8")
        return record


class _Handler(BaseHTTPRequestHandler):
    owner: HttpFake
    protocol_version = "HTTP/1.1"
    wbufsize = 65536  # one write per response (handle_one_request flushes): no Nagle/delayed-ACK stalls

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            record = self.owner.handle(self.command, self.path, headers, body)
        except Stall:
            self.owner._release.wait(10)
            self.close_connection = True
            return
        assert record.response_status is not None
        self.send_response(record.response_status)
        for key, value in {**record.response_headers, **self.owner.per_response_headers()}.items():
            self.send_header(key, value)
        if record.response_status != 204:
            self.send_header("Content-Length", str(len(record.response_body)))
        self.end_headers()
        if record.response_body:
            self.wfile.write(record.response_body)
