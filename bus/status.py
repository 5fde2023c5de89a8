"""`ifbus status`: what an operator asks first — is anything waiting, who serves it, which servers are out.

Everything is read from Redis, where the fleet already keeps it: RQ's queue lists, worker hashes and
failed-job registries, and the bus's shared breakers (bus.health). Nothing here writes.

Per vendor queue: depth, the oldest waiting job's age, the calls followed in flight (workers.follower),
the workers (host, pid, state, the current job and how long it has run, the calls its follower
follows) and the failed jobs RQ keeps (24 h). Per server of the registry this
host sees (with IFBUS_REGISTRY=redis: the fleet's): breaker state as workers see it (open past its
cool-down reads half-open), consecutive failures, the last failure's reason, and the last probe — the
prober records a failed probe as the breaker's `opened_at` with a `probe:` reason; a successful one
closes the breaker, so an open breaker's `last_probe_at` is when it was last found still down.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from bus import keys
from bus.health import RedisHealth, effective
from bus.server import ServerEntry
from bus.vendors import TYPES


def report(timeout: float) -> dict[str, Any]:
    """Connect (within `timeout`), read the registry this host sees, and collect."""
    from bus.paths import env, redis_url
    from bus.redis_conn import connect, limit, safe_url
    from bus.registry import open_registry
    from bus.settings import DEFAULT_REDIS_URL

    limit(timeout)
    url = redis_url() or DEFAULT_REDIS_URL
    redis = connect(url, "status reads the queues there", socket_timeout=timeout)
    registry = env("registry") or "file"
    entries = open_registry().entries()
    return {"redis": safe_url(url), "registry": safe_url(registry), **collect(redis, entries)}


def collect(redis: Any, entries: dict[str, ServerEntry], types: tuple[str, ...] = TYPES) -> dict[str, Any]:
    """The status report as one JSON-ready object."""
    from rq import Queue, Worker
    from rq.registry import FailedJobRegistry
    from rq.serializers import JSONSerializer

    now = time.time()
    queues = []
    for type_ in types:
        queue = Queue(keys.queue(type_), connection=redis, serializer=JSONSerializer)
        followed = in_flight_by_process(redis, type_)
        workers = [_worker(w, now, followed) for w in Worker.all(queue=queue, serializer=JSONSerializer)]
        queues.append({
            "queue": queue.name,
            "type": type_,
            "depth": queue.count,
            "oldest_job_age_s": _oldest_age(redis, queue, now),
            "in_flight": sum(followed.values()),
            "workers": sorted(workers, key=lambda w: (w["host"] or "", w["pid"] or 0)),
            "failed": FailedJobRegistry(queue=queue).count,
        })  # fmt: skip
    from bus.ratelimit import Limits, RedisLimiter

    health = RedisHealth(redis).get_many(list(entries))
    limiter = RedisLimiter(redis)
    servers = []
    for name, entry in entries.items():
        state = health[name]
        cooldown = float(entry.effective_options["breaker_cooldown"])
        probed = state.reason.startswith("probe:") and state.opened_at > 0
        servers.append({
            "name": name,
            "type": entry.type,
            "pool": entry.pool_name,
            "breaker": effective(state, cooldown, now),
            "failures": state.failures,
            "reason": state.reason or None,
            "opened_at": _iso(state.opened_at) if state.opened_at else None,
            "last_probe_at": _iso(state.opened_at) if probed else None,
            "rate": _rate(limiter, name, Limits.of(name, entry.effective_options)),
        })  # fmt: skip
    return {
        "queues": queues,
        "servers": servers,
        "failed_jobs": sum(q["failed"] for q in queues),
        "workers": sum(len(q["workers"]) for q in queues),
    }


def _rate(limiter: Any, name: str, limits: Any) -> dict[str, Any] | None:
    """The server's call-rate bucket (bus.ratelimit): its limits, calls in the window, waiting; None
    when the server has no limit."""
    return limiter.view(name, limits) if limits.active else None


def in_flight_by_process(redis: Any, type_: str) -> Counter[tuple[str, int]]:
    """Calls of `type_` followed right now (workers.follower), per (host, pid) of the worker process
    whose follower owns them: from the ledger's owner hash, whose values are `host:pid:nonce`."""
    owners: Counter[tuple[str, int]] = Counter()
    for raw in redis.hvals(keys.inflight_owner(type_)):
        host, _, pid = raw.decode("utf-8", "replace").rsplit(":", 1)[0].rpartition(":")
        if pid.isdigit():  # anything else was not written by a follower: not a worker's call
            owners[(host, int(pid))] += 1
    return owners


