"""The HTTP transport: one keep-alive client per server, bounded answers, and the mapping of
transport failures onto outcome classes.

The mapping is the heart of "never a call placed twice": a failure before the request left us is
`Unreachable` (safe to retry anywhere); one after it left is `OutcomeUnknown` (the server may have
acted). Kamailio, OpenSIPS, Twilio, Vonage and FusionPBX adapters all go through here.

Bounds: httpx's timeouts apply to each socket operation, so a peer that trickles one byte a second
(headers or body) or streams an endless body would hold a worker forever and grow its memory. Every
request here has one overall deadline, enforced on each socket read by a wrapper around httpcore's
network backend, and its body is read with a size cap.
"""

from __future__ import annotations

import contextvars
import email.utils
import time
from collections.abc import Callable
from typing import Any

import httpcore
import httpx

from bus.errors import InvalidInput, OutcomeUnknown, Overloaded, Unreachable
from workers.adapters.base import Session

# An answer larger than this is not a management API talking: Twilio's and Vonage's call resources,
# Kamailio's dialog lists and FusionPBX's pages are a few KiB.
MAX_RESPONSE_BYTES = 1 << 20

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("ifbus_http_deadline", default=None)


class _DeadlineStream(httpcore.NetworkStream):
    """A socket whose every read and write is cut to the current request's overall deadline."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _bounded(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None) -> Any:
        return _DeadlineStream(
            self._stream.start_tls(ssl_context, server_hostname, _bounded(timeout, httpcore.ConnectTimeout))
        )

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self._backend = backend

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, **kwargs: Any) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._backend.connect_tcp(host, port, bounded, **kwargs))

    def connect_unix_socket(self, path: str, timeout: float | None = None, **kwargs: Any) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._backend.connect_unix_socket(path, bounded, **kwargs))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def _bounded(timeout: float | None, error: type[Exception]) -> float | None:
    deadline = _deadline.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("the request's overall deadline passed")
    return left if timeout is None else min(timeout, left)


def make_client(base_url: str, connect_timeout: float, read_timeout: float, **kwargs: Any) -> httpx.Client:
    """A keep-alive client; building one costs ~25 ms (SSL context), so sessions keep theirs."""
    timeout = httpx.Timeout(read_timeout, connect=connect_timeout, pool=connect_timeout)
    transport = httpx.HTTPTransport(verify=kwargs.pop("verify", True))
    pool = transport._pool  # httpcore>=1,<2: the backend is the documented seam of httpcore, not of httpx
    pool._network_backend = _DeadlineBackend(pool._network_backend)
    return httpx.Client(base_url=base_url, timeout=timeout, transport=transport, **kwargs)


class HttpSession(Session):
    """An HTTP server's session is its keep-alive client: opened on first use, closed by the pool."""

    def __init__(self, factory: Callable[[], httpx.Client]) -> None:
        self._factory = factory
        self._client: httpx.Client | None = None

    def open(self) -> None:
        self._client = self._factory()

    def alive(self) -> bool:
        return self._client is not None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    @property
    def client(self) -> httpx.Client:
        self.ensure()
        assert self._client is not None
        return self._client


def send(
    client: httpx.Client,
    server: str,
    method: str,
    url: str,
    *,
    deadline: float | None = None,
    max_bytes: int = MAX_RESPONSE_BYTES,
    **kwargs: Any,
) -> httpx.Response:
    """Send one request and read its whole (bounded) answer, by `deadline` (time.monotonic()).

    Without a deadline the request gets connect + read timeout in all. Raises Unreachable (nothing
    sent), Overloaded (429/503: the server did nothing) or OutcomeUnknown (sent, then no whole answer).
    """
    if deadline is None:
        deadline = time.monotonic() + (client.timeout.connect or 0) + (client.timeout.read or 0)
    token = _deadline.set(deadline)
    try:
        with client.stream(method, url, **kwargs) as response:
            body = _read_capped(response, max_bytes, server)
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol) as exc:
        where = _target(client, url)
        raise Unreachable(f"{server}: cannot connect to {where}: {_reason(exc)}", server=server) from None
    except httpx.TransportError as exc:
        raise OutcomeUnknown(
            f"{server}: no answer from {_target(client, url)} after the request was sent ({_reason(exc)})",
            server=server,
        ) from None
    finally:
        _deadline.reset(token)
    # The body is already decoded: drop the headers that describe the wire encoding.
    headers = [(k, v) for k, v in response.headers.raw if k.lower() not in _WIRE_HEADERS]
    answer = httpx.Response(response.status_code, headers=headers, content=body, request=response.request)
    if answer.status_code in (429, 503):
        raise Overloaded(
            f"{server}: overloaded (HTTP {answer.status_code})",
            retry_after=retry_after(answer),
            server=server,
        )
    return answer


_WIRE_HEADERS = frozenset({b"content-encoding", b"transfer-encoding", b"content-length"})


def _read_capped(response: httpx.Response, max_bytes: int, server: str) -> bytes:
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) > max_bytes:
            raise OutcomeUnknown(
                f"{server}: the answer from {response.request.url} exceeds {max_bytes} bytes; it was cut off",
                server=server,
            )
    return bytes(body)


def retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds, from either form RFC 9110 allows (delta-seconds or an HTTP date)."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _target(client: httpx.Client, url: str) -> str:
    """The URL a message names; built only when there is a message to write."""
    return str(client.base_url.join(url))


def _reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


# ---------------------------------------------------------------- where requests may go
# Options build URLs, so they decide where credentials are sent: one rule for every HTTP vendor.


def base_url_option(server: str, url: str, example: str, option: str = "base_url") -> str:
    """A vendor's API root from `--opt <option>=`: http(s), a host, no userinfo, query or fragment,
    and plain http only on loopback (anything else would send credentials in clear)."""
    from urllib.parse import urlsplit

    from bus.validate import show

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment or "@" in url:
        raise InvalidInput(f"{server}: option {option}={show(url)}: expected e.g. {example}")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise InvalidInput(
            f"{server}: option {option}={show(url)}: plain http would send credentials in clear; "
            "use https:// (http is accepted only for 127.0.0.1, ::1 and localhost)"
        )
    return url.rstrip("/")


def server_url(server: str, scheme: str, host: str, port: int | None) -> str:
    """The root URL of an on-LAN management API from `--host`/`--port`/`--opt scheme=`."""
    if scheme not in ("http", "https"):
        raise InvalidInput(f"{server}: option scheme={scheme!r}: expected http or https")
    bracketed = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"{scheme}://{bracketed}" + (f":{port}" if port else "")


def path_option(server: str, key: str, value: str) -> str:
    """A URL path from an option: a path only, so an option can never move a request (and its
    credentials) to another host: `--opt path=http://elsewhere/` or `//elsewhere/` is refused."""
    from bus.validate import show

    if (
        not value.startswith("/")
        or value.startswith("//")
        or any(c in value for c in "?#@\\")
        or any(c.isspace() or ord(c) < 0x20 for c in value)
    ):
        raise InvalidInput(f"{server}: option {key}={show(value)}: expected a URL path such as /RPC")
    return value


def is_loopback(host: str) -> bool:
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
