"""Putting a request on its vendor's RQ queue: one `enqueue()` for the producer and failover re-queue.

One RQ queue per vendor type (`sip.<type>`, served by `ifbus worker <type>`); jobs use RQ's JSON
serializer (never pickle), name only `workers.jobs.run`, and carry only the server's name. Key names
live in bus.keys.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bus import keys
from bus.vendors import vendor

if TYPE_CHECKING:
    from bus.models import BaseRequest

JOB_FUNCTION = "workers.jobs.run"
REPLY_TTL_SECONDS = keys.REPLY_TTL_SECONDS
# RQ kills a job that runs past its timeout; the bus's own deadline ends it first, this is the slack.
JOB_TIMEOUT_SLACK_SECONDS = 30
FAILED_JOB_TTL_SECONDS = 24 * 3600


def queue_name(type_: str) -> str:
    vendor(type_)
    return keys.queue(type_)


def reply_key(request_id: str) -> str:
    return keys.reply(request_id)


def enqueue(redis: Any, type_: str, request: BaseRequest, job_id: str | None = None) -> None:
    """Queue `request` for the workers of `type_`; `job_id` defaults to the request id (a failover hop
    names its own, since RQ job ids are unique).

    The job is RQ's own record written in one transaction by bus.rqwire (the CLI's light path writes
    it the same way): RQ's `Queue.enqueue` takes two round trips and ~1 ms of Python for the one job
    shape the bus uses. Only when RQ's keys are moved (RQ_KEY_PREFIX) does RQ write it itself."""
    from bus import rqwire

    payload = request.model_dump(mode="json", by_alias=True)
    if rqwire.usable():
        rqwire.enqueue(redis, queue_name(type_), payload, request.timeout, job_id=job_id)
    else:
        rq_enqueue(redis, type_, payload, request.timeout, job_id)


def rq_enqueue(redis: Any, type_: str, payload: dict[str, Any], timeout: float, job_id: str | None = None) -> None:
    """RQ's `Queue.enqueue` of a bus job: the record bus.rqwire must equal (tests/test_light_submit.py)."""
    from rq import Queue
    from rq.serializers import JSONSerializer

    Queue(queue_name(type_), connection=redis, serializer=JSONSerializer).enqueue(
        JOB_FUNCTION,
        payload,
        job_id=job_id or payload["request_id"],
        job_timeout=int(timeout) + JOB_TIMEOUT_SLACK_SECONDS,
        result_ttl=0,  # the bus stores its own result (bus.keys.result); RQ's copy would be redundant
        failure_ttl=FAILED_JOB_TTL_SECONDS,
    )
