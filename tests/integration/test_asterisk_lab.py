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
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.lab import _spawn, _terminate, wait_for

NETNS = os.environ.get("IFBUS_ASTERISK_NETNS", "labast")
ROOT = Path(os.environ.get("LAB_ROOT", "/opt/lab"))
BINARY = ROOT / "asterisk-root" / "sbin" / "asterisk"
PIDS = ROOT / "run" / "asterisk"
LABS = Path(os.environ.get("IFBUS_LAB_SCRIPTS", Path(__file__).resolve().parents[3] / "shared" / "labs"))
RUN_SH = LABS / "asterisk" / "run.sh"
SCENARIOS = LABS / "asterisk"
IFBUS = str(Path(sys.executable).parent / "ifbus")
CALL_ID = re.compile(r"ifbus-[0-9a-f]{32}")
LAB_PROCESSES = ("asterisk", "sipp-200", "sipp-486", "sipp-ring", "sipp-bye")


def _why_not() -> str | None:
    if not BINARY.exists():
        return f"no lab Asterisk at {BINARY} (build it: ../shared/labs/asterisk/build.sh)"
    if os.geteuid() != 0:
        return "needs root: the lab runs in a network namespace (`ip netns exec` needs CAP_SYS_ADMIN)"
    if shutil.which("sipp") is None:
        return "sipp not installed (apt-get install sip-tester)"
    if not RUN_SH.exists():
        return f"lab scripts not found at {RUN_SH} (set IFBUS_LAB_SCRIPTS)"
    return None


