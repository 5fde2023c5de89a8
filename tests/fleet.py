"""A password-protected Redis found through a real Sentinel, for the fleet tests.

Two `redis-server` processes on loopback, on free ports (never 6379): a master with `requirepass`
and one sentinel (`redis-server --sentinel`) that monitors it under the service name `ifbus`.
Started and stopped per test module; each waits on an answer (a PING, the sentinel naming the master),
never on a sleep.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.lab import _spawn, _terminate, free_port, wait_for

PASSWORD = "fleet-pass-7Qe"
SERVICE = "ifbus"


def redis_server() -> str | None:
    return shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)


@dataclass
class SentinelRedis:
    master_port: int
    sentinel_port: int

    @property
    def url(self) -> str:
        """The bus's URL: the master of SERVICE, as the sentinel names it."""
        return f"redis+sentinel://:{PASSWORD}@127.0.0.1:{self.sentinel_port}/{SERVICE}/0"

    @property
    def direct_url(self) -> str:
        return f"redis://:{PASSWORD}@127.0.0.1:{self.master_port}/0"


@contextmanager
def sentinel_redis(workdir: Path) -> Iterator[SentinelRedis]:
    from redis import Redis

    binary = redis_server()
    assert binary, "redis-server not installed"
    workdir.mkdir(parents=True, exist_ok=True)
    master_port, sentinel_port = free_port(udp=False), free_port(udp=False)
    argv = [binary, "--port", str(master_port), "--bind", "127.0.0.1", "--requirepass", PASSWORD,
            "--save", "", "--appendonly", "no", "--dir", str(workdir)]  # fmt: skip
    master = _spawn(argv, workdir / "master.log", workdir)
    conf = workdir / "sentinel.conf"  # a sentinel rewrites its config file: it must be its own
    conf.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\ndir {workdir}\n"
        f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} 1\n"
        f"sentinel auth-pass {SERVICE} {PASSWORD}\n"
        f"sentinel down-after-milliseconds {SERVICE} 5000\n"
    )
    sentinel = _spawn([binary, str(conf), "--sentinel"], workdir / "sentinel.log", workdir)
    try:
        direct = Redis(port=master_port, password=PASSWORD)
        assert wait_for(lambda: _answers(direct), 15), (workdir / "master.log").read_text()[-2000:]
        named = Redis(port=sentinel_port)
        assert wait_for(lambda: _names_master(named, master_port), 15), (workdir / "sentinel.log").read_text()[-2000:]
        yield SentinelRedis(master_port, sentinel_port)
    finally:
        _terminate(sentinel, grace=3)
        _terminate(master, grace=3)


def _answers(client: object) -> bool:
    try:
        return bool(client.ping())  # type: ignore[attr-defined]
    except Exception:
        return False


def _names_master(client: object, port: int) -> bool:
    try:
        found = client.execute_command("SENTINEL", "get-master-addr-by-name", SERVICE)  # type: ignore[attr-defined]
    except Exception:
        return False
    return bool(found) and int(found[1]) == port


def run_ifbus(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    import sys

    ifbus = str(Path(sys.executable).parent / "ifbus")
    return subprocess.run([ifbus, *args], env=env, capture_output=True, text=True, timeout=timeout)
