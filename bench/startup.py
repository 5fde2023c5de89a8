"""Start-up cost of whole `ifbus` processes against bare Python of the same interpreter, in one run.

    python -m bench.startup [--runs 30] [--no-kamailio]

Targets (issue 16, "a light process"), medians of interleaved runs:
  - `ifbus --help` and `ifbus list sip` with 50 servers: at most 3x `python -c pass`;
  - a whole `ifbus test sip kam` process in queue mode, against a real Kamailio
    (deploy/kamailio/kamailio.cfg, tests/lab.py) with a running `ifbus worker kamailio` on a private
    redis-server: at most 10x `python -c pass`.
Ratios, not milliseconds, are the figures to compare across machines; the `import click` row is the
floor every click command pays (click.core pulls inspect, ast, dis, typing, enum, uuid, datetime),
which is why `--help` and `list sip` go around click (producer/entry.py, docs/cli.md "Start-up").
`python -X importtime` says where a case's time goes (docs/cli.md, "Start-up");
tests/test_import_weight.py keeps heavy modules out of `list`, `--help` and a queue-mode submit.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

BIN = Path(sys.executable).parent
BARE = "python -c pass"
CLICK = "python -c 'import click'"  # the floor for any click CLI: no target, for reading the others
TARGETS = {"ifbus --help": 3.0, "ifbus list sip (50 servers)": 3.0, "ifbus test sip kam (queue, real Kamailio)": 10.0}


def timed(args: list[str], env: dict[str, str], runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        samples.append((time.perf_counter() - start) * 1000)
    return samples


@contextlib.contextmanager
def kamailio_lab(home: Path, env: dict[str, str]) -> Iterator[dict[str, str] | None]:
    """A private Kamailio, redis-server and `ifbus worker kamailio`, and `kam` registered; None (and
    why, on stderr) when the binaries are missing."""
    from tests.lab import Kamailio, free_port, kamailio_available, wait_for

    redis_server = shutil.which("redis-server")
    if not kamailio_available() or redis_server is None:
        print("skipping the queue-mode case: kamailio or redis-server not installed (tests/run.sh)", file=sys.stderr)
        yield None
        return
    port = free_port(udp=False, tcp=True)
    url = f"redis://127.0.0.1:{port}/0"
    queue_env = {**env, "IFBUS_REDIS_URL": url, "IFBUS_MODE": "queue", "IFBUS_LOG_LEVEL": "WARNING"}
    with Kamailio(home / "kam", token="bench-token") as kam, contextlib.ExitStack() as stack:
        redis = subprocess.Popen(
            [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        stack.callback(_stop, redis)
        subprocess.run(
            [str(BIN / "ifbus"), "add", "sip", "kam", "--type", "kamailio", "--auth", "token=bench-token",
             "realm=127.0.0.1", "--port", str(kam.http_port), "--opt", f"sip_port={kam.sip_port}"],
            env=env, check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        worker = subprocess.Popen([str(BIN / "ifbus"), "worker", "kamailio"], env=queue_env, stderr=subprocess.DEVNULL)
        stack.callback(_stop, worker)

        def served() -> bool:
            probe = subprocess.run([str(BIN / "ifbus"), "test", "sip", "kam"], env=queue_env, capture_output=True)
            return probe.returncode == 0

        if not wait_for(served, 30, 0.2):
            raise RuntimeError("the worker never answered `ifbus test sip kam`")
        yield queue_env


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--no-kamailio", action="store_true", help="only --help and list")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        # its own cache folder: `--help`'s first run renders with click, the warm-up runs then read it
        env = {**os.environ, "IFBUS_HOME": str(home / "home"), "XDG_CACHE_HOME": str(home / "cache")}
        env.pop("IFBUS_REDIS_URL", None)
        ifbus = str(BIN / "ifbus")
        for i in range(50):
            subprocess.run(
                [ifbus, "add", "sip", f"srv{i:02d}", "--type", "kamailio", "--auth", f"token=t{i}", "realm=sip.local"],
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
            )
        cases: dict[str, tuple[list[str], dict[str, str]]] = {
            BARE: ([sys.executable, "-c", "pass"], env),
            CLICK: ([sys.executable, "-c", "import click"], env),
            "ifbus --help": ([ifbus, "--help"], env),
            "ifbus list sip (50 servers)": ([ifbus, "list", "sip"], env),
        }
        with contextlib.ExitStack() as stack:
            if not options.no_kamailio:
                queue_env = stack.enter_context(kamailio_lab(home, env))
                if queue_env is not None:
                    cases["ifbus test sip kam (queue, real Kamailio)"] = ([ifbus, "test", "sip", "kam"], queue_env)
            for args, case_env in cases.values():  # warm the page cache and .pyc files
                timed(args, case_env, 3)
            samples: dict[str, list[float]] = {name: [] for name in cases}
            for _ in range(options.runs):  # interleaved, so drift on a busy machine hits every case alike
                for name, (args, case_env) in cases.items():
                    samples[name] += timed(args, case_env, 1)
    report(samples)


def report(samples: dict[str, list[float]]) -> None:
    medians = {name: statistics.median(values) for name, values in samples.items()}
    base = medians[BARE]
    print(f"{'command':42} {'median ms':>10} {'p90 ms':>8} {'x bare':>7}  target")
    for name, median in medians.items():
        p90 = statistics.quantiles(samples[name], n=10)[-1]
        limit = TARGETS.get(name)
        verdict = "" if limit is None else f"<= {limit:.1f}  " + ("ok" if median / base <= limit else "MISSED")
        print(f"{name:42} {median:10.1f} {p90:8.1f} {median / base:7.2f}  {verdict}")


if __name__ == "__main__":
    main()
