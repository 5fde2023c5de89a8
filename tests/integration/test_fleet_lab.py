"""The fleet, end to end, with real processes on loopback (issue 14's "done when"):

- Redis behind a password, found through a real Sentinel (tests/fleet.py: two `redis-server`s);
- the registry in that Redis (IFBUS_REGISTRY=redis), a real Kamailio (deploy/kamailio/kamailio.cfg,
  tests/lab.py) whose token only the workers' environment holds (`--auth token=env:KAM_TOKEN`);
- two `ifbus worker kamailio` processes with two different IFBUS_HOMEs ("two hosts") and /metrics;
- `ifbus test` through the queue, `ifbus status --json`, the metrics by outcome, a server added and one
  changed while the workers run, and `honcho start` of the Procfile stopped by one SIGTERM.

Measured on the 2-core dev VM: the module runs in ~10 s; honcho's 8 processes register within ~3 s of start
and stop ~1 s after the SIGTERM; a `--concurrency 2` pool over Sentinel stops in ~1.4 s.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleet import SentinelRedis, redis_server, run_ifbus, sentinel_redis
from tests.lab import Kamailio, free_port, kamailio_available, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(redis_server() is None, reason="redis-server not installed"),
    pytest.mark.skipif(not kamailio_available(), reason="kamailio binary not installed (apt-get install kamailio)"),
]

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "fleet-kam-token"


@pytest.fixture(scope="module")
def fleet_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelRedis]:
    with sentinel_redis(tmp_path_factory.mktemp("sentinel")) as found:
        yield found


@pytest.fixture(scope="module")
def kamailio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kamailio]:
    with Kamailio(tmp_path_factory.mktemp("kam"), token=TOKEN) as kam:
        yield kam


def fleet_env(fleet_redis: SentinelRedis, home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IFBUS_")}
    env.update(IFBUS_HOME=str(home), IFBUS_REDIS_URL=fleet_redis.url, IFBUS_REGISTRY="redis", IFBUS_MODE="queue",
               IFBUS_METRICS_ADDR="127.0.0.1", IFBUS_PROBE_INTERVAL="0.5", **extra)  # fmt: skip
    return env


class Host:
    """One `ifbus worker kamailio` with its own IFBUS_HOME, as on another machine."""

    def __init__(self, fleet_redis: SentinelRedis, home: Path, **extra: str) -> None:
        self.metrics_port = free_port(udp=False)
        self.log_path = home.parent / f"{home.name}.log"
        env = fleet_env(fleet_redis, home, KAM_TOKEN=TOKEN, **extra)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [str(Path(sys.executable).parent / "ifbus"), "worker", "kamailio", "--metrics-port",
                 str(self.metrics_port)],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as answer:
            return answer.read().decode()

    def count(self, outcome: str, op: str = "test") -> float:
        pattern = rf'^ifbus_jobs_total\{{(?=[^}}]*op="{op}")(?=[^}}]*outcome="{outcome}")[^}}]*\}} (\S+)$'
        found = re.search(pattern, self.metrics(), re.M)
        return float(found[1]) if found else 0.0

    def stop(self) -> float:
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return time.monotonic() - started


def workers_on(fleet_redis: SentinelRedis, queue: str) -> int:
    from redis import Redis
    from rq import Queue, Worker

    return Worker.count(queue=Queue(queue, connection=Redis.from_url(fleet_redis.direct_url)))


def test_two_hosts_share_one_registry_through_sentinel(fleet_redis: SentinelRedis, kamailio: Kamailio,
                                                       tmp_path: Path) -> None:  # fmt: skip
    """A server added once (from a third home) is served by two workers with their own homes; `status`
    and /metrics see them; servers added or changed later reach the running workers."""
    admin = fleet_env(fleet_redis, tmp_path / "admin")
    added = run_ifbus(["add", "sip", "kam", "--type", "kamailio", "--auth", "token=env:KAM_TOKEN", "--host",
                       "127.0.0.1", "--port", str(kamailio.http_port)], admin)  # fmt: skip
    assert added.returncode == 0, added.stderr
    hosts = [Host(fleet_redis, tmp_path / "host-a"), Host(fleet_redis, tmp_path / "host-b")]
    try:
        up = wait_for(lambda: workers_on(fleet_redis, "sip.kamailio") == 2, 20)
        assert up, [h.log_path.read_text() for h in hosts]
        # Redis hands a job to the worker that has waited longest: a few tests reach both hosts.
        for _ in range(8):
            result = run_ifbus(["test", "sip", "kam", "--json", "--timeout", "20"], admin)
            assert result.returncode == 0, result.stdout + result.stderr
            assert json.loads(result.stdout)["message"].startswith("kamailio")
            if all(h.count("ok") >= 1 for h in hosts):
                break
        assert [h.count("ok") >= 1 for h in hosts] == [True, True], [h.metrics()[-1500:] for h in hosts]

        # Added while the workers run: a server whose port refuses. Counted by outcome, breaker opened.
        down = str(free_port(udp=False))
        assert run_ifbus(["add", "sip", "kam-down", "--type", "kamailio", "--auth", "token=env:KAM_TOKEN", "--host",
                          "127.0.0.1", "--port", down], admin).returncode == 0  # fmt: skip
        failed = run_ifbus(["test", "sip", "kam-down", "--timeout", "20"], admin)
        assert failed.returncode == 4, failed.stdout + failed.stderr
        assert sum(h.count("unreachable") for h in hosts) == 1

        status = run_ifbus(["status", "--json"], admin)
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        kam_queue = next(q for q in report["queues"] if q["queue"] == "sip.kamailio")
        assert {w["pid"] for w in kam_queue["workers"]} == {h.proc.pid for h in hosts}
        assert all(w["host"] and w["state"] for w in kam_queue["workers"])
        breakers = {s["name"]: s["breaker"] for s in report["servers"]}
        assert breakers == {"kam": "closed", "kam-down": "open"}
        assert "sip.asterisk" in {q["queue"] for q in report["queues"]} and report["failed_jobs"] == 0
        assert fleet_redis.url.split("@")[1] in report["redis"] and "fleet-pass" not in status.stdout
        assert 'ifbus_breaker_open{server="kam-down"} 1.0' in hosts[0].metrics()

        # Changed while the workers run: a token the workers' env does not hold → refused at once.
        changed = run_ifbus(["add", "sip", "kam", "--type", "kamailio", "--auth", "token=env:NOT_SET_ANYWHERE",
                             "--host", "127.0.0.1", "--port", str(kamailio.http_port), "--replace"], admin)  # fmt: skip
        assert changed.returncode == 0, changed.stderr
        refused = run_ifbus(["test", "sip", "kam", "--timeout", "20"], admin)
        assert refused.returncode == 3, refused.stdout + refused.stderr
    finally:
        stops = [h.stop() for h in hosts]
    assert max(stops) < 15, stops
    logs = "".join(h.log_path.read_text(errors="replace") for h in hosts)
    assert "Traceback" not in logs and TOKEN not in logs and "fleet-pass" not in logs


def test_worker_pool_stops_on_sigterm_through_sentinel(fleet_redis: SentinelRedis, tmp_path: Path) -> None:
    """`--concurrency 2` over Sentinel: no `'Event' object is not callable` at fork (issue 14, item 6) and
    SIGTERM stops the pool in seconds (redis-py's Sentinel connection kept a BLPOP pending: bus.redis_conn)."""
    env = fleet_env(fleet_redis, tmp_path / "pool")
    log = tmp_path / "pool.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "ifbus"), "worker", "twilio", "--concurrency", "2"],
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        assert wait_for(lambda: workers_on(fleet_redis, "sip.twilio") == 2, 20), log.read_text()
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        assert time.monotonic() - started < 10
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text(errors="replace")
    assert "not callable" not in text and "Traceback" not in text


def test_honcho_runs_the_procfile_and_one_sigterm_stops_it(fleet_redis: SentinelRedis, tmp_path: Path) -> None:
    """`honcho start` in the checkout (no PATH change): every Procfile line comes up and stays up; one
    SIGTERM to honcho stops them all within 15 s."""
    honcho = Path(sys.executable).parent / "honcho"
    procfile = (ROOT / "Procfile").read_text()
    names = [line.split(":", 1)[0] for line in procfile.splitlines() if line and not line.startswith("#")]
    env_file = tmp_path / "fleet.env"
    env_file.write_text("\n".join(f"{k}={v}" for k, v in fleet_env(fleet_redis, tmp_path / "honcho").items()
                                  if k.startswith("IFBUS_")) + "\n")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("IFBUS_")}
    env["PATH"] = "/usr/bin:/bin"  # no venv on PATH: the Procfile must not need it
    out = tmp_path / "honcho.out"
    with open(out, "wb") as log:
        proc = subprocess.Popen([str(honcho), "-e", str(env_file), "--no-colour", "start"], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    from redis import Redis

    redis = Redis.from_url(fleet_redis.direct_url)
    queues = [f"sip.{n}" for n in names if n != "ingress"]
    try:
        def all_up() -> bool:
            return all(workers_on(fleet_redis, q) >= 1 for q in queues) and redis.scard("ifbus:ingresses") >= 1

        assert wait_for(all_up, 60, 0.2), out.read_text(errors="replace")[-3000:]
        assert proc.poll() is None and " stopped (rc=" not in out.read_text(errors="replace")  # none fell over
        assert out.read_text().count(" started (pid=") == len(names)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = out.read_text(errors="replace")
    print(f"honcho stopped {took:.2f} s after SIGTERM")
    assert took < 15, text[-2000:]
    assert "Traceback" not in text
    assert wait_for(lambda: all(workers_on(fleet_redis, q) == 0 for q in queues), 5), "workers still registered"
