"""Call-rate limits per server, shared by every worker on every host: `cps` and `max_concurrent`.

Algorithm: neither a plain GCRA nor a token bucket, but their sliding-window cousin — a counting
semaphore whose CPS permits are released one window after the server ACKNOWLEDGED the originate.
Why: GCRA and token buckets space the moments the bus *decides* to send; the carrier counts the
moments requests *arrive*. Between the two sits a variable delay (a worker's wake-up, the HTTP send,
the network), so a GCRA spacing of exactly 1/cps is seen by the carrier as 3 creates in one second
as soon as one request is late by a millisecond and the next is not. Here, with N = ceil(cps) and a
window W = N / cps (1 s for whole rates):

- a call takes a CPS permit before its originate (at most N held), and the permit expires W after
  the server answered the originate (recorded on Redis's clock when the answer is back);
- so whenever the carrier sees N+1 creates, the first one's permit was still held when the last one
  was granted: impossible. No arrival jitter can put N+1 creates into one W-second window at the
  carrier (for cps=2: never 3 creates in any second), which is what a carrier's CPS limit means.
  The price is the originate's own latency: a server answering in L seconds gets N calls per W+L.
- `max_concurrent` permits are held from the grant until the call settles (answered, refused or
  given up on). With `until=accepted` the bus stops following at acceptance, but the callee is still
  ringing: the permit is kept for the server's ring window (see `ring_window`) and then expires.
  A call whose outcome became unknown is counted the same way.

Every decision is ONE Lua script (`_SCRIPT`, loaded once and run with EVALSHA by redis-py's
`register_script`) on Redis's own clock (`TIME`), so hosts with skewed clocks agree. Waiters queue in
a sorted set in the order their first request reached Redis — submission order as far as one Redis
can tell (RQ hands jobs out in queue order) — and a slot goes to the first waiters only. A waiter
renews a short lease each time it asks, so a worker that died while waiting does not block the
queue for longer than `WAITER_LEASE`; permits held by a dead worker expire with the caller's
deadline, unless a follower adopts its call (workers.follower): the slot's token travels in the
follow record, and the adopter settles it as the dead worker would have (`Limiter.resume`).
A vendor's 429/503 with Retry-After pauses the server's grants for that long (`slow`).

Cost with an open bucket: one round trip to take the slot; the acknowledgement (and, with
`max_concurrent`, the release when the call settles) are one more each, after the call is placed,
and their failures never fail the call (the permits then expire on their own, on the safe side).
Embedded mode has no Redis: `MemoryLimiter` runs the same rules on this process's monotonic clock.
Operator's view: docs/ratelimit.md.
"""

from __future__ import annotations

import itertools
import math
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from bus import keys
from bus.errors import InvalidInput, Overloaded
from bus.logging import get_logger

log = get_logger("ifbus.ratelimit")

POLL_SECONDS = 0.05  # longest sleep between two asks while the next free slot's time is unknown
WAITER_LEASE = 3.0  # a waiter that stopped asking this long ago is skipped (its worker died)
PAUSE_CAP = 60.0  # a Retry-After longer than this pauses only this long (one hostile header ≠ a dead fleet)
KEY_TTL_MS = 2 * 3600 * 1000  # idle limiter keys vanish (longer than any caller deadline + ring window)
_RING_OPTIONS = ("answer_timeout", "originate_timeout", "fr_inv_timer")  # per vendor: how long a call may ring
DEFAULT_RING = 60.0


@dataclass(frozen=True)
class Limits:
    """A server's limits; 0 means none."""

    cps: float = 0.0
    max_concurrent: int = 0

    @classmethod
    def of(cls, server: str, options: dict[str, str]) -> Limits:
        """Read `cps` / `max_concurrent` from a server's effective options; bad values are bad input."""
        raw_cps, raw_max = options.get("cps", "0"), options.get("max_concurrent", "0")
        try:
            cps = float(raw_cps)
        except ValueError:
            cps = -1.0
        if not (math.isfinite(cps) and cps >= 0):
            raise InvalidInput(f"{server}: option cps={raw_cps!r} must be a number of calls per second ≥ 0 (0: none)")
        if not raw_max.isdigit():
            raise InvalidInput(f"{server}: option max_concurrent={raw_max!r} must be a whole number ≥ 0 (0: none)")
        return cls(cps, int(raw_max))

    @property
    def active(self) -> bool:
        return self.cps > 0 or self.max_concurrent > 0

    @property
    def burst(self) -> int:
        """N: CPS permits held at once (N creates per window)."""
        return max(1, math.ceil(self.cps)) if self.cps > 0 else 0

    @property
    def window(self) -> float:
        """W: seconds a CPS permit stays held after the server answered the originate (N / cps)."""
        return self.burst / self.cps if self.cps > 0 else 0.0

    def describe(self) -> str:
        parts = [f"{self.cps:g} calls/s"] if self.cps > 0 else []
        if self.max_concurrent:
            parts.append(f"{self.max_concurrent} calls in flight")
        return ", ".join(parts)


