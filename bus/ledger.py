"""What the bus remembers about each request, so that no call is ever placed twice.

What it keeps (key names and lifetimes: bus.keys): the request-id dedup claim; the final result and
the reply keys of duplicate waiters; the send claim, set right before an originate and cleared only
when that server provably did nothing (unreachable, overloaded, auth); the lease a live worker holds,
refreshed every second, so a waiting caller notices a killed worker within LEASE_SECONDS; and the
CallRef of every call a server accepted, written at acceptance (not only on success), so `hangup`
reaches the server that carries the call even after an "outcome unknown".

Calls followed by a worker process's follower (workers.follower) have one more record: the
FollowRecord (what is needed to answer the caller), the call's place in its type's in-flight set,
scored by its owner's lease expiry, and the owner's name. A follower refreshes all its calls in one
script per type per second; a call whose owner stopped refreshing is adopted, atomically, by another
follower of that type, which follows it to its end from the server's state. While such a call waits
for adoption, `read_lease` still names its server, so the caller keeps waiting for the real answer
instead of hearing "the worker stopped" — but only while a live follower of that type exists.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Protocol

from bus import keys
from bus.calls import CallRef

DEDUP_SECONDS = 3600
CALL_SECONDS = 24 * 3600
LEASE_SECONDS = 3.0
LEASE_REFRESH_SECONDS = 1.0
REQUEUED = "requeued"
FOLLOWER_SECONDS = 2.5  # a follower counts as alive this long after its last refresh (< LEASE_SECONDS)
ADOPT_WINDOW_SECONDS = 5.0  # an orphaned call not adopted within this is given up by its caller


@dataclass
class FollowRecord:
    """A call its job handed to a follower: enough to answer the caller exactly as the job would have,
    from any worker process. Times are Unix seconds (they cross hosts); `ref` is the CallRef's JSON."""

    request_id: str
    reply_key: str | None
    op: str
    server: str
    type: str
    ref: dict[str, Any]
    deadline_at: float
    accepted_at: float
    mode: str = "queue"
    attempts: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    permit: str = ""  # the call's slot in its server's call-rate limits (bus.ratelimit), "" when none

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str | bytes) -> FollowRecord:
        data = json.loads(raw)
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    @property
    def call_ref(self) -> CallRef:
        return CallRef.from_json(self.ref)


# Every follower script reads Redis's clock, so hosts with skewed clocks agree on who is late.
_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"

# KEYS: inflight zset, owner hash, followed key, lease key. ARGV: rid, owner, body, server, ttl ms, keep s.
_FOLLOW = (
    _NOW
    + """
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[5]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('SET', KEYS[3], ARGV[3], 'EX', tonumber(ARGV[6]))
redis.call('SET', KEYS[4], ARGV[4], 'PX', tonumber(ARGV[5]))
"""
)

# KEYS: inflight zset, owner hash, followers zset, then one lease key per call.
# ARGV: owner, ttl ms, follower ttl ms, then (rid, server) per call. Returns the calls no longer ours.
_HEARTBEAT = (
    _NOW
    + """
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - 3600000)
redis.call('PEXPIRE', KEYS[3], 3600000)
local lost = {}
for i = 4, #KEYS do
  local rid, server = ARGV[2 * i - 4], ARGV[2 * i - 3]
  if redis.call('HGET', KEYS[2], rid) == ARGV[1] then
    redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), rid)
    redis.call('SET', KEYS[i], server, 'PX', tonumber(ARGV[2]))
  else
    table.insert(lost, rid)
  end
end
return lost
"""
)

# KEYS: inflight zset, owner hash. ARGV: owner, ttl ms, limit, followed prefix, lease prefix.
# Claims up to `limit` calls whose owner's lease ran out; returns their FollowRecords.
_ADOPT = (
    _NOW
    + """
local out = {}
for _, rid in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))) do
  local body = redis.call('GET', ARGV[4] .. rid)
  if body then
    local ok, rec = pcall(cjson.decode, body)
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), rid)
    redis.call('HSET', KEYS[2], rid, ARGV[1])
    redis.call('SET', ARGV[5] .. rid, ok and tostring(rec.server) or 'adopted', 'PX', tonumber(ARGV[2]))
    table.insert(out, body)
  else
    redis.call('ZREM', KEYS[1], rid)
    redis.call('HDEL', KEYS[2], rid)
  end
end
return out
"""
)

