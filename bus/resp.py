"""A small Redis client over the standard library, for the CLI's queue-mode submit (producer.light).

Why not redis-py there: `import redis` (8.x) loads asyncio, ssl, its cluster and observability code
and importlib.metadata — ~110 ms of `python -X importtime`, ~11x a bare `python -c pass` on its own,
more than the whole budget of an `ifbus test` process (issue 16: <= 10x). A submit needs a dozen
commands on one connection; this speaks RESP2 for them and offers the redis-py method names that
bus.ledger.RedisLedger and producer.waiting call (`set`, `get`, `delete`, `blpop`, `lpop`,
`smembers`, `register_script`, `pipeline`), so the bus's rules about those keys stay in one place.

Only what producer.light hands it: `redis://` and `unix://` URLs without query options; TLS,
Sentinel and the rest stay with redis-py (bus.redis_conn). Every failure is an OSError: the
connection's own, or RespError for an error reply. After a failure the connection is dropped and the
next command opens a new one, as redis-py does.
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit


class RespError(OSError):
    """Redis answered with an error reply (`-ERR …`, `-NOSCRIPT …`)."""


@dataclass(frozen=True)
class Address:
    """Where a `redis://` or `unix://` URL leads, with its credentials and database."""

    host: str = "127.0.0.1"
    port: int = 6379
    path: str | None = None  # a unix socket
    username: str | None = None
    password: str | None = None
    db: int = 0


def address(url: str) -> Address | None:
    """The URL's address, or None for any form this client leaves to redis-py (TLS, Sentinel, query
    options, an unusual path): the caller then takes redis-py's path, which also words the errors."""
    try:
        parts = urlsplit(url)
        if parts.query or parts.fragment:
            return None
        user = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password else None
        if parts.scheme == "unix":
            return Address(path=unquote(parts.path), username=user, password=password) if parts.path else None
        if parts.scheme != "redis":
            return None
        db_text = parts.path.strip("/")
        if db_text and not db_text.isdigit():
            return None
        return Address(parts.hostname or "127.0.0.1", parts.port or 6379, None, user, password, int(db_text or 0))
    except ValueError:  # a port that is not a number, out of range
        return None


def _encode(arg: Any) -> bytes:
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, str):
        return arg.encode()
    if isinstance(arg, int | float) and not isinstance(arg, bool):
        return repr(arg).encode()  # redis-py's encoding of numbers
    raise TypeError(f"cannot send {type(arg).__name__} to Redis")


