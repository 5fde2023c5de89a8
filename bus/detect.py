"""Server-type detection over the network: gathers evidence and lets bus.fingerprint decide.

`detect_host()` probes SIP OPTIONS over UDP and TCP, the AMI and ESL banners (ports from the vendor
catalogue, bus.vendors), optionally HTTP `Server` headers and the OpenSIPS mi `version` answer; cloud
API hosts are known by name and never probed. `sip_reachability()` is the one-line SIP check
`ifbus test` shows; `detect_for_add()` is what `ifbus add` without a type runs.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from bus.errors import BusError, InvalidInput, Unreachable
from bus.fingerprint import Detection, Evidence, _hostname, classify, cloud_type, fingerprint
from bus.sip.uri import SIP_PORT
from bus.vendors import VENDORS

# Where the banner probes look by default: the management ports of the vendor catalogue.
AMI_PORT = VENDORS["asterisk"].port
ESL_PORT = VENDORS["freeswitch"].port
DETECT_TIMEOUT = 2.0  # seconds for the SIP probes; the banner probes get at most BANNER_TIMEOUT
BANNER_TIMEOUT = 1.0

def detect_host(
    host: str,
    *,
    sip_port: int = SIP_PORT,
    timeout: float = DETECT_TIMEOUT,
    transports: Sequence[str] = ("udp", "tcp"),
    ami_port: int | None = AMI_PORT,
    esl_port: int | None = ESL_PORT,
    http_ports: Sequence[int] = (),
    mi_port: int | None = None,
) -> Detection:
    """Probe what can be probed on `host`, in parallel, and classify it.

    SIP OPTIONS on `sip_port` over each of `transports` (up to `timeout`), the AMI and ESL banners
    (connect and read for at most BANNER_TIMEOUT), `Server` of `GET /` on each of `http_ports`, and
    OpenSIPS mi `version` on `mi_port` (`POST /mi`). A port given as None is skipped. Cloud API hosts
    (api.twilio.com, api.nexmo.com, rest.nexmo.com, *.twilio.com, *.nexmo.com) are classified by name.
    """
    if cloud_type(host):
        return classify([Evidence("host", _hostname(host))], tried=(f"host name {host}",))
    banner_timeout = min(timeout, BANNER_TIMEOUT)
    jobs: list[Callable[[], tuple[list[Evidence], str]]] = [
        (lambda t=t: _probe_sip(host, sip_port, t, timeout)) for t in transports
    ]
    if ami_port:
        jobs.append(lambda: _probe_banner(host, ami_port, "ami-banner", "AMI", b"\n", banner_timeout))
    if esl_port:
        jobs.append(lambda: _probe_banner(host, esl_port, "esl-banner", "ESL", b"\n\n", banner_timeout))
    for port in http_ports:
        jobs.append(lambda p=port: _probe_http_server(host, p, banner_timeout))
    if mi_port:
        jobs.append(lambda: _probe_mi(host, mi_port, banner_timeout))
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        results = list(pool.map(lambda job: job(), jobs))
    evidence = [e for found, _ in results for e in found]
    return classify(evidence, tried=[line for _, line in results])


def _probe_sip(host: str, port: int, transport: str, timeout: float) -> tuple[list[Evidence], str]:
    from bus.sip.options import options

    try:
        result = options(host, port, transport=transport, timeout=timeout)
    except BusError as exc:
        return [], f"SIP OPTIONS {transport}: {exc.message}"
    where = f"{transport} {result.target}, {result.code} {result.reason}"
    banners = (("sip-server", result.server), ("sip-user-agent", result.user_agent))
    found = [Evidence(source, value, where) for source, value in banners if value]
    seen = f"{result.code} {result.reason} in {result.rtt_ms:.1f} ms"
    if not found:
        seen += ", no Server or User-Agent header"
    return found, f"SIP OPTIONS {transport} {result.target}: {seen}"


def _probe_banner(
    host: str, port: int, source: str, what: str, end: bytes, timeout: float
) -> tuple[list[Evidence], str]:
    target = f"{host}:{port}"
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            data = _read_until(sock, end, 512, time.monotonic() + timeout)
    except TimeoutError:
        return [], f"{what} {target}: connect timed out"
    except OSError as exc:
        return [], f"{what} {target}: {exc.strerror or exc}"
    text = _printable(data)
    if not text:
        return [], f"{what} {target}: connected, no banner within {timeout:g} s"
    candidate = fingerprint(Evidence(source, text))
    evidence = Evidence(source if candidate else "tcp-banner", text, f"tcp {target}")
    return [evidence], f"{what} {target}: {text[:80]!r}"


def _probe_http_server(host: str, port: int, timeout: float) -> tuple[list[Evidence], str]:
    target = f"{host}:{port}"
    try:
        status, headers, _ = _http(host, port, "GET", "/", None, timeout)
    except OSError as exc:
        return [], f"HTTP {target}: {exc.strerror or exc}"
    server = headers.get("server")
    if not server:
        return [], f"HTTP {target}: {status}, no Server header"
    return [Evidence("http-server", server, f"http {target}")], f"HTTP {target}: {status}, Server {server!r}"


def _probe_mi(host: str, port: int, timeout: float) -> tuple[list[Evidence], str]:
    target = f"{host}:{port}"
    body = json.dumps({"jsonrpc": "2.0", "method": "version", "id": 1}).encode()
    try:
        status, _, reply = _http(host, port, "POST", "/mi", body, timeout)
    except OSError as exc:
        return [], f"mi {target}: {exc.strerror or exc}"
    text = _printable(reply)
    return [Evidence("jsonrpc", text, f"POST http://{target}/mi")], f"mi {target}: {status} {text[:80]!r}"


def _http(
    host: str, port: int, method: str, path: str, body: bytes | None, timeout: float
) -> tuple[int, dict[str, str], bytes]:
    """A minimal HTTP/1.0 exchange (bounded, no redirects): status, lower-cased headers, body."""
    deadline = time.monotonic() + timeout
    request = f"{method} {path} HTTP/1.0\r\nHost: {host}:{port}\r\nUser-Agent: ifbus-sip\r\n"
    if body is not None:
        request += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(request.encode() + b"\r\n" + (body or b""))
        data = _read_until(sock, None, 16_384, deadline)
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split()
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise OSError("not an HTTP answer")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = _printable(value.encode("latin-1"))
    return int(parts[1]), headers, rest


def _read_until(sock: socket.socket, end: bytes | None, limit: int, deadline: float) -> bytes:
    data = b""
    while len(data) < limit and (end is None or end not in data):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(limit - len(data))
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
    return data


def _printable(data: bytes) -> str:
    return re.sub(r"[\x00-\x08\x0b-\x1f\x7f]+", " ", data.decode("utf-8", "replace")).strip()


# ---------------------------------------------------------------- for the CLI and `test`


def sip_reachability(
    host: str, port: int = SIP_PORT, transport: str = "udp", timeout: float = DETECT_TIMEOUT
) -> dict[str, Any]:
    """One OPTIONS, summarised for `ifbus test` beside the management API check. Never raises for a
    network problem: `answered` is False and `message` says what was tried.

    Any final response (a 401, 403 or 404 too) means the SIP port answers; `detected`/`version` come
    from its Server/User-Agent header.
    """
    from bus.sip.options import options

    try:
        result = options(host, port, transport=transport, timeout=timeout)
    except Unreachable as exc:
        return {
            "answered": False,
            "transport": transport,
            "target": exc.details.get("target", f"{host}:{port}"),
            "message": exc.message,
            "transmissions": exc.details.get("transmissions"),
            "elapsed_ms": exc.details.get("elapsed_ms"),
        }
    evidence = [Evidence(s, v) for s, v in (("sip-server", result.server), ("sip-user-agent", result.user_agent)) if v]
    detection = classify(evidence)
    return {
        "answered": True,
        "code": result.code,
        "reason": result.reason,
        "rtt_ms": round(result.rtt_ms, 2),
        "server": result.banner,
        "detected": detection.type,
        "version": detection.version,
        "transport": transport,
        "target": result.target,
        "transmissions": result.transmissions,
        "message": f"SIP {result.code} {result.reason} in {result.rtt_ms:.1f} ms over {transport}"
        + (f" ({result.banner})" if result.banner else ""),
    }


@dataclass(frozen=True)
class AutoType:
    """What `ifbus add` without a type stores: the type, a management port, and the options."""

    detection: Detection
    type: str
    port: int | None
    options: dict[str, str] = field(default_factory=dict)


PROBE_OPTIONS = ("ami_port", "esl_port")  # where to look, not settings of the server: not stored


def detect_for_add(host: str, port: int | None, options: dict[str, str], timeout: float = DETECT_TIMEOUT) -> AutoType:
    """Detect the type for `ifbus add`; raise what the CLI should exit with when it cannot.

    `--opt sip_port=` is the SIP port probed (default SIP_PORT; kept in the entry for `test`);
    `--opt ami_port=` / `esl_port=` move the banner probes. `--port` stays the management port: when
    it is not given, the detected server's management port is stored when the probe found it (AMI /
    ESL port; for Kamailio, whose JSON-RPC shares its SIP TCP listener, the SIP port).
    Nothing answered → Unreachable (exit 4); answers but none recognised, or an ambiguous host →
    InvalidInput (exit 2) asking for --type.
    """
    defaults = {"sip_port": SIP_PORT, "ami_port": AMI_PORT, "esl_port": ESL_PORT}
    ports = {key: _port_option(options, key, default) for key, default in defaults.items()}
    detection = detect_host(
        host, sip_port=ports["sip_port"], timeout=timeout, ami_port=ports["ami_port"], esl_port=ports["esl_port"]
    )
    tried = "; ".join(detection.tried)
    if detection.ambiguous:
        seen = "; ".join(
            f"{c.type} ({c.label}, {c.confidence}: {', '.join(e.describe() for e in c.evidence)})"
            for c in detection.candidates
        )
        choices = " or ".join(f"--type {c.type}" for c in detection.candidates)
        raise InvalidInput(
            f"{host}: more than one server type answered: {seen}. Give {choices}",
            candidates=[c.to_dict() for c in detection.candidates],
        )
    if detection.type is None:
        if detection.answered:
            raise InvalidInput(
                f"{host}: answers, but not as a known server type ({tried}); give --type",
                tried=list(detection.tried),
            )
        raise Unreachable(f"{host}: no server type detected; tried {tried}", tried=list(detection.tried))
    stored = {k: v for k, v in options.items() if k not in PROBE_OPTIONS}
    if port is None:
        kinds = {e.kind for e in detection.candidates[0].evidence}
        if detection.type == "asterisk" and "ami" in kinds and ports["ami_port"] != AMI_PORT:
            port = ports["ami_port"]
        elif detection.type == "freeswitch" and "esl" in kinds and ports["esl_port"] != ESL_PORT:
            port = ports["esl_port"]
        elif detection.type == "kamailio" and ports["sip_port"] != SIP_PORT:
            port = ports["sip_port"]
    return AutoType(detection, detection.type, port, stored)


def _port_option(options: dict[str, str], key: str, default: int) -> int:
    raw = options.get(key)
    if raw is None:
        return default
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise InvalidInput(f"--opt {key}={raw[:20]!r}: expected a port 1-65535")
    return int(raw)
