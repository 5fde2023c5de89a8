"""Delivery guarantees against real processes: two Kamailio instances in one pool, a worker killed
with SIGKILL mid-call, and a Redis restart while a caller waits. Assertions count what the real
peers received (SIPp message logs), never log lines. Lab facts: /work/shared/kamailio-lab.md.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from bus.queues import JOB_FUNCTION
from tests.conftest import BIN, WorkerProcess, redis_answers
from tests.faults import peer
from tests.integration.conftest import KAMAILIO_LAB
from tests.lab import Kamailio, SippUA, free_port, wait_for

pytestmark = KAMAILIO_LAB

TOKEN = "delivery-token"


def ifbus(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "ifbus"), *args], capture_output=True, text=True, timeout=90,
                          env={**os.environ, **(env or {})})  # fmt: skip


def register(name: str, kam: Kamailio) -> None:
    result = ifbus("add", "sip", name, "--type", "kamailio", "--auth", f"token={TOKEN}", "realm=127.0.0.1",
                   "--port", str(kam.http_port), "--opt", "fr_timer=2", "fr_inv_timer=5", "breaker_cooldown=30",
                   f"sip_port={kam.sip_port}",
                   "connect_timeout=0.5")  # fmt: skip
    assert result.returncode == 0, result.stderr


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


def health_states() -> dict[str, str]:
    listing = json.loads(ifbus("list", "sip", "--json").stdout)
    return {s["name"]: s.get("health", {}).get("state", "?") for s in listing["servers"]}


def test_a_stopped_kamailio_is_skipped_and_probing_brings_it_back(
    start_worker, queue_mode: str, tmp_path: Path, lab: ExitStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IFBUS_PROBE_INTERVAL", "0.5")
    kam1 = lab.enter_context(Kamailio(tmp_path / "k1", token=TOKEN))
    kam2 = lab.enter_context(Kamailio(tmp_path / "k2", token=TOKEN))
    register("kam1", kam1)
    register("kam2", kam2)
    start_worker("kamailio")
    alice = lab.enter_context(SippUA("refer_uas.xml", tmp_path, "alice", kamailio_port=kam2.sip_port))
    bob = lab.enter_context(SippUA("answer_uas.xml", tmp_path, "bob", kamailio_port=kam2.sip_port))

    kam1.stop()
    result = ifbus("call", "sip", "kam1", f"from={alice.uri}", f"to={bob.uri}", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["server"] == "kam2" and data["attempts"] == {"kam1": 3, "kam2": 1}
    assert [d for d in kam2.dialogs() if d["call-id"] == data["call_id"]]
    assert health_states() == {"kam1": "open", "kam2": "closed"}

    # The breaker's cool-down is 30 s, yet the prober brings kam1 back as soon as it answers again.
    revived = lab.enter_context(
        Kamailio(tmp_path / "k1b", token=TOKEN, sip_port=kam1.sip_port, http_port=kam1.http_port)
    )
    assert revived.http_port == kam1.http_port
    started = time.monotonic()
    assert wait_for(lambda: health_states()["kam1"] == "closed" or None, 10), health_states()
    assert time.monotonic() - started < 5


def test_sigkill_mid_call_never_places_the_call_again(
    queue_mode: str, tmp_path: Path, lab: ExitStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    kam = lab.enter_context(Kamailio(tmp_path / "k", token=TOKEN))
    register("kam", kam)
    ringing = lab.enter_context(SippUA("ring_uas.xml", tmp_path, "ringing", kamailio_port=kam.sip_port))
    bob = lab.enter_context(SippUA("answer_uas.xml", tmp_path, "bob", kamailio_port=kam.sip_port))
    worker = WorkerProcess(["kamailio"], tmp_path / "w1.log")
    worker.wait_ready(queue_mode, "sip.kamailio")
    args = [str(BIN / "ifbus"), "call", "sip", "kam", f"from={ringing.uri}", f"to={bob.uri}", "--json",
            "--request-id", "req-sigkill-01", "--timeout", "60"]  # fmt: skip
    caller = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    assert ringing.wait_received("INVITE", 1, timeout=10)
    worker.proc.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    _, err = caller.communicate(timeout=30)
    noticed = time.monotonic() - killed_at
    worker.stop()
    assert caller.returncode == 6, err
    assert "stopped without answering" in err and "on kam" in err
    assert noticed < 5.0  # lease 3 s + one 1 s wait slice
    invites = ringing.received("INVITE")

    # Deliver the same job again, as `rq requeue` or a duplicate delivery would: no second call.
    redis = Redis.from_url(queue_mode)
    payload = Queue("sip.kamailio", connection=redis, serializer=JSONSerializer).fetch_job("req-sigkill-01").args[0]
    Queue("sip.kamailio", connection=redis, serializer=JSONSerializer).enqueue(
        JOB_FUNCTION, payload, job_id="req-sigkill-01-again"
    )
    again = subprocess.run([str(BIN / "ifbus"), "worker", "kamailio", "--burst"], capture_output=True, text=True,
                           timeout=60, env=dict(os.environ))  # fmt: skip
    assert again.returncode == 0, again.stderr
    result = json.loads(redis.get("ifbus:result:req-sigkill-01"))
    assert result["outcome"] == "ambiguous" and "already sent to kam" in result["message"]
    time.sleep(0.5)
    assert ringing.received("INVITE") == invites == 1


def test_a_redis_restart_while_the_caller_waits_still_delivers_the_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port(udp=False, tcp=True)
    redis_args = [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
                  "--save", "", "--appendonly", "no", "--dir", str(tmp_path)]  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    server = subprocess.Popen(redis_args, stdout=subprocess.DEVNULL)
    worker = None
    try:
        assert wait_for(lambda: redis_answers(url), 10)
        monkeypatch.setenv("IFBUS_MODE", "queue")
        monkeypatch.setenv("IFBUS_REDIS_URL", url)
        with peer(default="slow", delay=2.0) as slow:
            assert ifbus("add", "sip", "slow", "--type", "kamailio", "--auth", "token=t", "--host", "127.0.0.1",
                         "--port", str(slow.port)).returncode == 0  # fmt: skip
            worker = WorkerProcess(["kamailio"], tmp_path / "w.log")
            worker.wait_ready(url, "sip.kamailio")
            caller = subprocess.Popen([str(BIN / "ifbus"), "test", "sip", "slow", "--json", "--timeout", "30"],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env=dict(os.environ))  # fmt: skip
            assert wait_for(lambda: slow.received or None, 10)  # the job is running on the worker
            server.kill()
            server.wait()
            server = subprocess.Popen(redis_args, stdout=subprocess.DEVNULL)  # same port, empty
            out, err = caller.communicate(timeout=30)
        assert caller.returncode == 0, (out, err, worker.log()[-2000:])
        assert json.loads(out)["message"].startswith("kamailio 5.6.3")
        assert len(slow.received) == 1
    finally:
        if worker:
            worker.stop()
        server.kill()
        server.wait()
