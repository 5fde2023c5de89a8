"""The stream transport: one long-lived TCP session to a line-protocol management port (AMI, ESL).

Why a transport of its own: on these protocols one socket carries both the replies to our requests
and a stream of asynchronous events (a call's progress arrives minutes after the request that started
it), in any interleaving. One reader thread per session reads every byte, cuts it into frames with the
vendor's `Framing`, and hands each frame to whoever waits for it: the request that owns the reply (by
key, e.g. an AMI ActionID, or in FIFO order, as ESL answers), or the subscriptions whose predicate
matches the event. Vendor modules own their framing and their routing rule; this module owns sockets,
threads, deadlines and the error classes — the mapping that makes "never a call placed twice" hold:

- nothing written yet (refused, no greeting, session already dead) → `Unreachable`: safe to retry;
- written, then the session dropped or the deadline passed → `OutcomeUnknown` naming the server:
  the server may have acted, so the caller must never resend.

A subscription made before a request sees every matching event of that request, even events that
arrive before its reply (the Asterisk captures show exactly that). When the session drops, every
subscription's `get` raises `SessionLost` (an `OutcomeUnknown`) after the frames already queued.
"""

from __future__ import annotations

import collections
import contextlib
import queue
import select
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, Literal, Protocol, TypeVar

from bus.errors import OutcomeUnknown, Unreachable

__all__ = ["Framing", "ProtocolError", "Route", "SessionLost", "StreamTransport", "Subscription"]

F = TypeVar("F")  # the vendor's frame type (an AMI message, an ESL frame)
Route = tuple[Literal["reply", "event", "ignore"], str | None]


class ProtocolError(Exception):
    """The peer sent bytes that are not the protocol (or a frame over the size cap): the session is
    unusable, because no later frame boundary can be trusted."""


class SessionLost(OutcomeUnknown):
    """The session dropped while a caller was waiting for an event: what the server did is unknown."""


class Framing(Protocol[F]):
    """Incremental parser of one session's byte stream. The transport sets `max_frame` on each new
    framing (the size cap is a transport policy); `feed` raises ProtocolError on garbage or on a frame
    larger than the cap, and returns the frames completed by `data` (possibly none)."""

    max_frame: int

    def feed(self, data: bytes) -> list[F]: ...


class _Batch:
    """The requests of one `request_many` call. One pre-acquired lock, not an Event, released by the
    reader when the batch's last reply is in (or the session is lost): the caller wakes once, with a
    single semaphore operation, however many reads its replies took (an Event's Condition, or one
    wake-up per reply, costs more on the hot path of every request)."""

    __slots__ = ("_done", "left")

    def __init__(self, size: int) -> None:
        self.left = size
        self._done = threading.Lock()
        self._done.acquire()

    def arrived(self) -> None:
        """Called with the transport's lock held."""
        self.left -= 1
        if self.left == 0:
            self._done.release()

    def wait(self, timeout: float) -> bool:
        return self._done.acquire(timeout=timeout)


class _Waiter(Generic[F]):
    """One request waiting for its reply (frame None once set: the session was lost)."""

    __slots__ = ("_set", "batch", "frame", "key")

    def __init__(self, key: str | None, batch: _Batch) -> None:
        self.key = key
        self.batch = batch
        self.frame: F | None = None
        self._set = False

    def set(self) -> None:
        """Called with the transport's lock held, so at most once takes effect."""
        if not self._set:
            self._set = True
            self.batch.arrived()


