"""`ifbus job JOB_ID` for a call handed to the follower (issue 15): the RQ job has returned
`{"followed": true}` and RQ calls it finished while the call still rings; the bus says "in flight",
with the worker that follows it, until its own result exists, then shows that result.

The states are written by the bus's own writers on a private redis-server: bus.queues.enqueue (RQ's
Queue.enqueue), RQ's Job.set_status as a worker's return does, RedisLedger.follow / finish with
unfollow (what workers.follower and workers.jobs.finish_followed run). The lab test with a real
worker and a ringing SIPp peer is tests/integration/test_job_inflight_lab.py.
"""

from __future__ import annotations

import json

from click.testing import CliRunner
from redis import Redis
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from bus.calls import CallRef
from bus.ledger import FollowRecord, RedisLedger
from bus.models import CallRequest
from bus.queues import enqueue
from producer.cli import cli

RID = "req-followed-0001"
OWNER = "host-a:4242:0a1b2c"


def job(*args: str) -> object:
    return CliRunner().invoke(cli, ["job", *args], catch_exceptions=False)


def queued_call(redis: Redis) -> None:
    request = CallRequest(server="kam", request_id=RID, timeout=30, **{"from": "1001", "to": "2000"})
    enqueue(redis, "kamailio", request)


def handed_to_follower(redis: Redis) -> RedisLedger:
    """What a worker leaves behind once the server accepted the call: the follow record and a job RQ
    calls finished (its return value was {"followed": true})."""
    ledger = RedisLedger(redis)
    ref = CallRef("kam", "6a1f@127.0.0.1", {"tracking_id": "0846d2"})
    record = FollowRecord(RID, None, "call", "kam", "kamailio", ref.to_json(), deadline_at=2e9, accepted_at=1.8e9)
    ledger.follow(record, OWNER)
    Job.fetch(RID, connection=redis, serializer=JSONSerializer).set_status(JobStatus.FINISHED)
    return ledger


def test_a_followed_call_is_in_flight_until_the_bus_has_its_answer(queue_mode: str) -> None:
    redis = Redis.from_url(queue_mode)
    queued_call(redis)
    assert json.loads(job(RID, "--json").stdout)["status"] == "queued"
    ledger = handed_to_follower(redis)
    assert Job.fetch(RID, connection=redis, serializer=JSONSerializer).get_status() == JobStatus.FINISHED

    ringing = job(RID, "--json")
    shown = json.loads(ringing.stdout)
    assert ringing.exit_code == 0 and shown["status"] == "in_flight" and shown["result"] is None
    assert (shown["followed_by"], shown["server"], shown["call_id"]) == (OWNER, "kam", "6a1f@127.0.0.1")
    line = job(RID).stdout
    assert "in flight" in line and OWNER in line and "finished" not in line

    answer = {"request_id": RID, "ok": True, "exit_code": 0, "message": "Call answered", "call_id": "6a1f@127.0.0.1"}
    ledger.finish(RID, answer, None, also=ledger.unfollow("kamailio", RID))
    settled = json.loads(job(RID, "--json").stdout)
    assert settled["status"] == "finished" and settled["result"] == answer
    assert job(RID).stdout.strip() == f"{RID}: finished — Call answered"


def test_a_handed_over_call_with_no_record_or_answer_left_is_unknown(queue_mode: str) -> None:
    """The follow record expires (DEDUP) with no answer, e.g. every worker gone for an hour: RQ's
    "finished" would be a lie, and so would "in flight"."""
    redis = Redis.from_url(queue_mode)
    queued_call(redis)
    handed_to_follower(redis)
    redis.delete(f"ifbus:followed:{RID}")
    shown = json.loads(job(RID, "--json").stdout)
    assert shown["status"] == "unknown" and shown["result"] is None
    assert "no answer or record" in job(RID).stdout


def test_an_unknown_job_is_still_not_found(queue_mode: str) -> None:
    looked = job("req-never-submitted", "--json")
    assert looked.exit_code == 1 and json.loads(looked.stdout)["outcome"] == "not_found"
