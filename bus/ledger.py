"""What the bus remembers about each request, so that no call is ever placed twice.

What it keeps (key names and lifetimes: bus.keys): the request-id dedup claim; the final result and
the reply keys of duplicate waiters; the send claim, set right before an originate and cleared only
when that server provably did nothing (unreachable, overloaded, auth); the lease a live worker holds,
refreshed every second, so a waiting caller notices a killed worker within LEASE_SECONDS; and the
CallRef of every call a server accepted, written at acceptance (not only on success), so `hangup`
reaches the server that carries the call even after an "outcome unknown".
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

from bus import keys
from bus.calls import CallRef

DEDUP_SECONDS = 3600
CALL_SECONDS = 24 * 3600
LEASE_SECONDS = 3.0
LEASE_REFRESH_SECONDS = 1.0
REQUEUED = "requeued"


class Ledger(Protocol):
    def claim_request(self, request_id: str) -> bool: ...

    def result(self, request_id: str) -> dict[str, Any] | None: ...

    def add_waiter(self, request_id: str, reply_key: str) -> None: ...

    def finish(
        self, request_id: str, result: dict[str, Any], reply_key: str | None, also: Callable[[Any], None] | None = None
    ) -> None:
        """Store and deliver the one result; `also(pipe)` adds commands to the same round trip."""

    def claim_send(self, request_id: str, server: str) -> str | None:
        """Claim the right to send this originate; None if claimed, else who sent it before."""

    def release_send(self, request_id: str) -> None: ...

    def lease(self, request_id: str, value: str, seconds: float = LEASE_SECONDS, refresh: bool = False) -> None:
        """Set the lease (or, with refresh, extend it only if it still exists)."""

    def record_call(self, ref: CallRef) -> None:
        """Remember a call a server accepted, under every id a user may hang up with."""

    def call_ref(self, call_id: str) -> CallRef | None: ...

    def recent_calls(self, server: str) -> list[tuple[CallRef, float]]:
        """The calls placed on `server` within CALL_SECONDS, oldest first, with when (Unix time)."""


class RedisLedger:
    def __init__(self, redis: Any) -> None:
        self.redis = redis

    def claim_request(self, request_id: str) -> bool:
        return bool(self.redis.set(keys.request(request_id), time.time(), nx=True, ex=DEDUP_SECONDS))

    def forget_request(self, request_id: str) -> None:
        self.redis.delete(keys.request(request_id))

    def result(self, request_id: str) -> dict[str, Any] | None:
        raw = self.redis.get(keys.result(request_id))
        return json.loads(raw) if raw else None

    def add_waiter(self, request_id: str, reply_key: str) -> None:
        pipe = self.redis.pipeline()
        pipe.sadd(keys.waiters(request_id), reply_key)
        pipe.expire(keys.waiters(request_id), DEDUP_SECONDS)
        pipe.execute()

    def finish(
        self, request_id: str, result: dict[str, Any], reply_key: str | None, also: Callable[[Any], None] | None = None
    ) -> None:
        """Store the result, wake the waiters, drop the lease: in that order, in one transaction, so
        a caller that finds the lease gone always finds the answer already there, and a duplicate
        submitter that registers after this sees the stored result."""
        body = json.dumps(result)
        pipe = self.redis.pipeline()
        if also is not None:
            also(pipe)
        pipe.set(keys.result(request_id), body, ex=DEDUP_SECONDS)
        pipe.smembers(keys.waiters(request_id))
        if reply_key:
            pipe.lpush(reply_key, body)
            pipe.expire(reply_key, keys.REPLY_TTL_SECONDS)
        pipe.delete(keys.lease(request_id))
        waiters = {k.decode() for k in pipe.execute()[-4 if reply_key else -2]} - {reply_key}
        if waiters:
            pipe = self.redis.pipeline()
            for key in waiters:
                pipe.lpush(key, body)
                pipe.expire(key, keys.REPLY_TTL_SECONDS)
            pipe.execute()

    def claim_send(self, request_id: str, server: str) -> str | None:
        key = keys.sent(request_id)
        if self.redis.set(key, server, nx=True, ex=DEDUP_SECONDS):
            return None
        holder = self.redis.get(key)
        return holder.decode() if holder else "another worker"

    def release_send(self, request_id: str) -> None:
        self.redis.delete(keys.sent(request_id))

    def lease(self, request_id: str, value: str, seconds: float = LEASE_SECONDS, refresh: bool = False) -> None:
        self.redis.set(keys.lease(request_id), value, px=max(1, int(seconds * 1000)), xx=refresh)

    def read_lease(self, request_id: str) -> str | None:
        raw = self.redis.get(keys.lease(request_id))
        return raw.decode() if raw else None

    def record_call(self, ref: CallRef) -> None:
        body = json.dumps(ref.to_json())
        now = time.time()
        recent = keys.calls(ref.server)
        pipe = self.redis.pipeline(transaction=False)
        for name in ref.names():
            pipe.set(keys.call(name), body, ex=CALL_SECONDS)
        pipe.zadd(recent, dict.fromkeys(ref.names(), now), nx=True)  # nx: a name keeps its placing time
        pipe.zremrangebyscore(recent, "-inf", now - CALL_SECONDS)
        pipe.expire(recent, CALL_SECONDS)
        pipe.execute()

    def call_ref(self, call_id: str) -> CallRef | None:
        raw = self.redis.get(keys.call(call_id))
        return _parse_ref(raw)

    def recent_calls(self, server: str) -> list[tuple[CallRef, float]]:
        since = time.time() - CALL_SECONDS
        names = self.redis.zrangebyscore(keys.calls(server), since, "+inf", withscores=True)
        if not names:
            return []
        bodies = self.redis.mget([keys.call(name.decode()) for name, _ in names])
        return _one_per_call((_parse_ref(body), at) for body, (_, at) in zip(bodies, names, strict=True))


class MemoryLedger:
    """Embedded mode: one process, one request at a time; nothing to share, little to remember."""

    def __init__(self) -> None:
        self._sent: dict[str, str] = {}
        self._calls: dict[str, CallRef] = {}
        self._placed: dict[str, float] = {}  # name → when first recorded

    def claim_request(self, request_id: str) -> bool:
        return True

    def result(self, request_id: str) -> dict[str, Any] | None:
        return None

    def add_waiter(self, request_id: str, reply_key: str) -> None:
        return None

    def finish(
        self, request_id: str, result: dict[str, Any], reply_key: str | None, also: Callable[[Any], None] | None = None
    ) -> None:
        if also is not None:
            also(None)

    def claim_send(self, request_id: str, server: str) -> str | None:
        if request_id in self._sent:
            return self._sent[request_id]
        self._sent[request_id] = server
        return None

    def release_send(self, request_id: str) -> None:
        self._sent.pop(request_id, None)

    def lease(self, request_id: str, value: str, seconds: float = LEASE_SECONDS, refresh: bool = False) -> None:
        return None

    def record_call(self, ref: CallRef) -> None:
        for name in ref.names():
            self._calls[name] = ref
            self._placed.setdefault(name, time.time())

    def call_ref(self, call_id: str) -> CallRef | None:
        return self._calls.get(call_id)

    def recent_calls(self, server: str) -> list[tuple[CallRef, float]]:
        since = time.time() - CALL_SECONDS
        placed = sorted((at, name) for name, at in self._placed.items() if at >= since)
        return _one_per_call((self._calls[name], at) for at, name in placed if self._calls[name].server == server)


def _one_per_call(found: Any) -> list[tuple[CallRef, float]]:
    """A call is recorded under each of its names (and re-recorded once its call id is known): keep
    one entry per call, its latest record, at the time it was first placed."""
    calls: dict[str, tuple[CallRef, float]] = {}
    for ref, at in found:
        if ref is None:
            continue  # expired or unreadable
        key = json.dumps(ref.to_json(), sort_keys=True)
        if key not in calls or at < calls[key][1]:
            calls[key] = (ref, at)
    return sorted(calls.values(), key=lambda item: item[1])


def _parse_ref(raw: bytes | None) -> CallRef | None:
    """A stored CallRef; an unreadable one (written by hand, or an older version) counts as absent."""
    if not raw:
        return None
    try:
        return CallRef.from_json(json.loads(raw))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


class LeaseKeeper:
    """Keeps the leases of the requests this process is working on alive.

    One daemon thread per process refreshes them all every LEASE_REFRESH_SECONDS (the job itself
    may block for seconds in a socket), so a lease vanishes within LEASE_SECONDS of the worker
    dying, and a job pays one SET to take its lease, not a thread.
    """

    _lock: ClassVar[threading.Lock] = threading.Lock()
    _held: ClassVar[dict[str, tuple[Ledger, str]]] = {}
    _thread: ClassVar[threading.Thread | None] = None

    def __init__(self, ledger: Ledger, request_id: str) -> None:
        self.ledger = ledger
        self.request_id = request_id
        self.server = ""

    def hold(self, server: str) -> None:
        """Lease the request to `server` now, and keep it leased until stop()."""
        self.server = server
        self.ledger.lease(self.request_id, server)
        with self._lock:
            LeaseKeeper._held[self.request_id] = (self.ledger, server)
            if LeaseKeeper._thread is None or not LeaseKeeper._thread.is_alive():
                LeaseKeeper._thread = threading.Thread(target=LeaseKeeper._refresh, name="ifbus-leases", daemon=True)
                LeaseKeeper._thread.start()

    def stop(self) -> None:
        with self._lock:
            LeaseKeeper._held.pop(self.request_id, None)

    @classmethod
    def _refresh(cls) -> None:
        while True:
            time.sleep(LEASE_REFRESH_SECONDS)
            # Under the lock, so once stop() returns no refresh of that request is in flight; and
            # only an existing lease is refreshed, so a finished request's lease never comes back.
            with cls._lock:
                for request_id, (ledger, server) in list(cls._held.items()):
                    try:
                        ledger.lease(request_id, server, refresh=True)
                    except Exception:  # a lost refresh only shortens the lease
                        continue
