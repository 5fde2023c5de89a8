"""Shared fixtures. No test ever touches a user's Redis or registry.

Every test gets its own IFBUS_HOME and IFBUS_MODE=inline; tests that need Redis use the private
`redis-server` that pytest-redis starts on a free port (`redis_proc`), flushed between tests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True)
def ifbus_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "ifhome"
    monkeypatch.setenv("IFBUS_HOME", str(home))
    monkeypatch.setenv("IFBUS_MODE", "inline")
    monkeypatch.delenv("IFBUS_REDIS_URL", raising=False)
    monkeypatch.delenv("IFBUS_TIMEOUT", raising=False)
    monkeypatch.setattr("workers.jobs._inline", None)  # embedded-mode health/ledger start empty per test
    return home


@pytest.fixture
def redis_url(redis_proc, redisdb) -> str:
    """URL of the private Redis; `redisdb` flushes it after the test."""
    return f"redis://{redis_proc.host}:{redis_proc.port}/0"


@pytest.fixture
def queue_mode(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("IFBUS_MODE", "queue")
    monkeypatch.setenv("IFBUS_REDIS_URL", redis_url)
    return redis_url


def redis_answers(url: str) -> bool:
    """Whether a Redis answers at `url` (for tests that start and stop their own redis-server)."""
    from redis import Redis

    try:
        return bool(Redis.from_url(url).ping())
    except Exception:
        return False


class WorkerProcess:
    """A real `ifbus worker` process, stopped with SIGTERM like an operator would."""

    def __init__(self, types: list[str], log_path: Path, concurrency: int = 1) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        args = [str(BIN / "ifbus"), "worker", *types]
        if concurrency > 1:
            args += ["--concurrency", str(concurrency)]
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=dict(os.environ))

    def wait_ready(self, redis_url: str, queue: str, timeout: float = 15.0) -> None:
        from redis import Redis
        from rq import Queue, Worker

        connection = Redis.from_url(redis_url)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if Worker.count(queue=Queue(queue, connection=connection)) > 0:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"worker did not start: {self.log_path.read_text(errors='replace')[-2000:]}")

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def start_worker(queue_mode: str, tmp_path: Path) -> Iterator:
    started: list[WorkerProcess] = []

    def start(*types: str, concurrency: int = 1) -> WorkerProcess:
        worker = WorkerProcess(list(types), tmp_path / f"worker{len(started)}.log", concurrency)
        started.append(worker)
        worker.wait_ready(queue_mode, f"sip.{types[0]}" if types else "sip.kamailio")
        return worker

    yield start
    for worker in started:
        worker.stop()


class RedisServer:
    """A redis-server of a test's own on a fixed port, so it can be killed (Redis lost mid-wait) and
    started again there (a Redis restart)."""

    def __init__(self, folder: Path) -> None:
        from tests.lab import free_port

        self.port = free_port(udp=False, tcp=True)
        self.folder = folder
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.folder)]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        from tests.lab import wait_for

        assert wait_for(lambda: redis_answers(self.url), 10), "redis-server did not start"

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        from tests.lab import wait_for

        assert wait_for(lambda: not redis_answers(self.url), 10)

    def kill_when_a_client_blocks(self) -> threading.Thread:
        """Kill the server, in a thread, once a client sits in a blocking pop (CLIENT LIST `cmd=blpop`):
        Redis lost exactly while a caller waits, wherever the machine's load puts that moment. The test
        joins the thread; if no client ever blocks, the server lives and the test's own assertions fail."""
        from redis import Redis

        from tests.lab import wait_for

        watcher = Redis.from_url(self.url)

        def blocked() -> bool:
            return any(client.get("cmd") == "blpop" for client in watcher.client_list())

        def watch() -> None:
            if wait_for(blocked, 30):
                self.kill()

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        return thread


@pytest.fixture
def own_redis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    monkeypatch.setenv("IFBUS_MODE", "queue")
    monkeypatch.setenv("IFBUS_REDIS_URL", server.url)
    yield server
    if server.proc is not None and server.proc.poll() is None:
        server.proc.terminate()
        server.proc.wait(10)
