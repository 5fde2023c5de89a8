"""SIP OPTIONS probes through bus.sip.options, beside a raw UDP socket, against one local Kamailio.

    python -m bench.options_probe [--n 200]

Starts a private Kamailio (deploy/kamailio/kamailio.cfg, free loopback ports) and measures, in one
run and in this process (raw and UDP probe interleaved so both see the same machine state):
  - raw: one UDP socket, connected once, sending the same OPTIONS bytes and reading the reply
    (the floor: no request building, parsing or matching);
  - probe UDP: `bus.sip.options.options()` as `ifbus test` / detection call it (a new socket, fresh
    branch/Call-ID, parse and match the reply, every time);
  - probe TCP: the same over TCP (connect + send + framed read + close, every time).
Target (issue "Speak SIP"): probe UDP p50 ≤ 2× raw p50.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import time
from pathlib import Path

from bus.sip.options import build_options, options
from tests.lab import Kamailio

WARMUP = 20


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    n = parser.parse_args().n
    with tempfile.TemporaryDirectory() as tmp, Kamailio(Path(tmp)) as kam:
        raw_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        raw_sock.connect(("127.0.0.1", kam.sip_port))
        raw_sock.settimeout(2.0)
        data, _, _ = build_options("127.0.0.1", kam.sip_port, "udp", raw_sock.getsockname())
        samples: dict[str, list[float]] = {"raw UDP socket (same OPTIONS bytes)": [], "probe UDP": [], "probe TCP": []}
        raw, udp, tcp = samples.values()
        # Raw and UDP probe in pairs, alternating which goes first, so neither always meets a Kamailio
        # worker that has just woken up; TCP afterwards, in a loop of its own (other Kamailio processes).
        for i in range(n + WARMUP):
            for first in (True, False) if i % 2 else (False, True):
                start = time.perf_counter()
                if first:
                    raw_sock.send(data)
                    raw_sock.recv(65_535)
                else:
                    result = options("127.0.0.1", kam.sip_port, transport="udp", timeout=2.0)
                    assert result.code == 200
                elapsed = (time.perf_counter() - start) * 1000
                if i >= WARMUP:
                    (raw if first else udp).append(elapsed)
        for i in range(n + WARMUP):
            start = time.perf_counter()
            assert options("127.0.0.1", kam.sip_port, transport="tcp", timeout=2.0).code == 200
            if i >= WARMUP:
                tcp.append((time.perf_counter() - start) * 1000)
        raw_sock.close()
        server = result.server

    base = statistics.median(raw)
    print(f"Kamailio: {server}; {n} probes each, after {WARMUP} warm-up rounds")
    print(f"{'OPTIONS round trip':40} {'p50 ms':>9} {'p99 ms':>9} {'x raw p50':>10}")
    for name, values in samples.items():
        p50 = statistics.median(values)
        print(f"{name:40} {p50:9.3f} {pct(values, 0.99):9.3f} {p50 / base:10.2f}")
    verdict = "met" if statistics.median(udp) <= 2 * base else "NOT met"
    print(f"target probe UDP p50 ≤ 2× raw: {verdict}")


if __name__ == "__main__":
    main()
