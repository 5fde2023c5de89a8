"""Start-up cost of the CLI against bare Python, measured in one run.

    python -m bench.startup [--runs 30]

Target (issue "The spine"): `ifbus list sip` with 50 servers and `ifbus --help` each at most 4x
`python -c pass` (median). Ratios, not milliseconds, are the figures to compare across machines.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def timed(args: list[str], env: dict[str, str], runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "IFBUS_HOME": home}
        ifbus = str(BIN / "ifbus")
        for i in range(50):
            subprocess.run(
                [ifbus, "add", "sip", f"srv{i:02d}", "--type", "kamailio", "--auth", f"token=t{i}", "realm=sip.local"],
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
            )
        cases = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "ifbus --help": [ifbus, "--help"],
            "ifbus list sip (50 servers)": [ifbus, "list", "sip"],
        }
        for args in cases.values():  # warm the page cache and .pyc files
            timed(args, env, 3)
        samples: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(runs):  # interleaved, so drift on a busy machine hits every case alike
            for name, args in cases.items():
                samples[name] += timed(args, env, 1)
        results = {name: statistics.median(values) for name, values in samples.items()}
    base = results["python -c pass"]
    print(f"{'command':32} {'median ms':>10} {'p90 ms':>8} {'x bare':>7}  target")
    for name, median in results.items():
        p90 = statistics.quantiles(samples[name], n=10)[-1]
        target = "" if name.startswith("python") else ("<= 4.0  ok" if median / base <= 4 else "<= 4.0  MISSED")
        print(f"{name:32} {median:10.1f} {p90:8.1f} {median / base:7.2f}  {target}")


if __name__ == "__main__":
    main()
