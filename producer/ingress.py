"""`ifbus ingress`: producers in any language push JSON requests on one Redis list; this moves them
onto the vendor queues through the same path as the Python producer (bus.routing).

The contract it serves is docs/producers.md. What it promises:

- nothing taken is lost: a request is moved atomically (LMOVE, BLMOVE when the list is empty)
  from `ifbus:requests` to this ingress's own processing list and removed from it only in the same
  transaction that answers or parks it, or after it was queued. A busy list is taken and admitted
  BATCH requests per round trip (bus.routing.Router.admit_many), which is what lets one ingress
  keep up with a Python producer that needs no extra hop. An ingress that starts (and every RECOVER_SECONDS after) moves
  back what a dead ingress (no heartbeat) left in its processing list. A kill between "queued" and
  "removed" means the request is seen again, found a duplicate, and answered twice: never called twice;
- every request with a usable reply key gets exactly one answer of the `ifbus schema` result shape:
  exit 2 for invalid input, 1 for an unknown server, 4 when no worker serves the queue;
- what cannot be answered (not JSON, too large, no or a foreign reply key with bad input) is parked
  on `ifbus:requests:dead` with the reason; the ingress never stops on input;
- a duplicate request id gets the first submission's answer: at once when it is stored, else as
  soon as it is (the duplicate stays in the processing list meanwhile, so a restart keeps it);
- SIGTERM / SIGINT: the current message is finished, waiting duplicates go back on the request
  list for another ingress, and the process exits 0.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from bus import keys
from bus.errors import BusError, OutcomeUnknown
from bus.logging import get_logger
from bus.models import REQUEST_ID_RE, BaseRequest
from bus.registry import Registry
from bus.routing import Admission, Router, failure, parse

log = get_logger("ifbus.ingress")

MAX_REQUEST_BYTES = 64 * 1024  # a request is a few hundred bytes; anything this large is parked unread
DEAD_MAX = 10_000  # the dead list keeps the newest this many, so a flood of garbage cannot fill Redis
DEAD_SHOWN_BYTES = 4096  # how much of a parked message is kept for a human to read
IDLE_BLOCK_SECONDS = 1.0  # longest BLMOVE wait: how soon SIGTERM and the heartbeat are looked at
JOIN_POLL_SECONDS = 0.05  # BLMOVE wait while duplicates wait for their first submission's answer
HEARTBEAT_SECONDS = 2.0
INGRESS_TTL_SECONDS = 15  # an ingress silent this long is dead: its processing list is recovered
RECOVER_SECONDS = 10.0
REDIS_RETRY_MAX_SECONDS = 2.0
BATCH = 32  # requests taken and admitted per round trip when the list is busy


@dataclass(frozen=True)
class _Parsed:
    """A message that is a valid public request, and how to answer it."""

    raw: bytes
    request: BaseRequest
    reply_key: str | None
    op: str
    server: str


@dataclass
class _Join:
    """A duplicate waiting for the first submission's answer."""

    raw: bytes
    request_id: str
    reply_key: str
    op: str
    server: str
    deadline: float  # time.monotonic()
    timeout: float


