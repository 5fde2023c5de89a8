"""Start and stop a real Kamailio + SIPp lab on loopback, for tests.

Why this exists: the Kamailio adapter of IF.bus drives a real server through
JSON-RPC (``dlg.bridge_dlg``, ``htable.get``, ``dlg.list``, ``dlg.end_dlg``), and
the interesting behaviour (REFER-based click-to-call, outcome codes, BYEs) only
shows up against real processes.  This module starts those processes with the
project's own config (``deploy/kamailio/kamailio.cfg``) and SIPp scenarios
(``tests/sipp/*.xml``), waits until they are ready and always cleans them up.

Rules it follows (see /work/shared/kamailio-lab.md, sections 3 and 7):

* only 127.0.0.1, every port picked free at run time (tests run in parallel
  sessions), nothing bound to 0.0.0.0 (SIPp gets ``-i``, ``-ci``/``-cp``, ``-mp``);
* kamailio runs in the foreground (``-DD -E``) in a process group of its own,
  so stop() can TERM it and, if needed, KILL the whole group (its children
  would otherwise keep the ports bound);
* every class is a context manager, and an ``atexit`` hook stops anything a
  crashed test left running.

Binaries, free ports and child processes are handled by producer/processes.py
(``ifbus demo`` starts the same processes); besides it, only the standard
library and httpx are used.
"""

from __future__ import annotations

import atexit
import itertools
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

from producer.processes import free_port, spawn, terminate, udp_bound, which

REPO_ROOT = Path(__file__).resolve().parents[1]
KAMAILIO_CFG = REPO_ROOT / "deploy" / "kamailio" / "kamailio.cfg"
SIPP_DIR = Path(__file__).resolve().parent / "sipp"

_TOKEN_RE = re.compile(r"^[A-Za-z0-9._~+/=-]+$")
_T = TypeVar("_T")


# --------------------------------------------------------------------------
# binaries
# --------------------------------------------------------------------------


def kamailio_binary() -> str | None:
    """Path of the kamailio binary, or None."""
    return which("kamailio")


def sipp_binary() -> str | None:
    """Path of the sipp binary, or None."""
    return which("sipp")


def kamailio_available() -> bool:
    """True if a kamailio binary was found (tests skip otherwise)."""
    return kamailio_binary() is not None


def sipp_available() -> bool:
    """True if a sipp binary was found (tests skip otherwise)."""
    return sipp_binary() is not None


# --------------------------------------------------------------------------
# polling (free_port is producer.processes')
# --------------------------------------------------------------------------


def wait_for(probe: Callable[[], _T | None], timeout: float, interval: float = 0.05) -> _T | None:
    """Call ``probe`` until it returns something other than None/False, or until
    ``timeout`` seconds passed; return that value (or None on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


# --------------------------------------------------------------------------
# process handling
# --------------------------------------------------------------------------

_live: set[subprocess.Popen[bytes]] = set()


def _spawn(argv: list[str], log_path: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session (own process group), stdout+stderr to
    ``log_path``, stdin closed; stopped at exit if a test leaves it running."""
    proc = spawn(argv, log_path, cwd)
    _live.add(proc)
    return proc


