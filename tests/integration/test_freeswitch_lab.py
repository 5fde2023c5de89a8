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
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.lab import _spawn, _terminate, wait_for

NETNS = os.environ.get("IFBUS_LAB_NETNS", "labfs")
BINARY = Path(os.environ.get("IFBUS_FREESWITCH_BIN", "/opt/lab/freeswitch/bin/freeswitch"))
PIDFILE = Path("/opt/lab/fsrun/run/freeswitch.pid")
LABS = Path(os.environ.get("IFBUS_LAB_SCRIPTS", Path(__file__).resolve().parents[3] / "shared" / "labs"))
RUN_SH = LABS / "freeswitch" / "run.sh"
SCENARIOS = LABS / "freeswitch"
IFBUS = str(Path(sys.executable).parent / "ifbus")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _why_not() -> str | None:
    if not BINARY.exists():
        return f"no lab FreeSWITCH at {BINARY} (build it: ../shared/labs/freeswitch/build.sh)"
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


def _esl_answers() -> bool:
    probe = "import socket; socket.create_connection(('127.0.0.1', 8021), timeout=1).close()"
    return subprocess.run(in_ns(sys.executable, "-c", probe), capture_output=True, timeout=10).returncode == 0


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
    """A SIPp UAS inside the namespace; `count("INVITE")` reads its message log."""

    port: int
    log: Path
    proc: subprocess.Popen[bytes]

    def count(self, method: str) -> int:
        if not self.log.exists():
            return 0
        return sum(1 for line in self.log.read_text(errors="replace").splitlines() if line.startswith(method + " "))

    def wait_count(self, method: str, at_least: int, timeout: float = 10.0) -> int:
        return wait_for(lambda: (n := self.count(method)) >= at_least and n, timeout) or self.count(method)

    @property
    def dial(self) -> str:
        return f"sofia/internal/sipp@127.0.0.1:{self.port}"


def _party(work: Path, name: str, scenario: list[str]) -> Party:
    for _ in range(5):  # the port is free when chosen; another process could take it first: choose again
        port = _free_port()
        log = work / f"sipp-{name}.msg.log"
        argv = in_ns("sipp", "-i", "127.0.0.1", "-p", str(port), "-nostdin", "-trace_msg", "-message_file", str(log))
        proc = _spawn([*argv, *scenario], work / f"sipp-{name}.out", work)
        if wait_for(lambda p=port, pr=proc: _udp_bound(p) or pr.poll() is not None, 10.0) and proc.poll() is None:
            return Party(port, log, proc)
        _terminate(proc)
    raise RuntimeError(f"sipp {name} did not start: {(work / f'sipp-{name}.out').read_text(errors='replace')}")


@dataclass
class Lab:
    home: Path
    answer: Party
    busy: Party
    ring: Party

    def ifbus(self, *args: str, timeout: float = 60, **env: str) -> tuple[int, dict[str, object], str]:
        environ = {**os.environ, "IFBUS_HOME": str(self.home), "IFBUS_MODE": "inline", **env}
        done = subprocess.run(
            in_ns(IFBUS, *args, "--json"), capture_output=True, text=True, env=environ, timeout=timeout
        )
        out = done.stdout.strip()
        return done.returncode, (json.loads(out.splitlines()[-1]) if out else {}), done.stderr


def _stop_server() -> None:
    pid = int(PIDFILE.read_text())
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), 20.0)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    work = tmp_path_factory.mktemp("fslab")
    started = False
    if not _esl_answers():
        done = subprocess.run(["bash", str(RUN_SH)], capture_output=True, text=True, timeout=60)
        if done.returncode != 0 or not _esl_answers():
            pytest.skip(f"the lab FreeSWITCH did not start: {done.stdout[-500:]} {done.stderr[-500:]}")
        started = True
    parties: list[Party] = []
    try:
        answer = _party(work, "answer", ["-sn", "uas"])
        parties.append(answer)
        busy = _party(work, "busy", ["-sf", str(SCENARIOS / "sipp_uas_486.xml")])
        parties.append(busy)
        ring = _party(work, "ring", ["-sf", str(SCENARIOS / "sipp_uas_ring.xml")])
        parties.append(ring)
        lab = Lab(work / "ifhome", answer, busy, ring)
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
    finally:
        for party in parties:
            _terminate(party.proc)
        if started:
            _stop_server()


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
    port = _free_port("SOCK_STREAM")
    redis_log = lab.home.parent / "redis.log"
    redis = _spawn(in_ns("redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                         "no", "--dir", str(lab.home.parent)), redis_log, lab.home.parent)  # fmt: skip
    worker: subprocess.Popen[bytes] | None = None
    try:
        ping = in_ns("redis-cli", "-p", str(port), "ping")
        assert wait_for(lambda: subprocess.run(ping, capture_output=True, text=True).stdout.strip() == "PONG", 10.0)
        env = {"IFBUS_MODE": "queue", "IFBUS_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
        worker_env = {**os.environ, "IFBUS_HOME": str(lab.home), **env}
        worker_log = lab.home.parent / "worker.log"
        with open(worker_log, "wb") as log:
            worker = subprocess.Popen(
                in_ns(IFBUS, "worker", "freeswitch"), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, env=worker_env, start_new_session=True,
            )  # fmt: skip
        assert wait_for(lambda: "Listening on sip.freeswitch" in worker_log.read_text(errors="replace"), 20.0)
        party = lab.answer
        byes = party.count("BYE")
        code, result, err = lab.ifbus("call", "sip", "labfs", f"from={party.dial}", "to=9196", **env)
        assert code == 0, err
        assert result["mode"] == "queue" and UUID.fullmatch(str(result["call_id"]))
        code, result, err = lab.ifbus("hangup", "sip", "labfs", f"call_id={result['call_id']}", **env)
        assert code == 0, err
        assert party.wait_count("BYE", byes + 1) == byes + 1
    finally:
        if worker is not None:
            _terminate(worker, grace=10.0)
        _terminate(redis)
