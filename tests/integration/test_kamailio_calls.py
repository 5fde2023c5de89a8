"""`ifbus` end to end on a real Kamailio (deploy/kamailio/kamailio.cfg) with SIPp parties.

Each scenario runs twice: through a real `ifbus worker` process on a private redis-server (queue
mode), and in embedded mode. The CLI is the installed `ifbus` script in a subprocess, as a user
runs it. Assertions are on what the real peers saw (SIPp message logs, Kamailio's dlg.list), not
on log lines. Lab facts: /work/shared/kamailio-lab.md §5(c)-(d).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tests.conftest import BIN
from tests.integration.conftest import FR_TIMER_MS, KAMAILIO_LAB, register
from tests.lab import Kamailio, free_port, wait_for

pytestmark = KAMAILIO_LAB


@pytest.fixture(params=["queue", "inline"])
def mode(request: pytest.FixtureRequest, kam: Kamailio) -> str:
    """Register `mykam`, then run the test through a worker process or embedded."""
    register("mykam", kam)
    if request.param == "queue":
        request.getfixturevalue("start_worker")("kamailio")
    return request.param


def ifbus(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "ifbus"), *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ))  # fmt: skip


def test_test_reports_the_kamailio_version(mode: str) -> None:
    result = ifbus("test", "sip", "mykam", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["message"].startswith("kamailio 5.")
    assert data["data"]["version"].startswith("5.")
    assert data["mode"] == mode
    sip = data["data"]["sip"]  # the SIP port, probed beside the management API
    assert (sip["answered"], sip["code"], sip["detected"]) == (True, 200, "kamailio")
    assert "warning" not in data["data"]


def test_test_warns_when_the_sip_port_answers_as_another_type(kam: Kamailio) -> None:
    from bus.server import ServerEntry
    from workers.adapters.base import Answer
    from workers.adapters.kamailio import KamailioAdapter
    from workers.sip_check import with_sip_reachability

    # Asterisk's AMI adapter arrives later; the SIP check is the same for every adapter.
    entry = ServerEntry.build("asterisk", {}, "127.0.0.1", options={"sip_port": str(kam.sip_port)})
    answer = with_sip_reachability(KamailioAdapter("notast", entry), Answer("AMI ok"))
    assert answer.data["warning"] == "the SIP port answers as kamailio, but notast is registered as asterisk"


def test_call_connects_shows_in_kamailio_and_hangup_sends_bye_to_both(mode: str, kam: Kamailio, ua) -> None:
    alice = ua("refer_uas.xml", "alice")
    bob = ua("answer_uas.xml", "bob")
    result = ifbus("call", "sip", "mykam", f"from={alice.uri}", f"to={bob.uri}", "--json")
    assert result.returncode == 0, result.stderr
    call_id = json.loads(result.stdout)["call_id"]
    assert call_id
    live = [d for d in kam.dialogs() if d["call-id"] == call_id and d["state"] == 4]
    assert len(live) == 1, kam.dialogs()
    byes_before = alice.received("BYE")  # the bridge's hold leg already got its BYE
    assert bob.received("BYE") == 0
    hung = ifbus("hangup", "sip", "mykam", f"call_id={call_id}")
    assert hung.returncode == 0, hung.stderr
    assert bob.wait_received("BYE", 1), bob.received_requests()
    assert alice.wait_received("BYE", byes_before + 1), alice.received_requests()
    # The parties log the BYE before their 200 OK has passed back through Kamailio: wait for the dialog to end.
    open_dialogs = lambda: [d for d in kam.dialogs() if d["call-id"] == call_id and d["state"] < 5]  # noqa: E731
    assert wait_for(lambda: not open_dialogs(), 5), open_dialogs()
    again = ifbus("hangup", "sip", "mykam", f"call_id={call_id}")
    if mode == "queue":
        # The bus placed it (its CallRef is in the ledger) and no dialog is left: already over, the
        # one rule every vendor follows. Embedded mode keeps no ledger between processes.
        assert again.returncode == 0 and "had already ended" in again.stdout, again
    else:
        assert again.returncode == 1 and "Not found" in again.stderr, again
    unknown = ifbus("hangup", "sip", "mykam", "call_id=never-placed-here@127.0.0.1")
    assert unknown.returncode == 1 and "Not found" in unknown.stderr, unknown


def test_busy_callee_exits_5_with_486(mode: str, ua) -> None:
    alice = ua("refer_uas.xml", "alice")
    busy = ua("busy_uas.xml", "busy")
    result = ifbus("call", "sip", "mykam", f"from={alice.uri}", f"to={busy.uri}")
    assert result.returncode == 5, (result.stdout, result.stderr)
    assert result.stderr.strip().splitlines()[-1] == "Call failed: SIP 486 Busy Here"


def test_busy_first_party_exits_5_with_486(mode: str, ua) -> None:
    busy = ua("busy_uas.xml", "busy")
    bob = ua("answer_uas.xml", "bob")
    result = ifbus("call", "sip", "mykam", f"from={busy.uri}", f"to={bob.uri}", "--json")
    assert result.returncode == 5
    data = json.loads(result.stdout)
    assert (data["sip_code"], data["reason"], data["data"]["leg"]) == (486, "Busy Here", "from")
    assert bob.received("INVITE") == 0


def test_unreachable_party_exits_5_with_408(mode: str, ua) -> None:
    bob = ua("answer_uas.xml", "bob")
    nobody = f"sip:nobody@127.0.0.1:{free_port(udp=True, tcp=False)}"
    started = time.monotonic()
    result = ifbus("call", "sip", "mykam", f"from={nobody}", f"to={bob.uri}")
    took = time.monotonic() - started
    assert result.returncode == 5
    assert result.stderr.strip().splitlines()[-1] == "Call failed: SIP 408 Request Timeout"
    assert took < FR_TIMER_MS / 1000 + 5  # bounded by Kamailio's fr_timer plus our margin


def test_wrong_token_exits_3_naming_the_auth_keys(kam: Kamailio) -> None:
    register("badkam", kam, "not-the-token")
    result = ifbus("test", "sip", "badkam")
    assert result.returncode == 3
    assert "badkam" in result.stderr and "--auth token=… realm=…" in result.stderr
    assert "not-the-token" not in result.stderr


def test_until_accepted_returns_before_anyone_answers(kam: Kamailio, ua) -> None:
    """A never answers (ring_uas.xml rings until CANCEL): `--until accepted` must still return, so it
    did not wait for an answer. No timing involved: with A still ringing, B cannot have been called
    (B is only called after A answered and followed the REFER). Before, A answered after a 200 ms
    pause and the test raced that pause against the CLI's exit, failing under load."""
    register("mykam", kam)
    alice = ua("ring_uas.xml", "alice")
    bob = ua("answer_uas.xml", "bob")
    result = ifbus("call", "sip", "mykam", f"from={alice.uri}", f"to={bob.uri}", "--until", "accepted", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["call_id"] is None and len(data["data"]["tracking_id"]) == 16
    assert alice.wait_received("INVITE", 1, timeout=10)  # A is ringing …
    assert bob.received("INVITE") == 0  # … and nobody answered, so B was never called


def test_until_accepted_call_goes_on_after_the_answer(kam: Kamailio, ua) -> None:
    """The same call with an A that answers: after `--until accepted` returned, the call proceeds."""
    register("mykam", kam)
    alice = ua("refer_uas.xml", "alice")
    bob = ua("answer_uas.xml", "bob")
    result = ifbus("call", "sip", "mykam", f"from={alice.uri}", f"to={bob.uri}", "--until", "accepted", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["call_id"] is None
    assert bob.wait_received("INVITE", 1, timeout=10)


def test_sigterm_lets_the_worker_finish_the_current_call(kam: Kamailio, ua, start_worker) -> None:
    register("mykam", kam)
    worker = start_worker("kamailio")
    alice = ua("refer_uas.xml", "alice")
    bob = ua("answer_uas.xml", "bob")
    caller = subprocess.Popen(
        [str(BIN / "ifbus"), "call", "sip", "mykam", f"from={alice.uri}", f"to={bob.uri}", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
    )  # fmt: skip
    assert alice.wait_received("INVITE", 1, timeout=10)  # the job is running now
    worker.proc.send_signal(signal.SIGTERM)
    out, err = caller.communicate(timeout=30)
    assert caller.returncode == 0, err
    assert json.loads(out)["call_id"]
    assert worker.proc.wait(timeout=15) == 0
