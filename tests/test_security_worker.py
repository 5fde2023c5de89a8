"""Issue 7 items 2 and 3: a worker survives any bytes in Redis, and a Redis restart.

Real `ifbus worker` processes against a private redis-server; the call they serve goes to a
fault-injection JSON-RPC peer (tests/faults.py) speaking Kamailio's jsonrpcs. Each test waits on
an event: a log line of the worker, a registration reappearing, an answer on the reply list.

Reproductions (as run against main before the fix): `RPUSH rq:queue:sip.kamailio 'not a job id!'`
made RQ log "found an unhandled exception, quitting…" and exit 0; after a Redis restart
`rq:workers:sip.kamailio` stayed empty and every producer refused work.
"""

from __future__ import annotations

import json
import signal
import subprocess
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from redis import Redis
from rq import Queue, Worker
from rq.serializers import JSONSerializer

from bus.models import CallRequest
from producer.cli import cli
from tests.conftest import RedisServer, WorkerProcess
from tests.faults import peer
from tests.lab import wait_for

QUEUE = "sip.kamailio"


def run(*args: str) -> object:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def add(name: str, port: int) -> None:
    result = run("add", "sip", name, "--type", "kamailio", "--auth", "token=t", "--host", "127.0.0.1",
                 "--port", str(port), "--opt", "fr_timer=1")  # fmt: skip
    assert result.exit_code == 0, result.stderr


def call_json(name: str) -> tuple[int, dict]:
    result = run("call", "sip", name, "from=1001", "to=2000", "--json", "--timeout", "20")
    return result.exit_code, json.loads(result.stdout)


def served_after(worker: WorkerProcess, event: str) -> None:
    """The worker logged `event`, is still running, and still serves a call end to end."""
    assert wait_for(lambda: event in worker.log(), 15), worker.log()[-3000:]
    assert worker.proc.poll() is None, worker.log()[-3000:]
    code, data = call_json("kam")
    assert code == 0, data
    assert data["mode"] == "queue"
    assert "unhandled exception" not in worker.log()


@pytest.mark.parametrize(
    "entry",
    ["not a job id!", "", "\xff\x00\r\n", "x" * 5000, '{"schema_version": 1, "op": "test"}'],
    ids=["bad-id", "empty", "binary", "huge", "json"],
)
def test_a_forged_queue_entry_is_skipped_and_logged(start_worker, queue_mode: str, entry: str) -> None:
    with peer() as kam:
        add("kam", kam.port)
        worker = start_worker("kamailio")
        Redis.from_url(queue_mode).rpush(f"rq:queue:{QUEUE}", entry.encode("utf-8", "surrogateescape"))
        served_after(worker, "queue.entry_skipped")


@pytest.mark.parametrize(
    "fields",
    [
        {"data": b"\xff\x00garbage", "status": "queued"},
        {"data": b"[1, 2", "created_at": "yesterday", "status": "bogus"},
        {"data": json.dumps(["workers.jobs.run", None, [], {}]).encode(), "timeout": "forever"},
        {"status": "queued"},
    ],
    ids=["binary-data", "bad-json", "bad-timeout", "no-data"],
)
def test_a_job_hash_with_garbage_does_not_stop_the_worker(start_worker, queue_mode: str, fields: dict) -> None:
    with peer() as kam:
        add("kam", kam.port)
        worker = start_worker("kamailio")
        redis = Redis.from_url(queue_mode)
        job_id = "garbage-" + uuid.uuid4().hex[:8]
        redis.hset(f"rq:job:{job_id}", mapping=fields)
        redis.rpush(f"rq:queue:{QUEUE}", job_id)
        assert wait_for(lambda: job_id in worker.log(), 15), worker.log()[-3000:]
        served_after(worker, job_id)


def test_a_payload_naming_another_reply_key_is_refused(start_worker, queue_mode: str) -> None:
    """A job whose reply_key is the worker's own queue used to have the result LPUSHed onto that
    queue, where RQ then choked on it. Only `ifbus:reply:<request_id>` is accepted."""
    with peer() as kam:
        add("kam", kam.port)
        worker = start_worker("kamailio")
        redis = Redis.from_url(queue_mode)
        payload = {"op": "test", "server": "kam", "request_id": "forged-reply-01", "reply_key": f"rq:queue:{QUEUE}"}
        queue = Queue(QUEUE, connection=redis, serializer=JSONSerializer)
        queue.enqueue("workers.jobs.run", payload, job_id="forged-reply-01", result_ttl=0)
        assert wait_for(lambda: "forged-reply-01" in worker.log() and redis.llen(f"rq:queue:{QUEUE}") == 0, 15)
        served_after(worker, "forged-reply-01")
        assert redis.llen(f"rq:queue:{QUEUE}") == 0  # nothing was pushed onto the queue
        assert not redis.exists(f"rq:queue:{QUEUE}:intermediate") or not [
            e for e in redis.lrange(f"rq:queue:{QUEUE}:intermediate", 0, -1) if e.startswith(b"{")
        ]


