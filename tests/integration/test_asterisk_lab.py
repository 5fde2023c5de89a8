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
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import netns_lab
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

# tests/sipp/ring2_answer_uas.xml: 180, 2 s of ringing, then 200 — the adopter looks while it rings.
RING_THEN_ANSWER = Path(__file__).resolve().parents[1] / "sipp" / "ring2_answer_uas.xml"


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
    slow = _party(tmp_path, "sipp", ["-sf", str(RING_THEN_ANSWER)])
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
# Asterisk says (recover: Status, then the channel's events).

# tests/sipp/ring_uas.xml: 180 and then nothing, until Asterisk CANCELs at answer_timeout.
RING_FOREVER = Path(__file__).resolve().parents[1] / "sipp" / "ring_uas.xml"
# The lease of a killed worker's calls runs out LEASE_SECONDS = 3 s after its last refresh (at most 1 s
# before the kill); adoption then looks every 0.5 s. A party that rings RING_PAST_ADOPTION s is still
# ringing when the adopter looks, and so is one refused only at REFUSE_AFTER s: both are followed to
# their end by the adopter. The 2 s party may answer just before or just after the look.
RING_PAST_ADOPTION = 6
# With the second worker started only once the callers gave up (about 3 s after the kill, plus its own
# start-up), a party that rings this long is still ringing when it looks.
RING_PAST_LATE_ADOPTION = 9
REFUSE_AFTER = 10


def _adoption_server(lab: Lab) -> None:
    """`adoptast`: the lab Asterisk, answer_timeout=REFUSE_AFTER."""
    auth = ("--auth", "user=admin", "secret=pass123")
    options = ("--opt", "context=ctx", "--opt", f"answer_timeout={REFUSE_AFTER}", "--replace")
    code, _, err = lab.ifbus("add", "sip", "adoptast", "asterisk", *auth, *options)
    assert code == 0, err


