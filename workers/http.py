"""One HTTP client per server, and the mapping of transport failures onto outcome classes.

The mapping is the heart of "never a call placed twice": a failure before the request left us is
`Unreachable` (safe to retry anywhere); one after it left is `OutcomeUnknown` (the server may have
acted). Kamailio, OpenSIPS, Twilio and Vonage adapters all go through here.
"""

from __future__ import annotations

import email.utils
import time
from typing import Any

import httpx

from bus.errors import OutcomeUnknown, Overloaded, Unreachable


def make_client(base_url: str, connect_timeout: float, read_timeout: float, **kwargs: Any) -> httpx.Client:
    """A keep-alive client; building one costs ~25 ms (SSL context), so adapters keep theirs."""
    timeout = httpx.Timeout(read_timeout, connect=connect_timeout, pool=connect_timeout)
    return httpx.Client(base_url=base_url, timeout=timeout, **kwargs)


def send(client: httpx.Client, server: str, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """Send one request; raise Unreachable (nothing sent), Overloaded (429/503) or OutcomeUnknown."""
    target = f"{client.base_url.join(url)}"
    try:
        response = client.request(method, url, **kwargs)
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol) as exc:
        raise Unreachable(f"{server}: cannot connect to {target}: {_reason(exc)}", server=server) from None
    except httpx.TransportError as exc:
        raise OutcomeUnknown(
            f"{server}: no answer from {target} after the request was sent ({_reason(exc)})", server=server
        ) from None
    if response.status_code in (429, 503):
        raise Overloaded(
            f"{server}: overloaded (HTTP {response.status_code})",
            retry_after=retry_after(response),
            server=server,
        )
    return response


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


def _reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__
