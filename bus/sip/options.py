"""A small SIP client: send one OPTIONS over UDP, TCP or TLS and report the final response.

- UDP retransmits per RFC 3261 §17.1.2.2 (non-INVITE client transaction): Timer E starts at
  T1 = 500 ms and doubles up to T2 = 4 s; after a provisional (1xx) answer it retransmits every T2.
  The transaction gives up at the caller's `timeout` (RFC Timer F, 64·T1 = 32 s, is longer than any
  command timeout here). ICMP "port unreachable" does not end it: ICMP is lossy and spoofable, and a
  server that is restarting starts answering moments later; the count is reported.
- TCP/TLS send once (the transport is reliable) and frame replies by Content-Length.
- A reply counts only when its top Via branch, Call-ID and CSeq (1 OPTIONS) are ours (§17.1.3);
  1xx is noted and waited past; stray or malformed datagrams are ignored and counted.
- No answer → `bus.errors.Unreachable` naming the target, transport, transmissions and time spent.

Standard library only: a few hundred bytes each way need no SIP stack, and this keeps `import`
cheap for the CLI. Measured against a raw socket by bench/options_probe.py.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

from bus.errors import InvalidInput, Unreachable
from bus.sip.message import SipParseError, SipResponse, parse_response, take_message
from bus.sip.uri import SIP_PORT, SIPS_PORT

T1 = 0.5  # RFC 3261 §17.1.1.1: RTT estimate
T2 = 4.0  # RFC 3261 §17.1.2.2: maximum retransmit interval for non-INVITE requests
USER_AGENT = "ifbus-sip"
TRANSPORTS = ("udp", "tcp", "tls")
DEFAULT_PORTS = {"udp": SIP_PORT, "tcp": SIP_PORT, "tls": SIPS_PORT}


@dataclass(frozen=True)
class OptionsResult:
    """The final response to one OPTIONS."""

    code: int
    reason: str
    server: str | None
    user_agent: str | None
    allow: tuple[str, ...]
    supported: tuple[str, ...]
    rtt_ms: float  # first transmission → final response
    transport: str
    target: str  # "host:port"
    headers: tuple[tuple[str, str], ...] = field(repr=False)
    transmissions: int = 1
    provisional: tuple[int, ...] = ()  # 1xx codes seen before the final response

    @property
    def banner(self) -> str | None:
        """What identifies the software: `Server`, else `User-Agent` (FreeSWITCH answers with the latter)."""
        return self.server or self.user_agent

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "reason": self.reason,
            "server": self.server,
            "user_agent": self.user_agent,
            "allow": list(self.allow),
            "supported": list(self.supported),
            "rtt_ms": round(self.rtt_ms, 3),
            "transport": self.transport,
            "target": self.target,
            "transmissions": self.transmissions,
        }


@dataclass
class _Tx:
    """The identifiers a reply must echo, and the request bytes."""

    branch: str
    call_id: str
    data: bytes


def build_options(
    host: str,
    port: int,
    transport: str,
    local: tuple[str, int],
    *,
    user_agent: str = USER_AGENT,
) -> tuple[bytes, str, str]:
    """The OPTIONS bytes, its Via branch and Call-ID (fresh random ids, RFC 3261 §8.1.1)."""
    branch = "z9hG4bK" + os.urandom(8).hex()  # the magic cookie marks an RFC 3261 branch (§8.1.1.7)
    tag = os.urandom(4).hex()
    local_host = _uri_host(local[0])
    call_id = f"{os.urandom(8).hex()}@{local_host}"
    target = f"{_uri_host(host)}:{port}"
    scheme = "sips" if transport == "tls" else "sip"
    uri_params = ";transport=tcp" if transport == "tcp" else ""
    via = f"SIP/2.0/{transport.upper()} {local_host}:{local[1]};branch={branch};rport"
    lines = [
        f"OPTIONS {scheme}:{target}{uri_params} SIP/2.0",
        f"Via: {via}",
        "Max-Forwards: 70",
        f"From: <{scheme}:probe@{local_host}>;tag={tag}",
        f"To: <{scheme}:{target}>",
        f"Call-ID: {call_id}",
        "CSeq: 1 OPTIONS",
        f"Contact: <{scheme}:probe@{local_host}:{local[1]}{uri_params}>",
        "Accept: application/sdp",
        f"User-Agent: {user_agent}",
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines).encode(), branch, call_id


def options(
    host: str,
    port: int | None = None,
    *,
    transport: str = "udp",
    timeout: float = 2.0,
    t1: float = T1,
    t2: float = T2,
    ssl_context: ssl.SSLContext | None = None,
    user_agent: str = USER_AGENT,
) -> OptionsResult:
    """Send OPTIONS to host:port and return the final response; Unreachable when none comes in time."""
    transport = transport.lower()
    if transport not in TRANSPORTS:
        raise InvalidInput(f"transport {transport!r}: expected one of {', '.join(TRANSPORTS)}")
    if not timeout > 0 or not 0 < t1 <= t2:
        raise InvalidInput("timeout, t1 and t2 must be positive and t1 ≤ t2")
    port = port or DEFAULT_PORTS[transport]
    if not 0 < port < 65536:
        raise InvalidInput(f"port {port}: expected 1-65535")
    deadline = time.monotonic() + timeout
    address = _resolve(host, port, transport)
    if transport == "udp":
        return _udp(host, port, address, deadline, timeout, t1, t2, user_agent)
    return _stream(host, port, address, transport, deadline, timeout, ssl_context, user_agent)


# ---------------------------------------------------------------- UDP


def _udp(
    host: str,
    port: int,
    address: tuple[int, Any],
    deadline: float,
    timeout: float,
    t1: float,
    t2: float,
    user_agent: str,
) -> OptionsResult:
    family, sockaddr = address
    target = _target(host, port)
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(sockaddr)  # only this peer's datagrams; ICMP errors surface on recv
        except OSError as exc:
            raise Unreachable(f"SIP OPTIONS to {target} over udp: {exc.strerror or exc}", target=target) from None
        data, branch, call_id = build_options(host, port, "udp", sock.getsockname()[:2], user_agent=user_agent)
        tx = _Tx(branch, call_id, data)
        started = time.monotonic()
        sent = refused = ignored = 0
        provisional: list[int] = []
        interval = t1
        next_send = started
        while True:
            now = time.monotonic()
            if now >= deadline:
                break
            if now >= next_send:
                try:
                    sock.send(tx.data)
                    sent += 1
                except ConnectionRefusedError:  # a pending ICMP error from the previous datagram
                    refused += 1
                    with contextlib.suppress(OSError):
                        sock.send(tx.data)
                        sent += 1
                except OSError as exc:
                    raise Unreachable(
                        f"SIP OPTIONS to {target} over udp: {exc.strerror or exc}", target=target, transport="udp"
                    ) from None
                next_send = now + interval
                interval = t2 if provisional else min(interval * 2, t2)
            sock.settimeout(max(0.0, min(next_send, deadline) - time.monotonic()))
            try:
                datagram = sock.recv(65_535)
            except TimeoutError:
                continue
            except ConnectionRefusedError:
                refused += 1
                continue
            except OSError:
                continue
            response = _match(datagram, tx)
            if response is None:
                ignored += 1
                continue
            if response.code < 200:
                if not provisional:  # §17.1.2.2: Proceeding state, retransmit every T2
                    next_send = time.monotonic() + t2
                    interval = t2
                provisional.append(response.code)
                continue
            return _result(response, started, "udp", target, sent, provisional)
    elapsed = time.monotonic() - started
    details = [f"{sent} transmission{'s' if sent != 1 else ''} over {elapsed:.1f} s"]
    if refused:
        details.append(f"{refused} ICMP port-unreachable")
    if provisional:
        details.append(f"only provisional {', '.join(map(str, sorted(set(provisional))))}")
    if ignored:
        details.append(f"{ignored} unmatched or malformed datagram{'s' if ignored != 1 else ''} ignored")
    raise Unreachable(
        f"no SIP answer from {target} over udp ({'; '.join(details)}; timeout {timeout:g} s)",
        target=target,
        transport="udp",
        transmissions=sent,
        elapsed_ms=round(elapsed * 1000, 1),
        icmp_refused=refused or None,
        ignored=ignored or None,
    )


# ---------------------------------------------------------------- TCP / TLS


def _stream(
    host: str,
    port: int,
    address: tuple[int, Any],
    transport: str,
    deadline: float,
    timeout: float,
    ssl_context: ssl.SSLContext | None,
    user_agent: str,
) -> OptionsResult:
    family, sockaddr = address
    target = _target(host, port)
    started = time.monotonic()

    def unreachable(why: str) -> Unreachable:
        elapsed = time.monotonic() - started
        return Unreachable(
            f"no SIP answer from {target} over {transport}: {why} (after {elapsed:.1f} s, timeout {timeout:g} s)",
            target=target,
            transport=transport,
            transmissions=sent,
            elapsed_ms=round(elapsed * 1000, 1),
        )

    sent = 0
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            sock.connect(sockaddr)
            if transport == "tls":
                context = ssl_context or ssl.create_default_context()
                sock = context.wrap_socket(sock, server_hostname=host if context.check_hostname else None)
        except ssl.SSLError as exc:
            raise unreachable(f"TLS handshake failed ({exc.reason or exc})") from None
        except TimeoutError:
            raise unreachable("connect timed out") from None
        except OSError as exc:
            raise unreachable(exc.strerror or str(exc)) from None
        data, branch, call_id = build_options(host, port, transport, sock.getsockname()[:2], user_agent=user_agent)
        tx = _Tx(branch, call_id, data)
        started = time.monotonic()
        try:
            sock.sendall(tx.data)
            sent = 1
        except OSError as exc:
            raise unreachable(f"send failed ({exc.strerror or exc})") from None
        buffer = bytearray()
        provisional: list[int] = []
        while True:
            try:
                while (message := take_message(buffer)) is not None:
                    response = _match(parse_response(message), tx)  # a stream carries only this peer's replies
                    if response is None:
                        continue
                    if response.code < 200:
                        provisional.append(response.code)
                        continue
                    return _result(response, started, transport, target, sent, provisional)
            except SipParseError as exc:
                raise unreachable(f"the reply is not SIP ({exc})") from None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise unreachable("no final response" + (f" (only {provisional[-1]})" if provisional else ""))
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65_536)
            except TimeoutError:
                continue
            except OSError as exc:
                raise unreachable(f"connection lost ({exc.strerror or exc})") from None
            if not chunk:
                raise unreachable("connection closed without a final response")
            buffer += chunk
    finally:
        sock.close()


# ---------------------------------------------------------------- helpers


def _match(data: bytes | SipResponse, tx: _Tx) -> SipResponse | None:
    """The response if it answers our transaction (RFC 3261 §17.1.3), else None (malformed too)."""
    if isinstance(data, SipResponse):
        response = data
    else:
        try:
            response = parse_response(data)
        except SipParseError:
            return None
    if response.top_via_branch != tx.branch or response.get("call-id") != tx.call_id:
        return None
    if response.cseq != (1, "OPTIONS"):
        return None
    return response


def _result(
    response: SipResponse, started: float, transport: str, target: str, sent: int, provisional: list[int]
) -> OptionsResult:
    return OptionsResult(
        code=response.code,
        reason=response.reason,
        server=response.get("server"),
        user_agent=response.get("user-agent"),
        allow=tuple(v.upper() for v in response.get_all("allow")),
        supported=tuple(response.get_all("supported")),
        rtt_ms=(time.monotonic() - started) * 1000,
        transport=transport,
        target=target,
        headers=response.headers,
        transmissions=sent,
        provisional=tuple(provisional),
    )


def _resolve(host: str, port: int, transport: str) -> tuple[int, Any]:
    for family in (socket.AF_INET, socket.AF_INET6):  # an address literal needs no resolver call
        try:
            socket.inet_pton(family, host)
        except (OSError, ValueError):
            continue
        return family, (host, port)
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    try:
        infos = socket.getaddrinfo(host, port, type=kind)
    except (socket.gaierror, UnicodeError) as exc:
        raise Unreachable(
            f"SIP OPTIONS to {_target(host, port)} over {transport}: cannot resolve {host!r} ({exc})",
            target=_target(host, port),
            transport=transport,
            transmissions=0,
        ) from None
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def _uri_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _target(host: str, port: int) -> str:
    return f"{_uri_host(host)}:{port}"
