"""Child processes on loopback: find a binary, pick free ports, start a child in a session of its own,
see its UDP port bound, stop it and everything it forked.

Why a module of its own: `ifbus demo` starts a private Kamailio, SIPp phones, redis-server and a worker,
and the test suite's labs (tests/lab.py) start the same kinds of processes; the rules for doing it safely
are one piece of logic. Only the standard library and bus.errors are used, so importing it costs nothing
the light CLI commands would notice (the demo imports it lazily anyway).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

from bus.errors import Unreachable

SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")  # kamailio lives in /usr/sbin, often not on a user's PATH

_handed_out: set[int] = set()


def which(name: str) -> str | None:
    """A binary on PATH, else in the sbin folders."""
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN))


def _is_free(port: int, kinds: list[int]) -> bool:
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_port(*, udp: bool = True, tcp: bool = True, span: int = 1) -> int:
    """A loopback port free right now for UDP and/or TCP, with the `span - 1` ports after it.

    `span` > 1 is for SIPp's media, which binds `port` and `port + 2` (ask for 4). The kernel picks the
    candidate, so other processes are avoided; ports this process handed out before are never handed out
    again, so two children started one after the other cannot be given the same port before the first
    has bound it.
    """
    kinds = ([socket.SOCK_DGRAM] if udp else []) + ([socket.SOCK_STREAM] if tcp else [])
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        ports = range(base, base + span)
        if base + span > 65535 or any(p in _handed_out for p in ports):
            continue
        if all(_is_free(p, kinds) for p in ports):
            _handed_out.update(ports)
            return base
    raise Unreachable("no free loopback port")


def udp_bound(port: int) -> bool:
    """Whether something bound 127.0.0.1:port/udp, read from /proc/net/udp: a probe bind of our own could
    race the process that is starting and make it fail with "address already in use"."""
    needle = f"0100007F:{port:04X}"
    try:
        with open("/proc/net/udp") as table:
            return any(line.split()[1] == needle for line in list(table)[1:])
    except OSError:
        return False


def spawn(argv: list[str], log_path: Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start `argv` in a session (and process group) of its own, stdin closed, stdout and stderr to
    `log_path`: a terminal's Ctrl-C reaches only the parent, which stops its children in order."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, env=env,
        )  # fmt: skip


def terminate(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM, wait up to `grace` s, then SIGKILL the whole process group (the child leads it, so it holds
    only what the child forked: kamailio's workers would otherwise keep the ports bound)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
