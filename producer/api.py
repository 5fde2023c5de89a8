"""The producer API: submit a typed request and (optionally) wait for its one answer.

Other services use this exactly as the CLI does (docs/producers-python.md has a runnable example):

    from producer import Producer, CallRequest
    result = Producer().submit(CallRequest(server="mykam", **{"from": "1001", "to": "2000"}))

The producer knows only the broker: it admits the request through bus.routing (validation, dedupe,
server → queue, the no-worker check: the same path `ifbus ingress` uses for other languages) and waits
on the request's reply key. It runs a job in-process only when it is handed a `runner` (the CLI hands it
`workers.jobs.execute` for embedded mode), so a service that embeds the producer never imports the
workers by accident.

Mode: `IFBUS_MODE=queue` insists on Redis; `inline` runs the job with the runner; `auto` (the
default) uses Redis when `IFBUS_REDIS_URL` is set or a Redis answers on the default URL, and
otherwise the runner (embedded mode) — or, with no runner, says Redis is unreachable.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from bus import keys
from bus.errors import Unreachable
from bus.models import BaseRequest, JobResult
from bus.queues import queue_name, reply_key
from bus.redis_conn import connect, from_url, safe_url
from bus.registry import Registry, open_registry
from bus.routing import Router
from bus.server import ServerEntry
from bus.settings import Settings
from producer.waiting import redis_failed, wait_reply

#: Runs one request payload in this process and returns its JobResult as a dict (workers.jobs.execute).
Runner = Callable[..., dict[str, Any]]

# How long `auto` mode waits for a Redis on the default URL before choosing embedded mode.
PROBE_TIMEOUT_SECONDS = 0.25


class Producer:
    def __init__(
        self, settings: Settings | None = None, registry: Registry | None = None, runner: Runner | None = None
    ) -> None:
        self.settings = settings or Settings()
        self.registry = registry or open_registry(self.settings.home)
        self.runner = runner
        self.notice: str | None = None  # why embedded mode was chosen, for the CLI to print
        self._enqueued = False  # whether the current request reached Redis: decides unreachable vs unknown
        self._redis: Redis | None = None  # one connection pool for every submit of this producer
        self._router: Router | None = None

    def submit(self, request: BaseRequest, wait: bool = True) -> JobResult | str:
        """Run or enqueue `request`; return its JobResult, or the job id when `wait` is False."""
        entry = self.registry.get(request.server)  # NotFound before anything is enqueued
        redis = self._connect()
        if redis is None:
            return self._run_inline(request)
        return self._enqueue(redis, entry, request, wait)

    def _connect(self) -> Redis | None:
        if self._redis is not None:
            return self._redis
        mode = self.settings.mode
        if mode == "inline":
            self._need_runner("IFBUS_MODE=inline")
            self.notice = "embedded mode (IFBUS_MODE=inline): running the job in this process"
            return None
        url = self.settings.effective_redis_url
        explicit = mode == "queue" or self.settings.redis_url is not None or self.runner is None
        if explicit:
            why = "IFBUS_MODE=queue" if mode == "queue" else "IFBUS_REDIS_URL is set" if self.settings.redis_url else ""
            self._redis = connect(url, why, socket_timeout=None)
            return self._redis
        redis = from_url(url, socket_connect_timeout=PROBE_TIMEOUT_SECONDS, socket_timeout=None)
        try:
            redis.ping()
        except (RedisError, OSError):
            self.notice = f"embedded mode (no Redis at {safe_url(url)}): running the job in this process"
            return None
        self._redis = redis
        return redis

    def _need_runner(self, why: str) -> Runner:
        if self.runner is None:
            raise Unreachable(f"{why}, but this producer has no in-process runner: give Producer(runner=…)")
        return self.runner

    def _run_inline(self, request: BaseRequest) -> JobResult:
        payload = request.model_dump(mode="json", by_alias=True)
        return JobResult.model_validate(self._need_runner("embedded mode")(payload, mode="inline"))

    def _enqueue(self, redis: Redis, entry: ServerEntry, request: BaseRequest, wait: bool) -> JobResult | str:
        queue = queue_name(entry.type)
        try:
            return self._enqueue_and_wait(redis, entry, request, wait)
        except (RedisError, OSError) as exc:
            raise redis_failed(exc, self._enqueued, request.request_id, queue, request.server) from None

    def _enqueue_and_wait(self, redis: Redis, entry: ServerEntry, request: BaseRequest, wait: bool) -> JobResult | str:
        if self._router is None:
            self._router = Router(redis, self.registry)
        self._enqueued = False
        rid = request.request_id
        key = reply_key(rid) if wait else None
        admission = self._router.admit(request.model_copy(update={"reply_key": key}), entry)
        self._enqueued = True
        ledger, queue = self._router.ledger, admission.queue
        if not wait:
            return rid
        if admission.duplicate:
            if admission.result is not None:
                return JobResult.model_validate(admission.result)
            return self._join(redis, ledger, admission.request, queue)
        return self._wait(redis, ledger, reply_key(rid), admission.request, queue)

    def _join(self, redis: Redis, ledger: Any, request: BaseRequest, queue: str) -> JobResult:
        """Wait for a request someone already submitted: its stored result, or a waiter's reply key.

        The result is read again after registering, and the worker stores the result before it
        reads the waiters, so the answer cannot slip between the two."""
        rid = request.request_id
        for _ in range(2):
            done = ledger.result(rid)
            if done is not None:
                return JobResult.model_validate(done)
            key = keys.waiter_reply(rid, uuid.uuid4().hex[:12])
            ledger.add_waiter(rid, key)
        return self._wait(redis, ledger, key, request, queue)

    def _wait(self, redis: Redis, ledger: Any, key: str, request: BaseRequest, queue: str) -> JobResult:
        """Block on the reply key until the answer, a dead worker or the deadline (producer.waiting)."""
        answer = wait_reply(redis, ledger, key, request.request_id, request.timeout, request.server, queue,
                            (RedisError, OSError))  # fmt: skip
        return JobResult.model_validate(answer)


def job_status(job_id: str, settings: Settings | None = None) -> dict[str, Any]:
    """A request's state: `finished` with the bus's own JobResult (it outlives RQ's job record, which is
    dropped on success, and spans failover hops); `in_flight` while a call the job handed to a follower
    still rings or talks (its RQ job already says "finished": it returned `{"followed": true}`), with
    the follower that owns it (`followed_by`), the server and the call id; else what RQ says.

    The reads go RQ, then the follow record, then the result: a call is followed inside its job and
    settled by one transaction that stores the result and drops the record (workers.jobs,
    bus.ledger.finish_many), so whatever RQ saw first, a later look at those two cannot miss both —
    unless the record outlived its DEDUP time with no answer: `unknown`."""
    from rq.exceptions import NoSuchJobError
    from rq.job import Job
    from rq.serializers import JSONSerializer

    from bus.errors import NotFound
    from bus.ledger import FollowRecord, RedisLedger

    settings = settings or Settings()
    redis = from_url(settings.effective_redis_url)
    try:
        try:
            job = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
            status = job.get_status()
            rq_status = str(getattr(status, "value", status))
        except NoSuchJobError:
            rq_status = None
        raw_record = redis.get(keys.followed(job_id))
        result = RedisLedger(redis).result(job_id)
        if result is not None:
            return {"job_id": job_id, "status": "finished", "result": result}
        if raw_record is not None:
            record = FollowRecord.from_json(raw_record)
            owner = redis.hget(keys.inflight_owner(record.type), job_id)
    except (RedisError, OSError) as exc:
        raise Unreachable(f"Redis at {safe_url(settings.effective_redis_url)} is not reachable: {exc}") from None
    if raw_record is not None:
        return {
            "job_id": job_id,
            "status": "in_flight",
            "result": None,
            "server": record.server,
            "call_id": record.ref.get("call_id"),
            "followed_by": owner.decode(errors="replace") if owner else None,
        }
    if rq_status is None:
        raise NotFound(f"Not found: job {job_id}")
    if rq_status == "finished":  # handed to a follower, and neither its answer nor its record is left
        return {"job_id": job_id, "status": "unknown", "result": None}
    return {"job_id": job_id, "status": rq_status, "result": None}
