"""What `ifbus ingress` costs: round-trip overhead vs the Python producer, and its throughput vs the
producer's enqueue rate, measured in one run.

    python -m bench.ingress [--n 300] [--m 3000]

Starts a private Kamailio (deploy/kamailio/kamailio.cfg), a private redis-server, one real
`ifbus worker kamailio` and one real `ifbus ingress`, all on free loopback ports, then measures:

  - round trip of `test` on the real Kamailio, alternating per iteration between the Python
    producer (`Producer.submit`, model built in the loop) and a raw-Redis producer (LPUSH the JSON
    on ifbus:requests, BLPOP its reply key: what a Node or Go service does) going through the
    ingress process. Load on a shared machine hits both alike; the verdict uses the median of the
    per-iteration differences (target ≤ +0.5 ms), the p50s are printed beside it.
  - enqueue rate, one Python thread each, nothing consuming the queue (a registered RQ worker
    that takes no job keeps the no-worker check passing): `Producer.submit(wait=False)` in a loop,
    vs an in-process `Ingress` draining M requests pre-pushed on ifbus:requests (parse, validate,
    dedupe claim, route, enqueue, LREM). Target: ingress ≥ producer.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from tests.lab import Kamailio, free_port, wait_for

TOKEN = "bench-token"


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="round trips per path")
    parser.add_argument("--m", type=int, default=3000, help="requests enqueued per path for the rate")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Kamailio(Path(tmp), token=TOKEN) as kam:
        os.environ["IFBUS_HOME"] = str(Path(tmp) / "home")
        port = free_port(udp=False, tcp=True)
        url = f"redis://127.0.0.1:{port}/0"
        redis_proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        children: list[subprocess.Popen[bytes]] = []
        try:
            ifbus = str(Path(sys.executable).parent / "ifbus")
            subprocess.run(
                [ifbus, "add", "sip", "kam", "--type", "kamailio", "--auth", f"token={TOKEN}", "realm=127.0.0.1",
                 "--port", str(kam.http_port), "--opt", f"sip_port={kam.sip_port}"],
                check=True, stdout=subprocess.DEVNULL,
            )  # fmt: skip
            from redis import Redis

            redis = Redis.from_url(url)
            assert wait_for(lambda: _pings(redis), 10), "redis-server did not start"
            env = {**os.environ, "IFBUS_REDIS_URL": url, "IFBUS_LOG_LEVEL": "WARNING"}
            children.append(subprocess.Popen([ifbus, "worker", "kamailio"], env=env, stderr=subprocess.DEVNULL))
            children.append(subprocess.Popen([ifbus, "ingress"], env=env, stderr=subprocess.DEVNULL))
            assert wait_for(lambda: _has_worker(redis) and redis.scard("ifbus:ingresses") > 0, 20), "not started"
            producer_ms, ingress_ms = round_trips(url, redis, args.n)
            for child in children:
                child.terminate()
                child.wait(10)
            children.clear()
            redis.flushdb()
            producer_rate, ingress_rate = rates(url, redis, args.m)
        finally:
            for child in children:
                child.terminate()
                child.wait(10)
            redis_proc.terminate()
            redis_proc.wait(10)
    report(producer_ms, ingress_ms, producer_rate, ingress_rate, args)


def round_trips(url: str, redis: Any, n: int) -> tuple[list[float], list[float]]:
    from bus.logging import configure
    from bus.models import TestRequest
    from bus.settings import Settings
    from producer.api import Producer

    configure("WARNING")
    producer = Producer(Settings(mode="queue", redis_url=url))
    producer_ms: list[float] = []
    ingress_ms: list[float] = []
    for i in range(n + 20):
        start = time.perf_counter()
        result = producer.submit(TestRequest(server="kam"))
        took_producer = (time.perf_counter() - start) * 1000
        assert result.exit_code == 0, result.message
        rid = uuid.uuid4().hex
        key = f"ifbus:reply:{rid}"
        start = time.perf_counter()
        redis.lpush("ifbus:requests", json.dumps({"op": "test", "server": "kam", "request_id": rid, "reply_key": key}))
        popped = redis.blpop([key], timeout=30)
        took_ingress = (time.perf_counter() - start) * 1000
        assert popped is not None and json.loads(popped[1])["exit_code"] == 0, popped
        if i >= 20:  # warm-up: connections, imports, the adapter's session
            producer_ms.append(took_producer)
            ingress_ms.append(took_ingress)
    return producer_ms, ingress_ms


def rates(url: str, redis: Any, m: int) -> tuple[float, float]:
    from rq import Queue, Worker

    from bus.models import TestRequest
    from bus.registry import open_registry
    from bus.settings import Settings
    from producer.api import Producer
    from producer.ingress import Ingress

    idle = Worker([Queue("sip.kamailio", connection=redis)], connection=redis)
    idle.register_birth()  # a worker that never takes a job: the queue only grows
    try:
        producer = Producer(Settings(mode="queue", redis_url=url))
        producer.submit(TestRequest(server="kam"), wait=False)  # warm-up
        start = time.perf_counter()
        for _ in range(m):
            producer.submit(TestRequest(server="kam"), wait=False)
        producer_rate = m / (time.perf_counter() - start)

        pipe = redis.pipeline(transaction=False)
        for _ in range(m):
            rid = uuid.uuid4().hex
            pipe.lpush("ifbus:requests", json.dumps({"op": "test", "server": "kam", "request_id": rid}))
        pipe.execute()
        ingress = Ingress(redis, open_registry(), ingress_id="bench")
        ingress.start()
        start = time.perf_counter()
        while ingress.step(block=0.01):
            pass
        ingress_rate = ingress.counts["queued"] / (time.perf_counter() - start)
        assert ingress.counts["queued"] == m, ingress.counts
    finally:
        idle.register_death()
    return producer_rate, ingress_rate


def report(producer_ms: list[float], ingress_ms: list[float], producer_rate: float, ingress_rate: float,
           args: argparse.Namespace) -> None:  # fmt: skip
    p50_p, p50_i = statistics.median(producer_ms), statistics.median(ingress_ms)
    print(f"round trip of `test` on a real Kamailio, n={args.n} each, interleaved")
    print(f"{'path':58} {'p50 ms':>8} {'p99 ms':>8}")
    print(f"{'Python producer (submit + wait)':58} {p50_p:8.3f} {pct(producer_ms, 0.99):8.3f}")
    print(f"{'raw Redis LPUSH/BLPOP through ifbus ingress':58} {p50_i:8.3f} {pct(ingress_ms, 0.99):8.3f}")
    paired = statistics.median(i - p for i, p in zip(ingress_ms, producer_ms, strict=True))
    verdict = "ok" if paired <= 0.5 else "OVER TARGET"
    print(
        f"ingress overhead: p50 difference {p50_i - p50_p:+.3f} ms (ratio {p50_i / p50_p:.3f}); median of the "
        f"paired differences {paired:+.3f} ms  (target <= +0.5 ms: {verdict})"
    )
    print(f"\nenqueue rate, one thread each, m={args.m}")
    print(f"{'Python producer submit(wait=False)':58} {producer_rate:8.0f} /s")
    print(f"{'ifbus ingress (in-process, drain ifbus:requests)':58} {ingress_rate:8.0f} /s")
    verdict = "ok" if ingress_rate >= producer_rate else "BELOW TARGET"
    print(f"ingress / producer: {ingress_rate / producer_rate:.2f}  (target >= 1: {verdict})")


def _pings(redis: Any) -> bool:
    try:
        return bool(redis.ping())
    except Exception:
        return False


def _has_worker(redis: Any) -> bool:
    from rq import Queue, Worker

    return Worker.count(queue=Queue("sip.kamailio", connection=redis)) > 0


if __name__ == "__main__":
    main()
