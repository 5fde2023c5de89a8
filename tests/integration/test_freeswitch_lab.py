"""The `ifbus` CLI and the FreeSWITCH adapter against a REAL FreeSWITCH 1.10.12 (../shared/labs/freeswitch).

Lab facts (labs/README.md, labs/freeswitch/conf/): netns `labfs`, ESL 127.0.0.1:8021 password `labpass`,
sofia profile `internal` on udp 5080, domain `lab.test`, context `public` (9196 answers and echoes). Every
check runs the way an operator would: `ip netns exec labfs .venv/bin/ifbus …` with a private IFBUS_HOME.
The parties are SIPp user agents inside the namespace, on ports chosen free there; each writes its SIP
message log, and the tests wait on lines of it (an INVITE, a BYE), never on fixed sleeps.

The module starts the lab server with run.sh when its event socket does not answer, and then stops it (by
the PID in its pid file) at the end; a server that was already up is left running. It skips, with the
reason, when the binary is missing (`build.sh` not run), when not root (`ip netns` needs it), or when
sipp is not installed. Run it from the host namespace, as root:

    .venv/bin/python -m pytest tests/integration/test_freeswitch_lab.py -q -rs
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import adoption_lab, netns_lab
from tests.lab import wait_for

NS = netns_lab.Netns(os.environ.get("IFBUS_LAB_NETNS", "labfs"))
BINARY = Path(os.environ.get("IFBUS_FREESWITCH_BIN", "/opt/lab/freeswitch/bin/freeswitch"))
PIDFILES = [Path("/opt/lab/fsrun/run/freeswitch.pid")]
RUN_SH = netns_lab.LABS / "freeswitch" / "run.sh"
SCENARIOS = netns_lab.LABS / "freeswitch"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


WHY_NOT = netns_lab.why_not("FreeSWITCH", BINARY, RUN_SH)
pytestmark = [pytest.mark.integration, pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")]


def _esl_answers() -> bool:
    probe = "import socket; socket.create_connection(('127.0.0.1', 8021), timeout=1).close()"
    return subprocess.run(NS.argv(sys.executable, "-c", probe), capture_output=True, timeout=10).returncode == 0


def _party(work: Path, name: str, scenario: list[str]) -> netns_lab.Party:
    return netns_lab.start_party(NS, work, name, scenario, lambda port: f"sofia/internal/sipp@127.0.0.1:{port}", 10.0)


@dataclass
class Lab(netns_lab.LabCli):
    answer: netns_lab.Party
    busy: netns_lab.Party
    ring: netns_lab.Party


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    work = tmp_path_factory.mktemp("fslab")
    env = {"NS": NS.name}
    with netns_lab.running_lab("FreeSWITCH", RUN_SH, _esl_answers, PIDFILES, env, timeout=60, grace=20.0) as parties:
        answer = _party(work, "answer", ["-sn", "uas"])
        parties.append(answer)
        busy = _party(work, "busy", ["-sf", str(SCENARIOS / "sipp_uas_486.xml")])
        parties.append(busy)
        ring = _party(work, "ring", ["-sf", str(SCENARIOS / "sipp_uas_ring.xml")])
        parties.append(ring)
        lab = Lab(NS, work / "ifhome", answer, busy, ring)
        common = ("--host", "127.0.0.1", "--port", "8021", "--opt", "sip_port=5080", "--opt", "context=public")
        for name, password, extra in (
            ("labfs", "labpass", ()),
            ("labbad", "wrongpass", ()),
            ("labring", "labpass", ("--opt", "originate_timeout=3")),
        ):
            auth = ("--auth", f"apikey={password}", "domain=lab.test")
            code, _, err = lab.ifbus("add", "sip", name, "freeswitch", *auth, *common, *extra)
            assert code == 0, err
        yield lab


def test_test_prints_the_version_and_the_options_answer(lab: Lab) -> None:
    """Real server: `api version` → `FreeSWITCH Version 1.10.12-release~64bit…`, `api status` → `… is ready`,
    OPTIONS to udp 5080 → 200 with `User-Agent: FreeSWITCH-mod_sofia/1.10.12-release~64bit`."""
    code, result, err = lab.ifbus("test", "sip", "labfs")
    assert code == 0, err
    message = str(result["message"])
    assert message.startswith("FreeSWITCH 1.10.12-release~64bit on labfs is ready (UP "), message
    assert "SIP 200 OK" in message and "FreeSWITCH-mod_sofia/1.10.12" in message


def test_wrong_password_is_exit_3(lab: Lab) -> None:
    """Real server: `Reply-Text: -ERR invalid`, then `text/disconnect-notice`, then the close."""
    code, result, err = lab.ifbus("test", "sip", "labbad")
    assert code == 3, err
    assert "-ERR invalid" in str(result["message"]) and "wrongpass" not in err + json.dumps(result)


def test_answered_call_one_invite_then_hangup_sends_bye(lab: Lab) -> None:
    """SIPp answers 200: exit 0 with the channel uuid; exactly one INVITE reached the party; hang-up →
    exit 0 and a BYE at the party; a second hang-up → `-ERR No such channel!` → "had already ended"."""
    party = lab.answer
    invites, byes = party.count("INVITE"), party.count("BYE")
    code, result, err = lab.ifbus("call", "sip", "labfs", f"from={party.dial}", "to=9196")
    assert code == 0, err
    call_id = str(result["call_id"])
    assert UUID.fullmatch(call_id) and result["message"] == f"Call {call_id} answered on labfs"

    code, result, err = lab.ifbus("hangup", "sip", "labfs", f"call_id={call_id}")
    assert code == 0, err
    assert result["message"] == f"Call {call_id} ended on labfs"
    assert party.wait_count("BYE", byes + 1) == byes + 1
    assert party.count("INVITE") == invites + 1  # checked after the BYE: no retransmitted or second INVITE

    code, result, err = lab.ifbus("hangup", "sip", "labfs", f"call_id={call_id}")
    assert code == 0, err
    assert "had already ended" in str(result["message"]) and result["data"]["already_ended"] is True  # type: ignore[index]


def test_busy_party_is_exit_5_sip_486(lab: Lab) -> None:
    """SIPp answers 486: BACKGROUND_JOB `-ERR USER_BUSY`, CHANNEL_HANGUP_COMPLETE `variable_sip_term_status: 486`."""
    code, result, err = lab.ifbus("call", "sip", "labfs", f"from={lab.busy.dial}", "to=9196")
    assert code == 5, err
    assert result["sip_code"] == 486 and "SIP 486 Busy Here" in str(result["message"])
    assert result["data"]["cause"] == "USER_BUSY"  # type: ignore[index]
    assert lab.busy.count("INVITE") >= 1


def test_no_answer_is_exit_5_sip_480(lab: Lab) -> None:
    """SIPp rings forever: originate_timeout (3 s here) makes FreeSWITCH CANCEL; `-ERR NO_ANSWER` → 480."""
    cancels = lab.ring.count("CANCEL")
    started = time.monotonic()
    code, result, err = lab.ifbus("call", "sip", "labring", f"from={lab.ring.dial}", "to=9196", "--timeout", "30")
    assert code == 5, err
    assert result["sip_code"] == 480 and result["data"]["cause"] == "NO_ANSWER"  # type: ignore[index]
    assert time.monotonic() - started < 20
    assert lab.ring.wait_count("CANCEL", cancels + 1) == cancels + 1


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_queue_mode_through_a_worker(lab: Lab) -> None:
    """A private redis-server and `ifbus worker freeswitch` inside the namespace: one call and its hang-up."""
    work = lab.home.parent
    worker_log = work / "worker.log"
    with netns_lab.private_redis(NS, work) as env, netns_lab.worker(NS, lab.home, "freeswitch", env, worker_log):
        assert wait_for(lambda: "Listening on sip.freeswitch" in worker_log.read_text(errors="replace"), 20.0)
        party = lab.answer
        byes = party.count("BYE")
        code, result, err = lab.ifbus("call", "sip", "labfs", f"from={party.dial}", "to=9196", **env)
        assert code == 0, err
        assert result["mode"] == "queue" and UUID.fullmatch(str(result["call_id"]))
        code, result, err = lab.ifbus("hangup", "sip", "labfs", f"call_id={result['call_id']}", **env)
        assert code == 0, err
        assert party.wait_count("BYE", byes + 1) == byes + 1


# ---------------------------------------------------------------- adoption: a fresh process recovers the call
#
# One process places the call through the adapter and dies at once (os._exit: no follow, filters left to the
# closed socket); a second process, with an adapter of its own on a new event socket, calls `recover(ref)` —
# what the follower does with a call of a dead worker. Both run inside the namespace. The adopting process
# is started first and reads the CallRef on stdin, so its start-up is not part of the time a call rings.

ADOPT = """
import json, os, sys, time
from bus.calls import CallRef
from bus.errors import BusError
from bus.server import ServerEntry
from workers.adapters.freeswitch import FreeSwitchAdapter
step, arg, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
entry = ServerEntry.build("freeswitch", {"apikey": "labpass", "domain": "lab.test"}, host="127.0.0.1", port=8021,
                          options={"context": "public", **options})