def ring_window(options: dict[str, str]) -> float:
    """How long an accepted call may ring on this server: the vendor's own ring timeout option."""
    for key in _RING_OPTIONS:
        try:
            value = float(options[key])
        except (KeyError, ValueError):
            continue
        if math.isfinite(value) and value > 0:
            return value
    return DEFAULT_RING


class RateLimited(Overloaded):
    """No slot before the caller's deadline: exit 4. Said by the bus, not the server: the server's
    breaker is never fed with it (workers.jobs)."""


@dataclass(frozen=True)
class Verdict:
    granted: bool
    wait: float = 0.0  # seconds until the blocking permit expires (0: unknown, ask again soon)
    position: int = 0  # waiters ahead of this one
    why: str = ""  # "rate", "concurrent", "paused" or "queue" when not granted


class Store(Protocol):
    """The atomic operations; RedisLimiter and MemoryLimiter implement them with the same rules."""

    def take(self, server: str, token: str, limits: Limits, hold: float) -> Verdict:
        """Grant both permits now, or enqueue `token` (renewing its waiter lease) and say why not.
        `hold`: seconds the permits stay held if nobody settles them (the caller's deadline)."""

    def settle(self, server: str, token: str, rate: str = "", window: float = 0.0, live: str = "",
               ring: float = 0.0) -> None:  # fmt: skip
        """rate: "sent" (expires `window` s from now) or "unsent" (freed); live: "release" or "hold"
        (expires `ring` s from now); "" leaves that permit alone."""

    def cancel(self, server: str, token: str) -> None:
        """Leave the queue (the caller gives up)."""

    def slow(self, server: str, seconds: float) -> None:
        """Grant nothing for `seconds` (the server's Retry-After)."""

    def view(self, server: str, limits: Limits) -> dict[str, Any]:
        """What `ifbus status` shows: permits held, calls waiting, pause left."""


# KEYS: hash, sent, live, queue, waiting (bus.keys.rate_keys). ARGV[1]: the operation. Times in ms, Redis's clock.
_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local op = ARGV[1]
local ttl = tonumber(ARGV[2])
local function keep(key) redis.call('PEXPIRE', key, ttl) end
if op == 'take' then
  local token, rate_n, live_n = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
  local hold, waiter = tonumber(ARGV[6]), tonumber(ARGV[7])
  local free, wait, why = 1000000000, 0, ''
  local function limit(key, n, name)
    if n <= 0 then return end
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    local f = n - redis.call('ZCARD', key)
    if f < free then free = f end
    if f <= 0 and why == '' then
      local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
      wait, why = tonumber(first[2]) - now, name
    end
  end
  local paused = tonumber(redis.call('HGET', KEYS[1], 'paused_until') or '0')
  if paused > now then free, wait, why = 0, paused - now, 'paused' end
  limit(KEYS[2], rate_n, 'rate')
  limit(KEYS[3], live_n, 'concurrent')
  local rank = 0
  if free <= 0 or redis.call('ZCARD', KEYS[4]) > 0 then
    if not redis.call('ZSCORE', KEYS[4], token) then
      redis.call('ZADD', KEYS[4], redis.call('HINCRBY', KEYS[1], 'seq', 1), token)
      keep(KEYS[1]); keep(KEYS[4])
    end
    redis.call('HSET', KEYS[5], token, now + waiter)
    keep(KEYS[5])
    rank = redis.call('ZRANK', KEYS[4], token)
    if free > 0 and rank >= free then
      -- Waiters ahead whose lease ran out (their worker died) give their place up.
      for _, other in ipairs(redis.call('ZRANGE', KEYS[4], 0, rank - 1)) do
        if tonumber(redis.call('HGET', KEYS[5], other) or '0') < now then
          redis.call('ZREM', KEYS[4], other); redis.call('HDEL', KEYS[5], other)
          rank = rank - 1
        end
      end
    end
    if free <= 0 or rank >= free then
      if why == '' then why = 'queue' end
      return {0, math.max(0, wait), rank, why}
    end
    redis.call('ZREM', KEYS[4], token); redis.call('HDEL', KEYS[5], token)
  end
  if rate_n > 0 then redis.call('ZADD', KEYS[2], now + hold, token); keep(KEYS[2]) end
  if live_n > 0 then redis.call('ZADD', KEYS[3], now + hold, token); keep(KEYS[3]) end
  return {1, 0, rank, ''}
