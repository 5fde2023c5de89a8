"""Connecting to the bus's Redis, with every failure in an outcome class and a message that says
what was tried (never "internal error", never a password).

The producer, the worker command and `ifbus job` all connect here.
"""

from __future__ import annotations

from typing import Any

from bus.errors import InvalidInput, Unreachable


def safe_url(url: str) -> str:
    """A Redis URL with any password masked, for messages."""
    from bus.logging import redact

    return redact(url)


def from_url(url: str, **kwargs: Any) -> Any:
    """A client for `url`; a URL redis-py cannot use is bad input (exit 2), not a crash."""
    from redis import Redis

    try:
        return Redis.from_url(url, **kwargs)
    except ValueError as exc:
        raise InvalidInput(
            f"Redis URL {safe_url(url)} is not usable ({exc}): expected redis://[user:password@]host:port/db, "
            "rediss://… or unix:///path"
        ) from None


def connect(url: str, why: str = "", **kwargs: Any) -> Any:
    """A client for `url` that has answered a PING; refused, timed out, wrong password → Unreachable."""
    from redis.exceptions import RedisError

    client = from_url(url, **kwargs)
    try:
        client.ping()
    except (RedisError, OSError) as exc:
        raise Unreachable(
            f"Redis at {safe_url(url)} is not reachable{f' ({why})' if why else ''}: {exc or type(exc).__name__}; "
            "start Redis, fix IFBUS_REDIS_URL, or set IFBUS_MODE=inline"
        ) from None
    return client