pytestmark = [pytest.mark.integration, pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")]


def in_ns(*argv: str) -> list[str]:
    return ["ip", "netns", "exec", NETNS, *argv]


def _ami_answers() -> bool:
    """The AMI banner arrives on 127.0.0.1:5038 inside the namespace (a bare open port is not enough)."""
    probe = (
        "import socket; s = socket.create_connection(('127.0.0.1', 5038), timeout=1); s.settimeout(2); "
        "raise SystemExit(0 if s.recv(64).startswith(b'Asterisk Call Manager/') else 1)"
    )
    done = subprocess.run(in_ns(sys.executable, "-c", probe), capture_output=True, timeout=15)
    return done.returncode == 0


def _free_port(kind: str = "SOCK_DGRAM") -> int:
    """A port free inside the namespace (the host's free ports say nothing about it)."""
    probe = f"import socket; s = socket.socket(socket.AF_INET, socket.{kind}); s.bind(('127.0.0.1', 0)); "
    probe += "print(s.getsockname()[1])"
    return int(subprocess.run(in_ns(sys.executable, "-c", probe), capture_output=True, text=True, check=True).stdout)


def _udp_bound(port: int) -> bool:
    out = subprocess.run(in_ns("ss", "-Hlun", f"sport = :{port}"), capture_output=True, text=True).stdout
    return bool(out.strip())


@dataclass
class Party:
    """A SIPp UAS inside the namespace; `count("BYE")` reads its message log."""

    endpoint: str  # the lab's PJSIP endpoint whose settings the call uses
    port: int
    log: Path
    proc: subprocess.Popen[bytes]

    def count(self, method: str) -> int:
        if not self.log.exists():
            return 0
        return sum(1 for line in self.log.read_text(errors="replace").splitlines() if line.startswith(method + " "))

    def wait_count(self, method: str, at_least: int, timeout: float = 15.0) -> int:
        return wait_for(lambda: (n := self.count(method)) >= at_least and n, timeout) or self.count(method)

    @property
    def dial(self) -> str:
        return f"PJSIP/{self.endpoint}/sip:{self.endpoint}@127.0.0.1:{self.port}"


def _party(work: Path, endpoint: str, scenario: list[str]) -> Party:
    for _ in range(5):  # the ports are free when chosen; another process could take them first: choose again
        port, media = _free_port(), _free_port()
        log = work / f"sipp-{endpoint}.msg.log"
        argv = in_ns("sipp", "-i", "127.0.0.1", "-p", str(port), "-mi", "127.0.0.1", "-mp", str(media), "-nostdin",
                     "-trace_msg", "-message_file", str(log))  # fmt: skip
        proc = _spawn([*argv, *scenario], work / f"sipp-{endpoint}.out", work)
        if wait_for(lambda p=port, pr=proc: _udp_bound(p) or pr.poll() is not None, 10.0) and proc.poll() is None:
            return Party(endpoint, port, log, proc)
        _terminate(proc)
    raise RuntimeError(f"sipp {endpoint} did not start: {(work / f'sipp-{endpoint}.out').read_text(errors='replace')}")


@dataclass
class Lab:
    home: Path
    answer: Party
    busy: Party

    def ifbus(self, *args: str, timeout: float = 60, **env: str) -> tuple[int, dict[str, object], str]:
        environ = {**os.environ, "IFBUS_HOME": str(self.home), "IFBUS_MODE": "inline", **env}
        done = subprocess.run(
            in_ns(IFBUS, *args, "--json"), capture_output=True, text=True, env=environ, timeout=timeout
        )
        out = done.stdout.strip()
        return done.returncode, (json.loads(out.splitlines()[-1]) if out else {}), done.stderr


def _start_lab() -> dict[int, str]:
    """run.sh, then the PIDs it wrote (pid → the command line it had), so only those are stopped."""
    env = {**os.environ, "LAB_NETNS": NETNS, "LAB_ROOT": str(ROOT)}
    done = subprocess.run(["bash", str(RUN_SH)], capture_output=True, text=True, timeout=90, env=env)
    if done.returncode != 0 or not _ami_answers():
        pytest.skip(f"the lab Asterisk did not start: {done.stdout[-500:]} {done.stderr[-500:]}")
    started: dict[int, str] = {}
    for name in LAB_PROCESSES:
        with_pid = PIDS / f"{name}.pid"
        if with_pid.exists():
            pid = int(with_pid.read_text())
            started[pid] = _cmdline(pid)
    return started


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def _stop_lab(started: dict[int, str]) -> None:
    """SIGTERM each process run.sh started (only if its PID still runs the same command), then SIGKILL."""
    for pid, cmdline in started.items():
        if cmdline and _cmdline(pid) == cmdline:
            os.kill(pid, signal.SIGTERM)
    for pid, cmdline in started.items():
        gone = wait_for(lambda p=pid: not Path(f"/proc/{p}").exists() or None, 10.0)
        if not gone and cmdline and _cmdline(pid) == cmdline:
            os.kill(pid, signal.SIGKILL)
    for name in LAB_PROCESSES:
        pidfile = PIDS / f"{name}.pid"
        if pidfile.exists() and int(pidfile.read_text() or 0) in started:
            pidfile.unlink()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    work = tmp_path_factory.mktemp("astlab")
    started = {} if _ami_answers() else _start_lab()
    parties: list[Party] = []
    try:
        answer = _party(work, "sipp", ["-sn", "uas"])
        parties.append(answer)
        busy = _party(work, "sippbusy", ["-sf", str(SCENARIOS / "uas_486.xml")])
        parties.append(busy)
        lab = Lab(work / "ifhome", answer, busy)
        for name, secret, extra in (
            ("myast", "pass123", ()),
            ("badast", "wrongsecret", ()),
            ("ringast", "pass123", ("--opt", "answer_timeout=2")),
        ):
            auth = ("--auth", "user=admin", f"secret={secret}")
            code, _, err = lab.ifbus("add", "sip", name, "asterisk", *auth, "--opt", "context=ctx", *extra)
            assert code == 0, err
        yield lab
    finally:
        for party in parties:
            _terminate(party.proc)
        _stop_lab(started)


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
    port = _free_port("SOCK_STREAM")
    redis_log = lab.home.parent / "redis.log"
    redis = _spawn(in_ns("redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                         "no", "--dir", str(lab.home.parent)), redis_log, lab.home.parent)  # fmt: skip
    worker: subprocess.Popen[bytes] | None = None
    try:
        ping = in_ns("redis-cli", "-p", str(port), "ping")
        assert wait_for(lambda: subprocess.run(ping, capture_output=True, text=True).stdout.strip() == "PONG", 10.0)
        env = {"IFBUS_MODE": "queue", "IFBUS_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
        worker_log = lab.home.parent / "worker.log"
        worker = _spawn(in_ns("env", f"IFBUS_HOME={lab.home}", *(f"{k}={v}" for k, v in env.items()), IFBUS, "worker",
                              "asterisk"), worker_log, lab.home.parent)  # fmt: skip
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
    finally:
        if worker is not None:
            _terminate(worker, grace=10.0)
        _terminate(redis)
