"""Queue mode against a private redis-server and real `ifbus worker` processes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from redis import Redis
from rq import Queue
from rq.job import JobStatus
from rq.serializers import JSONSerializer

from producer.cli import cli
from tests.conftest import BIN, RedisServer
from tests.lab import wait_for


def run(*args: str) -> object:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def add_kamailio_on_closed_port(name: str = "mykam") -> None:
    # Port 9 (discard) on loopback: nothing listens, so the adapter fails before sending.
    assert (
        run(
            "add",
            "sip",
            name,
            "--type",
            "kamailio",
            "--auth",
            "token=t",
            "--host",
            "127.0.0.1",
            "--port",
            "9",
            "--opt",
            "attempts=2",
        ).exit_code
        == 0
    )


def test_queue_mode_without_worker_says_so_at_once(queue_mode: str) -> None:
    add_kamailio_on_closed_port()
    result = run("test", "sip", "mykam", "--timeout", "30")
    assert result.exit_code == 4
    assert "no worker serves sip.kamailio: start `ifbus worker kamailio`" in result.stderr


def test_queue_mode_with_redis_down_exits_4(monkeypatch: pytest.MonkeyPatch) -> None:
    add_kamailio_on_closed_port()
    monkeypatch.setenv("IFBUS_MODE", "queue")
    monkeypatch.setenv("IFBUS_REDIS_URL", "redis://:hunter2@127.0.0.1:9/0")
    result = run("test", "sip", "mykam")
    assert result.exit_code == 4
    assert "Redis at redis://:****@127.0.0.1:9/0 is not reachable" in result.stderr
    assert "hunter2" not in result.stderr


def test_auto_mode_falls_back_to_embedded_when_no_redis_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    add_kamailio_on_closed_port()
    monkeypatch.setenv("IFBUS_MODE", "auto")
    monkeypatch.setattr("bus.settings.DEFAULT_REDIS_URL", "redis://127.0.0.1:9/0")
    result = run("test", "sip", "mykam", "--json")
    assert "ifbus: embedded mode (no Redis at redis://127.0.0.1:9/0)" in result.stderr
    data = json.loads(result.stdout)
    assert data["mode"] == "inline"
    assert data["outcome"] == "unreachable" and result.exit_code == 4
    assert data["attempts"] == {"mykam": 2}


def test_a_real_worker_answers_through_the_reply_key(start_worker, queue_mode: str) -> None:
    add_kamailio_on_closed_port()
    worker = start_worker("kamailio")
    result = run("test", "sip", "mykam", "--json", "--timeout", "30")
    data = json.loads(result.stdout)
    assert data["mode"] == "queue"
    assert data["outcome"] == "unreachable"
    assert "cannot connect to http://127.0.0.1:9/RPC" in data["message"]
    assert result.exit_code == 4
    logs = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
    assert any(entry.get("event") == "job.failed" for entry in logs)


def test_no_wait_prints_the_job_id_and_job_looks_it_up(start_worker, queue_mode: str) -> None:
    add_kamailio_on_closed_port()
    start_worker("kamailio")
    queued = run("test", "sip", "mykam", "--no-wait", "--request-id", "req-0001-abcd")
    assert queued.exit_code == 0
    assert queued.stdout.strip() == "req-0001-abcd"
    redis = Redis.from_url(queue_mode)
    assert wait_for(lambda: redis.exists("ifbus:result:req-0001-abcd") or None, 10)
    looked = run("job", "req-0001-abcd", "--json")
    data = json.loads(looked.stdout)
    assert data["status"] == "finished"
    assert data["result"]["outcome"] == "unreachable"
    assert run("job", "req-never-submitted").exit_code == 1


def test_payload_on_redis_carries_no_credentials(queue_mode: str, start_worker) -> None:
    assert (
        run("add", "sip", "mykam", "--type", "kamailio", "--auth", "token=s3cr3t-token-value", "--port", "9").exit_code
        == 0
    )
    # No worker for kamailio is needed to inspect the enqueued payload: start one for another
    # queue so the producer's liveness check passes, then read the job as another service would.
    redis = Redis.from_url(queue_mode)
    start_worker("kamailio")
    run("test", "sip", "mykam", "--no-wait", "--request-id", "req-secret-check")
    raw = b"".join(v for k in redis.keys("*") if redis.type(k) == b"hash" for v in redis.hgetall(k).values())
    assert b"s3cr3t-token-value" not in raw
    assert b"req-secret-check" in b"".join(redis.keys("*"))


def test_worker_refuses_a_job_naming_another_function(redis_url: str, tmp_path: Path) -> None:
    """RQ would import and run any dotted name in a job; ours must refuse all but workers.jobs.run."""
    redis = Redis.from_url(redis_url)
    target = tmp_path / "pwned"
    queue = Queue("sip.kamailio", connection=redis, serializer=JSONSerializer)
    job = queue.enqueue("os.mkdir", str(target))
    proc = subprocess.run(
        [str(BIN / "ifbus"), "worker", "kamailio", "--burst"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "IFBUS_REDIS_URL": redis_url},
    )
    assert proc.returncode == 0, proc.stderr
    assert not target.exists()
    assert job.get_status(refresh=True) == JobStatus.FAILED
    assert "job.refused" in proc.stderr and "os.mkdir" in proc.stderr


def test_redis_gone_for_good_while_a_caller_waits_is_outcome_unknown(
    own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real redis-server of this test's own is killed during the caller's blocking pop."""
    add_kamailio_on_closed_port()
    # Nobody consumes the queue, so the caller sits in BLPOP; pretend a worker is registered.
    monkeypatch.setattr("rq.Worker.count", classmethod(lambda cls, *a, **k: 1))
    killer = own_redis.kill_when_a_client_blocks()
    result = run("test", "sip", "mykam", "--timeout", "3", "--request-id", "req-redis-dies")
    killer.join(30)
    assert result.exit_code == 6, result.stderr
    assert "Redis was lost while waiting" in result.stderr and "ifbus job req-redis-dies" in result.stderr


