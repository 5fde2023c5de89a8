"""Start RQ workers for the vendor queues, and keep them serving whatever Redis holds.

RQ's `SimpleWorker` runs each job in the worker process itself: a call job is mostly waiting on a
socket, so a fork per job (RQ's default `Worker`) would only add latency and drop the keep-alive
connections the adapters hold. `--concurrency N` starts N such processes with RQ's WorkerPool.

Anyone who can write to Redis can put any bytes on a queue, and Redis itself can restart empty.
Plain RQ quits on the first entry it cannot read ("found an unhandled exception, quitting…", exit 0)
and registers a worker only once, at start, so one forged entry or one Redis restart silently
strands the fleet. The classes here skip and log what they cannot read, and re-register a worker
whose registration vanished; `run_workers` starts a fresh worker if RQ's loop still ends on its own.
"""

from __future__ import annotations

import contextlib
import signal
import time
from typing import Any

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import Queue, SimpleWorker, worker_registration
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.utils import now as rq_now
from rq.worker.base import StopRequested
from rq.worker_pool import WorkerPool

from bus.keys import queue_type
from bus.logging import get_logger
from bus.queues import JOB_FUNCTION, queue_name
from bus.redis_conn import from_url
from bus.validate import show

log = get_logger("ifbus.worker")

ALLOWED_FUNCTIONS = frozenset({JOB_FUNCTION})
# Redis being away is not a bad entry: RQ's own loop waits for it and reconnects.
_REDIS_DOWN = (RedisConnectionError, RedisTimeoutError)
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
RESTART_WAIT_SECONDS = (0.5, 10.0)  # first and longest wait before a worker whose loop ended is restarted
# How often a heartbeat checks that the worker's registration survived (RQ beats several times per job;
# a Redis restart is noticed within this many seconds instead of costing a round trip on every beat).
REGISTRATION_CHECK_SECONDS = 1.0


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

    def perform(self) -> Any:
        """Run the job and count it for /metrics (workers.metrics; nothing when metrics are off)."""
        from workers import metrics

        if not metrics.enabled():
            return super().perform()
        started, result = time.monotonic(), None
        try:
            result = super().perform()
            return result
        finally:
            payload = self.args[0] if self.args else None
            metrics.observe(self.origin, payload, result, time.monotonic() - started)


def _skip(queue_key: str, entry: str, connection: Redis, exc: BaseException) -> None:
    """Drop an unreadable entry where RQ parked it (its intermediate list), so neither the dequeue
    nor RQ's periodic clean-up of that list trips on it again."""
    log.error("queue.entry_skipped", queue=queue_key, entry=show(entry, 80), error=show(str(exc), 200),
              reason="not a readable ifbus job")  # fmt: skip
    with contextlib.suppress(*_REDIS_DOWN):
        IntermediateQueue(queue_key, connection).remove(entry)


class BusQueue(Queue):
    """A queue whose dequeue skips entries it cannot turn into a job (a forged id, a garbage hash)."""

    @classmethod
    def _fetch_dequeued_job(cls, connection: Redis, queue_key: str, job_id: str, *args: Any, **kwargs: Any) -> Any:
        try:
            found = super()._fetch_dequeued_job(connection, queue_key, job_id, *args, **kwargs)
        except _REDIS_DOWN:
            raise
        except Exception as exc:  # any bytes can sit in Redis: one bad entry must not stop the worker
            _skip(queue_key, job_id, connection, exc)
            return None  # RQ's dequeue_any takes the next entry
        if found is None:  # RQ skips ids with no job hash silently; say so, it may be a forged entry
            _skip(queue_key, job_id, connection, LookupError("no such job"))
        return found

    def fetch_job(self, job_id: str) -> Any:
        """RQ's clean-up of its intermediate list fetches every id in it: a bad one is dropped too."""
        try:
            return super().fetch_job(job_id)
        except _REDIS_DOWN:
            raise
        except Exception as exc:
            _skip(self.key, job_id, self.connection, exc)
            return None