elseif op == 'settle' then
  local token, rate, window, live, ring = ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7])
  if rate == 'sent' then redis.call('ZADD', KEYS[2], now + window, token); keep(KEYS[2])
  elseif rate == 'unsent' then redis.call('ZREM', KEYS[2], token) end
  if live == 'hold' then redis.call('ZADD', KEYS[3], now + ring, token); keep(KEYS[3])
  elseif live == 'release' then redis.call('ZREM', KEYS[3], token) end
  return 1
elseif op == 'cancel' then
  redis.call('ZREM', KEYS[4], ARGV[3]); redis.call('HDEL', KEYS[5], ARGV[3])
  return 1
elseif op == 'slow' then
  local until_ms = now + tonumber(ARGV[3])
  if until_ms > tonumber(redis.call('HGET', KEYS[1], 'paused_until') or '0') then
    redis.call('HSET', KEYS[1], 'paused_until', until_ms); keep(KEYS[1])
  end
  return 1
elseif op == 'view' then
  local paused = tonumber(redis.call('HGET', KEYS[1], 'paused_until') or '0')
  local ahead = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  return {redis.call('ZCOUNT', KEYS[2], '(' .. now, '+inf'), redis.call('ZCOUNT', KEYS[3], '(' .. now, '+inf'),
          redis.call('ZCARD', KEYS[4]), math.max(0, paused - now), tonumber(ahead[2] or now) - now}
end
return redis.error_reply('unknown limiter operation')
"""


def _ms(seconds: float) -> int:
    return max(0, math.ceil(seconds * 1000))


class RedisLimiter:
    """The fleet's limiter: every decision is one EVALSHA of `_SCRIPT` on the bus's Redis."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis
        self._script = redis.register_script(_SCRIPT)  # EVALSHA; reloads itself after a Redis restart

    def _run(self, server: str, *args: Any) -> Any:
        return self._script(keys=list(keys.rate_keys(server)), args=[args[0], KEY_TTL_MS, *args[1:]])

    def take(self, server: str, token: str, limits: Limits, hold: float) -> Verdict:
        granted, wait, rank, why = self._run(
            server, "take", token, limits.burst, limits.max_concurrent, _ms(hold + limits.window), _ms(WAITER_LEASE)
        )
        return Verdict(bool(granted), int(wait) / 1000, int(rank), why.decode() if isinstance(why, bytes) else why)

    def settle(self, server: str, token: str, rate: str = "", window: float = 0.0, live: str = "",
               ring: float = 0.0) -> None:  # fmt: skip
        self._run(server, "settle", token, rate, _ms(window), live, _ms(ring))

    def cancel(self, server: str, token: str) -> None:
        self._run(server, "cancel", token)

    def slow(self, server: str, seconds: float) -> None:
        self._run(server, "slow", _ms(seconds))

    def view(self, server: str, limits: Limits) -> dict[str, Any]:
        sent, live, waiting, paused, next_free = self._run(server, "view")
        return _view(limits, int(sent), int(live), int(waiting), int(paused) / 1000, int(next_free) / 1000)


