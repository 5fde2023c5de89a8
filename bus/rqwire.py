"""RQ's record of one bus job, written without importing rq (bus.queues.enqueue, and the CLI's light
submit, producer.light).

bus.queues.rq_enqueue has RQ 3's `Queue.enqueue` write a job; this writes the same keys and hash fields
for the one job shape the bus uses (a function name, one positional dict, JSON serializer, no
dependencies, callbacks or meta), so RQ workers, `rq info` and `ifbus job` see no difference:

    SADD  rq:queues rq:queue:<queue>
    HSET  rq:job:<id> created_at data description enqueued_at origin status timeout result_ttl
          failure_ttl (and RQ's empty fields)
    RPUSH rq:queue:<queue> <id>

in one MULTI/EXEC. tests/test_light_submit.py holds it to RQ: the hash of a job written here equals
the hash RQ writes for the same request, field by field, and a real `ifbus worker` runs it. The job
options (function, RQ timeout slack, failure TTL) are bus.queues'.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from typing import Any

from bus import keys
from bus.queues import FAILED_JOB_TTL_SECONDS, JOB_FUNCTION, JOB_TIMEOUT_SLACK_SECONDS

# RQ's key names live in bus.keys (rq_job, RQ_QUEUES, rq_workers); RQ lets RQ_KEY_PREFIX
# (rq.defaults) move them, and then only RQ itself writes jobs (`usable`).
RQ_DESCRIPTION_ARG_LENGTH = 75  # rq.job.Job.get_call_string truncates each argument's repr here
_EMPTY_FIELDS = ("success_callback_name", "failure_callback_name", "stopped_callback_name", "started_at",
                 "ended_at", "last_heartbeat", "worker_name", "group_id")  # fmt: skip


def usable() -> bool:
    """Whether RQ keeps its keys where this module writes them."""
    return os.environ.get("RQ_KEY_PREFIX", "rq") == "rq"


def utcformat(seconds: float) -> str:
    """rq.utils.utcformat of a Unix time: `2026-11-30T20:06:16.541428Z`."""
    whole, micro = divmod(round(seconds * 1_000_000), 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{micro:06d}Z"


def description(payload: dict[str, Any]) -> str:
    """rq.utils.get_call_string(JOB_FUNCTION, (payload,), {}, max_length=75)."""
    text = repr(payload)
    if len(text) > RQ_DESCRIPTION_ARG_LENGTH:
        text = text[:RQ_DESCRIPTION_ARG_LENGTH] + "..."
    return f"{JOB_FUNCTION}({text})"


def job_fields(payload: dict[str, Any], queue: str, timeout: float, now: float | None = None) -> dict[str, Any]:
    """The `rq:job:<id>` hash RQ writes when bus.queues.enqueue queues `payload` on `queue`."""
    stamp = utcformat(time.time() if now is None else now)
    data = json.dumps([JOB_FUNCTION, None, [payload], {}]).encode()  # rq.serializers.JSONSerializer
    return {
        "created_at": stamp,
        "data": zlib.compress(data),
        **dict.fromkeys(_EMPTY_FIELDS, ""),
        "origin": queue,
        "description": description(payload),
        "enqueued_at": stamp,
        "timeout": int(timeout) + JOB_TIMEOUT_SLACK_SECONDS,
        "result_ttl": 0,
        "failure_ttl": FAILED_JOB_TTL_SECONDS,
        "status": "queued",
    }


def served(redis: Any, queue: str) -> bool:
    """rq.Worker.count(queue=…) > 0: a worker registered itself on the queue (bus.routing's check)."""
    return bool(redis.smembers(keys.rq_workers(queue)))


def enqueue(redis: Any, queue: str, payload: dict[str, Any], timeout: float, job_id: str | None = None,
            pipe: Any = None) -> None:  # fmt: skip
    """Queue `payload` as RQ's Queue.enqueue does, in one transaction; the job id is the request id
    unless given (a failover hop names its own). With `pipe`, the commands are only queued on the
    caller's pipeline (a batch of jobs in one round trip)."""
    job_id = job_id or payload["request_id"]
    queue_key = keys.RQ_QUEUE_PREFIX + queue
    batch = redis.pipeline() if pipe is None else pipe
    batch.sadd(keys.RQ_QUEUES, queue_key)
    batch.hset(keys.rq_job(job_id), mapping=job_fields(payload, queue, timeout))
    batch.rpush(queue_key, job_id)
    if pipe is None:
        batch.execute()