adapter = FreeSwitchAdapter("labfs", entry)
if step == "place":
    print(json.dumps(adapter.originate(arg, "9196", {}, time.monotonic() + 10).to_json()), flush=True)
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
    """Place through one process that dies, recover in another: (the call id, what recover said)."""
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
    """`recover` in a process that never sent the bgapi, against the real server:

    - a party that rings 2 s and then answers: uuid_dump says `Answer-State: ringing`, then CHANNEL_ANSWER /
      BACKGROUND_JOB `+OK` reach the adopter through its filters → answered (the hang-up that follows sends
      the party its BYE); exactly one INVITE reached it;
    - the ringing party with originate_timeout=3: seen ringing, then `-ERR NO_ANSWER` → 480;
    - the busy party (486 at once): gone before the adopter looks, `-ERR No such channel!` → outcome unknown."""
    slow = _party(tmp_path, "ring2", ["-sf", str(adoption_lab.RING_THEN_ANSWER)])
    try:
        call_id, result = _adopt(slow.dial)
        assert result["outcome"] == "answered", result
        assert result["message"] == f"Call {call_id} answered on labfs"
        assert result["data"]["state_at_adoption"] == "ringing" and result["data"]["recovered"] is True  # type: ignore[index]
        code, answer, err = lab.ifbus("hangup", "sip", "labfs", f"call_id={call_id}")
        assert code == 0 and answer["message"] == f"Call {call_id} ended on labfs", err
        assert slow.wait_count("BYE", 1) == 1
        assert slow.count("INVITE") == 1
    finally:
        slow.stop()

    call_id, result = _adopt(lab.ring.dial, originate_timeout="3")
    assert result["outcome"] == "rejected", result
    assert result["details"]["sip_code"] == 480 and result["details"]["cause"] == "NO_ANSWER"  # type: ignore[index]
    assert result["details"]["call_id"] == call_id  # type: ignore[index]

    call_id, result = _adopt(lab.busy.dial)
    assert result["outcome"] == "ambiguous" and "No such channel" in str(result["message"]), result