# KEYS: lease key, followed key. ARGV: rid, inflight prefix, followers prefix, window ms.
_READ_LEASE = (
    _NOW
    + """
local lease = redis.call('GET', KEYS[1])
if lease then return lease end
local body = redis.call('GET', KEYS[2])
if not body then return false end
local ok, rec = pcall(cjson.decode, body)
if not ok or type(rec) ~= 'table' or type(rec.type) ~= 'string' then return false end
local since = redis.call('ZSCORE', ARGV[2] .. rec.type, ARGV[1])
if not since or now - tonumber(since) > tonumber(ARGV[4]) then return false end
if #redis.call('ZRANGEBYSCORE', ARGV[3] .. rec.type, now, '+inf', 'LIMIT', 0, 1) == 0 then return false end
return tostring(rec.server)
"""
)


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
        self.finish_many([(request_id, result, reply_key, also)])

    def finish_many(self, done: list[tuple[str, dict[str, Any], str | None, Callable[[Any], None] | None]]) -> None:
        """`finish` for many requests in one transaction (a follower settling a round of calls)."""
        pipe = self.redis.pipeline()
        spots = []
        for request_id, result, reply_key, also in done:
            body = json.dumps(result)
            if also is not None:
                also(pipe)
            pipe.set(keys.result(request_id), body, ex=DEDUP_SECONDS)
            spots.append((len(pipe), body, reply_key))
            pipe.smembers(keys.waiters(request_id))
            if reply_key:
                pipe.lpush(reply_key, body)
                pipe.expire(reply_key, keys.REPLY_TTL_SECONDS)
            pipe.delete(keys.lease(request_id))
        replies = pipe.execute()
        pipe = self.redis.pipeline()
        for (request_id, *_), (spot, body, reply_key) in zip(done, spots, strict=True):
            waiters = {k.decode(errors="replace") for k in replies[spot]} - {reply_key}
            for key in (k for k in waiters if keys.is_waiter_reply(request_id, k)):
                pipe.lpush(key, body)
                pipe.expire(key, keys.REPLY_TTL_SECONDS)
        if len(pipe):
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
        """Who holds the request: the lease's value, or — for a followed call whose follower died and
        that a live follower of its type is about to adopt — its server (see the module docstring)."""
        raw = self._script("read_lease", _READ_LEASE)(
            keys=[keys.lease(request_id), keys.followed(request_id)],
            args=[request_id, keys.inflight(""), keys.followers(""), int(ADOPT_WINDOW_SECONDS * 1000)],
        )
        return raw.decode() if isinstance(raw, bytes) else raw or None

    # ---- calls followed by a follower (workers.follower)

    def follow(self, record: FollowRecord, owner: str) -> None:
        """The follower `owner` now owns the call: record it, put it in flight, lease the request."""
        self._script("follow", _FOLLOW)(
            keys=[keys.inflight(record.type), keys.inflight_owner(record.type), keys.followed(record.request_id),
                  keys.lease(record.request_id)],
            args=[record.request_id, owner, record.to_json(), record.server, int(LEASE_SECONDS * 1000), DEDUP_SECONDS],
        )  # fmt: skip

    def heartbeat(self, type_: str, owner: str, calls: list[tuple[str, str]]) -> list[str]:
        """Refresh the follower's own liveness and the lease of each (request id, server) it owns, in
        one round trip; returns the request ids that are no longer its own (adopted elsewhere, finished)."""
        lost = self._script("heartbeat", _HEARTBEAT)(
            keys=[keys.inflight(type_), keys.inflight_owner(type_), keys.followers(type_),
                  *(keys.lease(rid) for rid, _ in calls)],
            args=[owner, int(LEASE_SECONDS * 1000), int(FOLLOWER_SECONDS * 1000),
                  *(v for call in calls for v in call)],
        )  # fmt: skip
        return [r.decode() if isinstance(r, bytes) else str(r) for r in lost or []]

    def adopt(self, type_: str, owner: str, limit: int) -> list[FollowRecord]:
        """Claim (atomically: one adopter per call) the calls of `type_` whose owner stopped refreshing."""
        bodies = self._script("adopt", _ADOPT)(
            keys=[keys.inflight(type_), keys.inflight_owner(type_)],
            args=[owner, int(LEASE_SECONDS * 1000), limit, keys.followed(""), keys.lease("")],
        )
        records = []
        for body in bodies or []:
            try:
                records.append(FollowRecord.from_json(body))
            except (ValueError, TypeError, KeyError):
                continue  # unreadable: dropped from the set on its expiry
        return records

    def release(self, type_: str, request_ids: list[str]) -> None:
        """Give calls up for adoption now (a draining worker): their owner's lease counts as expired."""
        if request_ids:
            seconds, micros = self.redis.time()  # orphaned from now on: callers keep waiting for the adopter
            self.redis.zadd(keys.inflight(type_), dict.fromkeys(request_ids, seconds * 1000 + micros // 1000), xx=True)

    def unfollow(self, type_: str, request_id: str) -> Callable[[Any], None]:
        """Pipeline commands that end a followed call's records, for `finish(also=…)`: in the same
        transaction as the answer, so no follower adopts a call that was just answered."""

        def add(pipe: Any) -> None:
            pipe.zrem(keys.inflight(type_), request_id)
            pipe.hdel(keys.inflight_owner(type_), request_id)
            pipe.delete(keys.followed(request_id))

        return add

    def _script(self, name: str, source: str) -> Any:
        scripts = self.__dict__.setdefault("_scripts", {})
        if name not in scripts:
            scripts[name] = self.redis.register_script(source)
        return scripts[name]

    def record_call(self, ref: CallRef, pipe: Any = None) -> None:
        """With `pipe`, the commands are queued there (a follower's round of answers: one round trip)."""
        body = json.dumps(ref.to_json())
        now = time.time()
        recent = keys.calls(ref.server)
        own = pipe is None
        pipe = self.redis.pipeline(transaction=False) if own else pipe
        for name in ref.names():
            pipe.set(keys.call(name), body, ex=CALL_SECONDS)
        pipe.zadd(recent, dict.fromkeys(ref.names(), now), nx=True)  # nx: a name keeps its placing time
        pipe.zremrangebyscore(recent, "-inf", now - CALL_SECONDS)
        pipe.expire(recent, CALL_SECONDS)
        if own:
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
