"""The `ifbus` CLI and the Asterisk adapter against a REAL Asterisk 22.10.1 (../shared/labs/asterisk/).

Lab facts (labs/README.md, labs/asterisk/pjsip.conf, extensions.conf, manager.conf): netns `labast`, AMI
127.0.0.1:5038 user `admin` secret `pass123`, PJSIP on udp 5060; endpoints `sipp` (answers), `sippbusy`
(486, SIPp on 5071), `sippring` (rings forever, 5072); dialplan context `ctx`, extension `park` answers and
waits. Every check runs the way an operator would: `ip netns exec labast .venv/bin/ifbus …` with a private
IFBUS_HOME. The far end whose BYE is checked is a SIPp UAS of this module's own, on a port chosen free in
the namespace and dialled as `PJSIP/sipp/sip:sipp@127.0.0.1:<port>` (the endpoint's settings, our
contact), so its message log holds only this module's calls; the tests wait on lines of it, never on
fixed sleeps.

The module starts the lab with run.sh when AMI does not answer in the namespace, and at the end stops
exactly the processes that run.sh started (by the PIDs it wrote); a lab that was already up is left
running. It skips, with the reason, when the binary is missing (`build.sh` not run), when not root
(`ip netns` needs it), or when sipp is not installed. Run it from the host namespace, as root:

    .venv/bin/python -m pytest tests/integration/test_asterisk_lab.py -q -rs
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import adoption_lab, netns_lab
from tests.lab import wait_for

NS = netns_lab.Netns(os.environ.get("IFBUS_ASTERISK_NETNS", "labast"))
ROOT = Path(os.environ.get("LAB_ROOT", "/opt/lab"))
BINARY = ROOT / "asterisk-root" / "sbin" / "asterisk"
PIDFILES = [ROOT / "run" / "asterisk" / f"{name}.pid" for name in ("asterisk", "sipp-200", "sipp-486", "sipp-ring",
                                                                   "sipp-bye")]  # fmt: skip
RUN_SH = netns_lab.LABS / "asterisk" / "run.sh"
SCENARIOS = netns_lab.LABS / "asterisk"
CALL_ID = re.compile(r"ifbus-[0-9a-f]{32}")


WHY_NOT = netns_lab.why_not("Asterisk", BINARY, RUN_SH)
pytestmark = [pytest.mark.integration, pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")]


def _ami_answers() -> bool:
    """The AMI banner arrives on 127.0.0.1:5038 inside the namespace (a bare open port is not enough)."""
    probe = (
        "import socket; s = socket.create_connection(('127.0.0.1', 5038), timeout=1); s.settimeout(2); "
        "raise SystemExit(0 if s.recv(64).startswith(b'Asterisk Call Manager/') else 1)"
    )
    done = subprocess.run(NS.argv(sys.executable, "-c", probe), capture_output=True, timeout=15)
    return done.returncode == 0


def _party(work: Path, endpoint: str, scenario: list[str], name: str | None = None) -> netns_lab.Party:
    """Dialled as `PJSIP/<endpoint>/sip:<endpoint>@127.0.0.1:<port>`: the lab endpoint's settings, our contact;
    its message log is named after `name` (default: the endpoint)."""
    dial = f"PJSIP/{endpoint}/sip:{endpoint}@127.0.0.1:{{}}"
    return netns_lab.start_party(NS, work, name or endpoint, scenario, dial.format)


@dataclass
class Lab(netns_lab.LabCli):
    answer: netns_lab.Party
    busy: netns_lab.Party


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    work = tmp_path_factory.mktemp("astlab")
    env = {"LAB_NETNS": NS.name, "LAB_ROOT": str(ROOT)}
    with netns_lab.running_lab("Asterisk", RUN_SH, _ami_answers, PIDFILES, env, timeout=90) as parties:
        answer = _party(work, "sipp", ["-sn", "uas"])
        parties.append(answer)
        busy = _party(work, "sippbusy", ["-sf", str(SCENARIOS / "uas_486.xml")])
        parties.append(busy)
        lab = Lab(NS, work / "ifhome", answer, busy)
        for name, secret, extra in (
            ("myast", "pass123", ()),
            ("badast", "wrongsecret", ()),
            ("ringast", "pass123", ("--opt", "answer_timeout=2")),
        ):
            auth = ("--auth", "user=admin", f"secret={secret}")
            code, _, err = lab.ifbus("add", "sip", name, "asterisk", *auth, "--opt", "context=ctx", *extra)
            assert code == 0, err
        yield lab


def test_test_prints_the_version(lab: Lab) -> None:
    """Real server: CoreSettings `AsteriskVersion: 22.10.1`, `AMIversion: 11.0.0`; Ping → Pong; the SIP
    OPTIONS line from udp 5060 (`Server: Asterisk PBX 22.10.1`)."""
    code, result, err = lab.ifbus("test", "sip", "myast")
    assert code == 0, err
    message = str(result["message"])
    assert message.startswith("Asterisk 22.10.1 (AMI 11.0.0) on myast; SIP "), message
    assert "Asterisk PBX 22.10.1" in message
    assert result["data"]["version"] == "22.10.1"  # type: ignore[index]


def test_wrong_secret_is_exit_3(lab: Lab) -> None:
    """Real server: `Response: Error` / `Message: Authentication failed` after its ~1 s pause, then the close."""
    code, result, err = lab.ifbus("test", "sip", "badast")
    assert code == 3, err
    assert "Authentication failed" in str(result["message"])
    assert "wrongsecret" not in err + json.dumps(result)


def test_answered_call_one_invite_then_hangup_sends_bye(lab: Lab) -> None:
    """SIPp answers 200: exit 0 with our ChannelId as call id; exactly one INVITE reached the party;
    hang-up → `Channel Hungup`, exit 0, and a BYE (`Reason: Q.850;cause=16`) at the party; a second
    hang-up → `No such channel` → "had already ended" (exit 0)."""
    party = lab.answer
    invites, byes = party.count("INVITE"), party.count("BYE")
    code, result, err = lab.ifbus("call", "sip", "myast", f"from={party.dial}", "to=park")
    assert code == 0, err
    call_id = str(result["call_id"])
    assert CALL_ID.fullmatch(call_id) and result["message"] == f"Call {call_id} answered on myast"

    code, result, err = lab.ifbus("hangup", "sip", "myast", f"call_id={call_id}")
    assert code == 0, err
    assert result["message"] == f"Call {call_id} ended on myast"
    assert party.wait_count("BYE", byes + 1) == byes + 1
    assert party.count("INVITE") == invites + 1  # counted after the BYE: no retransmitted or second INVITE
    assert "Reason: Q.850;cause=16" in party.log.read_text(errors="replace")

    code, result, err = lab.ifbus("hangup", "sip", "myast", f"call_id={call_id}")
    assert code == 0, err
    assert "had already ended" in str(result["message"]) and result["data"]["already_ended"] is True  # type: ignore[index]


def test_busy_party_is_exit_5_sip_486(lab: Lab) -> None:
    """SIPp answers 486: `OriginateResponse` `Reason: 0`, `Hangup` `Cause: 17` `TechCause: 486`."""
    invites = lab.busy.count("INVITE")
    code, result, err = lab.ifbus("call", "sip", "myast", f"from={lab.busy.dial}", "to=park")
    assert code == 5, err
    assert result["sip_code"] == 486 and "SIP 486 Busy Here" in str(result["message"])
    assert result["data"]["tech_cause"] == "486"  # type: ignore[index]
    assert lab.busy.count("INVITE") == invites + 1


def test_spec_form_endpoint_names(lab: Lab) -> None:
    """`from=<endpoint>` → `Channel: PJSIP/<endpoint>` (the spec's `from=1001` form), against the lab's own
    SIPp far ends: `sippbusy` answers 486; `nosuch` is no endpoint (`Reason: 0`, no channel event) → 404;
    `sippring` rings past answer_timeout=2 (`Reason: 3`, `Hangup` `Cause: 19`) → 480."""
    code, result, err = lab.ifbus("call", "sip", "myast", "from=sippbusy", "to=park")
    assert (code, result["sip_code"]) == (5, 486), err
    code, result, err = lab.ifbus("call", "sip", "myast", "from=nosuch", "to=park")
    assert (code, result["sip_code"]) == (5, 404), err
    code, result, err = lab.ifbus("call", "sip", "ringast", "from=sippring", "to=park")
    assert (code, result["sip_code"]) == (5, 480), err


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_queue_mode_through_a_worker(lab: Lab) -> None:
    """A private redis-server and `ifbus worker asterisk` inside the namespace: one call, its hang-up
    (a BYE at the party), and a second hang-up that says the call had already ended."""
    work = lab.home.parent
    worker_log = work / "worker.log"
    with netns_lab.private_redis(NS, work) as env, netns_lab.worker(NS, lab.home, "asterisk", env, worker_log):
        assert wait_for(lambda: "Listening on sip.asterisk" in worker_log.read_text(errors="replace"), 30.0), (
            worker_log.read_text(errors="replace")[-2000:]
        )
        party = lab.answer
        byes = party.count("BYE")
        code, result, err = lab.ifbus("call", "sip", "myast", f"from={party.dial}", "to=park", **env)
        assert code == 0, err
        call_id = str(result["call_id"])
        assert result["mode"] == "queue" and CALL_ID.fullmatch(call_id)
        code, result, err = lab.ifbus("hangup", "sip", "myast", f"call_id={call_id}", **env)
        assert code == 0, err
        assert result["message"] == f"Call {call_id} ended on myast"
        assert party.wait_count("BYE", byes + 1) == byes + 1
        code, result, err = lab.ifbus("hangup", "sip", "myast", f"call_id={call_id}", **env)
        assert code == 0 and "had already ended" in str(result["message"]), err


# ---------------------------------------------------------------- adoption: a fresh process recovers the call
#
# One process places the call through the adapter and dies at once (os._exit: no Logoff, no follow); a
# second process, with an adapter of its own on a new AMI session, calls `recover(ref)` — what the
# follower does with a call of a dead worker. Both run inside the namespace.

ADOPT = """
import json, os, sys, time
from bus.calls import CallRef
from bus.errors import BusError
from bus.server import ServerEntry
from workers.adapters.asterisk import AsteriskAdapter
step, arg, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
entry = ServerEntry.build("asterisk", {"user": "admin", "secret": "pass123"}, host="127.0.0.1", port=5038,
                          options={"context": "ctx", **options})
adapter = AsteriskAdapter("myast", entry)
if step == "place":
    print(json.dumps(adapter.originate(arg, "park", {}, time.monotonic() + 10).to_json()), flush=True)
    os._exit(0)
try:
    ref = CallRef.from_json(json.loads(sys.stdin.readline() if arg == "-" else arg))
    answer = adapter.recover(ref, time.monotonic() + 30)
    out = {"outcome": "answered", "message": answer.message, "data": answer.data}
except BusError as exc:
    out = {"outcome": exc.outcome.value, "message": exc.message, "details": exc.details}
adapter.close()
print(json.dumps(out))
"""


def _adopt(party: str, **options: str) -> tuple[str, dict[str, object]]:
    """Place through one process that dies, recover in another: (the call id, what recover said). The
    adopting process is started first and reads the CallRef on stdin, so its start-up is not part of the
    time the call spends ringing."""
    adopter = subprocess.Popen(NS.argv(sys.executable, "-c", ADOPT, "recover", "-", "{}"), stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        placed = subprocess.run(NS.argv(sys.executable, "-c", ADOPT, "place", party, json.dumps(options)),
                                capture_output=True, text=True, timeout=60)  # fmt: skip
        assert placed.returncode == 0, placed.stderr
        out, err = adopter.communicate(placed.stdout, timeout=60)
    finally:
        if adopter.poll() is None:
            adopter.kill()
    assert adopter.returncode == 0, err
    return str(json.loads(placed.stdout)["call_id"]), json.loads(out)


def test_adopted_calls_end_with_their_real_outcome(lab: Lab, tmp_path: Path) -> None:
    """`recover` in a process that never saw the Originate, against the real server:

    - a party that rings 2 s and then answers: Status shows `Ringing`, then Up → answered (and the hang-up
      that follows sends the party its BYE); exactly one INVITE reached it;
    - `sippring` (rings forever) with answer_timeout=3: seen ringing, then `Hangup` `TechCause: 480` → 480;
    - `sippbusy` (486 at once): gone before the adopter looks, `No such channel` → outcome unknown."""
    slow = _party(tmp_path, "sipp", ["-sf", str(adoption_lab.RING_THEN_ANSWER)])
    try:
        call_id, result = _adopt(slow.dial)
        assert result["outcome"] == "answered", result
        assert result["message"] == f"Call {call_id} answered on myast"
        assert result["data"] == {"channel": result["data"]["channel"], "recovered": True,  # type: ignore[index]
                                  "state_at_adoption": "Ringing"}  # fmt: skip
        code, answer, err = lab.ifbus("hangup", "sip", "myast", f"call_id={call_id}")
        assert code == 0 and answer["message"] == f"Call {call_id} ended on myast", err
        assert slow.wait_count("BYE", 1) == 1
        assert slow.count("INVITE") == 1
    finally:
        slow.stop()

    call_id, result = _adopt("PJSIP/sippring", answer_timeout="3")
    assert result["outcome"] == "rejected", result
    assert result["details"]["sip_code"] == 480 and result["details"]["tech_cause"] == "480"  # type: ignore[index]
    assert result["details"]["call_id"] == call_id  # type: ignore[index]

    call_id, result = _adopt("PJSIP/sippbusy")
    assert result["outcome"] == "ambiguous" and "No such channel" in str(result["message"]), result


# ---------------------------------------------------------------- adoption through real workers: kill -9
#
# Issue 15 as it happens in production: `ifbus worker asterisk` takes the calls, its follower holds them
# while they ring, the worker is killed with SIGKILL (no Logoff, no release: its AMI session simply
# drops), and a second `ifbus worker asterisk` adopts them from the ledger and finishes them from what
# Asterisk says (recover: Status, then the channel's events). The scenarios: tests/adoption_lab.py.

ADOPTION = adoption_lab.AdoptionLab(
    worker="asterisk", label="Asterisk", server="adoptast",
    add=("asterisk", "--auth", "user=admin", "secret=pass123", "--opt", "context=ctx",
         "--opt", f"answer_timeout={adoption_lab.REFUSE_AFTER}"),
    to="park", call_id=CALL_ID, ringing="Ringing",  # Status's ChannelStateDesc
    party=lambda work, name, scenario: _party(work, "sipp", ["-sf", str(scenario)], name=name),
)  # fmt: skip


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_kill_9_with_calls_ringing_every_caller_gets_the_real_outcome(lab: Lab, tmp_path: Path) -> None:
    """adoption_lab.every_caller_gets_the_real_outcome on the real Asterisk: the two refused calls end with
    Hangup `TechCause: 480` at answer_timeout; Status saw the 6 s party `Ringing`."""
    adoption_lab.every_caller_gets_the_real_outcome(lab, ADOPTION, tmp_path)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_kill_9_with_no_worker_left_a_later_worker_still_settles_the_calls(lab: Lab, tmp_path: Path) -> None:
    """adoption_lab.a_later_worker_still_settles_the_calls on the real Asterisk."""
    adoption_lab.a_later_worker_still_settles_the_calls(lab, ADOPTION, tmp_path)
