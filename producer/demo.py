"""`ifbus demo`: the bus's main job, end to end, on this machine alone.

A private Kamailio running the project's own deploy/kamailio/kamailio.cfg, two SIPp phones (`1001`
answers and transfers as a click-to-call's first party does, `2000` answers), a server `demo` in a
throwaway registry, and one call placed through the bus: a private redis-server plus an `ifbus
worker` when one can start, else embedded mode. The call is answered, listed with `ifbus calls`'
machinery, hung up, and a timeline is printed (ms since the request was submitted).

Everything lives in one temporary folder and in child processes started in sessions of their own;
all of it is stopped and removed on the way out — success, failure, Ctrl-C or SIGTERM alike — so
nothing is left behind (tests/integration/test_demo.py checks). Ports are picked free on 127.0.0.1
at run time; nothing binds another address. The process handling is producer/processes.py, which
the test suite's labs (tests/lab.py) use too.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bus.errors import BusError, InvalidInput, Unreachable
from producer.processes import free_port, terminate, udp_bound, which
from producer.processes import spawn as _spawn

CONFIG = Path("deploy/kamailio/kamailio.cfg")
SCENARIOS = Path("tests/sipp")  # the lab's phones: refer_uas.xml (first party), answer_uas.xml
READY_SECONDS = 20.0
CALL_TIMEOUT_SECONDS = 30.0
INSTALL_HINT = "install them with deploy/install.sh (Debian/Ubuntu packages kamailio and sip-tester)"


@dataclass
class Lab:
    """What the demo started, for the report and for clean-up."""

    workdir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    mode: str = "embedded"

    @property
    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self.procs.items()}


# ---------------------------------------------------------------- where things are


def checkout() -> Path:
    """The source tree the config and the phones' scenarios come from: the folder the virtualenv
    lives in (deploy/install.sh makes ./.venv), the package's own tree (editable install), or the
    current folder. IFBUS_DEMO_ROOT names another."""
    here = Path(__file__).resolve()
    candidates = [os.environ.get("IFBUS_DEMO_ROOT"), Path(sys.prefix).parent, here.parents[1], Path.cwd()]
    for candidate in candidates:
        if candidate and (Path(candidate) / CONFIG).is_file() and (Path(candidate) / SCENARIOS).is_dir():
            return Path(candidate)
    raise InvalidInput(
        f"cannot find {CONFIG} and {SCENARIOS}/ (run the demo from the IF.bus checkout, or set IFBUS_DEMO_ROOT)"
    )


def wait_for(check: Callable[[], bool], seconds: float, what: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if proc is not None and proc.poll() is not None:
            raise Unreachable(f"{what}: the process exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise Unreachable(f"{what}: not ready within {seconds:g} s")
        time.sleep(0.02)


# ---------------------------------------------------------------- processes


def spawn(lab: Lab, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A child in a session of its own, its output in the work folder, remembered for the clean-up."""
    proc = _spawn(argv, lab.workdir / f"{name}.log", lab.workdir, env)
    lab.procs[name] = proc
    return proc