class Ingress:
    def __init__(self, redis: Any, registry: Registry, ingress_id: str | None = None) -> None:
        self.redis = redis
        self.router = Router(redis, registry)
        self.id = ingress_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.processing = keys.requests_processing(self.id)
        self.joins: list[_Join] = []
        self.counts: Counter[str] = Counter()  # queued / answered / parked / joined, for the bench and tests
        self.stopping = False
        self._beat_at = 0.0
        self._recover_at = 0.0
        self._resume = False  # a batch was interrupted by Redis: handle the processing list again

    # ------------------------------------------------------------ lifecycle

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT; Redis outages are waited out, never fatal."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        self.start()
        log.info("ingress.ready", ingress=self.id, requests=keys.REQUESTS)
        wait = 0.1
        while not self.stopping:
            try:
                self.step()
                wait = 0.1
            except (RedisError, OSError) as exc:
                log.warning("ingress.redis", ingress=self.id, error=str(exc), retry_in=wait)
                time.sleep(wait)
                wait = min(REDIS_RETRY_MAX_SECONDS, wait * 2)
            except Exception as exc:  # a bug outside one message's handling: log it, keep serving
                log.error("ingress.bug", ingress=self.id, error=f"{type(exc).__name__}: {exc}", retry_in=wait)
                time.sleep(wait)
                wait = min(REDIS_RETRY_MAX_SECONDS, wait * 2)
        self.shutdown()
        log.info("ingress.stopped", ingress=self.id, **self.counts)

    def _stop(self, _signum: int, _frame: Any) -> None:
        self.stopping = True

    def start(self) -> None:
        """Announce this ingress (heartbeat first, so no other one recovers it while it starts),
        then take back what dead ones left."""
        self.beat(force=True)
        self.redis.sadd(keys.INGRESSES, self.id)
        self.recover()

    def beat(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now >= self._beat_at:
            self.redis.set(keys.ingress(self.id), str(time.time()), ex=INGRESS_TTL_SECONDS)
            self._beat_at = now + HEARTBEAT_SECONDS

    def recover(self) -> int:
        """Move every request a dead ingress left in its processing list back onto the request list,
        oldest last so it is taken first. Returns how many were moved."""
        self._recover_at = time.monotonic() + RECOVER_SECONDS
        moved = 0
        for member in self.redis.smembers(keys.INGRESSES):
            other = member.decode(errors="replace")
            if other == self.id or self.redis.exists(keys.ingress(other)):
                continue
            source = keys.requests_processing(other)
            while self.redis.lmove(source, keys.REQUESTS, "LEFT", "RIGHT") is not None:
                moved += 1
            self.redis.srem(keys.INGRESSES, other)
        if moved:
            log.warning("ingress.recovered", ingress=self.id, requests=moved)
        return moved

    def shutdown(self) -> None:
        """Hand waiting duplicates to another ingress; leave no trace if everything was handled."""
        try:
            for join in self.joins:
                pipe = self.redis.pipeline()
                pipe.lrem(self.processing, 1, join.raw)
                pipe.rpush(keys.REQUESTS, join.raw)
                pipe.execute()
            self.joins = []
            if not self._resume and not self.redis.llen(self.processing):
                pipe = self.redis.pipeline()
                pipe.delete(keys.ingress(self.id))
                pipe.srem(keys.INGRESSES, self.id)
                pipe.execute()
        except (RedisError, OSError) as exc:  # the heartbeat expires; another ingress recovers the rest
            log.warning("ingress.shutdown", ingress=self.id, error=str(exc))

    # ------------------------------------------------------------ messages

    def step(self, block: float | None = None) -> bool:
        """Take what is waiting (up to BATCH requests, else block for one) and handle it; True when
        something was handled."""
        self.beat()
        if time.monotonic() >= self._recover_at:
            self.recover()
        if self.joins:
            self._serve_joins()
        raws = self._unfinished() if self._resume else self._take()
        if not raws:
            wait = block if block is not None else JOIN_POLL_SECONDS if self.joins else IDLE_BLOCK_SECONDS
            raw = self.redis.blmove(keys.REQUESTS, self.processing, wait, "RIGHT", "LEFT")
            if raw is None:
                return False
            raws = [raw]
        self._resume = True  # until the batch is done: after a Redis error it is handled again
        self.counts.update(self.handle(raws))
        self._resume = False
        return True

    def _take(self) -> list[bytes]:
        """Move up to BATCH waiting requests, oldest first, in one round trip (none → [])."""
        pipe = self.redis.pipeline(transaction=False)
        for _ in range(BATCH):
            pipe.lmove(keys.REQUESTS, self.processing, "RIGHT", "LEFT")
        return [raw for raw in pipe.execute() if raw is not None]

    def _unfinished(self) -> list[bytes]:
        """What this ingress holds and has not finished (a batch Redis interrupted), oldest first."""
        held = Counter(join.raw for join in self.joins)
        out = []
        for raw in reversed(self.redis.lrange(self.processing, 0, -1)):
            if held[raw]:
                held[raw] -= 1
            else:
                out.append(raw)
        return out

    def handle(self, raws: list[bytes]) -> list[str]:
        """Queue, answer, park or join each raw message (already in this ingress's processing list);
        one label per message.

        Redis errors propagate (the messages stay in the processing list and are handled again); any
        other failure parks the message it happened on, so no input can stop the ingress."""
        labels: list[str] = []
        parsed: list[_Parsed] = []
        for raw in raws:
            outcome = self._guarded(raw, lambda raw=raw: self._parse(raw))
            if isinstance(outcome, _Parsed):
                parsed.append(outcome)
            else:
                labels.append(outcome)
        admissions = self.router.admit_many([p.request for p in parsed]) if parsed else []
        finished = []
        for item, admission in zip(parsed, admissions, strict=True):
            label = self._guarded(item.raw, lambda item=item, admission=admission: self._dispose(item, admission))
            labels.append(label)
            if label in ("queued", "duplicate") and not (label == "duplicate" and item.reply_key):
                finished.append(item.raw)
        if finished:
            pipe = self.redis.pipeline(transaction=False)
            for raw in finished:
                pipe.lrem(self.processing, 1, raw)
            pipe.execute()
        return labels

    def _guarded(self, raw: bytes, work: Callable[[], Any]) -> Any:
        try:
            return work()
        except (RedisError, OSError):
            raise
        except Exception as exc:  # a bug: park the message rather than loop on it or die
            log.error("ingress.bug", ingress=self.id, error=f"{type(exc).__name__}: {exc}")
            return self._park(raw, f"internal error ({type(exc).__name__}); please report it")

    def _parse(self, raw: bytes) -> _Parsed | str:
        """The request in `raw`, or the label of what was done instead (parked, answered)."""
        if len(raw) > MAX_REQUEST_BYTES:
            return self._park(raw, f"larger than {MAX_REQUEST_BYTES} bytes")
        try:
            payload = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            return self._park(raw, f"not JSON ({type(exc).__name__}: {str(exc)[:200]})")
        if not isinstance(payload, dict):
            return self._park(raw, f"not a JSON object (got {type(payload).__name__})")
        rid, reply_key = payload.get("request_id"), payload.get("reply_key")
        op = payload.get("op") if isinstance(payload.get("op"), str) else ""
        server = payload.get("server")[:64] if isinstance(payload.get("server"), str) else ""
        answerable = isinstance(rid, str) and REQUEST_ID_RE.fullmatch(rid) is not None
        if reply_key is not None and not (answerable and reply_key == keys.reply(rid)):
            shown = repr(reply_key)[:80]
            return self._park(raw, f"reply_key {shown} is not ifbus:reply:<request_id> of a valid request_id")
        try:
            request = parse(payload)
        except BusError as exc:
            return self._refuse(raw, reply_key, rid, op, server, exc)
        return _Parsed(raw, request, reply_key, op, server)

    def _dispose(self, item: _Parsed, admission: Admission | BusError) -> str:
        rid = item.request.request_id
        if isinstance(admission, BusError):
            return self._refuse(item.raw, item.reply_key, rid, item.op, item.server, admission)
        if not admission.duplicate:
            return "queued"
        if item.reply_key is None:
            return "duplicate"  # nobody waits for it: dropped
        if admission.result is not None:
            return self._answer(item.raw, item.reply_key, admission.result, "duplicate")
        timeout = admission.request.timeout
        self.joins.append(_Join(item.raw, rid, item.reply_key, item.op, item.server, time.monotonic() + timeout,
                                timeout))  # fmt: skip
        return "joined"

    def _refuse(self, raw: bytes, reply_key: str | None, rid: Any, op: str, server: str, exc: BusError) -> str:
        if reply_key is None:
            return self._park(raw, exc.message)
        return self._answer(raw, reply_key, failure(rid, op, server, exc), "answered")

    def _serve_joins(self) -> None:
        """Answer the waiting duplicates whose first submission has an answer now (or whose time is up)."""
        stored = self.redis.mget([keys.result(j.request_id) for j in self.joins])
        now = time.monotonic()
        waiting = []
        for join, body in zip(self.joins, stored, strict=True):
            if body is not None:
                self._answer(join.raw, join.reply_key, body, "duplicate")
            elif now >= join.deadline:
                exc = OutcomeUnknown(
                    f"request {join.request_id} was submitted before and has no answer within {join.timeout:g} s; "
                    f"it may still run: look it up with `ifbus job {join.request_id}`",
                    job_id=join.request_id,
                )
                self._answer(join.raw, join.reply_key, failure(join.request_id, join.op, join.server, exc), "answered")
            else:
                waiting.append(join)
        self.joins = waiting

    def _answer(self, raw: bytes, reply_key: str, result: dict[str, Any] | bytes, label: str) -> str:
        """Push the one answer (a stored result is forwarded byte for byte) and drop the message from
        the processing list, in one transaction."""
        pipe = self.redis.pipeline()
        pipe.lpush(reply_key, result if isinstance(result, bytes) else json.dumps(result))
        pipe.expire(reply_key, keys.REPLY_TTL_SECONDS)
        pipe.lrem(self.processing, 1, raw)
        pipe.execute()
        if isinstance(result, dict) and label == "answered":
            log.info("ingress.answered", request_id=result.get("request_id"), exit_code=result.get("exit_code"),
                     message=result.get("message"))  # fmt: skip
        return label

    def _park(self, raw: bytes, reason: str) -> str:
        """Keep an unanswerable message, with why, where an operator can read it (LRANGE)."""
        entry = {
            "reason": reason,
            "ingress": self.id,
            "at": time.time(),
            "bytes": len(raw),
            "message": raw[:DEAD_SHOWN_BYTES].decode("utf-8", errors="backslashreplace"),
        }
        pipe = self.redis.pipeline()
        pipe.lpush(keys.REQUESTS_DEAD, json.dumps(entry))
        pipe.ltrim(keys.REQUESTS_DEAD, 0, DEAD_MAX - 1)
        pipe.lrem(self.processing, 1, raw)
        pipe.execute()
        log.warning("ingress.parked", reason=reason, bytes=len(raw))
        return "parked"


def serve(redis: Any, registry: Registry) -> None:
    """`ifbus ingress`: run one ingress until it is told to stop."""
    Ingress(redis, registry).run()
