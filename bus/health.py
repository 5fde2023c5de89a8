"""Per-server health shared by every worker: a circuit breaker per server, kept in Redis.

Modelled on Kamailio's dispatcher (active / inactive / probing): consecutive failed attempts open
a server's breaker; while open, every worker on every host skips it until its cool-down ends; then
exactly one job gets a trial (half-open) while the others keep skipping it; a success closes it.
Workers also probe open servers (the `test` operation), so a server comes back without waiting
for traffic. Embedded mode has no Redis, so it uses the same logic on a per-process dict.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from bus import keys

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


@dataclass(frozen=True)
class Health:
    state: str = CLOSED
    failures: int = 0  # consecutive failed attempts
    opened_at: float = 0.0  # wall clock, so every host agrees
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class HealthStore(Protocol):
    def get(self, server: str) -> Health: ...

    def allow(self, server: str, cooldown: float) -> bool:
        """Closed: yes. Open within its cool-down: no. Open past it: yes for exactly one caller."""

    def success(self, server: str, pipe: Any = None) -> None:
        """Close the breaker; with `pipe`, as commands queued on a caller's Redis pipeline."""

    def failure(self, server: str, reason: str, threshold: int, cooldown: float, force_open: bool = False) -> Health:
        """Count a failed attempt; open the breaker at `threshold` in a row (at once when forced)."""


def effective(health: Health, cooldown: float, now: float | None = None) -> str:
    """The state a reader should show: open past its cool-down is half-open (a trial is due)."""
    if health.state == OPEN and (now or time.time()) - health.opened_at >= cooldown:
        return HALF_OPEN
    return health.state


class RedisHealth:
    """Hash bus.keys.health(server) {state, failures, opened_at, reason}; trial lock bus.keys.health_trial."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis

    @staticmethod
    def key(server: str) -> str:
        return keys.health(server)

    def get(self, server: str) -> Health:
        return _parse(self.redis.hgetall(self.key(server)))

    def get_many(self, servers: list[str]) -> dict[str, Health]:
        pipe = self.redis.pipeline(transaction=False)
        for server in servers:
            pipe.hgetall(self.key(server))
        return {server: _parse(raw) for server, raw in zip(servers, pipe.execute(), strict=True)}

    def allow(self, server: str, cooldown: float) -> bool:
        health = self.get(server)
        if health.state != OPEN:
            return True
        if time.time() - health.opened_at < cooldown:
            return False
        # One trial per cool-down period, whichever worker gets there first.
        return bool(self.redis.set(keys.health_trial(server), "1", nx=True, px=max(1, int(cooldown * 1000))))

    def success(self, server: str, pipe: Any = None) -> None:
        own = pipe is None
        pipe = self.redis.pipeline() if own else pipe
        pipe.hset(self.key(server), mapping={"state": CLOSED, "failures": 0, "opened_at": 0, "reason": ""})
        pipe.delete(keys.health_trial(server))
        if own:
            pipe.execute()

    def failure(self, server: str, reason: str, threshold: int, cooldown: float, force_open: bool = False) -> Health:
        key = self.key(server)
        failures = int(self.redis.hincrby(key, "failures", 1))
        if force_open or failures >= threshold:
            pipe = self.redis.pipeline()
            pipe.hset(key, mapping={"state": OPEN, "opened_at": time.time(), "reason": reason[:300]})
            pipe.delete(keys.health_trial(server))  # a failed trial starts a new cool-down
            pipe.execute()
        else:
            self.redis.hset(key, "reason", reason[:300])
        return self.get(server)


def _parse(raw: dict[bytes, bytes]) -> Health:
    text = {k.decode(): v.decode() for k, v in raw.items()}
    return Health(
        state=text.get("state", CLOSED),
        failures=int(text.get("failures", 0)),
        opened_at=float(text.get("opened_at", 0)),
        reason=text.get("reason", ""),
    )


class MemoryHealth:
    """The same breaker for embedded mode, in this process only."""

    def __init__(self) -> None:
        self._health: dict[str, Health] = {}
        self._trials: dict[str, float] = {}

    def get(self, server: str) -> Health:
        return self._health.get(server, Health())

    def allow(self, server: str, cooldown: float) -> bool:
        health = self.get(server)
        now = time.time()
        if health.state != OPEN:
            return True
        if now - health.opened_at < cooldown or self._trials.get(server, 0) > now:
            return False
        self._trials[server] = now + cooldown
        return True

    def success(self, server: str, pipe: Any = None) -> None:
        self._health[server] = Health()
        self._trials.pop(server, None)

    def failure(self, server: str, reason: str, threshold: int, cooldown: float, force_open: bool = False) -> Health:
        old = self.get(server)
        failures = old.failures + 1
        if force_open or failures >= threshold:
            new = Health(OPEN, failures, time.time(), reason[:300])
            self._trials.pop(server, None)
        else:
            new = Health(old.state, failures, old.opened_at, reason[:300])
        self._health[server] = new
        return new


def shared_views(redis_url: str, entries: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What `list` shows of each server's shared breaker (state past its cool-down is half-open)."""
    from redis.exceptions import RedisError

    from bus.errors import Unreachable
    from bus.redis_conn import from_url, safe_url

    try:
        states = RedisHealth(from_url(redis_url, socket_connect_timeout=0.5)).get_many(list(entries))
    except (RedisError, OSError) as exc:
        raise Unreachable(f"Redis at {safe_url(redis_url)}: {exc}") from None
    return {
        name: {**h.as_dict(), "state": effective(h, float(entries[name].effective_options["breaker_cooldown"]))}
        for name, h in states.items()
    }