class BusWorker(SimpleWorker):
    """Non-forking worker with the project's job class and JSON serializer (never pickle), that
    survives unreadable jobs and re-registers after Redis lost its registration."""

    job_class = BusJob
    queue_class = BusQueue
    _registration_checked = 0.0  # time.monotonic() of the last look at the worker's own hash
    _held_stop: tuple[int, ...] = ()  # stop signals that arrived while RQ was registering the worker

    def execute_job(self, job: Job, queue: Queue) -> None:
        """RQ handles failures of the job function itself; a job hash it cannot even start (garbage
        fields, a payload RQ cannot decode) raises out of here and would end the worker loop."""
        try:
            super().execute_job(job, queue)
        except (*_REDIS_DOWN, StopRequested):  # SIGTERM right after a job (RQ raises it from the handler)
            raise
        except Exception as exc:
            log.error("job.unreadable", job_id=show(job.id, 80), queue=queue.name, error=show(str(exc), 200))
            with contextlib.suppress(Exception):  # best effort: RQ's maintenance expires leftovers
                queue.started_job_registry.remove(job)
                IntermediateQueue(queue.key, self.connection).remove(job.id)

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        """RQ's heartbeat only refreshes the worker hash; after a Redis restart the registration sets
        (`rq:workers`, `rq:workers:<queue>`) are gone and producers see no worker. The heartbeat
        runs right after RQ reconnects, so that is where a vanished registration is put back.

        RQ beats about five times per job, each beat three commands; outside RQ's own pipelines they
        go as one batch here (one round trip, not three)."""
        if pipeline is not None:
            super().heartbeat(timeout, pipeline)
            return
        if self.birth_date is not None and self._registration_due() and not self.connection.exists(self.key):
            self._register_again()
        with self.connection.pipeline(transaction=False) as batch:
            super().heartbeat(timeout, batch)
            batch.execute()

    def _registration_due(self) -> bool:
        now = time.monotonic()
        if now - self._registration_checked < REGISTRATION_CHECK_SECONDS:
            return False
        self._registration_checked = now
        return True

    def handle_job_success(self, job: Job, queue: Queue, started_job_registry: Any, execution: Any) -> None:
        """A bus job whose result RQ discards (`result_ttl=0`: the bus stored and delivered its own
        result before RQ gets here) is forgotten in one transaction. RQ's own path reads the job's
        status and its execution list back (twice) only to find keys the worker already knows: nine
        round trips per job, more than the bus adds. Jobs using RQ features the bus does not (a
        result TTL — e.g. a followed call's job —, repeats, groups, rate limits, dependents) keep
        RQ's path, so its counters, registries and `rq info` read the same either way."""
        lean = (
            job.get_result_ttl(self.default_result_ttl) == 0
            and not job.repeats_left
            and not job.group_id
            and not job.has_rate_limit
            and not self.connection.exists(job.dependents_key)
        )
        if not lean:
            super().handle_job_success(job, queue, started_job_registry, execution)
            return
        from rq.executions import ExecutionRegistry
        from rq.results import Result

        with self.connection.pipeline() as pipe:
            self.increment_successful_job_count(pipeline=pipe)
            self.increment_total_working_time(job.ended_at - job.started_at, pipe)  # type: ignore[operator]
            self.cleanup_execution(job, pipeline=pipe, execution=execution)
            registry = ExecutionRegistry(job_id=job.id, connection=self.connection)
            pipe.delete(job.key, job.dependents_key, job.dependencies_key, Result.get_key(job.id), registry.key)
            pipe.execute()

    def _register_again(self) -> None:
        with self.connection.pipeline() as pipe:
            pipe.hset(self.key, mapping=self.serialize())
            worker_registration.register(self, pipe)
            pipe.expire(self.key, self.worker_ttl + 60)
            pipe.execute()
        log.warning("worker.registered_again", worker=self.name, queues=self.queue_names(),
                    reason="its registration vanished from Redis (a restart?)")  # fmt: skip

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        """RQ registers the worker here but installs its SIGTERM/SIGINT handlers only afterwards, outside
        the loop whose `finally` deregisters it: a stop signal in between (a pool, a supervisor or a
        scale-down stopping a worker that is still starting — a wide window on a busy machine) killed
        the process and left its registration behind for minutes, with producers routing jobs to it.
        Such a signal is held here and replayed as a stop request once RQ's handlers are in."""
        held: list[int] = []
        previous = {sig: signal.signal(sig, lambda signum, _frame: held.append(signum)) for sig in _STOP_SIGNALS}
        try:
            super().bootstrap(*args, **kwargs)
        except BaseException:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            raise
        self._held_stop = tuple(held)

    def _install_signal_handlers(self) -> None:
        super()._install_signal_handlers()
        if self._held_stop:  # the loop's first check stops it; its `finally` deregisters the worker
            log.info("worker.stop_while_starting", worker=self.name, signal=self._held_stop[0])
            self._shutdown_requested_date = rq_now()
            self._stop_requested = True

    def work(self, burst: bool = False, *args: Any, **kwargs: Any) -> bool:
        """RQ's loop with the process's call follower (workers.follower) beside it: it adopts orphaned
        calls of these queues' types (not in burst mode), and once the loop stops (SIGTERM, burst done)
        the calls still ringing are followed until they settle or the drain timeout passes."""
        from workers.follower import process_follower

        follower = process_follower(self.connection)
        follower.serve([queue_type(q) for q in self.queue_names()], adopt=not burst)
        try:
            return super().work(burst, *args, **kwargs)
        finally:
            if burst or self._shutdown_requested_date is not None:
                follower.drain()
                # The sessions go last, once no followed call needs them: servers see a logoff
                # (AMI/ESL) or a closed keep-alive, not a dropped socket.
                from workers.pool import POOL

                POOL.close_all()

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        """Backpressure: with `max_inflight` calls followed, take no job until one settles."""
        from workers.follower import current

        follower = current()
        while follower is not None and not follower.wait_for_room(1.0):
            self.heartbeat()
            if self._stop_requested:
                raise StopRequested()
        return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)


