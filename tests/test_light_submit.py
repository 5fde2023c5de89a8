"""The CLI's light queue-mode submit (producer.light) queues the same job as the full path.

The full path: pydantic models, bus.routing, bus.rqwire's record on redis-py. The light one: the same
rule functions, bus.rqwire's record, bus.resp. A real `ifbus worker` runs what the light path queued.
"""

from __future__ import annotations

import json
import threading
import zlib
from typing import Any

import pytest
from click.testing import CliRunner
from redis import Redis

from bus import keys, models, resp, rqwire
from bus.queues import rq_enqueue
from producer import light
from producer.cli import cli
from tests.conftest import RedisServer
from tests.lab import wait_for

MODELS = {"test": models.TestRequest, "call": models.CallRequest, "hangup": models.HangupRequest}


def run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def add_kamailio_on_closed_port(name: str = "mykam") -> None:
    """Port 9 (discard) on loopback: nothing listens, so the worker's adapter fails at once."""
    added = run("add", "sip", name, "--type", "kamailio", "--auth", "token=t", "--host", "127.0.0.1", "--port", "9",
                "--opt", "attempts=1")  # fmt: skip
    assert added.exit_code == 0, added.stderr


VALID = [
    ("test", {"server": "kam"}, 90.0, "ifbus:reply:RID"),
    ("test", {"server": "k.1_-x"}, 0.1, None),
    ("call", {"server": "kam", "from": "1001", "to": "sip:2000@x", "until": "accepted", "extras": {"twiml": "<R/>"}},
     3600.0, "ifbus:reply:RID"),
    ("hangup", {"server": "kam", "call_id": "abc-123@host", "extras": {}}, 30.0, "ifbus:reply:RID"),
]  # fmt: skip


@pytest.mark.parametrize(("op", "fields", "timeout", "reply"), VALID)
def test_payload_is_what_the_model_dumps(op: str, fields: dict[str, Any], timeout: float, reply: str | None) -> None:
    rid = "0123456789abcdef0123456789abcdef"
    reply = reply and reply.replace("RID", rid)
    payload = light.request_payload(op, fields, rid, timeout, reply)
    assert payload is not None
    model = MODELS[op].model_validate({**fields, "request_id": rid, "timeout": timeout, "reply_key": reply})
    dumped = model.rerouted(submitted_at=payload["routing"]["submitted_at"]).model_dump(mode="json", by_alias=True)
    assert json.dumps(payload) == json.dumps(dumped)  # same fields, values and order (RQ's description)


INVALID = [
    ("test", {"server": "../etc"}),
    ("test", {"server": ""}),
    ("call", {"server": "kam", "from": "1001\r\nAction: x", "to": "2000", "until": "answered", "extras": {}}),
    ("call", {"server": "kam", "from": "1001", "to": "2000", "until": "whenever", "extras": {}}),
    ("call", {"server": "kam", "from": "1001", "to": "2000", "until": "answered", "extras": {"9bad": "x"}}),
    ("hangup", {"server": "kam", "call_id": "id with spaces", "extras": {}}),
]


@pytest.mark.parametrize(("op", "fields"), INVALID)
def test_what_a_model_refuses_goes_to_the_full_path(op: str, fields: dict[str, Any]) -> None:
    assert light.request_payload(op, fields, "0123456789abcdef", 10.0, None) is None
    with pytest.raises(ValueError):
        MODELS[op].model_validate({**fields, "timeout": 10.0})


def test_rq_record_is_the_one_rq_writes(redis_url: str) -> None:
    """The same request queued by RQ (bus.queues.rq_enqueue) and by bus.rqwire: the same keys and the
    same hash, field by field (the two stamps aside), and RQ reads the light one back as its own."""
    from rq.job import Job
    from rq.serializers import JSONSerializer

    redis = Redis.from_url(redis_url)
    client = resp.Client(resp.address(redis_url), 5.0)  # type: ignore[arg-type]
    stored = {}
    base = light.request_payload("call", dict(VALID[2][1]), "RID", 45.0, None)
    assert base is not None
    for rid, via_rq in (("00000000000000000000000000000001", True), ("00000000000000000000000000000002", False)):
        payload = {**base, "request_id": rid, "reply_key": keys.reply(rid)}
        if via_rq:
            dumped = models.CallRequest.model_validate(payload).model_dump(mode="json", by_alias=True)
            rq_enqueue(redis, "asterisk", dumped, 45.0)
        else:
            rqwire.enqueue(client, "sip.asterisk", payload, 45.0)
        job = {k.decode(): v for k, v in redis.hgetall(f"rq:job:{rid}").items()}
        job["data"] = json.loads(zlib.decompress(job["data"]))
        job["data"][2][0]["request_id"] = job["data"][2][0]["reply_key"] = "RID"
        job["description"] = job["description"].replace(rid.encode(), b"RID")
        for stamp in ("created_at", "enqueued_at"):
            assert len(job.pop(stamp)) == len(b"2026-11-30T20:06:16.541428Z")
        assert redis.ttl(f"rq:job:{rid}") == -1
        stored[via_rq] = job
    assert stored[True] == stored[False]
    assert redis.smembers("rq:queues") == {b"rq:queue:sip.asterisk"}
    assert redis.lrange(keys.rq_queue("asterisk"), 0, -1) == [b"00000000000000000000000000000001",
                                                              b"00000000000000000000000000000002"]  # fmt: skip
    job = Job.fetch("00000000000000000000000000000002", connection=redis, serializer=JSONSerializer)
    assert (job.func_name, job.origin, job.timeout, job.get_status()) == (rqwire.JOB_FUNCTION, "sip.asterisk", 75,
                                                                          "queued")  # fmt: skip
    assert job.args[0]["from"] == "1001" and job.created_at is not None