def pack(*args: Any) -> bytes:
    """One command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = _encode(arg)
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class Connection:
    """One socket to Redis; opened on first use and again after a failure."""

    def __init__(self, where: Address, connect_timeout: float, read_timeout: float | None) -> None:
        self.where = where
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._sock: socket.socket | None = None
        self._file: Any = None

    def _open(self) -> None:
        where = self.where
        if where.path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.connect_timeout)
            try:
                sock.connect(where.path)
            except OSError:
                sock.close()
                raise
        else:
            sock = socket.create_connection((where.host, where.port), timeout=self.connect_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock, self._file = sock, sock.makefile("rb")
        hello: list[tuple[Any, ...]] = []
        if where.password is not None:
            hello.append(("AUTH", where.username, where.password) if where.username else ("AUTH", where.password))
        if where.db:
            hello.append(("SELECT", where.db))
        for reply in self._roundtrip(hello, self.connect_timeout) if hello else ():
            _raise(reply)  # a wrong password or database: redis-py's path words it
        sock.settimeout(self.read_timeout)

    def close(self) -> None:
        if self._sock is not None:
            self._file.close()
            self._sock.close()
        self._sock = self._file = None

    def run(self, commands: Sequence[tuple[Any, ...]], timeout: float | None = None) -> list[Any]:
        """Send the commands in one write and read one reply each (a RespError reply is returned, not
        raised, so a transaction's replies can be read to the end)."""
        try:
            if self._sock is None:
                self._open()
            return self._roundtrip(commands, timeout)
        except BaseException:
            self.close()
            raise

    def _roundtrip(self, commands: Sequence[tuple[Any, ...]], timeout: float | None) -> list[Any]:
        assert self._sock is not None
        if timeout is not None:
            self._sock.settimeout(timeout)
        self._sock.sendall(b"".join(pack(*c) for c in commands))
        replies = [self._read() for _ in commands]
        if timeout is not None:
            self._sock.settimeout(self.read_timeout)
        return replies

    def _read(self) -> Any:
        line = self._file.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("Redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest
        if kind == b"-":
            return RespError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self._file.read(size + 2)
            if len(data) != size + 2:
                raise ConnectionError("Redis closed the connection")
            return data[:-2]
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self._read() for _ in range(count)]
        raise ConnectionError(f"not a Redis reply: {line[:40]!r}")


def _raise(reply: Any) -> Any:
    if isinstance(reply, RespError):
        raise reply
    return reply


class Client:
    """The redis-py method names the bus's submit path calls, on one Connection."""

    def __init__(self, where: Address, connect_timeout: float, read_timeout: float | None = None) -> None:
        self.connection = Connection(where, connect_timeout, read_timeout)

    def execute_command(self, *args: Any, timeout: float | None = None) -> Any:
        (reply,) = self.connection.run([args], timeout)
        return _raise(reply)

    def ping(self) -> bool:
        return self.execute_command("PING") == b"PONG"

    def set(self, key: str, value: Any, ex: int | None = None, px: int | None = None, nx: bool = False,
            xx: bool = False) -> bool | None:  # fmt: skip
        args: list[Any] = ["SET", key, value]
        args += ["EX", ex] if ex is not None else []
        args += ["PX", px] if px is not None else []
        args += ["NX"] if nx else []
        args += ["XX"] if xx else []
        return True if self.execute_command(*args) == b"OK" else None

    def get(self, key: str) -> bytes | None:
        return self.execute_command("GET", key)

    def delete(self, *names: str) -> int:
        return self.execute_command("DEL", *names)

    def lpop(self, key: str) -> bytes | None:
        return self.execute_command("LPOP", key)

    def smembers(self, key: str) -> set[bytes]:
        return set(self.execute_command("SMEMBERS", key))

    def blpop(self, keys: Sequence[str], timeout: float = 0) -> tuple[bytes, bytes] | None:
        """As redis-py's; the socket waits the blocking time plus the connect bound for the reply."""
        reply = self.execute_command("BLPOP", *keys, timeout, timeout=timeout + self.connection.connect_timeout)
        return None if reply is None else (reply[0], reply[1])

    def register_script(self, source: str) -> Script:
        return Script(self, source)

    def pipeline(self, transaction: bool = True) -> Pipeline:
        return Pipeline(self, transaction)

    def close(self) -> None:
        self.connection.close()


class Script:
    """EVALSHA, falling back to EVAL the first time a Redis does not know the script (as redis-py)."""

    def __init__(self, client: Client, source: str) -> None:
        self.client, self.source = client, source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        try:
            return self.client.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)
        except RespError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return self.client.execute_command("EVAL", self.source, len(keys), *keys, *args)


class Pipeline:
    """Commands queued and sent in one round trip (inside MULTI/EXEC when `transaction`)."""

    def __init__(self, client: Client, transaction: bool) -> None:
        self.client, self.transaction = client, transaction
        self.commands: list[tuple[Any, ...]] = []

    def __getattr__(self, name: str) -> Any:
        """`pipe.sadd(key, member)` queues `SADD key member` (the commands the callers use)."""
        if name.startswith("_"):
            raise AttributeError(name)

        def queue(*args: Any) -> Pipeline:
            self.commands.append((name.upper(), *args))
            return self

        return queue

    def hset(self, key: str, mapping: dict[str, Any]) -> Pipeline:
        self.commands.append(("HSET", key, *(x for pair in mapping.items() for x in pair)))
        return self

    def execute(self) -> list[Any]:
        commands, self.commands = self.commands, []
        if not self.transaction:
            return [_raise(r) for r in self.client.connection.run(commands)]
        replies = self.client.connection.run([("MULTI",), *commands, ("EXEC",)])
        for reply in replies[:-1]:
            _raise(reply)  # a command Redis refused to queue
        return [_raise(r) for r in _raise(replies[-1]) or []]