def test_a_duplicate_waiter_reads_the_stored_result_when_the_lease_goes_first(redis_url: str) -> None:
    """The worker stores the result and drops the lease in one transaction, then fills duplicate
    submitters' lists: a waiter that sees the lease gone before its list is filled must answer with
    the stored result, not "the worker stopped without answering" (seen once beside a CPU burner)."""
    import threading

    from redis import Redis

    from bus import keys
    from bus.ledger import RedisLedger
    from bus.models import TestRequest
    from bus.settings import Settings
    from producer.api import Producer

    redis = Redis.from_url(redis_url)
    request = TestRequest(server="kam", request_id="req-dup-lease-1", timeout=10)
    redis.set(keys.lease(request.request_id), "kam", px=10_000)
    result = {"request_id": request.request_id, "op": "test", "server": "kam", "outcome": "ok", "exit_code": 0,
              "message": "kamailio 5.6.3"}  # fmt: skip

    def worker_finishes() -> None:  # the first transaction of RedisLedger.finish, nothing pushed to the waiter
        pipe = redis.pipeline()
        pipe.set(keys.result(request.request_id), json.dumps(result))
        pipe.delete(keys.lease(request.request_id))
        pipe.execute()

    class Ledger(RedisLedger):
        """Notes when the waiter has seen the worker's lease: only then may the worker finish."""

        seen = threading.Event()

        def read_lease(self, request_id: str) -> str | None:
            lease = super().read_lease(request_id)
            if lease is not None:
                self.seen.set()
            return lease

    def finish_once_seen() -> None:
        if Ledger.seen.wait(30):
            worker_finishes()

    finisher = threading.Thread(target=finish_once_seen)
    finisher.start()
    waiter_key = keys.waiter_reply(request.request_id, "0123456789ab")
    producer = Producer(Settings(mode="queue", redis_url=redis_url))
    answer = producer._wait(redis, Ledger(redis), waiter_key, request, "sip.kamailio")
    finisher.join()
    assert Ledger.seen.is_set()
    assert answer.exit_code == 0 and answer.message == "kamailio 5.6.3"
