"""Drive a real lab server (../shared/labs/<vendor>/run.sh) inside its network namespace, for the lab tests.

Why one home: the Asterisk and FreeSWITCH lab tests do the same plumbing around different servers — check
they can run (binary built, root, sipp, lab scripts), run `ifbus` inside the namespace with a private
IFBUS_HOME, start the lab when it is down and stop exactly the processes its run.sh started (by the PIDs
it wrote, and only while those PIDs still run the same command line), start SIPp parties on ports chosen
free inside the namespace (the host's free ports say nothing about it) and count what their message logs
received, and run a private redis-server and an `ifbus worker` there for queue mode — and, for the
adoption tests (issue 15), kill -9 that worker with calls ringing and start the one that adopts them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bus import keys
from tests.lab import _spawn, _terminate, wait_for

LABS = Path(os.environ.get("IFBUS_LAB_SCRIPTS", Path(__file__).resolve().parents[2] / "shared" / "labs"))
IFBUS = str(Path(sys.executable).parent / "ifbus")
SIPP = Path(__file__).resolve().parent / "sipp"


def why_not(server: str, binary: Path, run_sh: Path) -> str | None:
    """Why a lab test cannot run here (the reason pytest shows when it skips), or None."""
    if not binary.exists():
        return f"no lab {server} at {binary} (build it: ../shared/labs/{run_sh.parent.name}/build.sh)"
    if os.geteuid() != 0:
        return "needs root: the lab runs in a network namespace (`ip netns exec` needs CAP_SYS_ADMIN)"
    if shutil.which("sipp") is None:
        return "sipp not installed (apt-get install sip-tester)"
    if not run_sh.exists():
        return f"lab scripts not found at {run_sh} (set IFBUS_LAB_SCRIPTS)"
    return None


@dataclass(frozen=True)
class Netns:
    """A network namespace by name, and the commands that run inside it."""

    name: str

    def argv(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def free_port(self, kind: str = "SOCK_DGRAM") -> int:
        """A port free inside the namespace."""
        probe = f"import socket; s = socket.socket(socket.AF_INET, socket.{kind}); s.bind(('127.0.0.1', 0)); "
        probe += "print(s.getsockname()[1])"
        done = subprocess.run(self.argv(sys.executable, "-c", probe), capture_output=True, text=True, check=True)
        return int(done.stdout)

    def udp_bound(self, port: int) -> bool:
        out = subprocess.run(self.argv("ss", "-Hlun", f"sport = :{port}"), capture_output=True, text=True).stdout
        return bool(out.strip())


def run_ifbus(
    ns: Netns, home: Path, *args: str, timeout: float = 60, **env: str
) -> tuple[int, dict[str, object], str]:
    """`ifbus <args> --json` inside the namespace, inline mode unless `env` says otherwise:
    (exit code, the last JSON line of stdout or {}, stderr)."""
    environ = {**os.environ, "IFBUS_HOME": str(home), "IFBUS_MODE": "inline", **env}
    done = subprocess.run(ns.argv(IFBUS, *args, "--json"), capture_output=True, text=True, env=environ, timeout=timeout)
    out = done.stdout.strip()
    return done.returncode, (json.loads(out.splitlines()[-1]) if out else {}), done.stderr


@dataclass
class LabCli:
    """What a lab test module's `lab` fixture hands its tests: `ifbus` in the namespace with its own home
    (the module's dataclass adds its SIPp parties as fields)."""

    ns: Netns
    home: Path

    def ifbus(self, *args: str, timeout: float = 60, **env: str) -> tuple[int, dict[str, object], str]:
        return run_ifbus(self.ns, self.home, *args, timeout=timeout, **env)


# The lab server: start it when it does not answer, stop only what run.sh started


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def start_lab(
    server: str, run_sh: Path, answers: Callable[[], bool], pidfiles: list[Path], env: Mapping[str, str],
    timeout: float,
) -> dict[int, str]:
    """Nothing ({}) when the server answers already (a lab that was up is left running); else run.sh, then
    the PIDs it wrote (pid → the command line it had), so only those are stopped. Skips the module (with
    run.sh's output) when the server still does not answer."""
    if answers():
        return {}
    done = subprocess.run(["bash", str(run_sh)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **env})  # fmt: skip
    if done.returncode != 0 or not answers():
        pytest.skip(f"the lab {server} did not start: {done.stdout[-500:]} {done.stderr[-500:]}")
    started: dict[int, str] = {}
    for pidfile in pidfiles:
        if pidfile.exists():
            pid = int(pidfile.read_text())
            started[pid] = _cmdline(pid)
    return started


def stop_lab(started: dict[int, str], pidfiles: list[Path], grace: float = 10.0) -> None:
    """SIGTERM each process start_lab() started (only if its PID still runs the same command), wait up to
    `grace` s for each, then SIGKILL; remove the pid files that named them."""
    for pid, cmdline in started.items():
        if cmdline and _cmdline(pid) == cmdline:
            os.kill(pid, signal.SIGTERM)
    for pid, cmdline in started.items():
        gone = wait_for(lambda p=pid: not Path(f"/proc/{p}").exists() or None, grace)
        if not gone and cmdline and _cmdline(pid) == cmdline:
            os.kill(pid, signal.SIGKILL)
    for pidfile in pidfiles:
        if pidfile.exists() and int(pidfile.read_text() or 0) in started:
            pidfile.unlink()


@contextmanager
def running_lab(
    server: str, run_sh: Path, answers: Callable[[], bool], pidfiles: list[Path], env: Mapping[str, str], *,
    timeout: float, grace: float = 10.0,
) -> Iterator[list[Party]]:
    """The lab for one test module: started if it is down (start_lab); yields the list the module puts its
    parties in; at the end those parties are stopped, then what start_lab started (stop_lab)."""
    started = start_lab(server, run_sh, answers, pidfiles, env, timeout)
    parties: list[Party] = []
    try:
        yield parties
    finally:
        for party in parties:
            party.stop()
        stop_lab(started, pidfiles, grace)


# SIPp parties


@dataclass
class Party:
    """A SIPp UAS inside the namespace; `count("BYE")` reads its message log."""

    port: int
    log: Path
    proc: subprocess.Popen[bytes]
    dial: str  # what `from=` names to ring it
    wait_timeout: float = 15.0

    def stop(self) -> None:
        _terminate(self.proc)

    def count(self, method: str) -> int:
        if not self.log.exists():
            return 0
        return sum(1 for line in self.log.read_text(errors="replace").splitlines() if line.startswith(method + " "))

    def wait_count(self, method: str, at_least: int) -> int:
        return wait_for(lambda: (n := self.count(method)) >= at_least and n, self.wait_timeout) or self.count(method)

    def invites_by_call(self) -> Counter[str]:
        """How many INVITEs arrived per Call-ID (a call placed twice would show twice, or as two ids).
        SIPp's -trace_msg log separates messages with a line of dashes; a message's start line is its
        first line that is not SIPp's own "UDP message received" note."""
        seen: Counter[str] = Counter()
        invite = False
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        for line in text.splitlines():
            if line.startswith("-----"):
                invite = False
            elif line.startswith("INVITE "):
                invite = True
            elif invite and line.lower().startswith(("call-id:", "i:")):
                seen[line.split(":", 1)[1].strip()] += 1
                invite = False
        return seen


def ring_then_answer(work: Path, seconds: int) -> Path:
    """tests/sipp/ring2_answer_uas.xml (180, 2 s of ringing, 200) with `seconds` of ringing instead, written
    under `work`: one scenario, whatever the ring time a test needs."""
    text = (SIPP / "ring2_answer_uas.xml").read_text()
    assert '<pause milliseconds="2000"/>' in text, "ring2_answer_uas.xml no longer rings with one 2 s pause"
    path = work / f"ring{seconds}_answer_uas.xml"
    path.write_text(text.replace('<pause milliseconds="2000"/>', f'<pause milliseconds="{seconds * 1000}"/>'))
    return path


def start_party(
    ns: Netns, work: Path, name: str, scenario: list[str], dial: Callable[[int], str], wait_timeout: float = 15.0
) -> Party:
    """A SIPp UAS on a SIP port and a media port chosen free in the namespace; `dial(port)` is its address."""
    for _ in range(5):  # the ports are free when chosen; another process could take them first: choose again
        port, media = ns.free_port(), ns.free_port()
        log = work / f"sipp-{name}.msg.log"
        argv = ns.argv("sipp", "-i", "127.0.0.1", "-p", str(port), "-mi", "127.0.0.1", "-mp", str(media), "-nostdin",
                       "-trace_msg", "-message_file", str(log))  # fmt: skip
        proc = _spawn([*argv, *scenario], work / f"sipp-{name}.out", work)
        if wait_for(lambda p=port, pr=proc: ns.udp_bound(p) or pr.poll() is not None, 10.0) and proc.poll() is None:
            return Party(port, log, proc, dial(port), wait_timeout)
        _terminate(proc)
    raise RuntimeError(f"sipp {name} did not start: {(work / f'sipp-{name}.out').read_text(errors='replace')}")


# Queue mode


@contextmanager
def private_redis(ns: Netns, work: Path) -> Iterator[dict[str, str]]:
    """A redis-server of our own inside the namespace, answering PONG; yields the env for queue mode."""
    port = ns.free_port("SOCK_STREAM")
    redis = _spawn(ns.argv("redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                           "no", "--dir", str(work)), work / "redis.log", work)  # fmt: skip
    try:
        ping = ns.argv("redis-cli", "-p", str(port), "ping")
        assert wait_for(lambda: subprocess.run(ping, capture_output=True, text=True).stdout.strip() == "PONG", 10.0)
        yield {"IFBUS_MODE": "queue", "IFBUS_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
    finally:
        _terminate(redis)


@contextmanager
def worker(ns: Netns, home: Path, vendor: str, env: Mapping[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`ifbus worker <vendor>` inside the namespace, output to `log`; the caller waits on its log lines.
    Yields the process: `ip netns exec` and `env` exec, so its pid is the worker's own (kill -9 hits it)."""
    assigns = (f"{k}={v}" for k, v in {"IFBUS_HOME": str(home), **env}.items())
    proc = _spawn(ns.argv("env", *assigns, IFBUS, "worker", vendor), log, log.parent)
    try:
        yield proc
    finally:
        _terminate(proc, grace=10.0)


def redis_cli(ns: Netns, env: Mapping[str, str], *args: str) -> str:
    """One redis-cli command against the private redis-server of `env` (private_redis), inside `ns`."""
    port = env["IFBUS_REDIS_URL"].rsplit(":", 1)[1].split("/", 1)[0]
    done = subprocess.run(ns.argv("redis-cli", "-p", port, *args), capture_output=True, text=True, timeout=10)
    return done.stdout.strip()


# Kill -9 with calls ringing (issue 15)


@dataclass
class Caller:
    """`ifbus call … --json` in the namespace in queue mode, waiting for its one answer in the background,
    as a web app's click-to-call would: `code` and `result` once it exits, `ended` (monotonic) when."""

    request_id: str
    proc: subprocess.Popen[str]
    code: int | None = None
    result: dict[str, object] = field(default_factory=dict)
    stderr: str = ""
    ended: float | None = None

    def wait(self, timeout: float) -> None:
        try:
            out, self.stderr = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, self.stderr = self.proc.communicate()
        self.ended = time.monotonic()
        self.code = self.proc.returncode
        lines = out.strip().splitlines()
        self.result = json.loads(lines[-1]) if lines else {}


def call_in_background(ns: Netns, home: Path, env: Mapping[str, str], request_id: str, *args: str) -> Caller:
    environ = {**os.environ, "IFBUS_HOME": str(home), **env}
    argv = ns.argv(IFBUS, "call", "sip", *args, "--request-id", request_id, "--json")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ)
    return Caller(request_id, proc)


@dataclass
class Adoption:
    """What kill_9_with_calls_ringing saw: every caller (finished), when the first worker was killed, and
    the adopting worker (its log; `job()` asks the bus what it stored for a request)."""

    callers: list[Caller]
    killed_at: float
    ns: Netns
    home: Path
    env: Mapping[str, str]
    adopter_log_path: Path

    @property
    def adopter_log(self) -> str:
        return self.adopter_log_path.read_text(errors="replace")

    def adopted(self) -> set[str]:
        """The request ids the adopting worker logged as adopted (`follower.adopted`, JSON log lines)."""
        found = set()
        for line in self.adopter_log.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("event") == "follower.adopted":
                found.add(str(entry.get("request_id")))
        return found

    def job(self, request_id: str) -> dict[str, object]:
        """`ifbus job <request_id> --json` in queue mode: the result the bus stored, once there is one."""
        return run_ifbus(self.ns, self.home, "job", request_id, **self.env)[1]

    def settled(self, request_id: str, timeout: float) -> dict[str, object]:
        """The stored JobResult of `request_id`, waiting up to `timeout` s for the adopter to settle it."""
        found = wait_for(lambda: self.job(request_id).get("result") or None, timeout, interval=0.2)
        assert isinstance(found, dict), self.job(request_id)
        return found


@contextmanager
def kill_9_with_calls_ringing(
    ns: Netns, home: Path, vendor: str, work: Path, calls: Mapping[str, list[str]], ringing: Callable[[], bool],
    *, restart_late: bool = False, timeout: float = 40.0,
) -> Iterator[Adoption]:  # fmt: skip
    """Issue 15, the way it happens in production: a private redis-server and `ifbus worker <vendor>`;
    every call of `calls` (request id → `ifbus call sip` arguments) submitted by a caller of its own; once
    `ringing()` holds (the parties' INVITE counts) and the ledger shows every call handed to that worker's
    follower (bus.keys.inflight), kill -9 the worker and start a second one: at once, and wait for every
    caller; or, `restart_late`, only once every caller has given up (no live follower of the type was
    left to adopt the calls within the callers' window). Yields while Redis and the second worker still
    run. Nothing here waits a fixed time: each step waits for the event that allows the next."""
    inflight = keys.inflight(vendor)

    def followed() -> bool:
        return redis_cli(ns, env, "ZCARD", inflight) == str(len(calls))

    def wait_all(callers: list[Caller]) -> None:
        threads = [threading.Thread(target=c.wait, args=(timeout,)) for c in callers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    with private_redis(ns, work) as env:
        first_log, second_log = work / "worker-first.log", work / "worker-second.log"
        with worker(ns, home, vendor, env, first_log) as first:
            listening = f"Listening on {keys.queue(vendor)}"
            assert wait_for(lambda: listening in first_log.read_text(errors="replace"), 30.0), (
                first_log.read_text(errors="replace")[-2000:]
            )
            callers = [call_in_background(ns, home, env, rid, *args) for rid, args in calls.items()]
            if not wait_for(lambda: ringing() and followed(), 20.0):
                for caller in callers:
                    caller.wait(0.1)
                raise AssertionError(
                    f"not every call rang and was followed: {redis_cli(ns, env, 'ZCARD', inflight)} followed; "
                    f"callers: {[(c.code, c.result, c.stderr[-300:]) for c in callers]}; "
                    f"worker: {first_log.read_text(errors='replace')[-2000:]}"
                )
            first.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            first.wait(10)
        if restart_late:
            wait_all(callers)
        with worker(ns, home, vendor, env, second_log):
            if not restart_late:
                wait_all(callers)
            yield Adoption(callers, killed_at, ns, home, env, second_log)