class Subscription(Generic[F]):
    """The events of one interest (e.g. one call), in arrival order."""

    _LOST = object()

    def __init__(self, transport: StreamTransport[F], predicate: Callable[[F], bool]) -> None:
        self._transport = transport
        self.predicate = predicate
        self._queue: queue.Queue[object] = queue.Queue()
        self.lost_reason: str | None = None

    def get(self, deadline: float) -> F:
        """The next matching event. TimeoutError when `deadline` (time.monotonic()) passes first;
        SessionLost once the session dropped and the events queued before the drop are consumed."""
        try:
            item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise TimeoutError(f"no event from {self._transport.server} before the deadline") from None
        if item is Subscription._LOST:
            self._queue.put(item)  # every later get fails the same way
            raise SessionLost(
                f"Session to {self._transport.server} lost ({self.lost_reason})", server=self._transport.server
            )
        return item  # type: ignore[return-value]

    def _deliver(self, frame: F) -> None:
        self._queue.put(frame)

    def _lose(self, reason: str) -> None:
        self.lost_reason = reason
        self._queue.put(Subscription._LOST)

    def close(self) -> None:
        self._transport._unsubscribe(self)

    def __enter__(self) -> Subscription[F]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StreamTransport(Generic[F]):
    """One TCP session with one reader thread; thread-safe for concurrent requests.

    `route(frame)` says what a frame is: ("reply", key) for the answer to the request sent with that
    key (or key None: the oldest waiting request, FIFO), ("event", _) for subscriptions, ("ignore", _).
    `heartbeat`, if given, builds a cheap request (bytes, key) that `alive()` sends when the session
    has been silent longer than `heartbeat_idle` seconds, so a half-dead TCP connection (peer rebooted,
    NAT state dropped) is found before a job writes an originate into it.
    """

    def __init__(
        self,
        server: str,
        host: str,
        port: int,
        framing: Callable[[], Framing[F]],
        route: Callable[[F], Route],
        *,
        connect_timeout: float,
        max_frame: int = 1 << 20,
        heartbeat: Callable[[], tuple[bytes, str | None]] | None = None,
        heartbeat_idle: float = 30.0,
        heartbeat_timeout: float = 2.0,
    ) -> None:
        self.server = server
        self.host = host
        self.port = port
        self._framing_factory = framing
        self._route = route
        self.connect_timeout = connect_timeout
        self.max_frame = max_frame
        self._heartbeat = heartbeat
        self.heartbeat_idle = heartbeat_idle
        self.heartbeat_timeout = heartbeat_timeout
        self._lock = threading.Lock()  # guards the waiter tables, subscriptions and the lost state
        self._write_lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._keyed: dict[str, _Waiter[F]] = {}
        self._fifo: collections.deque[_Waiter[F]] = collections.deque()
        self._subs: list[Subscription[F]] = []
        self._lost: str | None = "not connected"
        self._last_read = time.monotonic()
        self.greeting: F | None = None

    # ------------------------------------------------------------------ lifetime

    def connect(self, deadline: float) -> F:
        """Connect and read the greeting frame; then start the reader. Unreachable on refusal,
        timeout, or a peer that does not greet in this protocol (nothing was sent)."""
        if self._sock is not None:
            raise RuntimeError("StreamTransport.connect called twice; make a new transport to reconnect")
        where = f"{self.server} ({self.host}:{self.port})"
        timeout = min(self.connect_timeout, deadline - time.monotonic())
        if timeout <= 0:
            raise Unreachable(f"Cannot reach {where}: no time left to connect", server=self.server)
        try:
            sock = socket.create_connection((self.host, self.port), timeout=timeout)
        except TimeoutError:
            raise Unreachable(
                f"Cannot reach {where}: connect timed out after {timeout:.1f} s", server=self.server
            ) from None
        except OSError as exc:
            raise Unreachable(f"Cannot reach {where}: {exc.strerror or exc}", server=self.server) from None
        framing = self._framing_factory()
        framing.max_frame = self.max_frame
        try:
            frames = self._read_greeting(sock, framing, deadline, where)
        except BaseException:
            sock.close()
            raise
        sock.settimeout(None)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self._sock = sock
        self.greeting = frames[0]
        self._last_read = time.monotonic()
        self._lost = None
        self._reader = threading.Thread(
            target=self._read_loop, args=(framing, frames[1:]), name=f"ifbus-stream-{self.server}", daemon=True
        )
        self._reader.start()
        return frames[0]

    def _read_greeting(self, sock: socket.socket, framing: Framing[F], deadline: float, where: str) -> list[F]:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Unreachable(f"{where} accepted the connection but sent no greeting in time", server=self.server)
            sock.settimeout(left)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as exc:
                raise Unreachable(
                    f"{where} dropped the connection before its greeting: {exc}", server=self.server
                ) from None
            if not data:
                raise Unreachable(f"{where} closed the connection before its greeting", server=self.server)
            try:
                frames = framing.feed(data)
            except ProtocolError as exc:
                raise Unreachable(f"{where} does not speak the expected protocol: {exc}", server=self.server) from None
            if frames:
                return frames

    def alive(self) -> bool:
        """The session can carry a request now. With a heartbeat, a session silent for longer than
        `heartbeat_idle` proves it with one round trip first (failure closes it)."""
        if self._lost is not None:
            return False
        if self._heartbeat is None or self.idle_for() < self.heartbeat_idle:
            return True
        data, key = self._heartbeat()
        try:
            self.request(data, time.monotonic() + self.heartbeat_timeout, key)
        except (OutcomeUnknown, Unreachable):
            self.close()
            return False
        return True

    def idle_for(self) -> float:
        """Seconds since the peer last sent a byte."""
        return time.monotonic() - self._last_read

    def close(self) -> None:
        """Drop the session; waiting requests and subscriptions fail as 'lost'. Idempotent."""
        self._mark_lost("closed by us")
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the reader's recv
            sock.close()
        reader = self._reader
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout=2.0)

    # ------------------------------------------------------------------ requests and events

    def request(self, data: bytes, deadline: float, key: str | None = None) -> F:
        """Write `data` and wait for its reply (see the class docstring for routing)."""
        return self.request_many(((data, key),), deadline)[0]

    def request_many(self, requests: Sequence[tuple[bytes, str | None]], deadline: float) -> list[F]:
        """Pipelining: write every `(data, key)` at once, then wait for all their replies; returns them
        in request order, whatever order they arrive in (keys) or in FIFO order (key None).

        Why: each round trip through the reader thread costs a thread wake-up; requests that do not
        depend on each other (AMI `CoreSettings` and `Ping`) pay it once instead of once each. All or
        nothing: nothing written → Unreachable; written, then any reply missing (session lost, even
        between two replies, or the deadline) → OutcomeUnknown. Duplicate keys are a caller bug
        (RuntimeError) found before anything is written.
        """
        if not requests:
            return []
        batch = _Batch(len(requests))
        waiters: list[_Waiter[F]] = [_Waiter(key, batch) for _, key in requests]
        keys = [w.key for w in waiters if w.key is not None]
        # The write lock is taken before the waiters are registered, so FIFO waiters are queued in the
        # order their bytes reach the socket even when threads race.
        with self._write_lock:
            with self._lock:
                if self._lost is not None:
                    raise Unreachable(
                        f"Session to {self.server} is down ({self._lost}); nothing was sent", server=self.server
                    )
                if len(set(keys)) != len(keys) or any(k in self._keyed for k in keys):
                    raise RuntimeError(f"request keys {keys!r}: one is repeated or already waiting")
                for w in waiters:
                    if w.key is None:
                        self._fifo.append(w)
                    else:
                        self._keyed[w.key] = w
            try:
                self._write(requests[0][0] if len(requests) == 1 else b"".join(d for d, _ in requests), deadline)
            except BaseException:
                self._forget(*waiters)
                raise
        if not batch.wait(max(0.0, deadline - time.monotonic())):
            self._forget(*waiters)
            if any(w.key is None and w.frame is None for w in waiters):
                # FIFO pairing is now broken: the late reply would go to the next request.
                self._mark_lost("a reply did not come in time")
            raise OutcomeUnknown(
                f"{self.server} did not answer before the deadline; the request was sent and may have been acted on",
                server=self.server,
            )
        frames = [w.frame for w in waiters]
        if None in frames:
            raise OutcomeUnknown(
                f"Session to {self.server} lost after the request was sent ({self._lost}); it may have been acted on",
                server=self.server,
            )
        return frames  # type: ignore[return-value]

    def _write(self, data: bytes, deadline: float) -> None:
        """Called with the write lock held. The socket stays in blocking mode for the reader (a timeout
        would set O_NONBLOCK on the shared file description); writes wait for room with poll() and
        never block in send()."""
        sent = 0
        sock = self._sock
        try:
            if sock is None or self._lost is not None:
                raise OSError("session down")
            poller = select.poll()
            poller.register(sock, select.POLLOUT)
            while sent < len(data):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("write deadline passed")
                if not poller.poll(left * 1000):
                    continue
                try:
                    sent += sock.send(data[sent:], socket.MSG_DONTWAIT)
                except BlockingIOError:
                    continue
        except OSError as exc:  # TimeoutError is an OSError
            self._mark_lost(f"write failed: {exc}")
            if sent == 0:
                raise Unreachable(
                    f"Session to {self.server} is down ({exc}); nothing was sent", server=self.server
                ) from None
            raise OutcomeUnknown(
                f"Session to {self.server} failed while sending ({exc}); part of the request left us",
                server=self.server,
            ) from None

    def subscribe(self, predicate: Callable[[F], bool]) -> Subscription[F]:
        """Events matching `predicate` from now on. Subscribe BEFORE sending the request whose events
        you need. On a lost session the subscription's `get` raises SessionLost at once."""
        sub = Subscription(self, predicate)
        with self._lock:
            if self._lost is not None:
                sub._lose(self._lost)
            else:
                self._subs.append(sub)
        return sub

    def _unsubscribe(self, sub: Subscription[F]) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)

    def _forget(self, *waiters: _Waiter[F]) -> None:
        with self._lock:
            for waiter in waiters:
                if waiter.key is not None:
                    if self._keyed.get(waiter.key) is waiter:
                        del self._keyed[waiter.key]
                elif waiter in self._fifo:
                    self._fifo.remove(waiter)

    # ------------------------------------------------------------------ the reader

    def _read_loop(self, framing: Framing[F], pending: list[F]) -> None:
        sock = self._sock
        assert sock is not None
        reason = "closed by the server"
        try:
            for frame in pending:
                self._dispatch(frame)
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                self._last_read = time.monotonic()
                for frame in framing.feed(data):
                    self._dispatch(frame)
        except ProtocolError as exc:
            reason = f"protocol error: {exc}"
        except OSError as exc:
            reason = f"connection error: {exc}"
        except Exception as exc:  # a routing/predicate bug must not leave waiters hanging forever
            reason = f"internal error: {type(exc).__name__}: {exc}"
        self._mark_lost(reason)

    def _dispatch(self, frame: F) -> None:
        kind, key = self._route(frame)
        with self._lock:
            if kind == "reply":
                waiter = self._keyed.pop(key, None) if key is not None else None
                if key is None and self._fifo:
                    waiter = self._fifo.popleft()
                if waiter is not None:  # else: a late reply to a request that gave up
                    waiter.frame = frame
                    waiter.set()
            elif kind == "event":
                for sub in self._subs:
                    if sub.predicate(frame):
                        sub._deliver(frame)

    def _mark_lost(self, reason: str) -> None:
        with self._lock:
            if self._lost is None:
                self._lost = reason
            waiters = [*self._keyed.values(), *self._fifo]
            self._keyed.clear()
            self._fifo.clear()
            subs, self._subs = self._subs, []
            for w in waiters:
                w.set()  # frame None: the request sees the session lost
        for sub in subs:
            sub._lose(reason)
