"""`test` on the Asterisk adapter against the AMI replay peer, beside raw sockets doing the same work.

    python -m bench.ami [--n 300]
    ip netns exec labast .venv/bin/python -m bench.ami --port 5038     # the same against a real Asterisk

One peer (tests/peers/ami.py, replaying the Asterisk 22.10.1 captures) in its own process, as a
server would be (in this process it would share our GIL with the adapter's reader thread), measured
interleaved so every variant sees the same machine state:
  - raw Ping: one raw TCP socket, logged in once, writing `Action: Ping` and reading until the
    reply's blank line (the floor for one AMI round trip);
  - raw CoreSettings+Ping: the same socket doing the two actions of `test` one after the other
    (two round trips);
  - raw pipelined: the same socket writing both actions at once, then reading both replies (what
    `test` does: one round trip, `StreamTransport.request_many`);
  - adapter test: `AsteriskAdapter.test()` on a warm session (the pool keeps it between jobs):
    action building and checking, the reader thread, routing by ActionID, parsing;
  - adapter Ping: one `Ping` through the adapter's transport (one round trip, like raw Ping).
Target (issue "Asterisk over AMI"): adapter test p50 ≤ 1.5× a raw-socket round trip on the same
connection. Printed against raw Ping (the issue's words) and against the raw socket doing the same
work (raw pipelined), and, for comparison with earlier runs, against two sequential round trips.

Then session reuse: a fresh pool serves two `test` jobs for one server; the peer counts logins and
connections (a warm worker must pay none), and the cold and warm job times are printed.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator

from bus.server import ServerEntry
from tests.peers.ami import AmiPeer
from workers.adapters import ami
from workers.adapters.asterisk import AsteriskAdapter
from workers.pool import AdapterPool

WARMUP = 30


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class RawAmi:
    """The least a client can do: write bytes, read until the reply's end, no parsing beyond that."""

    def __init__(self, port: int, user: str = "admin", secret: str = "pass123") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self._read_until(b"\r\n")  # banner
        self.round_trip(ami.action("Login", "l", [("Username", user), ("Secret", secret), ("Events", "off")]))

    def _read_until(self, end: bytes) -> None:
        while end not in self.buf:
            self.buf += self.sock.recv(65536)
        self.buf = self.buf.split(end, 1)[1]

    def round_trip(self, data: bytes, replies: int = 1) -> None:
        self.sock.sendall(data)
        for _ in range(replies):
            self._read_until(b"\r\n\r\n")


@contextlib.contextmanager
def peer_process() -> Iterator[int]:
    """The replay peer in a child process; yields its port."""
    code = (
        "import sys,time; from tests.peers.ami import AmiPeer; p=AmiPeer(); print(p.port, flush=True); sys.stdin.read()"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        yield int(child.stdout.readline())
    finally:
        child.kill()
        child.wait()


def entry(port: int, user: str = "admin", secret: str = "pass123") -> ServerEntry:
    return ServerEntry.build("asterisk", {"user": user, "secret": secret}, host="127.0.0.1", port=port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--port", type=int, help="a real AMI on 127.0.0.1 instead of the replay peer")
    parser.add_argument("--user", default="admin")
    parser.add_argument("--secret", default="pass123")
    args = parser.parse_args()
    n = args.n
    ping = b"Action: Ping\r\nActionID: p\r\n\r\n"
    core = b"Action: CoreSettings\r\nActionID: c\r\n\r\n"
    with contextlib.nullcontext(args.port) if args.port else peer_process() as port:
        raw = RawAmi(port, args.user, args.secret)
        adapter = AsteriskAdapter("myast", entry(port, args.user, args.secret))
        adapter.test()
        transport = adapter.session().ready()
        names = ["raw Ping", "raw CoreSettings+Ping", "raw pipelined", "adapter test", "adapter Ping"]
        samples: dict[str, list[float]] = {k: [] for k in names}

        def adapter_ping() -> None:
            aid = f"bench-{time.perf_counter_ns()}"
            transport.request(ami.action("Ping", aid), time.monotonic() + 5, aid)

        def raw_both() -> None:
            raw.round_trip(core)
            raw.round_trip(ping)

        work = {
            "raw Ping": lambda: raw.round_trip(ping),
            "raw CoreSettings+Ping": raw_both,
            "raw pipelined": lambda: raw.round_trip(core + ping, replies=2),
            "adapter test": adapter.test,
            "adapter Ping": adapter_ping,
        }
        for i in range(n + WARMUP):
            order = names if i % 2 else names[::-1]
            for name in order:
                start = time.perf_counter()
                work[name]()
                if i >= WARMUP:
                    samples[name].append((time.perf_counter() - start) * 1000)
        where = f"real AMI on 127.0.0.1:{port}" if args.port else f"AMI replay peer (child process) on 127.0.0.1:{port}"
        print(f"{where}, n={n} each (after {WARMUP} warm-up), times in ms")
        print(f"{'':24} {'p50':>8} {'p90':>8} {'mean':>8}")
        for name in names:
            s = samples[name]
            print(f"{name:24} {pct(s, 0.5):8.3f} {pct(s, 0.9):8.3f} {statistics.fmean(s):8.3f}")
        p50 = {name: pct(samples[name], 0.5) for name in names}
        test = p50["adapter test"]
        print(f"adapter test / raw Ping (p50): {test / p50['raw Ping']:.2f}x  (target <= 1.5x)")
        print(f"adapter test / raw pipelined, the same work (p50): {test / p50['raw pipelined']:.2f}x")
        sequential = p50["raw CoreSettings+Ping"]
        print(f"adapter test / raw CoreSettings+Ping, two round trips (p50): {test / sequential:.2f}x")
        print(f"adapter Ping / raw Ping (p50): {p50['adapter Ping'] / p50['raw Ping']:.2f}x")
        adapter.close()
        raw.sock.close()

    if args.port:
        return
    with AmiPeer() as peer:
        pool = AdapterPool()
        e = entry(peer.port)
        times = []
        for _ in range(2):
            start = time.perf_counter()
            pool.get("myast", e).test()
            times.append((time.perf_counter() - start) * 1000)
        print(
            f"session reuse: job 1 {times[0]:.2f} ms (connect + Login), job 2 {times[1]:.2f} ms; "
            f"peer saw {peer.logins} login(s) on {len(peer.actions)} connection(s)"
        )
        assert peer.logins == 1 and len(peer.actions) == 1, "a warm worker logged in again"
        pool.close_all()


if __name__ == "__main__":
    main()
