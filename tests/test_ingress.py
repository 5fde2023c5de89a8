"""`ifbus ingress` on a private redis-server: what a producer in any language gets for each kind of
message (docs/producers.md), recovery of a killed ingress, SIGTERM, and a fuzz of raw input.

A worker's presence is its real RQ registration (`Worker.register_birth`), so the no-worker check
runs the same code as with a live `ifbus worker`; jobs are read back from RQ's own queue.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import Redis
from rq import Queue, Worker
from rq.serializers import JSONSerializer

from bus import keys
from bus.errors import InvalidInput
from bus.ledger import RedisLedger
from bus.models import Routing, json_schemas
from bus.models import TestRequest as PingRequest
from bus.registry import open_registry
from bus.server import ServerEntry
from producer.api import Producer
from producer.ingress import Ingress
from tests.conftest import BIN
from tests.lab import wait_for

RID = "req-0001-abcd"


@pytest.fixture
def redis(queue_mode: str) -> Redis:
    open_registry().add("mykam", ServerEntry.build("kamailio", {"token": "t"}, "127.0.0.1", 9))
    return Redis.from_url(queue_mode)


@pytest.fixture
def worker(redis: Redis) -> Iterator[Worker]:
    """A registered RQ worker on sip.kamailio (it never runs jobs: the test reads them from the queue)."""
    w = Worker([Queue("sip.kamailio", connection=redis, serializer=JSONSerializer)], connection=redis)
    w.register_birth()
    yield w
    w.register_death()


@pytest.fixture
def ingress(redis: Redis) -> Ingress:
    ing = Ingress(redis, open_registry(), ingress_id="test-ingress")
    ing.start()
    return ing


def push(redis: Redis, message: Any) -> None:
    redis.lpush(keys.REQUESTS, message if isinstance(message, bytes | str) else json.dumps(message))


def request(rid: str = RID, **fields: Any) -> dict[str, Any]:
    return {"op": "test", "server": "mykam", "request_id": rid, "reply_key": keys.reply(rid), **fields}


def reply(redis: Redis, rid: str = RID) -> dict[str, Any]:
    popped = redis.blpop([keys.reply(rid)], timeout=5)
    assert popped is not None, "no answer on the reply key"
    return json.loads(popped[1])


def dead(redis: Redis) -> list[dict[str, Any]]:
    return [json.loads(e) for e in redis.lrange(keys.REQUESTS_DEAD, 0, -1)]


def queued_payloads(redis: Redis) -> list[dict[str, Any]]:
    queue = Queue("sip.kamailio", connection=redis, serializer=JSONSerializer)
    return [job.args[0] for job in queue.get_jobs()]


def test_a_valid_request_is_queued_like_the_python_producer_would(
    redis: Redis, worker: Worker, ingress: Ingress
) -> None:
    push(redis, request(op="call", **{"from": "1001", "to": "2000"}))
    assert ingress.step(block=1) and ingress.counts["queued"] == 1
    (payload,) = queued_payloads(redis)
    assert (payload["request_id"], payload["reply_key"], payload["from"]) == (RID, keys.reply(RID), "1001")
    assert payload["routing"]["submitted_at"] == pytest.approx(time.time(), abs=5)
    assert redis.llen(ingress.processing) == 0 and redis.llen(keys.REQUESTS) == 0


def test_not_json_is_parked_with_the_reason_and_the_message(redis: Redis, ingress: Ingress) -> None:
    push(redis, b'{"op": "test", \xff')
    ingress.step(block=1)
    (entry,) = dead(redis)
    assert entry["reason"].startswith("not JSON") and entry["message"] == '{"op": "test", \\xff'
    assert entry["ingress"] == "test-ingress" and redis.llen(ingress.processing) == 0


def test_json_that_is_not_an_object_is_parked(redis: Redis, ingress: Ingress) -> None:
    push(redis, "[1, 2]")
    ingress.step(block=1)
    assert dead(redis)[0]["reason"] == "not a JSON object (got list)"


def test_deep_nesting_and_oversized_messages_are_parked_unread(redis: Redis, ingress: Ingress) -> None:
    push(redis, b"[" * 20_000 + b"]" * 20_000)
    push(redis, json.dumps(request(extras={"pad": "x" * 70_000})))
    ingress.step(block=1)
    reasons = sorted(entry["reason"] for entry in dead(redis))
    assert reasons[0] == "larger than 65536 bytes" and reasons[1].startswith("not JSON (RecursionError")
    assert all(len(entry["message"]) <= 4096 for entry in dead(redis))


def test_a_foreign_reply_key_is_refused_and_parked(redis: Redis, worker: Worker, ingress: Ingress) -> None:
    push(redis, request(reply_key="sip.kamailio"))  # would make a worker push into an RQ queue
    ingress.step(block=1)
    assert "is not ifbus:reply:<request_id>" in dead(redis)[0]["reason"]
    assert queued_payloads(redis) == [] and redis.llen("sip.kamailio") == 0


def test_schema_invalid_with_a_reply_key_is_answered_2_naming_every_field(redis: Redis, ingress: Ingress) -> None:
    push(redis, request(op="call", to="2000\r\nX-Injected: 1", timeout=-1))
    ingress.step(block=1)
    answer = reply(redis)
    assert (answer["exit_code"], answer["outcome"], answer["request_id"], answer["op"]) == (2, "invalid", RID, "call")
    assert "call.from: Field required" in answer["message"]
    assert "call.timeout" in answer["message"] and "call.to" in answer["message"]
    assert dead(redis) == [] and redis.llen(ingress.processing) == 0


def test_schema_invalid_without_a_reply_key_is_parked(redis: Redis, ingress: Ingress) -> None:
    push(redis, {"op": "dial", "server": "mykam"})
    ingress.step(block=1)
    assert dead(redis)[0]["reason"].startswith("Invalid request: ")


def test_routing_state_from_a_producer_is_refused(redis: Redis, worker: Worker, ingress: Ingress) -> None:
    push(redis, request(routing={"tried": ["mykam"]}))
    ingress.step(block=1)
    answer = reply(redis)
    assert answer["exit_code"] == 2 and "routing: internal to the bus" in answer["message"]
    with pytest.raises(InvalidInput, match="routing"):
        Producer().submit(PingRequest(server="mykam", routing=Routing(tried=["mykam"])), wait=False)


def test_the_schema_offers_producers_no_routing_state() -> None:
    text = json.dumps(json_schemas()["request"])
    for internal in ("routing", "tried", "attempts", "last_outcome", "submitted_at"):
        assert internal not in text


def test_an_unknown_server_is_answered_1(redis: Redis, ingress: Ingress) -> None:
    push(redis, request(server="nosuch"))
    ingress.step(block=1)
    answer = reply(redis)
    assert (answer["exit_code"], answer["message"]) == (1, "Not found: nosuch")


def test_no_worker_is_answered_4_at_once_and_the_id_stays_usable(redis: Redis, ingress: Ingress) -> None:
    push(redis, request())
    ingress.step(block=1)
    answer = reply(redis)
    assert answer["exit_code"] == 4
    assert answer["message"].startswith("no worker serves sip.kamailio: start `ifbus worker kamailio`")
    w = Worker([Queue("sip.kamailio", connection=redis)], connection=redis)
    w.register_birth()
    push(redis, request())  # the claim was dropped: the same id is queued once a worker runs
    ingress.step(block=1)
    assert [p["request_id"] for p in queued_payloads(redis)] == [RID]
    w.register_death()


def test_a_duplicate_waits_for_the_first_answer_one_job_two_answers(
    redis: Redis, worker: Worker, ingress: Ingress
) -> None:
    push(redis, request())
    push(redis, request())
    ingress.step(block=1)
    ingress.step(block=1)
    assert ingress.counts == {"queued": 1, "joined": 1}
    assert len(queued_payloads(redis)) == 1
    assert redis.llen(ingress.processing) == 1  # the duplicate is kept until answered
    result = {"request_id": RID, "op": "test", "server": "mykam", "outcome": "ok", "exit_code": 0, "message": "up"}
    RedisLedger(redis).finish(RID, result, keys.reply(RID))  # what the worker does
    ingress.step(block=0.1)
    assert [reply(redis)["message"], reply(redis)["message"]] == ["up", "up"]
    assert redis.llen(ingress.processing) == 0


def test_a_duplicate_of_an_answered_request_gets_the_stored_answer_at_once(redis: Redis, worker: Worker,
                                                                            ingress: Ingress) -> None:  # fmt: skip
    push(redis, request())
    ingress.step(block=1)
    RedisLedger(redis).finish(RID, {"request_id": RID, "message": "first"}, None)
    push(redis, request())
    ingress.step(block=1)
    assert reply(redis)["message"] == "first" and len(queued_payloads(redis)) == 1


def test_the_python_producer_and_the_ingress_share_one_dedupe(redis: Redis, worker: Worker, ingress: Ingress) -> None:
    Producer().submit(PingRequest(server="mykam", request_id=RID), wait=False)
    push(redis, request())
    ingress.step(block=1)
    assert ingress.counts["joined"] == 1 and len(queued_payloads(redis)) == 1


def test_a_fire_and_forget_request_is_queued_without_a_reply_key(
    redis: Redis, worker: Worker, ingress: Ingress
) -> None:
    push(redis, {"op": "test", "server": "mykam"})
    ingress.step(block=1)
    (payload,) = queued_payloads(redis)
    assert payload["reply_key"] is None and len(payload["request_id"]) == 32


def test_a_started_ingress_recovers_what_a_dead_one_left(redis: Redis, worker: Worker) -> None:
    redis.sadd(keys.INGRESSES, "dead-one")  # its heartbeat key expired: no ifbus:ingress:dead-one
    redis.lpush(keys.requests_processing("dead-one"), json.dumps(request("req-0001-old")))
    redis.lpush(keys.requests_processing("dead-one"), json.dumps(request("req-0002-new")))
    redis.sadd(keys.INGRESSES, "live-one")
    redis.set(keys.ingress("live-one"), "1", ex=10)
    redis.lpush(keys.requests_processing("live-one"), json.dumps(request("req-0003-busy")))
    ing = Ingress(redis, open_registry(), ingress_id="new-one")
    ing.start()
    assert ing.step(block=1) and not ing.step(block=0.1)
    assert ing.counts == {"queued": 2}
    assert [p["request_id"] for p in queued_payloads(redis)] == ["req-0001-old", "req-0002-new"]  # oldest first
    assert redis.llen(keys.requests_processing("live-one")) == 1  # a live ingress's work is left alone
    assert redis.smembers(keys.INGRESSES) == {b"live-one", b"new-one"}


def test_a_busy_list_is_drained_in_batches_each_message_disposed_of_on_its_own(
    redis: Redis, worker: Worker, ingress: Ingress
) -> None:
    for message in (request("req-batch-01"), b"nope", request("req-batch-02", op="dial"), request("req-batch-01"),
                    request("req-batch-03", server="nosuch"), {"op": "test", "server": "mykam"}):  # fmt: skip
        push(redis, message)
    assert ingress.step(block=1) and not ingress.step(block=0.05)
    assert ingress.counts == {"queued": 2, "parked": 1, "answered": 2, "joined": 1}
    assert reply(redis, "req-batch-02")["exit_code"] == 2 and reply(redis, "req-batch-03")["exit_code"] == 1
    first, fire_and_forget = (p["request_id"] for p in queued_payloads(redis))
    assert first == "req-batch-01" and len(fire_and_forget) == 32
    assert redis.lrange(ingress.processing, 0, -1) == [json.dumps(request("req-batch-01")).encode()]  # the join


def test_a_batch_redis_interrupted_is_handled_again_not_lost(
    redis: Redis, worker: Worker, ingress: Ingress, monkeypatch: pytest.MonkeyPatch
) -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    real = ingress.router.admit_many
    calls = []

    def flaky(requests: list[Any]) -> list[Any]:
        calls.append(len(requests))
        if len(calls) == 1:
            raise RedisConnectionError("Connection reset by peer")
        return real(requests)

    monkeypatch.setattr(ingress.router, "admit_many", flaky)
    push(redis, request("req-flaky-01"))
    push(redis, request("req-flaky-02"))
    with pytest.raises(RedisConnectionError):
        ingress.step(block=1)
    assert redis.llen(ingress.processing) == 2  # still held, not lost
    assert ingress.step(block=1) and calls == [2, 2]
    assert sorted(p["request_id"] for p in queued_payloads(redis)) == ["req-flaky-01", "req-flaky-02"]
    assert redis.llen(ingress.processing) == 0


def test_sigterm_hands_waiting_duplicates_back_and_exits_0(redis: Redis, worker: Worker, tmp_path: Path) -> None:
    log = tmp_path / "ingress.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(BIN / "ifbus"), "ingress"], stderr=out, env=dict(os.environ))
    try:
        assert wait_for(lambda: b"ingress.ready" in log.read_bytes(), 15), log.read_text()
        push(redis, request())
        push(redis, request())  # a duplicate: waits in the ingress for the first one's answer
        assert wait_for(lambda: redis.llen(keys.REQUESTS) == 0 and len(queued_payloads(redis)) == 1, 10)
        (member,) = redis.smembers(keys.INGRESSES)
        assert wait_for(lambda: redis.llen(keys.requests_processing(member.decode())) == 1, 10)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert redis.lrange(keys.REQUESTS, 0, -1) == [json.dumps(request()).encode()]  # for another ingress
    assert redis.smembers(keys.INGRESSES) == set() and redis.keys("ifbus:ingress:*") == []
    assert '"event": "ingress.stopped"' in log.read_text()


def test_without_redis_the_command_exits_4_without_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IFBUS_REDIS_URL", "redis://127.0.0.1:9/0")
    result = subprocess.run([str(BIN / "ifbus"), "ingress"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 4 and "not reachable (the ingress needs it)" in result.stderr
    assert "Traceback" not in result.stderr


def _json_values() -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    return st.recursive(
        scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    )


FIELDS = ("op", "server", "request_id", "reply_key", "timeout", "from", "to", "until", "extras", "call_id", "routing")


@st.composite
def near_requests(draw: st.DrawFn) -> bytes:
    """Mostly-well-formed requests with some fields replaced by anything JSON can hold."""
    base = request(op=draw(st.sampled_from(["test", "call", "hangup", "x"])), **{"from": "1001", "to": "2000"})
    for field in draw(st.lists(st.sampled_from(FIELDS), max_size=4)):
        base[field] = draw(_json_values())
    return json.dumps(base).encode()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=300) | near_requests())
def test_no_input_stops_the_ingress_and_each_message_is_disposed_of(redis: Redis, worker: Worker, raw: bytes) -> None:
    ing = Ingress(redis, open_registry(), ingress_id="fuzz")
    redis.lpush(keys.REQUESTS, raw)
    assert ing.step(block=1)
    label = next(iter(ing.counts))
    assert label in {"queued", "answered", "parked", "joined", "duplicate"}
    assert redis.llen(ing.processing) == (1 if label == "joined" else 0)
    redis.delete(ing.processing)
