"""Kamailio round trips through IF.bus, beside a raw JSON-RPC call, measured in one run.

    python -m bench.kamailio_roundtrip [--n 200]

Starts a private Kamailio (deploy/kamailio/kamailio.cfg), a private redis-server and one
`ifbus worker kamailio`, all on free loopback ports, then measures:
  - raw JSON-RPC core.version over one keep-alive http.client connection (the floor);
  - `test` through the adapter in-process (embedded mode);
  - `test` through Redis + a real worker (producer → queue → worker → Kamailio → reply key);
  - a full click-to-call (answered) and its hangup, against SIPp parties.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tests.lab import Kamailio, SippUA, free_port, wait_for

if TYPE_CHECKING:
    from bus.models import TestRequest
    from producer.api import Producer

TOKEN = "bench-token"


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def row(name: str, samples: list[float], base: float | None) -> None:
    p50 = statistics.median(samples)
    ratio = f"{p50 / base:7.1f}" if base else "    1.0"
    print(f"{name:48} {p50:9.2f} {pct(samples, 0.99):9.2f} {ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    n = parser.parse_args().n
    with tempfile.TemporaryDirectory() as tmp, Kamailio(Path(tmp), token=TOKEN) as kam:
        os.environ["IFBUS_HOME"] = str(Path(tmp) / "home")
        redis_port = free_port(udp=False, tcp=True)
        redis = subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        worker = None
        try:
            ifbus = str(Path(sys.executable).parent / "ifbus")
            subprocess.run(
                [ifbus, "add", "sip", "kam", "--type", "kamailio", "--auth", f"token={TOKEN}", "realm=127.0.0.1",
                 "--port", str(kam.http_port), "--opt", "fr_timer=2", "fr_inv_timer=5", f"sip_port={kam.sip_port}"],
                check=True, stdout=subprocess.DEVNULL,
            )  # fmt: skip
            samples: dict[str, list[float]] = {}

            conn = http.client.HTTPConnection("127.0.0.1", kam.http_port)
            body = json.dumps({"jsonrpc": "2.0", "method": "core.version", "id": 1})
            headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
            raw = samples.setdefault("raw JSON-RPC core.version (http.client)", [])
            for _ in range(n + 20):
                start = time.perf_counter()
                conn.request("POST", "/RPC", body, headers)
                conn.getresponse().read()
                raw.append((time.perf_counter() - start) * 1000)
            del raw[:20]

            from bus.logging import configure
            from bus.models import TestRequest
            from bus.settings import Settings

            configure("WARNING")
            from producer.api import Producer
            from workers.jobs import execute as embedded

            inline = Producer(Settings(mode="inline"), runner=embedded)
            samples["ifbus test, embedded (adapter in-process)"] = timed(inline, TestRequest, n)

            url = f"redis://127.0.0.1:{redis_port}/0"
            env = {**os.environ, "IFBUS_REDIS_URL": url, "IFBUS_LOG_LEVEL": "WARNING"}
            worker = subprocess.Popen([ifbus, "worker", "kamailio"], env=env, stderr=subprocess.DEVNULL)
            queued = Producer(Settings(mode="queue", redis_url=url))
            assert wait_for(lambda: _has_worker(url), 15), "worker did not start"
            samples["ifbus test, queue (Redis + 1 SimpleWorker)"] = timed(queued, TestRequest, n)

            call_ms, hangup_ms = calls(inline, kam, Path(tmp), 10)
            samples["call answered, embedded (SIPp answers ~0.2+0.3 s)"] = call_ms
            samples["hangup, embedded (dlg.list_match + dlg.end_dlg)"] = hangup_ms
        finally:
            if worker:
                worker.terminate()
                worker.wait(10)
            redis.terminate()
            redis.wait(10)
    base = statistics.median(samples["raw JSON-RPC core.version (http.client)"])
    print(f"{'round trip':48} {'p50 ms':>9} {'p99 ms':>9} {'x raw':>7}")
    for name, values in samples.items():
        row(name, values, base)


def timed(producer: Producer, model: type[TestRequest], n: int) -> list[float]:
    out = []
    for i in range(n + 20):
        start = time.perf_counter()
        result = producer.submit(model(server="kam"))
        out.append((time.perf_counter() - start) * 1000)
        assert result.exit_code == 0, result.message
        if i < 20:
            out.pop()
    return out


def calls(producer: Producer, kam: Kamailio, tmp: Path, n: int) -> tuple[list[float], list[float]]:
    from bus.models import CallRequest, HangupRequest

    call_ms, hangup_ms = [], []
    for i in range(n):
        with (
            SippUA("refer_uas.xml", tmp, f"a{i}", kamailio_port=kam.sip_port) as a,
            SippUA("answer_uas.xml", tmp, f"b{i}", kamailio_port=kam.sip_port) as b,
        ):
            start = time.perf_counter()
            result = producer.submit(CallRequest(server="kam", **{"from": a.uri, "to": b.uri}))
            call_ms.append((time.perf_counter() - start) * 1000)
            assert result.call_id, result.message
            start = time.perf_counter()
            ended = producer.submit(HangupRequest(server="kam", call_id=result.call_id))
            hangup_ms.append((time.perf_counter() - start) * 1000)
            assert ended.exit_code == 0, ended.message
    return call_ms, hangup_ms


def _has_worker(url: str) -> bool:
    from redis import Redis
    from rq import Queue, Worker

    return Worker.count(queue=Queue("sip.kamailio", connection=Redis.from_url(url))) > 0


if __name__ == "__main__":
    main()
