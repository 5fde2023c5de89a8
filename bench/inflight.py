"""Calls in flight on ONE worker process (issue 15), in one run:

    python -m bench.inflight [--kamailio-calls 200] [--kamailio-ring 5] [--scripted-calls 1000] [--ring 10]

1. The real Kamailio lab (deploy/kamailio/kamailio.cfg + SIPp: tests/sipp/refer_uas.xml as the first
   party, a copy of tests/sipp/ring2_answer_uas.xml ringing `--kamailio-ring` s as the callee):
   `--kamailio-calls` calls submitted at once to one `ifbus worker kamailio` process. Checks every
   caller got SIP 200 with its own Call-ID and that each party saw exactly one INVITE per call
   (distinct Call-IDs in SIPp's message logs); prints the peak in flight and the settle lag: when
   the caller had its answer minus when the callee sent its 200 OK (SIPp's log timestamps).
2. A scripted Kamailio (JSON-RPC over HTTP/1.1 keep-alive, the reply shapes of the real lab:
   `htable.dump` slots, `htable.get`'s 500 "Key name doesn't exist in htable.") whose calls answer
   `--ring` s after `dlg.bridge_dlg`: `--scripted-calls` calls on one worker process. Prints the
   peak in flight, the worker's RSS per in-flight call (RSS at the peak minus RSS after a warm-up,
   divided by the calls in flight) and the settle lag after the ring time (p50/p99).

Targets: 200 in flight on Kamailio, all answered, none twice; ≥ 1000 in flight with the scripted
peer; ≤ 50 KB RSS per call; settle lag p99 ≤ 50 ms. Everything on loopback, private redis-server.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.delivery import Redis, pct, start, stop, workers_ready
from tests.lab import SIPP_DIR, Kamailio, SippUA, free_port, wait_for

BIN = Path(sys.executable).parent


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Sampler(threading.Thread):
    """Samples the calls in flight (the followers' set) and the worker's RSS every 20 ms; keeps the peak."""

    def __init__(self, redis: Any, pid: int) -> None:
        super().__init__(daemon=True)
        self.redis, self.pid = redis, pid
        self.peak, self.peak_rss = 0, 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            n = self.redis.zcard("ifbus:inflight:kamailio")
            if n >= self.peak:
                self.peak, self.peak_rss = n, rss_kb(self.pid)
            self.stopped.wait(0.02)


def submit(redis: Any, server: str, calls: list[tuple[str, str]], timeout: float = 120) -> list[str]:
    """Push call jobs in one pipeline (the documented wire shape, as bench.delivery does)."""
    from rq import Queue
    from rq.serializers import JSONSerializer

    from bus.keys import reply
    from bus.models import CallRequest
    from bus.queues import JOB_FUNCTION

    queue = Queue("sip.kamailio", connection=redis, serializer=JSONSerializer)
    ids = []
    with redis.pipeline() as pipe:
        for from_, to in calls:
            request = CallRequest(server=server, timeout=timeout, **{"from": from_, "to": to})
            request = request.model_copy(update={"reply_key": reply(request.request_id)})
            request = request.rerouted(submitted_at=time.time())
            payload = request.model_dump(mode="json", by_alias=True)
            queue.enqueue(JOB_FUNCTION, payload, job_id=request.request_id, result_ttl=0, pipeline=pipe)
            ids.append(request.request_id)
        pipe.execute()
    return ids


def collect(redis: Any, ids: list[str], timeout: float) -> dict[str, tuple[float, dict[str, Any]]]:
    """Each caller's answer and when (Unix time) it arrived: BLPOP in processes of 100 callers each, so
    the collector itself (one BLPOP naming 1000 keys is ~10 ms of Python) adds nothing to the lag."""
    from concurrent.futures import ProcessPoolExecutor

    kwargs = redis.connection_pool.connection_kwargs
    url = {"host": kwargs["host"], "port": kwargs["port"], "db": kwargs.get("db", 0)}
    slices = [ids[i : i + 100] for i in range(0, len(ids), 100)]
    out: dict[str, tuple[float, dict[str, Any]]] = {}
    with ProcessPoolExecutor(len(slices)) as pool:
        for part in pool.map(_collect, [url] * len(slices), slices, [timeout] * len(slices)):
            out.update(part)
    return out


def _collect(connection: dict[str, Any], ids: list[str], timeout: float) -> dict[str, tuple[float, dict[str, Any]]]:
    from redis import Redis as Client

    from bus.keys import reply

    redis = Client(host=connection["host"], port=connection["port"], db=connection.get("db", 0))
    left = {reply(rid): rid for rid in ids}
    out: dict[str, tuple[float, dict[str, Any]]] = {}
    deadline = time.monotonic() + timeout
    while left and time.monotonic() < deadline:
        popped = redis.blpop(list(left), timeout=1)
        if popped is not None:
            out[left.pop(popped[0].decode())] = (time.time(), json.loads(popped[1]))
    return out


def add_server(env: dict[str, str], name: str, port: int, sip_port: int | None = None) -> None:
    opts = ["cps=2000", "fr_timer=5", "fr_inv_timer=30"] + ([f"sip_port={sip_port}"] if sip_port else [])
    subprocess.run([str(BIN / "ifbus"), "add", "sip", name, "--type", "kamailio", "--auth", "token=bench",
                    "realm=127.0.0.1", "--host", "127.0.0.1", "--port", str(port), "--opt", *opts],
                   check=True, stdout=subprocess.DEVNULL, env=env)  # fmt: skip


# ------------------------------------------------------------ 1. the real Kamailio


_STAMP = re.compile(r"^-+ (\d{4}-\d\d-\d\d)\s+(\d\d:\d\d:\d\d\.\d+)")


def sipp_log(path: Path) -> list[tuple[float, str, str, str]]:
    """(time, 'sent'|'received', first line, Call-ID) per message of a SIPp -trace_msg log."""
    out: list[tuple[float, str, str, str]] = []
    stamp, way, first, call_id = 0.0, "", "", ""
    for line in path.read_text(errors="replace").splitlines():
        match = _STAMP.match(line)
        if match:
            if first:
                out.append((stamp, way, first, call_id))
            stamp = datetime.strptime(f"{match[1]} {match[2][:15]}", "%Y-%m-%d %H:%M:%S.%f").timestamp()
            way, first, call_id = "", "", ""
        elif "message sent" in line or "message received" in line:
            way = "sent" if "sent" in line else "received"
        elif way and not first and line.strip():
            first = line.strip()
        elif line.lower().startswith("call-id:"):
            call_id = line.split(":", 1)[1].strip()
    if first:
        out.append((stamp, way, first, call_id))
    return out


def kamailio_part(tmp: Path, redis: Redis, env: dict[str, str], n: int, ring: float) -> None:
    scenario = tmp / "ring_answer_uas.xml"
    scenario.write_text((SIPP_DIR / "ring2_answer_uas.xml").read_text().replace(
        '<pause milliseconds="2000"/>', f'<pause milliseconds="{int(ring * 1000)}"/>'))  # fmt: skip
    with Kamailio(tmp / "kam", token="bench", fr_inv_timer=int((ring + 20) * 1000)) as kam, \
            SippUA("refer_uas.xml", tmp, "alice", kamailio_port=kam.sip_port) as alice, \
            SippUA(scenario, tmp, "bob", kamailio_port=kam.sip_port) as bob:  # fmt: skip
        add_server(env, "kam", kam.http_port, kam.sip_port)
        worker = start([str(BIN / "ifbus"), "worker", "kamailio"], 1, env)
        try:
            assert wait_for(lambda: workers_ready(redis.client, "sip.kamailio", 1) or None, 20)
            sampler = Sampler(redis.client, worker[0].pid)
            sampler.start()
            started = time.time()
            ids = submit(redis.client, "kam", [(alice.uri, bob.uri)] * n)
            answers = collect(redis.client, ids, ring + 60)
            elapsed = time.time() - started
            sampler.stopped.set()
        finally:
            stop(worker)
        ok = [a for _, a in answers.values() if a.get("exit_code") == 0 and a.get("sip_code") == 200]
        call_ids = {a["call_id"] for a in ok}
        bob_log, alice_log = sipp_log(bob.message_log), sipp_log(alice.message_log)
        bob_invites = {c for _, way, first, c in bob_log if way == "received" and first.startswith("INVITE ")}
        alice_invites = {c for _, way, first, c in alice_log if way == "received" and first.startswith("INVITE ")}
        first_ok: dict[str, float] = {}
        for t, way, first, c in bob_log:
            if way == "sent" and first.startswith("SIP/2.0 200") and c not in first_ok:
                first_ok[c] = t
        lags = [(at - first_ok[a["call_id"]]) * 1000 for at, a in answers.values()
                if a.get("call_id") in first_ok and a.get("sip_code") == 200]  # fmt: skip
        print(f"\n1. real Kamailio, {n} calls submitted at once to ONE worker process, callee rings {ring:g} s")
        print(f"   answered SIP 200: {len(ok)}/{n}   distinct call ids: {len(call_ids)}   all done in {elapsed:.2f} s")
        print(f"   peak calls in flight on the worker: {sampler.peak}")
        print(
            f"   INVITEs (distinct Call-IDs) seen by the first party: {len(alice_invites)}, by the callee: "
            f"{len(bob_invites)}  -> placed twice: {max(0, len(bob_invites) - n) + max(0, len(alice_invites) - n)}"
        )
        if lags:
            print(f"   settle lag after the callee's 200 OK (ms): p50 {pct(lags, 0.5):.1f}  p99 {pct(lags, 0.99):.1f}"
                  f"  max {max(lags):.1f}")  # fmt: skip


# ------------------------------------------------------------ 2. the scripted Kamailio


class ScriptedKamailio(ThreadingHTTPServer):
    """Kamailio's JSON-RPC for click-to-call as the lab answers it: bridge → {}; the c2c codes appear as
    deploy/kamailio/kamailio.cfg stores them (a: 200 once the first party answers; b: the latest
    provisional code while the callee rings, its final code once it answers; b::callid)."""

    daemon_threads = True

    def __init__(self, ring: float, port: int) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.ring = ring
        self.bridged: dict[str, float] = {}  # tracking id → when bridged (Unix time)
        self.bridges = 0
        self.lock = threading.Lock()

    def items(self) -> list[dict[str, Any]]:
        now = time.time()
        with self.lock:
            calls = list(self.bridged.items())
        out = []
        for track, at in calls:
            if now >= at + 0.05:  # the first party answered the hold INVITE
                out.append({"name": f"{track}::a", "value": 200, "type": "int"})
            if now >= at + self.ring:  # the callee answered
                out.append({"name": f"{track}::b", "value": 200, "type": "int"})
                out.append({"name": f"{track}::b::callid", "value": f"{track}@bench", "type": "str"})
            elif now >= at + 0.1:  # the INVITE to the callee passed (100, then 180 while it rings)
                out.append({"name": f"{track}::b", "value": 180, "type": "int"})
                out.append({"name": f"{track}::b::callid", "value": f"{track}@bench", "type": "str"})
        return out


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall between them
    server: ScriptedKamailio

    def log_message(self, *args: Any) -> None:
        return None

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        method, params = body.get("method"), body.get("params") or []
        reply: dict[str, Any]
        if method == "dlg.bridge_dlg":
            track = re.search(r";c2c=([0-9a-f]+)", params[0])
            with self.server.lock:
                self.server.bridged[track[1] if track else "?"] = time.time()
                self.server.bridges += 1
            reply = {"result": {}}
        elif method == "htable.dump":
            slots: dict[int, list[dict[str, Any]]] = {}  # grouped by hash slot, as the real table (size=8: 256)
            for item in self.server.items():
                slots.setdefault(hash(item["name"]) & 255, []).append(item)
            reply = {"result": [{"entry": e, "size": len(v), "slot": v} for e, v in sorted(slots.items())]}
        elif method == "htable.get":
            found = {i["name"]: i["value"] for i in self.server.items()}.get(params[1])
            reply = ({"result": {"item": {"name": params[1], "value": found}}} if found is not None
                     else {"error": {"code": 500, "message": "Key name doesn't exist in htable."}})  # fmt: skip
        elif method == "bench.ring":  # the bench's own controls (not Kamailio's)
            self.server.ring = float(params[0])
            with self.server.lock:
                self.server.bridged.clear()
            reply = {"result": {}}
        elif method == "bench.bridged":
            with self.server.lock:
                reply = {"result": {"bridged": self.server.bridged, "bridges": self.server.bridges}}
        elif method == "core.version":
            reply = {"result": "kamailio 5.6.3 (x86_64/linux) "}
        else:
            reply = {"error": {"code": 500, "message": "Method Not Found"}}
        data = json.dumps({"jsonrpc": "2.0", **reply, "id": body.get("id")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def serve_peer(port: int) -> None:
    """The scripted peer in a process of its own, so its work competes with neither the worker nor the
    bench's collector for a GIL."""
    peer = ScriptedKamailio(1.0, port)
    peer.serve_forever()


def peer_rpc(port: int, method: str, *params: Any) -> Any:
    import httpx

    body = {"jsonrpc": "2.0", "method": method, "params": list(params), "id": 1}
    return httpx.post(f"http://127.0.0.1:{port}/RPC", json=body, timeout=10).json()["result"]


def scripted_part(redis: Redis, env: dict[str, str], n: int, ring: float) -> None:
    port = free_port(udp=False, tcp=True)
    peer = subprocess.Popen([sys.executable, "-m", "bench.inflight", "--serve-peer", str(port)], env=env)
    worker = start([str(BIN / "ifbus"), "worker", "kamailio"], 1, env)
    try:
        assert wait_for(lambda: _answers(port) or None, 20)
        add_server(env, "scripted", port)
        assert wait_for(lambda: workers_ready(redis.client, "sip.kamailio", 1) or None, 20)
        peer_rpc(port, "bench.ring", 0.1)  # warm-up: imports, sessions, scripts loaded before the baseline RSS
        warm = submit(redis.client, "scripted", [("1001", "2000")] * 50)
        assert len(collect(redis.client, warm, 60)) == 50
        idle_rss = rss_kb(worker[0].pid)
        peer_rpc(port, "bench.ring", ring)
        sampler = Sampler(redis.client, worker[0].pid)
        sampler.start()
        started = time.time()
        ids = submit(redis.client, "scripted", [("1001", "2000")] * n, timeout=ring + 120)
        wait_for(lambda: sampler.peak >= n or None, ring)
        dump_ms = _dump_ms(port)  # what one look costs the scripted peer itself, with every call in its table
        answers = collect(redis.client, ids, ring + 120)
        elapsed = time.time() - started
        sampler.stopped.set()
        seen = peer_rpc(port, "bench.bridged")
    finally:
        stop(worker)
        peer.terminate()
        peer.wait(10)
    bridged = seen["bridged"]
    ok = [a for _, a in answers.values() if a.get("exit_code") == 0 and a.get("sip_code") == 200]
    lags = [(at - bridged[a["data"]["tracking_id"]] - ring) * 1000 for at, a in answers.values()
            if a.get("exit_code") == 0]  # fmt: skip
    per_call = (sampler.peak_rss - idle_rss) / max(1, sampler.peak)
    failed: dict[str, int] = {}
    for _, a in answers.values():
        if a.get("exit_code") != 0:
            failed[a.get("message", "?")[:160]] = failed.get(a.get("message", "?")[:160], 0) + 1
    print(f"\n2. scripted Kamailio peer, {n} calls on ONE worker process, each answers {ring:g} s after the bridge")
    print(f"   answered: {len(ok)}/{n}  bridges the peer saw: {len(bridged)}  all done in {elapsed:.2f} s")
    print(f"   peak calls in flight: {sampler.peak}   (target ≥ 1000: {sampler.peak / 1000:.2f}×)")
    print(f"   worker RSS idle {idle_rss / 1024:.1f} MB, at the peak {sampler.peak_rss / 1024:.1f} MB -> "
          f"{per_call:.1f} KB per in-flight call (target ≤ 50 KB: {per_call / 50:.2f}×)")  # fmt: skip
    for message, count in sorted(failed.items(), key=lambda kv: -kv[1])[:5]:
        print(f"   FAILED ×{count}: {message}")
    if lags:
        p99 = pct(lags, 0.99)
        print(f"   settle lag after the ring time (ms): p50 {pct(lags, 0.5):.1f}  p99 {p99:.1f}  max {max(lags):.1f}"
              f"  (target p99 ≤ 50 ms: {p99 / 50:.2f}×)")  # fmt: skip
        print(f"   of which one htable.dump round trip to this Python peer (3 entries per call): {dump_ms:.1f} ms "
              f"(a poll waits up to one round, then takes one)")  # fmt: skip


def _dump_ms(port: int) -> float:
    import httpx

    body = {"jsonrpc": "2.0", "method": "htable.dump", "params": ["c2c"], "id": 1}
    with httpx.Client() as client:
        took = []
        for _ in range(5):
            started = time.perf_counter()
            client.post(f"http://127.0.0.1:{port}/RPC", json=body).json()
            took.append((time.perf_counter() - started) * 1000)
    return sorted(took)[2]


def _answers(port: int) -> bool:
    try:
        return bool(peer_rpc(port, "core.version"))
    except Exception:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kamailio-calls", type=int, default=200)
    parser.add_argument("--kamailio-ring", type=float, default=5.0)
    parser.add_argument("--scripted-calls", type=int, default=1000)
    parser.add_argument("--ring", type=float, default=30.0)
    parser.add_argument("--skip-kamailio", action="store_true")
    parser.add_argument("--serve-peer", type=int, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.serve_peer:
        serve_peer(options.serve_peer)
        return
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        redis = Redis(name)
        os.environ.update({"IFBUS_HOME": str(tmp / "home"), "IFBUS_REDIS_URL": redis.url, "IFBUS_MODE": "queue",
                           "IFBUS_LOG_LEVEL": "WARNING", "IFBUS_PROBE_INTERVAL": "0",
                           "IFBUS_MAX_INFLIGHT": str(max(1000, options.scripted_calls))})  # fmt: skip
        env = dict(os.environ)
        try:
            if not options.skip_kamailio:
                kamailio_part(tmp, redis, env, options.kamailio_calls, options.kamailio_ring)
            scripted_part(redis, env, options.scripted_calls, options.ring)
        finally:
            redis.stop()


if __name__ == "__main__":
    main()
