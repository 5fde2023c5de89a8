"""Conformance of the producer contract (docs/producers.md) with producers that are not Python.

`redis-cli` (and Node's `redis` package, running the example of docs/producers.md, when
`npm install --prefix tests/node` was run) push JSON on `ifbus:requests` and BLPOP their reply keys;
a real `ifbus ingress` and a real `ifbus worker kamailio` serve them against the real Kamailio lab
(deploy/kamailio/kamailio.cfg) with SIPp parties. Assertions are on what the producer read and on
what the real peers saw (SIPp message logs, Kamailio's dlg.list). Lab facts:
/work/shared/kamailio-lab.md §5(c)-(d).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BIN
from tests.integration.conftest import KAMAILIO_LAB, register
from tests.lab import Kamailio, wait_for

pytestmark = [
    *KAMAILIO_LAB,
    pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli not installed (comes with redis-server)"),
]

REPO = Path(__file__).resolve().parents[2]
NODE_MODULES = REPO / "tests" / "node" / "node_modules"


@pytest.fixture
def bus(kam: Kamailio, start_worker, queue_mode: str, tmp_path: Path) -> Iterator[str]:
    """`mykam` registered, a real worker and a real ingress running; yields the Redis URL."""
    register("mykam", kam)
    start_worker("kamailio")
    log = tmp_path / "ingress.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(BIN / "ifbus"), "ingress"], stderr=out, env=dict(os.environ))
    try:
        assert wait_for(lambda: b"ingress.ready" in log.read_bytes() or proc.poll() is not None, 15)
        assert proc.poll() is None, log.read_text()
        yield queue_mode
        assert proc.poll() is None, f"the ingress stopped: {log.read_text()[-2000:]}"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def cli(url: str, *args: str, timeout: float = 60) -> str:
    """One redis-cli command, as a shell script would run it."""
    done = subprocess.run(["redis-cli", "-u", url, "--raw", *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return done.stdout


def send(url: str, message: dict[str, Any] | str) -> None:
    assert cli(url, "LPUSH", "ifbus:requests", message if isinstance(message, str) else json.dumps(message)).strip()


def answer(url: str, request_id: str, wait: int = 40) -> dict[str, Any]:
    lines = cli(url, "BLPOP", f"ifbus:reply:{request_id}", str(wait), timeout=wait + 10).splitlines()
    assert len(lines) == 2, f"no answer for {request_id}: {lines}"
    assert lines[0] == f"ifbus:reply:{request_id}"
    return json.loads(lines[1])


def request(op: str, request_id: str, **fields: Any) -> dict[str, Any]:
    return {"op": op, "server": "mykam", "request_id": request_id, "reply_key": f"ifbus:reply:{request_id}", **fields}


def test_redis_cli_tests_the_real_kamailio(bus: str) -> None:
    send(bus, request("test", "cli-test-0001"))
    result = answer(bus, "cli-test-0001")
    assert (result["exit_code"], result["outcome"], result["mode"]) == (0, "ok", "queue")
    assert result["message"].startswith("kamailio 5.") and result["data"]["sip"]["code"] == 200


def test_redis_cli_calls_and_hangs_up_on_the_real_kamailio(bus: str, kam: Kamailio, ua) -> None:
    alice, bob = ua("refer_uas.xml", "alice"), ua("answer_uas.xml", "bob")
    send(bus, request("call", "cli-call-0001", **{"from": alice.uri, "to": bob.uri}))
    result = answer(bus, "cli-call-0001")
    assert result["exit_code"] == 0, result
    call_id = result["call_id"]
    assert [d for d in kam.dialogs() if d["call-id"] == call_id and d["state"] == 4]
    send(bus, request("hangup", "cli-hang-0001", call_id=call_id))
    assert answer(bus, "cli-hang-0001")["exit_code"] == 0
    assert bob.wait_received("BYE", 1), bob.received_requests()


def test_a_duplicate_request_id_places_one_call_and_gets_two_answers(bus: str, ua) -> None:
    alice, bob = ua("refer_uas.xml", "alice"), ua("answer_uas.xml", "bob")
    message = json.dumps(request("call", "cli-dup-00001", **{"from": alice.uri, "to": bob.uri}))
    send(bus, message)
    send(bus, message)
    first, second = answer(bus, "cli-dup-00001"), answer(bus, "cli-dup-00001")
    assert first["exit_code"] == 0 and first == second
    assert bob.received("INVITE") == 1, bob.received_requests()


def test_a_busy_callee_is_answered_5_with_the_sip_code(bus: str, ua) -> None:
    alice, busy = ua("refer_uas.xml", "alice"), ua("busy_uas.xml", "busy")
    send(bus, request("call", "cli-busy-0001", **{"from": alice.uri, "to": busy.uri}))
    result = answer(bus, "cli-busy-0001")
    assert (result["exit_code"], result["sip_code"], result["reason"]) == (5, 486, "Busy Here")


def test_malformed_is_parked_invalid_is_answered_and_the_ingress_stays_up(bus: str) -> None:
    send(bus, '{"op": "test", "server": "mykam"')  # cut short
    send(bus, request("call", "cli-bad-00001", to="2000"))  # no `from`
    send(bus, request("test", "cli-unknown-1", server="nosuch"))
    bad = answer(bus, "cli-bad-00001")
    assert (bad["exit_code"], bad["outcome"]) == (2, "invalid") and "call.from: Field required" in bad["message"]
    assert answer(bus, "cli-unknown-1")["message"] == "Not found: nosuch"
    (parked,) = [json.loads(line) for line in cli(bus, "LRANGE", "ifbus:requests:dead", "0", "-1").splitlines()]
    assert parked["reason"].startswith("not JSON") and parked["message"] == '{"op": "test", "server": "mykam"'
    send(bus, request("test", "cli-after-0001"))  # still serving
    assert answer(bus, "cli-after-0001")["exit_code"] == 0


def node_example(tmp_path: Path) -> Path:
    text = (REPO / "docs" / "producers.md").read_text()
    (code,) = re.findall(r"```js\n(.*?)```", text, re.S)
    script = tmp_path / "producer.js"
    script.write_text(code)
    return script


@pytest.mark.skipif(shutil.which("node") is None, reason="node not installed")
@pytest.mark.skipif(not (NODE_MODULES / "redis").is_dir(), reason="run `npm install --prefix tests/node` first")
def test_the_node_example_of_the_docs_tests_the_real_kamailio(bus: str, tmp_path: Path) -> None:
    env = {**os.environ, "REDIS_URL": bus, "NODE_PATH": str(NODE_MODULES)}
    done = subprocess.run(["node", str(node_example(tmp_path))], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, (done.stdout, done.stderr)
    result = json.loads(done.stdout)
    assert (result["exit_code"], result["server"]) == (0, "mykam") and result["message"].startswith("kamailio 5.")