class BusWorkerPool(WorkerPool):
    """RQ's WorkerPool, whose worker processes connect through bus.redis_conn.

    RQ rebuilds a child's connection from the parent's pool class and kwargs, which a Sentinel
    pool does not survive (its connections hold the parent's pool object); each child here builds
    its client from the URL instead, so `redis+sentinel://` finds the current master in every process.
    """

    def __init__(self, redis_url: str, queues: list[str], num_workers: int) -> None:
        self.redis_url = redis_url
        super().__init__(queues, connection=from_url(redis_url), num_workers=num_workers, worker_class=BusWorker,
                         serializer=JSONSerializer, job_class=BusJob)  # fmt: skip

    def get_worker_process(self, name: str, burst: bool, _sleep: float = 0, logging_level: str = "INFO") -> Any:
        from multiprocessing.context import ForkProcess

        return ForkProcess(
            target=_pool_worker,
            args=(name, self._queue_names, self.redis_url, burst, logging_level),
            name=f"Worker {name} (WorkerPool {self.name})",
        )


def _pool_worker(name: str, queues: list[str], redis_url: str, burst: bool, logging_level: str) -> None:
    """One worker process of a pool (what rq.worker_pool.run_worker does, with our connection)."""
    connection = from_url(redis_url)
    worker = BusWorker(queues, name=name, connection=connection, serializer=JSONSerializer, job_class=BusJob)
    worker.work(burst=burst, with_scheduler=False, logging_level=logging_level)


def run_workers(
    redis_url: str,
    types: list[str],
    concurrency: int = 1,
    burst: bool = False,
    log_level: str = "INFO",
    probe_interval: float = 2.0,
    metrics_port: int | None = None,
    metrics_addr: str = "0.0.0.0",
) -> None:
    """Run the workers (this process, or a pool of N) with one prober of open servers beside them,
    and /metrics on `metrics_port` for all of them (workers.metrics: multiprocess mode)."""
    from workers.prober import Prober

    queues = [queue_name(t) for t in types]
    log.info("worker.start", queues=queues, concurrency=concurrency, burst=burst)
    if metrics_port is not None:
        from workers import metrics

        metrics.start(metrics_port, metrics_addr, from_url(redis_url), types)
    prober = Prober(from_url(redis_url), types, probe_interval)
    if not burst and probe_interval > 0:
        prober.start()
    try:
        if concurrency == 1:
            _serve(redis_url, queues, burst, log_level)
            return
        pool = BusWorkerPool(redis_url, queues, num_workers=concurrency)  # respawns a process whose loop ended
        pool.start(burst=burst, logging_level=log_level.upper())
    finally:
        prober.stop()


def _serve(redis_url: str, queues: list[str], burst: bool, log_level: str) -> None:
    """One worker; if RQ's loop ends without a stop request (Redis went away outside the dequeue,
    where RQ does not wait for it), a fresh worker takes over once Redis answers again."""
    wait = RESTART_WAIT_SECONDS[0]
    while True:
        worker = BusWorker(queues, connection=from_url(redis_url), serializer=JSONSerializer, job_class=BusJob)
        try:
            worker.work(burst=burst, logging_level=log_level.upper(), with_scheduler=False)
        except _REDIS_DOWN as exc:
            log.error("worker.redis_lost", worker=worker.name, error=show(str(exc), 200))
        if burst or worker._shutdown_requested_date is not None:  # SIGTERM/SIGINT (RQ sets it on either path)
            return
        log.warning("worker.restart", worker=worker.name, wait_s=wait, reason="the worker loop ended unrequested")
        time.sleep(wait)
        wait = min(wait * 2, RESTART_WAIT_SECONDS[1])
