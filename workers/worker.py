"""Start RQ workers for the vendor queues.

RQ's `SimpleWorker` runs each job in the worker process itself: a call job is mostly waiting on a
socket, so a fork per job (RQ's default `Worker`) would only add latency and drop the keep-alive
connections the adapters hold. `--concurrency N` starts N such processes with RQ's WorkerPool.
"""

from __future__ import annotations

from typing import Any

from redis import Redis
from rq import SimpleWorker
from rq.job import Job
from rq.serializers import JSONSerializer

from bus.logging import get_logger
from bus.queues import JOB_FUNCTION, queue_name

log = get_logger("ifbus.worker")

ALLOWED_FUNCTIONS = frozenset({JOB_FUNCTION})


class ForbiddenJob(Exception):
    """A job in Redis named a function that is not one of ours."""


class BusJob(Job):
    """A job that refuses to resolve any function but the project's own.

    RQ imports whatever dotted name a job carries; anyone who can write to Redis could otherwise
    make a worker run arbitrary code. The check sits where RQ resolves the name, so the refusal
    goes through RQ's normal failure path (the job lands in the failed registry).
    """

    @property
    def func(self) -> Any:
        name = self.func_name
        if name not in ALLOWED_FUNCTIONS:
            log.error("job.refused", job_id=self.id, func=name, reason="not an ifbus job function")
            raise ForbiddenJob(f"refused job {self.id}: function {name!r} is not an ifbus job function")
        return super().func


class BusWorker(SimpleWorker):
    """Non-forking worker with the project's job class and JSON serializer (never pickle)."""

    job_class = BusJob


def run_workers(
    redis_url: str,
    types: list[str],
    concurrency: int = 1,
    burst: bool = False,
    log_level: str = "INFO",
    probe_interval: float = 2.0,
) -> None:
    """Run the workers (this process, or a pool of N) with one prober of open servers beside them."""
    from workers.prober import Prober

    connection = Redis.from_url(redis_url)
    queues = [queue_name(t) for t in types]
    log.info("worker.start", queues=queues, concurrency=concurrency, burst=burst)
    prober = Prober(Redis.from_url(redis_url), types, probe_interval)
    if not burst and probe_interval > 0:
        prober.start()
    try:
        if concurrency == 1:
            worker = BusWorker(queues, connection=connection, serializer=JSONSerializer, job_class=BusJob)
            worker.work(burst=burst, logging_level=log_level.upper(), with_scheduler=False)
            return
        from rq.worker_pool import WorkerPool

        pool = WorkerPool(
            queues,
            connection=connection,
            num_workers=concurrency,
            worker_class=BusWorker,
            serializer=JSONSerializer,
            job_class=BusJob,
        )
        pool.start(burst=burst, logging_level=log_level.upper())
    finally:
        prober.stop()
