"""Delivery benchmark: the bus against plain RQ, and the cost of a refusing server, in one run.

    python -m bench.delivery [--n 300] [--jobs 600] [--rounds 3]

Each comparison is interleaved (`--rounds` alternating blocks of bus and RQ runs, medians over all),
so a machine that gets busier or quieter mid-run shifts both sides alike.

Everything on loopback: a private redis-server, a real Kamailio (deploy/kamailio/kamailio.cfg;
`core.version` answers in ~0.1 ms, as near zero latency as a real peer gets), `ifbus worker`
processes, and plain RQ SimpleWorker processes running a no-op job. Prints:
  1. round trip p50/p99: producer → worker → peer → answer, vs plain RQ enqueue → job → result
     (RQ's own `Job.latest_result(timeout=…)` wait), with a no-op job and with the same network work
     as the bus's `test` job; targets: p50 ≤ 1.0× RQ no-op (issue 4), ≤ 1.0× RQ same work (issue 15);
  2. jobs per second with 1, 2 and 4 worker processes, bus vs plain RQ; targets ≥ 0.9× RQ no-op per
     process (issue 4), ≥ 1.0× RQ same work (issue 15);
  3. added latency of a call when the named server refuses connections: first detection (breaker
     closed) ≤ 20 ms, and once its breaker is open ≤ 1 ms.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.faults import closed_port
from tests.lab import Kamailio, free_port, wait_for

BIN = Path(sys.executable).parent
POLL_SECONDS = 0.01  # how often throughput runs look for completion


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Redis:
    def __init__(self, tmp: str) -> None:
        self.port = free_port(udp=False, tcp=True)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        from redis import Redis as Client

        self.client = Client.from_url(self.url)
        assert wait_for(self._up, 10)

    def _up(self) -> bool:
        try:
            return bool(self.client.ping())
        except Exception:
            return False

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def start(args: list[str], n: int, env: dict[str, str]) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(n)]


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(15)


def workers_ready(redis: Any, queue: str, count: int) -> bool:
    from rq import Queue, Worker

    return Worker.count(queue=Queue(queue, connection=redis)) >= count


def bus_round_trips(n: int, warm: int = 30) -> list[float]:
    from bus.models import TestRequest
    from bus.settings import Settings
    from producer.api import Producer

    producer = Producer(Settings())
    out = []
    for i in range(n + warm):
        start_at = time.perf_counter()
        result = producer.submit(TestRequest(server="peer"))
        elapsed = (time.perf_counter() - start_at) * 1000
        assert result.exit_code == 0, result.message
        if i >= warm:
            out.append(elapsed)
    return out


def rq_round_trips(redis: Any, n: int, func: str, warm: int = 30) -> list[float]:
    from rq import Queue
    from rq.serializers import JSONSerializer

    queue = Queue("bench.plain", connection=redis, serializer=JSONSerializer)
    out = []
    for i in range(n + warm):
        start_at = time.perf_counter()
        job = queue.enqueue(func)
        result = job.latest_result(timeout=10)
        elapsed = (time.perf_counter() - start_at) * 1000
        assert result is not None and result.type == result.Type.SUCCESSFUL
        if i >= warm:
            out.append(elapsed)
    return out


def bus_throughput(redis: Any, jobs: int) -> float:
    """Jobs per second: `jobs` test requests queued in one pipeline as the bus queues them (the
    record bus.queues.enqueue writes for the ingress and the producers), timed until every result
    is stored."""
    from bus import rqwire
    from bus.models import TestRequest
    from bus.queues import queue_name

    requests = [TestRequest(server="peer").rerouted(submitted_at=time.time()) for _ in range(jobs)]
    start_at = time.perf_counter()
    with redis.pipeline() as pipe:  # the record bus.queues.enqueue writes (the ingress's and producers')
        for request in requests:
            payload = request.model_dump(mode="json", by_alias=True)
            rqwire.enqueue(redis, queue_name("kamailio"), payload, request.timeout, pipe=pipe)
        pipe.execute()
    keys = [f"ifbus:result:{r.request_id}" for r in requests]
    while redis.exists(*keys) < jobs:  # one command per look, every 10 ms: light on the machine
        time.sleep(POLL_SECONDS)
    return jobs / (time.perf_counter() - start_at)


def rq_throughput(redis: Any, jobs: int, func: str) -> float:
    from rq import Queue
    from rq.serializers import JSONSerializer

    queue = Queue("bench.plain", connection=redis, serializer=JSONSerializer)
    finished = queue.finished_job_registry
    done_before = finished.count
    start_at = time.perf_counter()
    with redis.pipeline() as pipe:
        for _ in range(jobs):
            queue.enqueue(func, pipeline=pipe)
        pipe.execute()
    while finished.count < done_before + jobs:  # one ZCARD per look, every 10 ms, as for the bus
        time.sleep(POLL_SECONDS)
    return jobs / (time.perf_counter() - start_at)


def refused_costs(redis_url: str, n: int) -> dict[str, list[float]]:
    """Call latency in-process (health and ledger in Redis) with the named server up, refusing with
    its breaker closed (first detection), and refusing with its breaker open."""
    from redis import Redis as Client

    from bus.health import RedisHealth
    from bus.ledger import RedisLedger
    from bus.models import CallRequest
    from workers.jobs import Context, execute

    client = Client.from_url(redis_url)
    costs: dict[str, list[float]] = {"named server up": [], "named refuses, breaker closed": [],
                                     "named refuses, breaker open": []}  # fmt: skip

    def one(server: str) -> float:
        context = Context(RedisHealth(client), RedisLedger(client))
        # until=accepted: the bridge request is the whole job, so the figures isolate the failover path.
        request = CallRequest(server=server, until="accepted", **{"from": "1001", "to": "2000"})
        start_at = time.perf_counter()
        result = execute(request.model_dump(mode="json", by_alias=True), "inline", context)
        elapsed = (time.perf_counter() - start_at) * 1000
        assert result["exit_code"] == 0 and result["server"] == "up", result
        return elapsed

    for _ in range(20):
        one("up")
    for _ in range(n):
        costs["named server up"].append(one("up"))
        client.delete("ifbus:health:down", "ifbus:health:down:trial")
        costs["named refuses, breaker closed"].append(one("down"))
        costs["named refuses, breaker open"].append(one("down"))
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--jobs", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per comparison")
    options = parser.parse_args()
    from bus.logging import configure

    configure("WARNING")
    with tempfile.TemporaryDirectory() as tmp, Kamailio(Path(tmp) / "kam", token="bench") as kamailio:
        redis = Redis(tmp)
        os.environ.update(
            {
                "IFBUS_HOME": str(Path(tmp) / "home"),
                "IFBUS_REDIS_URL": redis.url,
                "IFBUS_MODE": "queue",
                "IFBUS_LOG_LEVEL": "WARNING",
                "IFBUS_PROBE_INTERVAL": "0",
            }
        )
        env = dict(os.environ)
        ifbus = str(BIN / "ifbus")
        for name, port in (("peer", kamailio.http_port), ("down", closed_port()), ("up", kamailio.http_port)):
            subprocess.run([ifbus, "add", "sip", name, "--type", "kamailio", "--auth", "token=bench", "--host",
                            "127.0.0.1", "--port", str(port), "--opt", "fr_timer=1", f"sip_port={kamailio.sip_port}"]
                           + (["--pool", "refuse"] if name in ("down", "up") else []),
                           check=True, stdout=subprocess.DEVNULL, env=env)  # fmt: skip
        try:
            bus_args = [ifbus, "worker", "kamailio"]
            rq_args = [sys.executable, "-m", "bench.plain_rq", redis.url, "bench.plain"]
            baselines = {"no-op": "bench.plain_rq.noop", "same work": "bench.plain_rq.same_work"}

            bus_w, rq_w = start(bus_args, 1, env), start(rq_args, 1, env)
            assert wait_for(lambda: workers_ready(redis.client, "sip.kamailio", 1) or None, 20)
            assert wait_for(lambda: workers_ready(redis.client, "bench.plain", 1) or None, 20)
            trips: dict[str, list[float]] = {"bus: producer → worker → peer → answer": []}
            block = max(1, options.n // options.rounds)
            for r in range(options.rounds):
                warm = 30 if r == 0 else 5
                trips["bus: producer → worker → peer → answer"] += bus_round_trips(block, warm)
                for name, func in baselines.items():
                    label = f"plain RQ, {name} job → latest_result"
                    trips[label] = trips.get(label, []) + rq_round_trips(redis.client, block, func, warm)
            stop(bus_w + rq_w)
            print(f"\n1. round trip over {options.n} requests (ms)")
            print(f"{'':44} {'p50':>8} {'p99':>8} {'bus ÷':>7}")
            bus_p50 = statistics.median(next(iter(trips.values())))
            for label, values in trips.items():
                p50 = statistics.median(values)
                print(f"{label:44} {p50:8.2f} {pct(values, 0.99):8.2f} {bus_p50 / p50:7.2f}")
            print("targets: bus ÷ plain RQ no-op ≤ 1.0; bus ÷ plain RQ same work ≤ 1.0")

            print(f"\n2. throughput, {options.jobs} jobs (jobs/s)")
            print(f"{'workers':>8} {'bus':>9} {'RQ no-op':>9} {'RQ same':>9} {'÷ no-op':>8} {'÷ same':>8}")
            for count in (1, 2, 4):
                bus_w = start(bus_args, count, env)
                rq_w = start(rq_args, count, env)
                assert wait_for(lambda c=count: workers_ready(redis.client, "sip.kamailio", c) or None, 30)
                assert wait_for(lambda c=count: workers_ready(redis.client, "bench.plain", c) or None, 30)
                samples: dict[str, list[float]] = {"bus": [], **{func: [] for func in baselines.values()}}
                for _ in range(options.rounds):  # idle workers of the other side wait in BLMOVE: no CPU
                    samples["bus"].append(bus_throughput(redis.client, options.jobs))
                    for func in baselines.values():
                        samples[func].append(rq_throughput(redis.client, options.jobs, func))
                stop(bus_w + rq_w)
                bus_rate, *rates = (statistics.median(values) for values in samples.values())
                print(f"{count:>8} {bus_rate:9.0f} {rates[0]:9.0f} {rates[1]:9.0f} "
                      f"{bus_rate / rates[0]:8.2f} {bus_rate / rates[1]:8.2f}")  # fmt: skip
            print("targets: bus ÷ plain RQ no-op ≥ 0.90 per process count; bus ÷ plain RQ same work ≥ 1.0")

            costs = refused_costs(redis.url, 100)
            base = statistics.median(costs["named server up"])
            print("\n3. call latency when the named server refuses connections (ms, 100 calls each)")
            print(f"{'':36} {'p50':>8} {'added':>8}   target")
            targets = {"named refuses, breaker closed": "≤ 20", "named refuses, breaker open": "≤ 1"}
            for name, values in costs.items():
                p50 = statistics.median(values)
                added = "" if name == "named server up" else f"{p50 - base:8.2f}"
                print(f"{name:36} {p50:8.2f} {added:>8}   {targets.get(name, '')}")
        finally:
            redis.stop()


if __name__ == "__main__":
    main()