@contextlib.contextmanager
def cleaned_up(lab: Lab) -> Iterator[Lab]:
    """Stop every child (newest first) and remove the folder, whatever happened; SIGTERM and SIGHUP
    end the demo like Ctrl-C, and a second Ctrl-C cannot interrupt the clean-up."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield lab
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for proc in reversed(list(lab.procs.values())):
                terminate(proc)
            shutil.rmtree(lab.workdir, ignore_errors=True)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


# ---------------------------------------------------------------- the pieces


def start_kamailio(lab: Lab, root: Path, token: str) -> tuple[int, int]:
    binary = which("kamailio")
    if binary is None:
        raise Unreachable(f"kamailio is not installed: {INSTALL_HINT}")
    sip_port, http_port = free_port(), free_port(udp=False)
    run = lab.workdir / "run"
    run.mkdir()
    proc = spawn(lab, "kamailio", [
        binary, "-f", str(root / CONFIG), "-DD", "-E", "-Y", str(run), "-P", str(run / "kamailio.pid"),
        "-m", "64", "-M", "8", "-A", f'RPC_TOKEN="{token}"', "-A", "FR_TIMER=2000", "-A", "FR_INV_TIMER=5000",
        "--substdef", f"!SIP_PORT!{sip_port}!", "--substdef", f"!HTTP_PORT!{http_port}!",
    ])  # fmt: skip
    wait_for(lambda: _rpc_answers(http_port, token), READY_SECONDS, "kamailio", proc)
    return sip_port, http_port


def _rpc_answers(port: int, token: str) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        body = json.dumps({"jsonrpc": "2.0", "method": "core.version", "id": 1})
        conn.request("POST", "/RPC", body, {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        return "kamailio" in conn.getresponse().read().decode(errors="replace")
    except OSError:
        return False
    finally:
        conn.close()


class Phone:
    """One SIPp user agent on loopback, and what it has received so far (its -trace_msg log)."""

    def __init__(self, lab: Lab, root: Path, name: str, scenario: str, kamailio_port: int) -> None:
        binary = which("sipp")
        if binary is None:
            raise Unreachable(f"sipp is not installed: {INSTALL_HINT}")
        self.name = name
        self.port = free_port(tcp=False)
        self.messages = lab.workdir / f"{name}.msg.log"
        media, control = free_port(tcp=False, span=4), free_port(tcp=False)
        self.proc = spawn(lab, f"phone-{name}", [
            binary, "-sf", str(root / SCENARIOS / scenario), "-s", name, "-i", "127.0.0.1", "-p", str(self.port),
            "-mp", str(media), "-ci", "127.0.0.1", "-cp", str(control), "-nostdin",
            "-trace_msg", "-message_file", str(self.messages),
            "-trace_err", "-error_file", str(lab.workdir / f"{name}.err.log"),
            f"127.0.0.1:{kamailio_port}",
        ])  # fmt: skip

    def wait_ready(self) -> None:
        wait_for(lambda: udp_bound(self.port), READY_SECONDS, f"SIPp phone {self.name}", self.proc)

    @property
    def uri(self) -> str:
        return f"sip:{self.name}@127.0.0.1:{self.port}"

    def received(self) -> list[str]:
        """Methods of the requests received, in order: the first line after each "message received"."""
        try:
            text = self.messages.read_text(errors="replace")
        except OSError:
            return []
        return re.findall(r"message received[^\n]*\n\s*\n?([A-Z]+) \S+ SIP/2\.0", text)


class Timeline:
    """Events in ms since the request was submitted; a thread watches the phones for theirs."""

    def __init__(self, phones: list[Phone]) -> None:
        self.start = time.monotonic()
        self.events: list[tuple[float, str]] = []
        self._phones = phones
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="ifbus-demo-timeline", daemon=True)

    def mark(self, what: str) -> None:
        self.events.append((round((time.monotonic() - self.start) * 1000, 1), what))

    def __enter__(self) -> Timeline:
        self.start = time.monotonic()
        self.mark("submitted")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(2)

    def _watch(self) -> None:
        seen = {phone.name: 0 for phone in self._phones}
        verbs = {"INVITE": "{} ringing (INVITE)", "REFER": "{} asked to call the other phone (REFER)",
                 "BYE": "{} got BYE"}  # fmt: skip
        while not self._done.wait(0.005):
            for phone in self._phones:
                got = phone.received()
                for method in got[seen[phone.name] :]:
                    if method in verbs:
                        self.mark(verbs[method].format(phone.name))
                seen[phone.name] = len(got)

    def wait_for(self, text: str, count: int, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if sum(what == text for _, what in self.events) >= count:
                return True
            time.sleep(0.01)
        return False

    def ordered(self) -> list[dict[str, Any]]:
        return [{"ms": ms, "event": what} for ms, what in sorted(self.events)]


def start_queue(lab: Lab, home: Path, say: Callable[[str], None]) -> str | None:
    """A private redis-server and one `ifbus worker kamailio`: the Redis URL, or None (embedded mode)
    when either cannot start — the demo then says why and runs the job in this process."""
    binary = which("redis-server")
    if binary is None:
        say("no redis-server installed: the call runs embedded (in this process)")
        return None
    port = free_port(udp=False)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        redis = spawn(lab, "redis", [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                     "--appendonly", "no", "--dir", str(lab.workdir)])  # fmt: skip
        wait_for(lambda: _redis_answers(port), READY_SECONDS, "redis-server", redis)
        env = {**os.environ, "IFBUS_HOME": str(home), "IFBUS_REDIS_URL": url, "IFBUS_LOG_LEVEL": "WARNING"}
        worker = spawn(lab, "worker", [sys.executable, "-c", "from producer.cli import main; main()",
                                       "worker", "kamailio"], env)  # fmt: skip
        wait_for(lambda: _worker_on(url), READY_SECONDS, "ifbus worker", worker)
    except Unreachable as exc:
        say(f"{exc.message}: the call runs embedded (in this process)")
        return None
    say(f"redis-server on 127.0.0.1:{port} (pid {redis.pid}), ifbus worker kamailio (pid {worker.pid})")
    return url


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _worker_on(url: str) -> bool:
    from redis import Redis
    from rq import Queue, Worker

    return Worker.count(queue=Queue("sip.kamailio", connection=Redis.from_url(url))) > 0


# ---------------------------------------------------------------- the demo


def run(say: Callable[[str], None], hold: float = 1.0) -> dict[str, Any]:
    """Run the demo; return the report (`ifbus demo --json` prints it). Raises BusError classes."""
    root = checkout()
    lab = Lab(Path(tempfile.mkdtemp(prefix="ifbus-demo-")))
    saved_env = {k: os.environ.get(k) for k in ("IFBUS_HOME", "IFBUS_REDIS_URL", "IFBUS_MODE")}
    try:
        with cleaned_up(lab):
            say(f"work folder {lab.workdir} (removed at the end)")
            token = secrets.token_hex(16)
            sip_port, http_port = start_kamailio(lab, root, token)
            say(f"kamailio (pid {lab.procs['kamailio'].pid}) running {root / CONFIG}: SIP 127.0.0.1:{sip_port}, "
                f"JSON-RPC http://127.0.0.1:{http_port}/RPC")  # fmt: skip
            caller = Phone(lab, root, "1001", "refer_uas.xml", sip_port)
            callee = Phone(lab, root, "2000", "answer_uas.xml", sip_port)
            caller.wait_ready()
            callee.wait_ready()
            say(f"phones {caller.uri} (pid {caller.proc.pid}) and {callee.uri} (pid {callee.proc.pid})")
            home = lab.workdir / "home"
            os.environ["IFBUS_HOME"] = str(home)  # embedded jobs read the registry from the environment
            report = _call(lab, home, token, sip_port, http_port, caller, callee, say, hold)
            report["pids"] = lab.pids
            report["workdir"] = str(lab.workdir)
            return report
    finally:
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _call(lab: Lab, home: Path, token: str, sip_port: int, http_port: int, caller: Phone, callee: Phone,
          say: Callable[[str], None], hold: float) -> dict[str, Any]:  # fmt: skip
    from bus.models import CallRequest, HangupRequest
    from bus.registry import open_registry
    from bus.server import ServerEntry
    from bus.settings import Settings
    from producer.api import Producer
    from producer.cli import embedded

    registry = open_registry(home)
    options = {"fr_timer": "2", "fr_inv_timer": "5", "sip_port": str(sip_port)}
    registry.add("demo", ServerEntry.build("kamailio", {"token": token, "realm": "127.0.0.1"}, "127.0.0.1",
                                           http_port, None, options))  # fmt: skip
    say(f"server `demo` (kamailio) in a throwaway registry {home}")
    url = start_queue(lab, home, say)
    if url is None:
        settings = Settings(home=home, mode="inline", redis_url=None)
    else:
        settings = Settings(home=home, mode="queue", redis_url=url)
    lab.mode = "queue" if url else "embedded"
    producer = Producer(settings, registry, runner=embedded)
    say(f"calling {caller.uri} → {callee.uri} through the bus ({lab.mode} mode)")
    with Timeline([caller, callee]) as timeline:
        request = CallRequest(server="demo", timeout=CALL_TIMEOUT_SECONDS, **{"from": caller.uri, "to": callee.uri})
        result = producer.submit(request)
        if isinstance(result, str) or not result.ok:
            message = result if isinstance(result, str) else result.message
            raise BusError(f"the demo call did not connect: {message}")
        timeline.mark("answered (the bus returned the call id)")
        carried = _carried(url, home, result.call_id)
        time.sleep(hold)  # the call is up: both phones are in it
        timeline.mark("hang-up submitted")
        ended = producer.submit(HangupRequest(server="demo", call_id=result.call_id, timeout=CALL_TIMEOUT_SECONDS))
        if isinstance(ended, str) or not ended.ok:
            raise BusError(f"the demo hang-up failed: {ended if isinstance(ended, str) else ended.message}")
        timeline.mark("hung up (the bus confirmed)")
        # 1001 got a BYE for the hold leg after the REFER already: the call's own BYE is its second.
        timeline.wait_for(f"{caller.name} got BYE", 2, 5)
        timeline.wait_for(f"{callee.name} got BYE", 1, 5)
    return {
        "ok": True,
        "mode": lab.mode,
        "call_id": result.call_id,
        "timeline": timeline.ordered(),
        "calls_while_up": carried,
    }


def _carried(url: str | None, home: Path, call_id: str | None) -> list[dict[str, Any]]:
    """What `ifbus calls sip demo` showed while the call was up (the ledger is Redis's: queue mode only)."""
    if url is None:
        return []
    from bus.ledger import RedisLedger
    from bus.redis_conn import from_url
    from bus.registry import open_registry
    from workers.calls import carried

    refs = RedisLedger(from_url(url)).recent_calls("demo")
    return carried("demo", open_registry(home).get("demo"), refs)


def render(report: dict[str, Any]) -> str:
    """The timeline for people."""
    lines = [f"call {report['call_id']} ({report['mode']} mode):"]
    lines += [f"  {event['ms']:9.1f} ms  {event['event']}" for event in report["timeline"]]
    for row in report.get("calls_while_up", []):
        state = {True: "active", False: "ended", None: "unknown"}[row["active"]]
        lines.append(f"  while up, `ifbus calls sip demo` listed {row.get('sip_call_id') or row['call_id']}: {state}")
    lines.append("everything stopped and removed")
    return "\n".join(lines)
