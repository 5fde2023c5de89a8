"""Connecting to the bus's Redis, with every failure in an outcome class and a message that says
what was tried (never "internal error", never a password).

The producer, the worker command (RQ's workers included), `ifbus job`, `ifbus status` and the Redis
registry all connect here, so each accepts the same URLs:

- `redis://[[user]:password@]host[:port][/db]` and `unix:///path?db=N`: redis-py's own parser;
- `rediss://…` with redis-py's TLS query options (`ssl_ca_certs=`, `ssl_certfile=`, `ssl_keyfile=`,
  `ssl_cert_reqs=required|optional|none`, `ssl_check_hostname=true|false`);
- `redis+sentinel://[[user]:password@]host:port[,host:port…]/service_name[/db]`: the master of
  `service_name` as the sentinels name it, through redis-py's `Sentinel` (the password is the
  master's; `?sentinel_password=` when the sentinels themselves want one);
- `@/path/to/file`: the URL is read from that file (a systemd credential, a Kubernetes secret volume),
  so a URL with a password need not sit in the environment or a unit file.

Why bounded probes: redis-py's defaults are no read timeout and three retries with back-off, so a
`rediss://` URL pointed at a plain Redis waits forever in the TLS handshake (both sides wait for the
other) and a refused port takes seconds. `connect` first pings with every socket operation bounded by
the command's own timeout (`limit`, set from `--timeout`) and no retries; only then does the caller get
the client it asked for (possibly with blocking reads, for BLPOP).
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from bus.errors import InvalidInput, Unreachable

#: Longest wait for one socket operation while proving a Redis answers, unless `limit` says less.
DEFAULT_PROBE_SECONDS = 5.0
SENTINEL_SCHEMES = ("redis+sentinel", "sentinel")
SENTINEL_QUERY = frozenset({"sentinel_password", "sentinel_username"})
MAX_URL_FILE = 4096
FORMS = (
    "redis://[user:password@]host:port/db, rediss://…?ssl_ca_certs=/path, "
    "redis+sentinel://[:password@]host:port[,host:port…]/service_name[/db], unix:///path, or @/file/holding/the/url"
)

_limit = threading.local()


def limit(seconds: float | None) -> None:
    """Bound this thread's Redis probes by a command's `--timeout` (None: the default)."""
    _limit.seconds = seconds


def probe_seconds() -> float:
    return min(DEFAULT_PROBE_SECONDS, getattr(_limit, "seconds", None) or DEFAULT_PROBE_SECONDS)


def safe_url(url: str) -> str:
    """A Redis URL with any password masked, for messages."""
    from bus.secrets import redact_text

    return redact_text(url)


@dataclass(frozen=True)
class Target:
    """A parsed URL: where it leads, said without secrets, and how to build a client for it."""

    url: str  # as given, for redis-py's own parser (a file's content when given as @file)
    shown: str  # the URL as a message may show it (password masked)
    kind: str  # what was tried: plain TCP, TLS, a unix socket, or a master through sentinels
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_kwargs: dict[str, Any] = field(default_factory=dict)


def parse(url: str) -> Target:
    """The URL's target; a URL no form accepts is bad input (exit 2) naming the accepted forms."""
    if url.startswith("@"):
        url = _read_url_file(url[1:])
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in SENTINEL_SCHEMES:
        return _parse_sentinel(url)
    if scheme not in ("redis", "rediss", "unix"):
        raise InvalidInput(f"Redis URL {safe_url(url)} is not usable (unknown scheme {scheme or 'none'!r}): "
                           f"expected {FORMS}")  # fmt: skip
    kind = "TLS" if scheme == "rediss" else "unix socket" if scheme == "unix" else "plain TCP"
    return Target(url, safe_url(url), kind)


def _read_url_file(path_text: str) -> str:
    path = Path(path_text).expanduser()
    try:
        data = path.read_bytes()[: MAX_URL_FILE + 1]
    except OSError as exc:
        raise InvalidInput(f"Redis URL file {path_text!r}: cannot read it ({exc.strerror or exc})") from None
    text = data.decode("utf-8", "replace").strip()
    if len(data) > MAX_URL_FILE or not text or "\n" in text:
        raise InvalidInput(f"Redis URL file {path_text!r}: expected one line holding a URL ({FORMS})")
    return text


def _parse_sentinel(url: str) -> Target:
    parts = urlsplit(url)
    netloc = parts.netloc
    userinfo, _, hosts = netloc.rpartition("@")
    username, password = None, None
    if userinfo:
        user, _, pw = userinfo.partition(":")
        username, password = unquote(user) or None, unquote(pw) or None
    sentinels = tuple(_host_port(item, url) for item in hosts.split(",") if item)
    path = [unquote(p) for p in parts.path.split("/") if p]
    if not sentinels or not path or len(path) > 2:
        raise InvalidInput(f"Redis URL {safe_url(url)} is not usable: expected {FORMS}")
    db = 0
    if len(path) == 2:
        if not path[1].isdigit():
            raise InvalidInput(f"Redis URL {safe_url(url)}: the database after the service name must be a number")
        db = int(path[1])
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(query) - SENTINEL_QUERY)
    if unknown:
        raise InvalidInput(f"Redis URL {safe_url(url)}: unknown option {unknown[0]!r} "
                           f"(accepted: {', '.join(sorted(SENTINEL_QUERY))})")  # fmt: skip
    sentinel_kwargs = {k.removeprefix("sentinel_"): v for k, v in query.items() if v}
    where = ",".join(f"{h}:{p}" for h, p in sentinels)
    kind = f"master {path[0]!r} from sentinels {where}"
    return Target(url, safe_url(url), kind, sentinels, path[0], db, username, password, sentinel_kwargs)