def test_reply_key_must_be_the_requests_own() -> None:
    ok = CallRequest.model_validate(
        {"server": "kam", "from": "1", "to": "2", "request_id": "abcdefgh", "reply_key": "ifbus:reply:abcdefgh"}
    )
    assert ok.reply_key == "ifbus:reply:abcdefgh"
    for forged in ("rq:queue:sip.kamailio", "ifbus:reply:someoneelse", "ifbus:result:abcdefgh", ""):
        with pytest.raises(ValueError, match="reply_key"):
            CallRequest.model_validate(
                {"server": "kam", "from": "1", "to": "2", "request_id": "abcdefgh", "reply_key": forged}
            )


# ---------------------------------------------------------------- item 3: Redis restarts


def _registered(url: str) -> bool:
    try:
        return Worker.count(queue=Queue(QUEUE, connection=Redis.from_url(url))) > 0
    except Exception:
        return False


@pytest.mark.parametrize("concurrency", [1, 2])
def test_workers_register_again_after_a_redis_restart(own_redis: RedisServer, tmp_path: Path,
                                                      concurrency: int) -> None:  # fmt: skip
    with peer() as kam:
        add("kam", kam.port)
        worker = WorkerProcess(["kamailio"], tmp_path / "worker.log", concurrency)
        try:
            worker.wait_ready(own_redis.url, QUEUE)
            assert call_json("kam")[0] == 0
            own_redis.kill()
            own_redis.start()  # same port, empty: every registration is gone
            assert wait_for(lambda: _registered(own_redis.url), 30), worker.log()[-3000:]
            assert worker.proc.poll() is None
            code, data = call_json("kam")
            assert code == 0, data
        finally:
            assert worker.stop() == 0, worker.log()[-3000:]


def test_a_forged_waiter_never_receives_a_result(redis_url: str) -> None:
    """Anyone with Redis access can add keys to `ifbus:waiters:<id>`; the worker pushes the result only
    to the request's own reply key and to duplicate submitters' `ifbus:reply:<id>:<12 hex>` lists."""
    from redis import Redis

    from bus import keys
    from bus.ledger import RedisLedger

    redis = Redis.from_url(redis_url)
    rid = "req-forged-waiter-1"
    good = keys.waiter_reply(rid, "0123456789ab")
    forged = ["rq:queue:sip.kamailio", keys.reply("someone-else-1"), keys.reply(rid) + ":NOT-HEX-TOKEN", "x"]
    redis.sadd(keys.waiters(rid), good, *forged)
    RedisLedger(redis).finish(rid, {"request_id": rid, "exit_code": 0}, keys.reply(rid))
    assert redis.llen(keys.reply(rid)) == 1 and redis.llen(good) == 1
    assert all(not redis.exists(key) for key in forged)


STOPPED_WHILE_STARTING = """
import os, signal, sys
from redis import Redis
from rq.serializers import JSONSerializer
from workers.worker import BusWorker

class Starting(BusWorker):
    def subscribe(self):  # right after RQ's register_birth, before RQ installs its handlers
        os.kill(os.getpid(), int(sys.argv[2]))
        super().subscribe()

worker = Starting(["sip.kamailio"], connection=Redis.from_url(sys.argv[1]), serializer=JSONSerializer)
worker.work(burst=False, logging_level="WARNING", with_scheduler=False)
print("stopped cleanly")
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_while_the_worker_registers_deregisters_it(redis_url: str, sig: signal.Signals) -> None:
    """RQ registers a worker before it installs its signal handlers: a SIGTERM in between (a pool or a
    scale-down stopping a worker that is still starting; seen beside a CPU burner) killed the process
    and left it registered, so producers kept routing jobs to it for minutes. The signal is delivered
    here exactly in that window (from the first call after RQ's register_birth)."""
    import sys

    done = subprocess.run([sys.executable, "-c", STOPPED_WHILE_STARTING, redis_url, str(int(sig))],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0 and "stopped cleanly" in done.stdout, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert Worker.count(queue=Queue("sip.kamailio", connection=Redis.from_url(redis_url))) == 0