class MemoryLimiter:
    """The same rules for embedded mode, in this process (one lock; time.monotonic)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._sent: dict[str, dict[str, float]] = {}
        self._live: dict[str, dict[str, float]] = {}
        self._queue: dict[str, dict[str, float]] = {}  # token → waiter lease (dicts keep arrival order)
        self._paused: dict[str, float] = {}

    def take(self, server: str, token: str, limits: Limits, hold: float) -> Verdict:
        with self._lock:
            now = self._clock()
            free, wait, why = 1 << 30, 0.0, ""
            paused = self._paused.get(server, 0.0)
            if paused > now:
                free, wait, why = 0, paused - now, "paused"
            for table, n, name in (
                (self._sent, limits.burst, "rate"),
                (self._live, limits.max_concurrent, "concurrent"),
            ):
                if n <= 0:
                    continue
                held = _prune(table.setdefault(server, {}), now)
                if n - len(held) < free:
                    free = n - len(held)
                if n <= len(held) and not why:
                    wait, why = min(held.values()) - now, name
            queue = self._queue.setdefault(server, {})
            rank = 0
            if free <= 0 or queue:
                queue[token] = now + WAITER_LEASE  # an existing waiter keeps its place
                order = list(queue)
                rank = order.index(token)
                if 0 < free <= rank:
                    for other in order[:rank]:
                        if queue[other] < now:
                            del queue[other]
                            rank -= 1
                if free <= 0 or rank >= free:
                    return Verdict(False, max(0.0, wait), rank, why or "queue")
                del queue[token]
            expiry = now + hold + limits.window
            if limits.burst:
                self._sent[server][token] = expiry
            if limits.max_concurrent:
                self._live[server][token] = expiry
            return Verdict(True, 0.0, rank)

    def settle(self, server: str, token: str, rate: str = "", window: float = 0.0, live: str = "",
               ring: float = 0.0) -> None:  # fmt: skip
        with self._lock:
            now = self._clock()
            for table, action, seconds, keep in ((self._sent, rate, window, "sent"), (self._live, live, ring, "hold")):
                held = table.setdefault(server, {})
                if action == keep:
                    held[token] = now + seconds
                elif action:
                    held.pop(token, None)

    def cancel(self, server: str, token: str) -> None:
        with self._lock:
            self._queue.get(server, {}).pop(token, None)

    def slow(self, server: str, seconds: float) -> None:
        with self._lock:
            self._paused[server] = max(self._paused.get(server, 0.0), self._clock() + seconds)

    def view(self, server: str, limits: Limits) -> dict[str, Any]:
        with self._lock:
            now = self._clock()
            sent = _prune(self._sent.get(server, {}), now)
            live = _prune(self._live.get(server, {}), now)
            next_free = (min(sent.values()) - now) if sent else 0.0
            paused = max(0.0, self._paused.get(server, 0.0) - now)
            return _view(limits, len(sent), len(live), len(self._queue.get(server, {})), paused, next_free)


def _prune(held: dict[str, float], now: float) -> dict[str, float]:
    for token in [t for t, expiry in held.items() if expiry <= now]:
        del held[token]
    return held


def _view(limits: Limits, sent: int, live: int, waiting: int, paused: float, next_free: float) -> dict[str, Any]:
    return {
        "cps": limits.cps,
        "max_concurrent": limits.max_concurrent,
        "window_s": round(limits.window, 3),
        "sent_in_window": sent,
        "in_flight": live,
        "waiting": waiting,
        "paused_s": round(paused, 3),
        "next_free_s": round(max(0.0, next_free), 3) if sent >= limits.burst > 0 else 0.0,
    }


class Slot:
    """One call's permits, from the grant to the call settling. Bookkeeping after the grant never
    raises: a Redis hiccup there must not turn a placed call into an error (the permits then expire
    on their own, which only ever slows the server down)."""

    def __init__(self, store: Store, server: str, token: str, limits: Limits, ring: float, sent: bool = False) -> None:
        self.store, self.server, self.token, self.limits, self.ring = store, server, token, limits, ring
        self._sent_done, self._live_done = sent, False

    def sent(self, reached: bool = True) -> None:
        """The originate is over: `reached` — the server got it (its answer is back, or it may have got
        it): the CPS window starts now; not reached (nothing left us): the CPS permit is freed."""
        if not self._sent_done:
            self._sent_done = True
            self._settle(rate="sent" if reached else "unsent", window=self.limits.window)

    def done(self, ringing: bool = False) -> None:
        """The call settled (`ringing=False`: the concurrent permit is freed), or the bus stopped
        following a call that may still ring (`ringing=True`: held for the ring window, then expires).
        A CPS permit never reported `sent` is freed: nothing left for the server."""
        if self._live_done:
            return
        self._live_done = True
        rate = "" if self._sent_done else "unsent"
        self._sent_done = True
        live = ("hold" if ringing else "release") if self.limits.max_concurrent else ""
        if rate or live:
            self._settle(rate=rate, live=live, ring=self.ring)

    def _settle(self, **kwargs: Any) -> None:
        try:
            self.store.settle(self.server, self.token, **kwargs)
        except Exception as exc:
            log.warning("ratelimit.settle_failed", server=self.server, error=type(exc).__name__)


class Limiter:
    """Waits for a server's slot inside the caller's deadline; the same loop over either store."""

    def __init__(self, store: Store, sleep: Callable[[float], None] = time.sleep) -> None:
        self.store = store
        self._sleep = sleep

    def acquire(self, server: str, options: dict[str, str], request_id: str, give_up_at: float,
                hold_until: float) -> Slot | None:  # fmt: skip
        """A Slot, None when the server has no limits, or RateLimited once `give_up_at` (monotonic)
        would pass before the next ask. `hold_until` (monotonic): when an unsettled permit expires."""
        limits = Limits.of(server, options)
        if not limits.active:
            return None
        token = f"{request_id}:{secrets.token_hex(4)}"  # each attempt of a request is a send of its own
        started = time.monotonic()
        poll = 0.002  # while the next free slot's time is unknown: 2 ms, doubling up to POLL_SECONDS
        for asks in itertools.count(1):
            verdict = self.store.take(server, token, limits, max(0.0, hold_until - time.monotonic()))
            if verdict.granted:
                if asks > 1:
                    log.info("ratelimit.waited", server=server, wait_ms=round((time.monotonic() - started) * 1000, 1))
                return Slot(self.store, server, token, limits, ring_window(options))
            pause = min(verdict.wait, POLL_SECONDS) if verdict.wait > 0 else poll
            poll = min(POLL_SECONDS, poll * 2)
            if time.monotonic() + pause >= give_up_at:
                self._give_up(server, token)
                raise _limited(server, limits, verdict, time.monotonic() - started)
            self._sleep(max(0.001, pause))
        raise AssertionError("unreachable: the loop returns or raises")

    def resume(self, server: str, options: dict[str, str], token: str) -> Slot | None:
        """The slot another process took for a call it placed and then died following (the adopting
        follower settles it): freed when the call settles, held for the ring window when it may still
        ring — not left to expire with the dead caller's deadline. None when the server has no limits
        (now) or the call took no slot."""
        limits = Limits.of(server, options)
        if not token or not limits.active:
            return None
        # Accepted before its follower died: the CPS window already runs; only the live permit is left.
        return Slot(self.store, server, token, limits, ring_window(options), sent=True)

    def slow(self, server: str, options: dict[str, str], retry_after: float) -> bool:
        """The server said "not now, retry after N s": pause its grants fleet-wide. False when the
        server has no limits (then the caller treats it as before: a failed attempt)."""
        if not Limits.of(server, options).active:
            return False
        self.store.slow(server, min(PAUSE_CAP, max(0.0, retry_after)))
        log.info("ratelimit.slowed", server=server, seconds=round(min(PAUSE_CAP, retry_after), 3))
        return True

    def view(self, server: str, options: dict[str, str]) -> dict[str, Any]:
        return self.store.view(server, Limits.of(server, options))

    def _give_up(self, server: str, token: str) -> None:
        try:
            self.store.cancel(server, token)
        except Exception as exc:
            log.warning("ratelimit.cancel_failed", server=server, error=type(exc).__name__)


def _limited(server: str, limits: Limits, verdict: Verdict, waited: float) -> RateLimited:
    why = {
        "paused": "the server asked the bus to slow down (Retry-After)",
        "concurrent": f"{limits.max_concurrent} calls already in flight",
    }.get(verdict.why, f"{verdict.position} calls ahead" if verdict.position else "every slot of the window taken")
    return RateLimited(
        f"rate limit of {server}: {limits.describe()}; no slot before the caller's deadline ({why}, waited "
        f"{waited:.1f} s): raise --timeout, or the limit with `ifbus add sip {server} … --opt cps=… --replace`",
        server=server,
        rate_limit=limits.describe(),
    )