def _terminate(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM, wait up to ``grace`` s, then SIGKILL its whole process group."""
    try:
        terminate(proc, grace)
    finally:
        _live.discard(proc)


@atexit.register
def _stop_leftovers() -> None:
    for proc in list(_live):
        _terminate(proc, grace=1.0)


class LabError(RuntimeError):
    """A lab process failed to start or answer."""


class RpcError(Exception):
    """JSON-RPC error object returned by kamailio (``code``, ``message``)."""

    def __init__(self, code: int, message: str, http_status: int) -> None:
        super().__init__(f"{code}: {message} (HTTP {http_status})")
        self.code = code
        self.message = message
        self.http_status = http_status


# --------------------------------------------------------------------------
# Kamailio
# --------------------------------------------------------------------------


class _LabProcess:
    """What Kamailio and SippUA share: a child process, used as a context manager."""

    _proc: subprocess.Popen[bytes] | None

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class Kamailio(_LabProcess):
    """One kamailio instance running ``deploy/kamailio/kamailio.cfg`` on loopback.

    Command line (the same as the doc's run-lab.sh, with per-instance dirs)::

        kamailio -f CFG -DD -E -Y WORKDIR/run -P WORKDIR/run/kamailio.pid -m 64 -M 8
          -A 'RPC_TOKEN="TOKEN"' -A FR_TIMER=N -A FR_INV_TIMER=N
          --substdef '!SIP_PORT!N!' --substdef '!HTTP_PORT!N!'

    Use as a context manager; ``start()`` returns only once JSON-RPC
    ``core.version`` answers, so the SIP side is up as well.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        cfg: Path = KAMAILIO_CFG,
        sip_port: int | None = None,
        http_port: int | None = None,
        token: str = "lab-token",
        fr_timer: int = 2000,
        fr_inv_timer: int = 5000,
        ready_timeout: float = 15.0,
    ) -> None:
        if not _TOKEN_RE.match(token):
            # The token travels inside -A 'RPC_TOKEN="..."'; keep it quote-free.
            raise ValueError("token must match [A-Za-z0-9._~+/=-]+")
        self.workdir = Path(workdir)
        self.cfg = Path(cfg).resolve()
        self.sip_port = sip_port or free_port(udp=True, tcp=True)
        self.http_port = http_port or free_port(udp=False, tcp=True)
        self.token = token
        self.fr_timer = fr_timer
        self.fr_inv_timer = fr_inv_timer
        self.ready_timeout = ready_timeout
        self.log_path = self.workdir / "kamailio.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._client: httpx.Client | None = None
        self._ids = itertools.count(1)

    # -- addresses ----------------------------------------------------------

    @property
    def rpc_url(self) -> str:
        """``http://127.0.0.1:<http_port>/RPC``."""
        return f"http://127.0.0.1:{self.http_port}/RPC"

    @property
    def sip_uri(self) -> str:
        """``sip:127.0.0.1:<sip_port>`` (usable as an outbound proxy)."""
        return f"sip:127.0.0.1:{self.sip_port}"

    def command(self) -> list[str]:
        """The exact argv used to start kamailio."""
        binary = kamailio_binary()
        if binary is None:
            raise LabError("kamailio binary not found")
        rundir = self.workdir / "run"
        return [
            binary,
            "-f", str(self.cfg),
            "-DD", "-E",
            "-Y", str(rundir),
            "-P", str(rundir / "kamailio.pid"),
            "-m", "64", "-M", "8",
            "-A", f'RPC_TOKEN="{self.token}"',
            "-A", f"FR_TIMER={self.fr_timer}",
            "-A", f"FR_INV_TIMER={self.fr_inv_timer}",
            "--substdef", f"!SIP_PORT!{self.sip_port}!",
            "--substdef", f"!HTTP_PORT!{self.http_port}!",
        ]  # fmt: skip

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> Kamailio:
        """Start kamailio and wait until ``core.version`` answers over JSON-RPC.

        Raises LabError (with the log tail) if it exits or never answers.
        """
        if self._proc is not None:
            raise LabError("already started")
        (self.workdir / "run").mkdir(parents=True, exist_ok=True)
        self._proc = _spawn(self.command(), self.log_path, self.workdir)
        self._client = httpx.Client(timeout=5.0, headers={"Authorization": f"Bearer {self.token}"})

        def ready() -> bool:
            if self._proc is not None and self._proc.poll() is not None:
                raise LabError(f"kamailio exited with {self._proc.returncode}:\n{self.log_tail()}")
            try:
                return str(self.rpc("core.version")).startswith("kamailio")
            except (httpx.HTTPError, RpcError):
                return False

        if not wait_for(ready, self.ready_timeout, 0.05):
            self.stop()
            raise LabError(f"kamailio did not answer JSON-RPC:\n{self.log_tail()}")
        return self

    def stop(self) -> None:
        """TERM, then KILL the process group after 5 s.  Safe to call twice."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._proc is not None:
            _terminate(self._proc)
            self._proc = None

    # -- JSON-RPC -----------------------------------------------------------

    def post(self, payload: Any, *, token: str | None = None) -> httpx.Response:
        """POST a raw JSON body to /RPC (``token`` overrides the configured
        bearer token; pass "" to send no Authorization header)."""
        if self._client is None:
            raise LabError("not started")
        request = self._client.build_request("POST", self.rpc_url, json=payload)
        if token is not None:
            del request.headers["Authorization"]
            if token:
                request.headers["Authorization"] = f"Bearer {token}"
        return self._client.send(request)

    def rpc(self, method: str, *params: Any) -> Any:
        """Call ``method`` with positional ``params``; return ``result``.

        Raises RpcError for a JSON-RPC error object.  Note: kamailio sends
        those with an HTTP status equal to the error code (e.g. 500, 404), so
        the status is not treated as a transport failure.
        """
        payload = {
            "jsonrpc": "2.0",
            "method": method,
            "params": list(params),
            "id": next(self._ids),
        }
        response = self.post(payload)
        body = response.json()
        if "error" in body:
            err = body["error"]
            raise RpcError(int(err.get("code", 0)), str(err.get("message")), response.status_code)
        return body.get("result")

    def htable_get(self, key: str, table: str = "c2c") -> Any:
        """Value of ``table[key]`` (via ``htable.get``), or None if the key is
        missing (kamailio: error 500 "Key name doesn't exist in htable.")."""
        try:
            result = self.rpc("htable.get", table, key)
        except RpcError as err:
            if "doesn't exist" in err.message:
                return None
            raise
        return result["item"]["value"]

    def dialogs(self) -> list[dict[str, Any]]:
        """``dlg.list`` result (a list; state 4 = confirmed, 5 = deleted)."""
        return list(self.rpc("dlg.list") or [])

    # -- log ------------------------------------------------------------------

    def log_tail(self, lines: int = 40) -> str:
        """Last lines of kamailio's stderr log (for failure messages)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------
# SIPp user agents
# --------------------------------------------------------------------------

_REQUEST_LINE = re.compile(r"^([A-Z]+) \S+ SIP/2\.0$")


class SippUA(_LabProcess):
    """One SIPp UAS on 127.0.0.1 running a scenario from ``tests/sipp/``.

    ``scenario`` is a file name in tests/sipp (``"refer_uas.xml"``) or a path.
    ``name`` is the user part of ``uri`` and of the UA's Contact (``-s``).
    ``kamailio_port`` is the remote host SIPp is given; the scenarios send new
    requests to the peer that called them, which is kamailio anyway.

    Every SIP message sent/received is logged (``-trace_msg``) to
    ``message_log``; ``received()`` reads it, so tests can assert on what the
    UA actually saw.
    """

    def __init__(
        self,
        scenario: str | Path,
        workdir: Path,
        name: str,
        *,
        kamailio_port: int,
        port: int | None = None,
        ready_timeout: float = 10.0,
    ) -> None:
        path = Path(scenario)
        self.scenario = path if path.is_absolute() or path.exists() else SIPP_DIR / path
        self.workdir = Path(workdir)
        self.name = name
        self.kamailio_port = kamailio_port
        self.port = port or free_port(udp=True, tcp=False)
        # SIPp binds -mp and -mp + 2 (audio RTP/RTCP echo); keep 4 apart.
        self.media_port = free_port(udp=True, tcp=False, span=4)
        # Control socket: default is 0.0.0.0:8888, so always pin it.
        self.control_port = free_port(udp=True, tcp=False)
        self.ready_timeout = ready_timeout
        self.message_log = self.workdir / f"{name}.msg.log"
        self.error_log = self.workdir / f"{name}.err.log"
        self.log_path = self.workdir / f"{name}.out.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        """``sip:<name>@127.0.0.1:<port>``."""
        return f"sip:{self.name}@127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        """The exact argv used to start sipp."""
        binary = sipp_binary()
        if binary is None:
            raise LabError("sipp binary not found")
        return [
            binary,
            "-sf", str(self.scenario),
            "-s", self.name,
            "-i", "127.0.0.1",
            "-p", str(self.port),
            "-mp", str(self.media_port),
            "-ci", "127.0.0.1",
            "-cp", str(self.control_port),
            "-nostdin",
            "-trace_msg", "-message_file", str(self.message_log),
            "-trace_err", "-error_file", str(self.error_log),
            f"127.0.0.1:{self.kamailio_port}",
        ]  # fmt: skip

    def start(self) -> SippUA:
        """Start SIPp and wait until its SIP UDP port is bound."""
        if self._proc is not None:
            raise LabError("already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._proc = _spawn(self.command(), self.log_path, self.workdir)

        def ready() -> bool:
            if self._proc is not None and self._proc.poll() is not None:
                raise LabError(f"sipp {self.name} exited:\n{self._read(self.log_path)}")
            return udp_bound(self.port)

        if not wait_for(ready, self.ready_timeout, 0.02):
            self.stop()
            raise LabError(f"sipp {self.name} did not bind {self.port}")
        return self

    def stop(self) -> None:
        """TERM (SIPp needs ~0.5-1 s to exit), then KILL.  Safe to call twice."""
        if self._proc is not None:
            _terminate(self._proc)
            self._proc = None

    @staticmethod
    def _read(path: Path) -> str:
        try:
            return path.read_text(errors="replace")
        except OSError:
            return ""

    def received_requests(self) -> list[str]:
        """Methods of all requests this UA received, in order (retransmissions
        included), parsed from the SIPp message log.

        The log is a sequence of blocks: a dashed timestamp line, then
        "UDP message received [N] bytes :" (or "... sent ..."), a blank line
        and the message; the request line is the first non-blank line.
        """
        methods: list[str] = []
        receiving = False
        expect_start = False
        for line in self._read(self.message_log).splitlines():
            if "message received" in line:
                receiving, expect_start = True, True
                continue
            if "message sent" in line or line.startswith("-----"):
                receiving, expect_start = False, False
                continue
            if receiving and expect_start and line.strip():
                expect_start = False
                match = _REQUEST_LINE.match(line.strip())
                if match:
                    methods.append(match.group(1))
        return methods

    def received(self, method: str) -> int:
        """How many ``method`` requests (e.g. "BYE") this UA received."""
        return self.received_requests().count(method.upper())

    def wait_received(self, method: str, count: int = 1, timeout: float = 5.0) -> bool:
        """Wait until at least ``count`` ``method`` requests were received."""
        return bool(wait_for(lambda: self.received(method) >= count, timeout))
