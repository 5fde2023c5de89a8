"""The call-rate limiter's cost per call when the bucket is open, against one Redis round trip.

    python -m bench.ratelimit [--n 3000] [--url redis://…]

A private redis-server on loopback (or --url, never the user's on 6379 by default), one client, the
variants measured interleaved so each sees the same machine state:
  - PING: one Redis round trip, the floor;
  - take: `RedisLimiter.take` on an open bucket (cps=100, max_concurrent=50) — the one EVALSHA a
    call pays before its originate; target (issue 17) p50 ≤ 0.3 ms;
  - take+sent: a call on a cps-only server (the acknowledgement after the originate is a 2nd trip);
  - take+sent+done: a call on a server with max_concurrent too (the release when it settles);
  - Limiter.acquire: the same take through the waiting loop's Python (token, limits parsing);
  - memory take: embedded mode's MemoryLimiter (no Redis).
Prints p50/p99 in ms and each p50 as a ratio of PING's.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

from bench.delivery import Redis as PrivateRedis
from bus.ratelimit import Limiter, Limits, MemoryLimiter, RedisLimiter

LIMITS = Limits(cps=100, max_concurrent=50)
OPTIONS = {"cps": "100", "max_concurrent": "50"}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def variants(client: object) -> dict[str, Callable[[int], float]]:
    store = RedisLimiter(client)
    memory = MemoryLimiter()
    limiter = Limiter(store)

    def timed(body: Callable[[], object]) -> float:
        started = time.perf_counter()
        body()
        return time.perf_counter() - started

    def ping(i: int) -> float:
        return timed(client.ping)  # type: ignore[attr-defined]

    def take(i: int) -> float:
        spent = timed(lambda: store.take("bench", f"t{i}", LIMITS, 30))
        store.settle("bench", f"t{i}", rate="unsent", live="release")  # keep the bucket open, untimed
        return spent

    def take_sent(i: int) -> float:
        limits = Limits(cps=100)

        def body() -> None:
            store.take("bench-cps", f"s{i}", limits, 30)
            store.settle("bench-cps", f"s{i}", rate="sent", window=0.001)

        return timed(body)

    def take_sent_done(i: int) -> float:
        def body() -> None:
            store.take("bench-both", f"d{i}", LIMITS, 30)
            store.settle("bench-both", f"d{i}", rate="sent", window=0.001)
            store.settle("bench-both", f"d{i}", live="release")

        return timed(body)

    def acquire(i: int) -> float:
        far = time.monotonic() + 30
        holder: list = []
        spent = timed(lambda: holder.append(limiter.acquire("bench-acq", OPTIONS, f"req{i:08d}", far, far)))
        holder[0].done()  # untimed: frees both permits
        return spent

    def memory_take(i: int) -> float:
        spent = timed(lambda: memory.take("bench", f"m{i}", LIMITS, 30))
        memory.settle("bench", f"m{i}", rate="unsent", live="release")
        return spent

    return {
        "PING (one round trip)": ping,
        "take (open bucket)": take,
        "take+sent (cps only)": take_sent,
        "take+sent+done (cps+max_concurrent)": take_sent_done,
        "Limiter.acquire (open bucket)": acquire,
        "memory take (embedded)": memory_take,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--url", help="an existing Redis to measure against (default: a private one)")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        private = None
        if options.url:
            from redis import Redis

            client = Redis.from_url(options.url)
        else:
            private = PrivateRedis(tmp)
            client = private.client
        try:
            runs = variants(client)
            for body in runs.values():  # warm-up: script loaded, connections open
                for i in range(50):
                    body(-1 - i)
            samples: dict[str, list[float]] = {name: [] for name in runs}
            for i in range(options.n):
                for name, body in runs.items():
                    samples[name].append(body(i) * 1000)
        finally:
            if private is not None:
                private.stop()
    floor = statistics.median(samples["PING (one round trip)"])
    print(f"limiter cost per call, {options.n} calls each, interleaved (ms)")
    print(f"{'':40} {'p50':>8} {'p99':>8} {'p50/PING':>9}   target")
    for name, values in samples.items():
        p50 = statistics.median(values)
        target = "≤ 0.300 ms" if name == "take (open bucket)" else ""
        print(f"{name:40} {p50:8.3f} {pct(values, 0.99):8.3f} {p50 / floor:8.2f}×   {target}")


if __name__ == "__main__":
    main()
