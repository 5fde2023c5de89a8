"""`ifbus status` (bus/status.py) on a private Redis: queues, oldest job, breakers, failed jobs, exit 4."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from redis import Redis

from bus.health import RedisHealth
from bus.models import TestRequest as ProbeRequest
from bus.queues import enqueue
from bus.registry import FileRegistry
from bus.server import ServerEntry
from bus.status import collect, render
from tests.lab import free_port

IFBUS = str(Path(sys.executable).parent / "ifbus")


def test_status_reports_queue_depth_oldest_job_and_breakers(redis_url: str, ifbus_env: Path) -> None:
    redis = Redis.from_url(redis_url)
    entry = ServerEntry.build("kamailio", {"token": "tok-1234567"}, "127.0.0.1", 5071)
    entries = {"kam1": entry, "kam2": entry}
    enqueue(redis, "kamailio", ProbeRequest(server="kam1"))
    RedisHealth(redis).failure("kam2", "probe: refused", 3, 60.0, force_open=True)
    report = collect(redis, entries)
    kam = next(q for q in report["queues"] if q["queue"] == "sip.kamailio")
    assert kam["depth"] == 1 and 0 <= kam["oldest_job_age_s"] < 5 and kam["workers"] == []
    assert {q["queue"] for q in report["queues"]} >= {"sip.asterisk", "sip.twilio", "sip.fusionpbx"}
    servers = {s["name"]: s for s in report["servers"]}
    assert servers["kam1"]["breaker"] == "closed" and servers["kam1"]["last_probe_at"] is None
    assert servers["kam2"]["breaker"] == "open" and servers["kam2"]["last_probe_at"].endswith("Z")
    assert report["failed_jobs"] == 0
    text = render({"redis": redis_url, "registry": "file", **report})
    assert "sip.kamailio" in text and "kam2" in text and "open" in text


def test_cli_status_json_is_one_object_and_no_redis_is_exit_4(redis_url: str, ifbus_env: Path) -> None:
    FileRegistry(ifbus_env).add("kam1", ServerEntry.build("kamailio", {"token": "tok-1234567"}, "127.0.0.1", 5071))
    env = {**os.environ, "IFBUS_HOME": str(ifbus_env), "IFBUS_REDIS_URL": redis_url}
    result = subprocess.run([IFBUS, "status", "--json"], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and [s["name"] for s in report["servers"]] == ["kam1"] and len(report["queues"]) == 7
    down = f"redis://:pw-secret@127.0.0.1:{free_port(udp=False)}/0"
    started = time.monotonic()
    failed = subprocess.run([IFBUS, "status", "--json", "--timeout", "1"], env={**env, "IFBUS_REDIS_URL": down},
                            capture_output=True, text=True, timeout=30)  # fmt: skip
    assert failed.returncode == 4 and json.loads(failed.stdout)["outcome"] == "unreachable"
    assert time.monotonic() - started < 5 and "pw-secret" not in failed.stdout + failed.stderr


@pytest.mark.parametrize("args", [["status", "--timeout", "0"], ["status", "extra"]])
def test_cli_status_bad_usage_is_exit_2(args: list[str]) -> None:
    assert subprocess.run([IFBUS, *args], capture_output=True, text=True).returncode == 2


def test_status_shows_each_servers_rate_bucket(redis_url: str, ifbus_env: Path) -> None:
    """Issue 17: `ifbus status` shows each bucket's rate and what waits on it (bus.ratelimit's view)."""
    from bus.ratelimit import Limits, RedisLimiter

    redis = Redis.from_url(redis_url)
    limited = ServerEntry.build("twilio", {"account_sid": "AC" + "0" * 32, "auth_token": "t" * 32},
                                options={"cps": "2", "max_concurrent": "3"})  # fmt: skip
    free = ServerEntry.build("kamailio", {"token": "tok-1234567"}, options={"cps": "0"})
    limiter, limits = RedisLimiter(redis), Limits.of("tw", limited.effective_options)
    assert limiter.take("tw", "call-1", limits, 30).granted and limiter.take("tw", "call-2", limits, 30).granted
    assert not limiter.take("tw", "call-3", limits, 30).granted  # a third within the second waits
    servers = {s["name"]: s for s in collect(redis, {"tw": limited, "kam": free})["servers"]}
    assert servers["kam"]["rate"] is None
    rate = servers["tw"]["rate"]
    assert (rate["cps"], rate["max_concurrent"], rate["sent_in_window"], rate["waiting"]) == (2, 3, 2, 1)
    text = render({"redis": redis_url, "registry": "file", **collect(redis, {"tw": limited})})
    assert "2/2 cps" in text and "1 waiting" in text


def test_status_and_metrics_count_calls_in_flight_per_worker(redis_url: str, ifbus_env: Path) -> None:
    """Calls handed to followers (workers.follower) show per queue and per worker process in `status`,
    and as `ifbus_calls_in_flight{type,worker}` on /metrics: both read the ledger's owner hash."""
    import socket

    from prometheus_client.core import GaugeMetricFamily
    from rq.serializers import JSONSerializer

    from bus import keys
    from bus.ledger import FollowRecord, RedisLedger
    from workers.metrics import SharedState
    from workers.worker import BusWorker

    redis = Redis.from_url(redis_url)
    worker = BusWorker([keys.queue("kamailio")], connection=redis, serializer=JSONSerializer)
    worker.register_birth()
    ledger, here = RedisLedger(redis), f"{socket.gethostname()}:{os.getpid()}"
    for i, owner in enumerate([f"{here}:a1b2c3"] * 3 + ["otherhost:77:ffffff"]):
        record = FollowRecord(request_id=f"req-flight-{i}", reply_key=None, op="call", server="kam", type="kamailio",
                              ref={"server": "kam", "call_id": None, "handle": {}}, deadline_at=time.time() + 60,
                              accepted_at=time.time())  # fmt: skip
        ledger.follow(record, owner)
    redis.hset(keys.inflight_owner("kamailio"), "req-forged", "not-a-follower")  # counted nowhere
    report = collect(redis, {})
    kam = next(q for q in report["queues"] if q["queue"] == "sip.kamailio")
    assert kam["in_flight"] == 4 and [w["in_flight"] for w in kam["workers"]] == [3]
    assert next(q for q in report["queues"] if q["queue"] == "sip.asterisk")["in_flight"] == 0
    text = render({"redis": redis_url, "registry": "file", **report})
    assert "IN FLIGHT" in text and any(line.split()[-1] == "3" for line in text.splitlines() if here in line)

    families = {f.name: f for f in SharedState(redis, ["kamailio"]).collect() if isinstance(f, GaugeMetricFamily)}
    samples = {tuple(s.labels.values()): s.value for s in families["ifbus_calls_in_flight"].samples}
    assert samples == {("kamailio", here): 3.0, ("kamailio", "otherhost:77"): 1.0}
    worker.register_death()