def _host_port(item: str, url: str) -> tuple[str, int]:
    host, sep, port = item.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise InvalidInput(f"Redis URL {safe_url(url)}: {item!r} is not host:port (every sentinel needs its port)")
    return host.strip("[]"), int(port)


def from_url(url: str, **kwargs: Any) -> Any:
    """A client for `url` (no round trip yet); a URL no form accepts is bad input (exit 2), not a crash."""
    return _client(parse(url), **kwargs)


def _client(target: Target, **kwargs: Any) -> Any:
    from redis import Redis

    if target.sentinels:
        from redis.sentinel import Sentinel

        # The sentinels are asked with bounded reads always: a sentinel that accepts and never answers
        # must not hold a command that wanted blocking reads only from the master (BLPOP).
        bound = kwargs.get("socket_timeout") or probe_seconds()
        own = {"socket_timeout": bound, "socket_connect_timeout": kwargs.get("socket_connect_timeout") or bound}
        if "retry" in kwargs:
            own["retry"] = kwargs["retry"]
        sentinel = Sentinel(list(target.sentinels), sentinel_kwargs={**own, **target.sentinel_kwargs})
        return sentinel.master_for(target.service, redis_class=Redis, db=target.db, username=target.username,
                                   password=target.password, connection_class=_sentinel_connection(),
                                   **kwargs)  # fmt: skip
    try:
        return Redis.from_url(target.url, **kwargs)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"Redis URL {target.shown} is not usable ({exc}): expected {FORMS}") from None


@functools.cache
def _sentinel_connection() -> type:
    """redis-py's Sentinel connection, closing itself when a read is interrupted.

    redis-py 8's `SentinelManagedConnection.read_response` defaults `disconnect_on_error=False`, unlike
    its plain `Connection`: when RQ's SIGTERM handler raises out of a worker's BLPOP, the connection goes
    back to the pool with the BLPOP still pending, and the worker's next command (unregistering itself)
    waits behind it for the whole dequeue timeout. A plain URL stops in ~1 s; this makes Sentinel do too.
    """
    from redis.sentinel import SentinelManagedConnection

    class ClosingSentinelConnection(SentinelManagedConnection):
        def read_response(self, *args: Any, disconnect_on_error: bool = True, **kwargs: Any) -> Any:
            return super().read_response(*args, disconnect_on_error=disconnect_on_error, **kwargs)

    return ClosingSentinelConnection


def connect(url: str, why: str = "", **kwargs: Any) -> Any:
    """A client for `url` that has answered a PING within the probe bound; refused, timed out, wrong
    password, no TLS where TLS was asked (or the reverse), no master known → Unreachable (exit 4),
    saying what was tried."""
    from redis.backoff import NoBackoff
    from redis.exceptions import RedisError
    from redis.retry import Retry

    target = parse(url)
    bound = probe_seconds()
    probe = _client(target, socket_connect_timeout=bound, socket_timeout=bound, retry=Retry(NoBackoff(), 0))
    try:
        probe.ping()
    except (RedisError, OSError) as exc:
        raise Unreachable(
            f"Redis at {target.shown} is not reachable{f' ({why})' if why else ''}: tried {target.kind}: "
            f"{_reason(exc)}; "
            "start Redis, fix IFBUS_REDIS_URL, or set IFBUS_MODE=inline",
            redis=safe_url(target.url),
        ) from None
    finally:
        probe.close()
    kwargs.setdefault("socket_connect_timeout", bound)
    return _client(target, **kwargs)


def _reason(exc: BaseException) -> str:
    """What went wrong, in words an operator acts on (redis-py's texts are terse or empty)."""
    from redis.exceptions import AuthenticationError, ResponseError, TimeoutError
    from redis.sentinel import MasterNotFoundError

    text = str(exc) or type(exc).__name__
    lowered = text.lower()
    if isinstance(exc, MasterNotFoundError):  # redis-py's text carries a client's repr: say it in words
        if " - " in text:
            return f"no sentinel answered ({text.rsplit(' - ', 1)[1]})"
        return "the sentinels name no such master (check the service name, or the sentinel's `monitor` line)"
    if isinstance(exc, AuthenticationError) or any(w in lowered for w in ("noauth", "wrongpass", "invalid password")):
        return f"the password was refused or is missing ({text})"
    if isinstance(exc, TimeoutError) or "timed out" in lowered:
        return f"no answer within {probe_seconds():g} s ({text}; a TLS URL at a plain Redis, or the reverse, looks so)"
    if "ssl" in lowered or "tls" in lowered or "wrong version number" in lowered:
        return f"TLS failed ({text})"
    if isinstance(exc, ResponseError):
        return f"Redis refused the handshake ({text})"
    return text