# ---------------------------------------------------------------- adoption through real workers: kill -9
#
# Issue 15 as it happens in production: `ifbus worker freeswitch` takes the calls, its follower holds
# them while they ring, the worker is killed with SIGKILL (its event socket drops with the call filters
# and the BACKGROUND_JOBs still to come), and a second `ifbus worker freeswitch` adopts them from the
# ledger and finishes them from what FreeSWITCH says (recover: its own filters, then uuid_dump). The
# scenarios: tests/adoption_lab.py.

ADOPTION = adoption_lab.AdoptionLab(
    worker="freeswitch", label="FreeSWITCH", server="adoptfs",
    add=("freeswitch", "--auth", "apikey=labpass", "domain=lab.test", "--host", "127.0.0.1", "--port", "8021",
         "--opt", "sip_port=5080", "--opt", "context=public",
         "--opt", f"originate_timeout={adoption_lab.REFUSE_AFTER}"),
    to="9196", call_id=UUID, ringing="ringing",  # uuid_dump's Answer-State
    party=lambda work, name, scenario: _party(work, name, ["-sf", str(scenario)]),
)  # fmt: skip


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_kill_9_with_calls_ringing_every_caller_gets_the_real_outcome(lab: Lab, tmp_path: Path) -> None:
    """adoption_lab.every_caller_gets_the_real_outcome on the real FreeSWITCH: the two refused calls end
    with `-ERR NO_ANSWER` at originate_timeout; uuid_dump saw the 6 s party `ringing`."""
    adoption_lab.every_caller_gets_the_real_outcome(lab, ADOPTION, tmp_path)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_kill_9_with_no_worker_left_a_later_worker_still_settles_the_calls(lab: Lab, tmp_path: Path) -> None:
    """adoption_lab.a_later_worker_still_settles_the_calls on the real FreeSWITCH."""
    adoption_lab.a_later_worker_still_settles_the_calls(lab, ADOPTION, tmp_path)