def test_rq_key_names_are_rqs() -> None:
    from rq import worker_registration
    from rq.job import Job
    from rq.queue import Queue

    assert keys.rq_job("j1") == Job.key_for("j1") and Job.redis_job_namespace_prefix == keys.RQ_JOB_PREFIX
    assert Queue.redis_queues_keys == keys.RQ_QUEUES
    assert keys.rq_workers("q") == worker_registration.WORKERS_BY_QUEUE_KEY % "q"
    assert Queue.redis_queue_namespace_prefix == keys.RQ_QUEUE_PREFIX


def test_a_real_worker_runs_the_light_job_and_answers_as_for_the_full_path(
    start_worker, queue_mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_kamailio_on_closed_port()
    start_worker("kamailio")
    full = json.loads(run("test", "sip", "mykam", "--json", "--request-id", "req-full-path-1").stdout)

    def no_full_path(*args: Any) -> None:
        raise AssertionError("the light path handed the request to the full path")

    monkeypatch.setattr("producer.cli._submit_full", no_full_path)
    result = run("test", "sip", "mykam", "--json", "--timeout", "30")
    assert result.exit_code == 4, result.stderr
    answer = json.loads(result.stdout)
    assert answer["mode"] == "queue" and "cannot connect to http://127.0.0.1:9/RPC" in answer["message"]
    for differs in ("request_id", "message"):
        answer.pop(differs), full.pop(differs)
    assert answer == full
    stored = json.loads(Redis.from_url(queue_mode).get(keys.result(str(json.loads(result.stdout)["request_id"]))))
    assert stored["outcome"] == "unreachable"


def test_light_path_handles_no_wait(start_worker, queue_mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    add_kamailio_on_closed_port()
    start_worker("kamailio")
    monkeypatch.setattr("producer.cli._submit_full", None)
    queued = run("test", "sip", "mykam", "--no-wait", "--json")
    rid = json.loads(queued.stdout)["job_id"]
    redis = Redis.from_url(queue_mode)
    assert wait_for(lambda: redis.exists(keys.result(rid)) or None, 10)
    assert json.loads(redis.get(keys.result(rid)))["request_id"] == rid


def test_unknown_server_and_no_worker_are_worded_as_before(queue_mode: str) -> None:
    assert run("test", "sip", "nosuch").exit_code == 1
    add_kamailio_on_closed_port()
    result = run("test", "sip", "mykam")  # no worker: the full path says so and drops its claim
    assert result.exit_code == 4 and "no worker serves sip.kamailio" in result.stderr


def test_redis_killed_while_the_light_path_waits_is_outcome_unknown(
    own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_kamailio_on_closed_port()
    Redis.from_url(own_redis.url).sadd(keys.rq_workers("sip.kamailio"), "rq:worker:pretend")  # served, idle
    monkeypatch.setattr("producer.cli._submit_full", None)
    queued = threading.Event()
    original = rqwire.enqueue

    def enqueue_and_note(*args: Any) -> None:
        original(*args)
        queued.set()

    monkeypatch.setattr(rqwire, "enqueue", enqueue_and_note)
    killer = own_redis.kill_when_a_client_blocks()  # the light path's BLPOP on its reply key
    result = run("test", "sip", "mykam", "--timeout", "3")
    killer.join(30)
    assert queued.is_set()
    assert result.exit_code == 6, result.stderr
    assert "Redis was lost while waiting" in result.stderr and "ifbus job " in result.stderr


def test_resp_client_reports_error_replies_and_reconnects(redis_url: str) -> None:
    client = resp.Client(resp.address(redis_url), 5.0)  # type: ignore[arg-type]
    client.set("k", "v")
    with pytest.raises(resp.RespError, match="WRONGTYPE"):
        client.lpop("k")
    client.execute_command("CLIENT", "KILL", "SKIPME", "no")  # every connection, this one included
    with pytest.raises(OSError):
        client.get("k")
    assert client.get("k") == b"v"  # a new connection


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6380/2", resp.Address("127.0.0.1", 6380, None, None, None, 2)),
        ("redis://u:p%40ss@h", resp.Address("h", 6379, None, "u", "p@ss", 0)),
        ("unix:///run/redis.sock", resp.Address(path="/run/redis.sock")),
        ("rediss://h:6380/0", None),
        ("redis+sentinel://h:26379/mymaster", None),
        ("redis://h:6379/0?socket_timeout=1", None),
        ("redis://h:99999/0", None),
    ],
)
def test_urls_redis_py_alone_speaks_go_to_the_full_path(url: str, expected: resp.Address | None) -> None:
    assert resp.address(url) == expected
