"""Prometheus metrics for a worker command (`ifbus worker … --metrics-port N` / IFBUS_METRICS_PORT).

One port per `ifbus worker` command, whatever its `--concurrency`: prometheus-client's multiprocess
mode. Each worker process (RQ's WorkerPool forks them) writes its counters to its own files in a
private folder (`PROMETHEUS_MULTIPROC_DIR`, made here unless the operator set one); the parent serves
`/metrics` and sums them at scrape time. Why not one port per process: a scrape config (or a
Kubernetes pod's one `prometheus.io/port`) would then have to know N, and a respawned process would
take its counts with it. The multiprocess mode must be chosen before prometheus-client is imported,
which is why nothing here imports it at module level.

What is served:

- `ifbus_jobs_total{type,op,outcome}`: jobs finished, by outcome (`ok`, `rejected`, `unreachable`, …,
  `error` when the job function itself crashed);
- `ifbus_job_seconds{type,op}`: how long a job ran (a histogram);
- `ifbus_failovers_total{type}`: jobs handed to the next server of their pool;
- `ifbus_outcome_unknown_total{type,op}`: answers "outcome unknown" (a call may have been placed);
- `ifbus_breaker_open{server}` (1 open, 0 closed or half-open), `ifbus_queue_jobs{queue}` and
  `ifbus_calls_in_flight{type,worker}` (calls a worker process's follower follows, `worker` = host:pid;
  bus.status reads the same): read from Redis at scrape time, since every worker shares them; only
  the servers, queues and types this command serves.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
from typing import Any

from bus.logging import get_logger

log = get_logger("ifbus.metrics")

ENV_DIR = "PROMETHEUS_MULTIPROC_DIR"
# Seconds: a `test` answers in tens of ms; a call rings for up to the vendor's ring time (30-90 s).
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 90, 120, 300)

_metrics: dict[str, Any] = {}


def enabled() -> bool:
    return bool(_metrics)


def start(port: int, addr: str, redis: Any, types: list[str]) -> int:
    """Serve /metrics on addr:port from this (the parent) process; returns the port bound.

    Call before the worker processes fork, so they inherit the multiprocess value class."""
    if not os.environ.get(ENV_DIR):
        folder = tempfile.mkdtemp(prefix="ifbus-metrics-")
        os.environ[ENV_DIR] = folder
        owner = os.getpid()
        atexit.register(lambda: os.getpid() == owner and shutil.rmtree(folder, ignore_errors=True))
    else:  # an operator's folder: stale files of a previous run would be summed in
        folder = os.environ[ENV_DIR]
        os.makedirs(folder, exist_ok=True)
        for name in os.listdir(folder):
            if name.endswith(".db"):
                os.unlink(os.path.join(folder, name))
    from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    _metrics.update(
        jobs=Counter("ifbus_jobs", "Jobs finished, by vendor type, operation and outcome.", ["type", "op", "outcome"]),
        seconds=Histogram("ifbus_job_seconds", "Seconds a job ran.", ["type", "op"], buckets=BUCKETS),
        failovers=Counter("ifbus_failovers", "Jobs handed to the next server of their pool.", ["type"]),
        unknown=Counter("ifbus_outcome_unknown", "Answers 'outcome unknown'.", ["type", "op"]),
    )
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=folder)
    registry.register(SharedState(redis, types))
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    bound = server.server_address[1]
    log.info("metrics.serving", addr=addr, port=bound, multiprocess_dir=folder)
    return bound


def observe(queue: str, payload: Any, result: Any, seconds: float) -> None:
    """Count one finished job (BusJob.perform calls this; a no-op when metrics are off)."""
    if not _metrics:
        return
    from bus.keys import queue_type

    type_ = queue_type(queue)
    op = payload.get("op") if isinstance(payload, dict) and payload.get("op") in ("test", "call", "hangup") else "?"
    if isinstance(result, dict) and result.get("requeued"):
        _metrics["failovers"].labels(type_).inc()
        return
    outcome = str(result.get("outcome")) if isinstance(result, dict) and result.get("outcome") else "error"
    _metrics["jobs"].labels(type_, op, outcome).inc()
    _metrics["seconds"].labels(type_, op).observe(seconds)
    if outcome == "ambiguous":
        _metrics["unknown"].labels(type_, op).inc()


class SharedState:
    """A collector reading what every worker shares (breakers, queue lengths) from Redis per scrape."""

    def __init__(self, redis: Any, types: list[str]) -> None:
        self.redis = redis
        self.types = set(types)

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        from bus.health import OPEN, RedisHealth
        from bus.keys import RQ_QUEUE_PREFIX, queue
        from bus.registry import open_registry
        from bus.status import in_flight_by_process

        breaker = GaugeMetricFamily("ifbus_breaker_open", "1 while the server's breaker is open.", labels=["server"])
        depth = GaugeMetricFamily("ifbus_queue_jobs", "Jobs waiting on the vendor queue.", labels=["queue"])
        inflight = GaugeMetricFamily("ifbus_calls_in_flight", "Calls a worker process's follower follows.",
                                     labels=["type", "worker"])  # fmt: skip
        started = time.monotonic()
        try:
            names = [n for n, e in open_registry().entries().items() if e.type in self.types]
            for name, health in RedisHealth(self.redis).get_many(names).items():
                breaker.add_metric([name], 1.0 if health.state == OPEN else 0.0)
            pipe = self.redis.pipeline(transaction=False)
            queues = [queue(t) for t in sorted(self.types)]
            for name in queues:
                pipe.llen(RQ_QUEUE_PREFIX + name)
            for name, length in zip(queues, pipe.execute(), strict=True):
                depth.add_metric([name], float(length))
            for type_ in sorted(self.types):
                for (host, pid), count in in_flight_by_process(self.redis, type_).items():
                    inflight.add_metric([type_, f"{host}:{pid}"], float(count))
        except Exception as exc:  # a scrape must answer even when Redis or the registry does not
            log.warning("metrics.shared_state_failed", error=str(exc)[:200],
                        after_s=round(time.monotonic() - started, 3))  # fmt: skip
        yield breaker
        yield depth
        yield inflight
