"""Delivery guarantees: backoff, round-robin failover, shared health, and never a call placed twice.

Peers are fault-injection JSON-RPC servers on loopback (tests/faults.py); assertions count the
requests each peer received. Embedded mode runs in-process; queue mode uses a private
redis-server and real `ifbus worker` processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

import pytest
from click.testing import CliRunner
from redis import Redis
from rq import Queue, Worker

from bus.health import OPEN, RedisHealth
from bus.server import ServerEntry
from producer.cli import cli
from tests.conftest import BIN
from tests.faults import closed_port, peer
from tests.lab import wait_for


def run(*args: str) -> object:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def add(name: str, port: int, *opts: str, pool: str | None = None) -> None:
    args = ["add", "sip", name, "--type", "kamailio", "--auth", "token=t", "--host", "127.0.0.1",
            "--port", str(port), "--opt", "fr_timer=1", *opts]  # fmt: skip
    if pool:
        args += ["--pool", pool]
    result = run(*args)
    assert result.exit_code == 0, result.stderr


def call_json(name: str, *extra: str) -> tuple[int, dict]:
    result = run("call", "sip", name, "from=1001", "to=2000", "--json", *extra)
    return result.exit_code, json.loads(result.stdout)


# ------------------------------------------------------------------ pool order


def test_round_robin_order_starts_at_the_named_server_and_wraps() -> None:
    from bus.failover import pool_order

    kam = ServerEntry.build("kamailio", {})
    other = ServerEntry.build("kamailio", {}, pool="edge")
    entries = {"a": kam, "b": kam, "x": other, "c": kam, "y": other}
    assert pool_order(entries, "a") == ["a", "b", "c"]
    assert pool_order(entries, "c") == ["c", "a", "b"]
    assert pool_order(entries, "y") == ["y", "x"]


# ------------------------------------------------------------------ failover (embedded mode)


def test_refused_server_fails_over_to_the_next_in_the_pool() -> None:
    with peer() as good:
        add("down", closed_port())
        add("up", good.port)
        code, data = call_json("down")
    assert code == 0, data
    assert data["server"] == "up" and data["call_id"] == "fake-call-id@127.0.0.1"
    assert data["attempts"] == {"down": 3, "up": 1}
    assert "cannot connect" in data["errors"]["down"]
    assert good.methods("dlg.bridge_dlg") == ["dlg.bridge_dlg"]


def test_503_with_retry_after_is_retried_then_fails_over() -> None:
    with peer(default="503", retry_after=0) as shedding, peer() as good:
        add("busy", shedding.port)
        add("spare", good.port)
        code, data = call_json("busy")
    assert code == 0
    assert data["server"] == "spare"
    assert len(shedding.received) == 3  # the whole attempt budget, then failover
    assert len(good.methods("dlg.bridge_dlg")) == 1


def test_429_retry_after_is_honoured_on_the_same_server() -> None:
    with peer(script=["429"], retry_after=1) as limited:
        add("limited", limited.port)
        code, data = call_json("limited")
    assert code == 0 and data["server"] == "limited"
    first, second = limited.received[0], limited.received[1]
    assert first.method == second.method == "dlg.bridge_dlg"
    assert 0.9 <= second.at - first.at < 3.0  # Retry-After: 1 won over the 2 ms backoff


def test_auth_failure_is_not_retried_opens_the_breaker_and_fails_over() -> None:
    with peer(default="401") as locked, peer() as good:
        add("locked", locked.port)
        add("open", good.port)
        code, data = call_json("locked")
        assert code == 0 and data["server"] == "open", data
        assert len(locked.received) == 1  # no retry on an auth failure
        assert "check credentials: --auth token=… realm=…" in data["errors"]["locked"]
        code, data = call_json("locked")  # the breaker now skips it
        assert data["attempts"] == {"open": 1}
        assert len(locked.received) == 1


def test_auth_failure_on_every_server_exits_3() -> None:
    with peer(default="401") as one, peer(default="401") as two:
        add("one", one.port)
        add("two", two.port)
        result = run("call", "sip", "one", "from=1", "to=2")
    assert result.exit_code == 3
    assert "Authentication refused by two" in result.stderr


def test_connection_failed_on_every_server_exits_4_naming_attempts() -> None:
    add("d1", closed_port())
    add("d2", closed_port())
    result = run("call", "sip", "d1", "from=1", "to=2")
    assert result.exit_code == 4
    assert "attempts: d1 ×3, d2 ×3" in result.stderr


def test_a_rejected_call_never_fails_over() -> None:
    with peer(codes={"a": 486}) as busy, peer() as spare:
        add("first", busy.port)
        add("second", spare.port)
        code, data = call_json("first")
    assert code == 5 and data["sip_code"] == 486
    assert spare.received == []  # another server would ring the same person again


@pytest.mark.parametrize("fault", ["silent", "reset"])
def test_ambiguous_originate_is_never_resent(fault: str) -> None:
    with peer(default=fault) as flaky, peer() as spare:
        add("flaky", flaky.port, "read_timeout=0.3")
        add("spare", spare.port)
        code, data = call_json("flaky")
    assert code == 6, data
    assert data["outcome"] == "ambiguous" and data["server"] == "flaky"
    assert flaky.methods() == ["dlg.bridge_dlg"]  # sent once, never again
    assert spare.received == []


def test_test_is_idempotent_and_retries_after_an_ambiguous_failure() -> None:
    with peer(script=["silent", "reset"]) as flaky:
        add("flaky", flaky.port, "read_timeout=0.3")
        result = run("test", "sip", "flaky", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["attempts"] == {"flaky": 3}
    assert flaky.methods() == ["core.version"] * 3


def test_test_never_fails_over_it_reports_the_named_server() -> None:
    with peer() as good:
        add("down", closed_port())
        add("up", good.port)
        result = run("test", "sip", "down")
    assert result.exit_code == 4
    assert good.received == []


def test_hangup_reaches_the_server_that_carries_the_call() -> None:
    with peer() as good:
        add("down", closed_port())
        add("up", good.port)
        _, data = call_json("down")
        assert data["server"] == "up"
        result = run("hangup", "sip", "down", f"call_id={data['call_id']}", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["server"] == "up"
    assert good.methods("dlg.end_dlg") == ["dlg.end_dlg"]


# ------------------------------------------------------------------ shared health (Redis)


def test_breaker_opens_skips_then_lets_exactly_one_trial_through(redis_url: str) -> None:
    health = RedisHealth(Redis.from_url(redis_url))
    for _ in range(2):
        health.failure("kam1", "refused", threshold=3, cooldown=0.5)
    assert health.allow("kam1", 0.5)  # 2 of 3: still closed
    health.failure("kam1", "refused", threshold=3, cooldown=0.5)
    assert health.get("kam1").state == OPEN
    assert not health.allow("kam1", 0.5)
    time.sleep(0.55)
    verdicts: list[bool] = []
    threads = [threading.Thread(target=lambda: verdicts.append(health.allow("kam1", 0.5))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(verdicts) == [False] * 7 + [True]  # half-open: one trial, whoever gets there first
    health.success("kam1")
    assert health.get("kam1").state == "closed" and health.allow("kam1", 0.5)


def test_all_servers_open_tries_the_named_one_anyway(redis_url: str) -> None:
    from bus.failover import next_server

    health = RedisHealth(Redis.from_url(redis_url))
    kam = ServerEntry.build("kamailio", {})
    entries = {"a": kam, "b": kam}
    for name in entries:
        health.failure(name, "down", threshold=1, cooldown=60)
    assert next_server(entries, "b", [], health) == "b"
    assert next_server(entries, "b", ["b"], health) is None


def test_failover_by_requeue_through_real_workers(start_worker, queue_mode: str) -> None:
    with peer() as good:
        add("down", closed_port())
        add("up", good.port)
        start_worker("kamailio")
        code, data = call_json("down", "--request-id", "req-failover-1")
        assert code == 0, data
        assert data["server"] == "up" and data["mode"] == "queue"
        assert data["attempts"] == {"down": 3, "up": 1}
        redis = Redis.from_url(queue_mode)

        def jobs_done() -> int:
            (worker,) = Worker.all(queue=Queue("sip.kamailio", connection=redis))
            return worker.successful_job_count

        # The second hop was a re-queued job, not an in-job loop. RQ counts a job after it returned,
        # and the job replied before returning: wait for the count (reading it at once raced it).
        assert wait_for(lambda: jobs_done() == 2, 10), jobs_done()
        listing = json.loads(run("list", "sip", "--json").stdout)
        states = {s["name"]: s["health"]["state"] for s in listing["servers"]}
        assert states == {"down": "open", "up": "closed"}


def test_resubmitted_request_id_gets_the_first_answer_not_a_second_call(start_worker, queue_mode: str) -> None:
    with peer() as kam:
        add("kam", kam.port)
        start_worker("kamailio")
        first = call_json("kam", "--request-id", "req-dup-0001")
        second = call_json("kam", "--request-id", "req-dup-0001")
    assert first[0] == second[0] == 0
    assert first[1] == second[1]
    assert kam.methods("dlg.bridge_dlg") == ["dlg.bridge_dlg"]


def test_concurrent_duplicates_share_one_call(start_worker, queue_mode: str) -> None:
    with peer(codes={"a": 200}) as kam:  # A answers, B never: the call stays in setup until fr_timer
        add("kam", kam.port)
        start_worker("kamailio")
        args = [str(BIN / "ifbus"), "call", "sip", "kam", "from=1", "to=2", "--json", "--request-id", "req-dup-0002"]
        callers = []
        for _ in range(3):  # three processes, as three services re-submitting the same request would
            callers.append(subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=dict(os.environ)))
            time.sleep(0.1)
        results = [(c.wait(30), json.loads(c.communicate()[0])) for c in callers]
    assert {code for code, _ in results} == {5}  # one verdict (501: A ignored the REFER), told three times
    assert len({json.dumps(data, sort_keys=True) for _, data in results}) == 1
    assert kam.methods("dlg.bridge_dlg") == ["dlg.bridge_dlg"]


def test_checking_for_another_server_does_not_take_its_half_open_trial(redis_url: str) -> None:
    from bus.failover import candidates_left, next_server

    health = RedisHealth(Redis.from_url(redis_url))
    entries = {"a": ServerEntry.build("kamailio", {}), "b": ServerEntry.build("kamailio", {}, options={
        "breaker_cooldown": "0.1"})}  # fmt: skip
    health.failure("b", "down", threshold=1, cooldown=0.1)
    time.sleep(0.15)
    assert candidates_left(entries, "a", ["a"], health)  # b's cool-down is over: worth a re-queue
    assert candidates_left(entries, "a", ["a"], health)  # ...and asking again changes nothing
    assert next_server(entries, "a", ["a"], health) == "b"  # the worker that runs the job gets the trial
    assert next_server(entries, "a", ["a"], health) is None  # one trial per cool-down