def _worker(worker: Any, now: float, followed: Counter[tuple[str, int]]) -> dict[str, Any]:
    execution = worker.execution
    created = execution.created_at if execution is not None else None
    if created is not None and created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    started = created.timestamp() if created is not None else None
    beat = worker.last_heartbeat
    return {
        "name": worker.name,
        "host": worker.hostname,
        "pid": worker.pid,
        "state": str(worker.get_state()),
        "job": execution.job_id if execution is not None else None,
        "job_age_s": round(now - started, 1) if started else None,
        "in_flight": followed.get((worker.hostname, worker.pid), 0),
        "last_heartbeat": _iso(beat.replace(tzinfo=UTC).timestamp()) if beat else None,
    }


def _oldest_age(redis: Any, queue: Any, now: float) -> float | None:
    """Age of the job at the head of the list (RQ pushes at the tail and pops at the head)."""
    head = redis.lindex(queue.key, 0)
    if head is None:
        return None
    enqueued = redis.hget(keys.rq_job(head.decode("utf-8", "replace")), "enqueued_at")
    if not enqueued:
        return None
    try:
        stamp = datetime.fromisoformat(enqueued.decode().replace("Z", "+00:00"))
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return round(max(0.0, now - stamp.timestamp()), 1)


def _iso(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def render(report: dict[str, Any]) -> str:
    """The report as tables for people."""
    lines = [f"Redis {report['redis']} · registry {report['registry']}", ""]
    rows = [("QUEUE", "DEPTH", "OLDEST", "WORKERS", "IN FLIGHT", "FAILED")]
    for q in report["queues"]:
        age = "-" if q["oldest_job_age_s"] is None else f"{q['oldest_job_age_s']:g}s"
        rows.append((q["queue"], str(q["depth"]), age, str(len(q["workers"])), str(q["in_flight"]), str(q["failed"])))
    lines += _table(rows)
    workers = [(q["queue"], w) for q in report["queues"] for w in q["workers"]]
    if workers:
        lines += ["", *_table([("WORKER", "QUEUE", "STATE", "JOB AGE", "IN FLIGHT")] + [
            (f"{w['host']}:{w['pid']}", queue, w["state"], "-" if w["job_age_s"] is None else f"{w['job_age_s']:g}s",
             str(w["in_flight"]))
            for queue, w in workers
        ])]  # fmt: skip
    if report["servers"]:
        lines += ["", *_table([("SERVER", "TYPE", "BREAKER", "FAILURES", "LAST PROBE", "RATE", "REASON")] + [
            (s["name"], s["type"], s["breaker"], str(s["failures"]), s["last_probe_at"] or "-", _rate_cell(s["rate"]),
             (s["reason"] or "")[:60])
            for s in report["servers"]
        ])]  # fmt: skip
    else:
        lines += ["", "No servers registered."]
    return "\n".join(lines)


def _rate_cell(rate: dict[str, Any] | None) -> str:
    if rate is None:
        return "-"
    parts = [f"{rate['sent_in_window']}/{rate['cps']:g} cps"] if rate["cps"] else []
    if rate["max_concurrent"]:
        parts.append(f"{rate['in_flight']}/{rate['max_concurrent']} live")
    if rate["waiting"]:
        parts.append(f"{rate['waiting']} waiting")
    if rate["paused_s"]:
        parts.append(f"paused {rate['paused_s']:g}s")
    return ", ".join(parts)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
