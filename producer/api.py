"""The producer API: submit a typed request and (optionally) wait for its one answer.

Other services use this exactly as the CLI does:

    from producer.api import Producer
    from bus.models import CallRequest
    result = Producer().submit(CallRequest(server="mykam", **{"from": "1001", "to": "2000"}))

Mode: `IFBUS_MODE=queue` insists on Redis; `inline` runs the job in this process; `auto` (the
default) uses Redis when `IFBUS_REDIS_URL` is set or a Redis answers on the default URL, and
otherwise runs in-process (embedded mode), so a newcomer needs nothing but the package.
"""

from __future__ import annotations

import json
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from bus.errors import OutcomeUnknown, Unreachable
from bus.models import JobResult, _Request
from bus.queues import JOB_FUNCTION, REPLY_TTL_SECONDS, queue_name, reply_key
from bus.registry import Registry, open_registry
from bus.settings import Settings

# How long `auto` mode waits for a Redis on the default URL before choosing embedded mode.
PROBE_TIMEOUT_SECONDS = 0.25


class Producer:
    def __init__(self, settings: Settings | None = None, registry: Registry | None = None) -> None:
        self.settings = settings or Settings()
        self.registry = registry or open_registry(self.settings.home)
        self.notice: str | None = None  # why embedded mode was chosen, for the CLI to print
        self._enqueued = False  # whether the current request reached Redis: decides unreachable vs unknown

    def submit(self, request: _Request, wait: bool = True) -> JobResult | str:
        """Run or enqueue `request`; return its JobResult, or the job id when `wait` is False."""
        entry = self.registry.get(request.server)  # NotFound before anything is enqueued
        redis = self._connect()
        if redis is None:
            return self._run_inline(request)
        return self._enqueue(redis, queue_name(entry.type), request, wait)

    def _connect(self) -> Redis | None:
        mode = self.settings.mode
        if mode == "inline":
            self.notice = "embedded mode (IFBUS_MODE=inline): running the job in this process"
            return None
        url = self.settings.effective_redis_url
        explicit = mode == "queue" or self.settings.redis_url is not None
        redis = Redis.from_url(
            url, socket_connect_timeout=None if explicit else PROBE_TIMEOUT_SECONDS, socket_timeout=None
        )
        try:
            redis.ping()
        except (RedisError, OSError) as exc:
            if explicit:
                why = "IFBUS_MODE=queue" if mode == "queue" else "IFBUS_REDIS_URL is set"
                raise Unreachable(
                    f"Redis at {_safe_url(url)} is not reachable ({why}): {exc}; "
                    "start Redis, fix IFBUS_REDIS_URL, or set IFBUS_MODE=inline"
                ) from None
            self.notice = f"embedded mode (no Redis at {_safe_url(url)}): running the job in this process"
            return None
        return redis

    def _run_inline(self, request: _Request) -> JobResult:
        from workers.jobs import execute  # the one seam between producer and workers

        payload = request.model_dump(mode="json", by_alias=True)
        return JobResult.model_validate(execute(payload, mode="inline"))

    def _enqueue(self, redis: Redis, queue: str, request: _Request, wait: bool) -> JobResult | str:
        try:
            return self._enqueue_and_wait(redis, queue, request, wait)
        except (RedisError, OSError) as exc:
            if self._enqueued:
                raise OutcomeUnknown(
                    f"lost Redis while waiting ({exc}); job {request.request_id} on {queue} may still run: "
                    f"look it up with `ifbus job {request.request_id}`",
                    job_id=request.request_id,
                    server=request.server,
                ) from None
            raise Unreachable(f"Redis failed before the job was queued: {exc}") from None

    def _enqueue_and_wait(self, redis: Redis, queue: str, request: _Request, wait: bool) -> JobResult | str:
        from rq import Queue, Worker
        from rq.serializers import JSONSerializer

        self._enqueued = False
        rq_queue = Queue(queue, connection=redis, serializer=JSONSerializer)
        if Worker.count(queue=rq_queue) == 0:
            vendor_type = queue.removeprefix("sip.")
            raise Unreachable(f"no worker serves {queue}: start `ifbus worker {vendor_type}`, or set IFBUS_MODE=inline")
        key = reply_key(request.request_id) if wait else None
        payload = request.model_copy(update={"reply_key": key}).model_dump(mode="json", by_alias=True)
        rq_queue.enqueue(
            JOB_FUNCTION,
            payload,
            job_id=request.request_id,
            job_timeout=int(request.timeout) + 30,
            result_ttl=REPLY_TTL_SECONDS,
            failure_ttl=24 * 3600,
        )
        self._enqueued = True
        if not wait:
            return request.request_id
        popped = redis.blpop([key], timeout=request.timeout)
        if popped is None:
            raise OutcomeUnknown(
                f"no answer within {request.timeout:g} s; job {request.request_id} on {queue} may still run: "
                f"look it up with `ifbus job {request.request_id}`",
                job_id=request.request_id,
                server=request.server,
            )
        return JobResult.model_validate(json.loads(popped[1]))


def job_status(job_id: str, settings: Settings | None = None) -> dict[str, Any]:
    """What RQ knows of a job: its status and, once finished, the JobResult it returned."""
    from rq.exceptions import NoSuchJobError
    from rq.job import Job
    from rq.serializers import JSONSerializer

    settings = settings or Settings()
    redis = Redis.from_url(settings.effective_redis_url)
    try:
        job = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
    except NoSuchJobError:
        from bus.errors import NotFound

        raise NotFound(f"Not found: job {job_id}") from None
    except (RedisError, OSError) as exc:
        raise Unreachable(f"Redis at {_safe_url(settings.effective_redis_url)} is not reachable: {exc}") from None
    status = job.get_status()
    return {"job_id": job_id, "status": str(getattr(status, "value", status)), "result": job.return_value()}


def _safe_url(url: str) -> str:
    """A Redis URL with any password masked, for messages."""
    from bus.logging import redact

    return redact(url)