def _same_as_stored(adoption: netns_lab.Adoption, caller: netns_lab.Caller) -> None:
    """What the caller printed is what the bus stored for its request (`ifbus job`): one result."""
    stored = adoption.settled(caller.request_id, 5.0)
    assert (stored["message"], stored["call_id"], stored["sip_code"]) == (
        caller.result["message"], caller.result["call_id"], caller.result["sip_code"]
    ), (stored, caller.result)  # fmt: skip


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_kill_9_with_calls_ringing_every_caller_gets_the_real_outcome(lab: Lab, tmp_path: Path) -> None:
    """Seven calls through `ifbus worker asterisk` (server `adoptast`, answer_timeout=REFUSE_AFTER): three
    to a party that rings 2 s and answers, two to one that rings RING_PAST_ADOPTION s and answers, two
    to one that rings until Asterisk gives up. Once all seven ring at their parties and are in the worker's
    follower, kill -9 it and start another worker.

    Every caller gets the real final outcome from the adopting worker (the same one `ifbus job` shows):
    answered (data `recovered`, with what Status saw: `Ringing` for the 6 s party, which answered while
    the adopter followed it) for five, SIP 480 (Hangup `TechCause: 480` at answer_timeout) for two.
    Each party saw exactly one INVITE per call (nothing placed twice), and the answered calls are real
    channels: hanging them up sends each its BYE."""
    slow = _party(tmp_path, "sipp", ["-sf", str(RING_THEN_ANSWER)], name="ring2")
    ring6 = netns_lab.ring_then_answer(tmp_path, RING_PAST_ADOPTION)
    later = _party(tmp_path, "sipp", ["-sf", str(ring6)], name="ring6")
    ring = _party(tmp_path, "sipp", ["-sf", str(RING_FOREVER)], name="ring")
    try:
        _adoption_server(lab)
        args = ("to=park", "--timeout", "40")
        calls = {f"ast-kill9-answer2-{i}": ["adoptast", f"from={slow.dial}", *args] for i in range(3)}
        calls |= {f"ast-kill9-answer6-{i}": ["adoptast", f"from={later.dial}", *args] for i in range(2)}
        calls |= {f"ast-kill9-refuse-{i}": ["adoptast", f"from={ring.dial}", *args] for i in range(2)}
        started = time.monotonic()

        def ringing() -> bool:
            return (slow.count("INVITE"), later.count("INVITE"), ring.count("INVITE")) == (3, 2, 2)

        with netns_lab.kill_9_with_calls_ringing(NS, lab.home, "asterisk", tmp_path, calls, ringing) as adoption:
            answered = [c for c in adoption.callers if "answer" in c.request_id]
            for caller in adoption.callers:
                why = (caller.result, caller.stderr[-500:], adoption.adopter_log[-3000:])
                if caller in answered:
                    assert caller.code == 0, why
                    call_id = str(caller.result["call_id"])
                    assert CALL_ID.fullmatch(call_id), why
                    assert caller.result["message"] == f"Call {call_id} answered on adoptast", why
                    assert caller.result["data"]["recovered"] is True, why  # type: ignore[index]
                else:
                    assert caller.code == 5 and caller.result["sip_code"] == 480, why
                if "answer6" in caller.request_id:
                    assert caller.result["data"]["state_at_adoption"] == "Ringing", why  # type: ignore[index]
                _same_as_stored(adoption, caller)
            assert adoption.adopted() == set(calls), adoption.adopter_log[-3000:]

        invites = slow.invites_by_call() + later.invites_by_call() + ring.invites_by_call()
        assert len(invites) == 7 and set(invites.values()) == {1}, invites
        assert ring.wait_count("CANCEL", 2) == 2  # Asterisk gave up on each at answer_timeout
        call_ids = {str(c.result["call_id"]) for c in answered}
        assert len(call_ids) == 5
        for call_id in call_ids:
            code, answer, err = lab.ifbus("hangup", "sip", "adoptast", f"call_id={call_id}")
            assert code == 0 and answer["message"] == f"Call {call_id} ended on adoptast", err
        assert slow.wait_count("BYE", 3) == 3 and later.wait_count("BYE", 2) == 2
        # counted after the BYEs: no second or retransmitted INVITE came later
        assert (slow.count("INVITE"), later.count("INVITE"), ring.count("INVITE")) == (3, 2, 2)

        after = {c.request_id: round(c.ended - adoption.killed_at, 2) for c in adoption.callers if c.ended}
        states = {c.request_id: c.result["data"]["state_at_adoption"] for c in answered}  # type: ignore[index]
        print(f"\nAsterisk kill -9 with 7 calls ringing, killed {adoption.killed_at - started:.2f} s after submit; "
              f"answers (s after the kill): {after}; Status saw {states}")  # fmt: skip
    finally:
        for party in (slow, later, ring):
            party.stop()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_kill_9_with_no_worker_left_a_later_worker_still_settles_the_calls(lab: Lab, tmp_path: Path) -> None:
    """The only `ifbus worker asterisk` is killed -9 with two calls ringing and nothing else serves the
    type: within its window (the lease, about 3 s) no follower is alive to adopt them, so each caller
    hears "stopped without answering" (exit 6, outcome unknown) rather than waiting in vain. A worker
    started after that still adopts both and settles them from Asterisk's state, once: `ifbus job` then
    shows the real outcome (answered after it followed the ringing call; SIP 480 for the one Asterisk gave
    up on), and each party saw one INVITE."""
    ring9 = netns_lab.ring_then_answer(tmp_path, RING_PAST_LATE_ADOPTION)
    later = _party(tmp_path, "sipp", ["-sf", str(ring9)], name="ring9")
    ring = _party(tmp_path, "sipp", ["-sf", str(RING_FOREVER)], name="ring")
    try:
        _adoption_server(lab)
        args = ("to=park", "--timeout", "40")
        calls = {"ast-late-answer": ["adoptast", f"from={later.dial}", *args],
                 "ast-late-refuse": ["adoptast", f"from={ring.dial}", *args]}  # fmt: skip

        def ringing() -> bool:
            return (later.count("INVITE"), ring.count("INVITE")) == (1, 1)

        with netns_lab.kill_9_with_calls_ringing(NS, lab.home, "asterisk", tmp_path, calls, ringing,
                                                 restart_late=True) as adoption:  # fmt: skip
            for caller in adoption.callers:
                assert caller.code == 6 and "stopped without answering" in str(caller.result["message"]), caller.result
            answered = adoption.settled("ast-late-answer", 20.0)
            refused = adoption.settled("ast-late-refuse", 20.0)
            assert adoption.adopted() == set(calls), adoption.adopter_log[-3000:]
        call_id = str(answered["call_id"])
        assert answered["outcome"] == "ok" and answered["message"] == f"Call {call_id} answered on adoptast", answered
        assert answered["data"] == {**answered["data"], "recovered": True, "state_at_adoption": "Ringing"}  # type: ignore[dict-item]
        assert refused["outcome"] == "rejected" and refused["sip_code"] == 480, refused
        code, answer, err = lab.ifbus("hangup", "sip", "adoptast", f"call_id={call_id}")
        assert code == 0 and answer["message"] == f"Call {call_id} ended on adoptast", err
        assert later.wait_count("BYE", 1) == 1
        assert ring.wait_count("CANCEL", 1) == 1
        invites = later.invites_by_call() + ring.invites_by_call()
        assert len(invites) == 2 and set(invites.values()) == {1}, invites
    finally:
        later.stop()
        ring.stop()
