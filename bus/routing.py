"""The one path from a request to its vendor queue, shared by the Python producer and `ifbus ingress`.

Both sides admit a request here, so a request pushed as JSON by a Node or Go service is checked,
deduplicated and routed exactly like one built with `producer.Producer`:

1. validation: the public request schema only (bus.models; `routing` is the bus's own envelope and
   is refused from a producer), with every wrong field named (exit 2);
2. the server's name resolved in the registry (exit 1 when unknown), which gives the vendor queue;
3. request-id dedupe: the first submission claims the id for DEDUP_SECONDS; a later one is told it
   is a duplicate and gets the first one's stored answer (or waits for it), never a second call;
4. the no-worker check: nothing serves the queue → Unreachable at once (exit 4), and the claim is
   dropped so the same request may be sent again once a worker runs;
5. the job goes on the queue through bus.queues.enqueue, stamped with the time the bus took it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from bus.errors import BusError, InvalidInput, Unreachable
from bus.ledger import RedisLedger
from bus.models import BaseRequest, JobResult, Routing, parse_request
from bus.queues import enqueue, queue_name
from bus.registry import Registry
from bus.server import ServerEntry

# A live worker seen on a queue is trusted for this long before anyone looks again.
WORKER_SEEN_SECONDS = 1.0
_EMPTY = Routing()


def parse(payload: Any) -> BaseRequest:
    """A public request from decoded JSON; InvalidInput naming every wrong field."""
    try:
        request = parse_request(payload)
    except ValidationError as exc:
        raise InvalidInput(describe(exc)) from None
    check_public(request)
    return request


def check_public(request: BaseRequest) -> None:
    """A producer's request carries no envelope: failover state written by a producer would steer
    the workers (skip servers, fake attempts), and a forged submission time would shorten its deadline."""
    if request.routing != _EMPTY:
        raise InvalidInput("Invalid request: routing: internal to the bus (the workers' failover state); leave it out")


def describe(exc: ValidationError) -> str:
    """Every validation error as `field: what is wrong`, without echoing the input."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = [str(p) for p in error["loc"] if not str(p).startswith("function-")]
        parts.append(f"{'.'.join(loc) or 'message'}: {error['msg'].removeprefix('Value error, ')}")
    return "Invalid request: " + "; ".join(parts)


def failure(request_id: str, op: str, server: str, exc: BusError) -> dict[str, Any]:
    """The JobResult a caller gets when its request never reached a queue."""
    return JobResult(
        request_id=request_id or "invalid",
        op=op if op in ("test", "call", "hangup") else "test",
        server=server,
        outcome=exc.outcome,
        exit_code=exc.exit_code,
        message=exc.message,
        data=dict(exc.details),
        mode="queue",
    ).model_dump(mode="json")


@dataclass(frozen=True)
class Admission:
    """What became of an admitted request: queued now, or a duplicate of an earlier submission
    (`result` is that submission's stored answer when it already has one)."""

    request: BaseRequest
    queue: str
    duplicate: bool = False
    result: dict[str, Any] | None = None


class Router:
    """Admits requests onto the vendor queues of one Redis; keep one per process (it remembers which
    queues had a live worker a moment ago, so a busy producer does not ask Redis for every request)."""

    def __init__(self, redis: Any, registry: Registry) -> None:
        self.redis = redis
        self.registry = registry
        self.ledger = RedisLedger(redis)
        self._served: dict[str, float] = {}  # queue → until when a live worker was last seen (monotonic)

    def admit(self, request: BaseRequest, entry: ServerEntry | None = None) -> Admission:
        """Validate, dedupe, route and enqueue `request` (its reply_key already chosen by the caller).

        Raises InvalidInput (2), NotFound (1), Unreachable (4: no worker); Redis errors propagate
        for the caller to class (before or after the job may have been queued)."""
        (outcome,) = self.admit_many([request], {request.server: entry} if entry else None)
        if isinstance(outcome, BusError):
            raise outcome
        return outcome

    def admit_many(
        self, requests: list[BaseRequest], entries: dict[str, ServerEntry] | None = None
    ) -> list[Admission | BusError]:
        """`admit` for a batch, in order, each request's Admission or refusal: the registry is read
        once and the dedupe claims take one round trip for the whole batch (the ingress drains its
        list this way; the Python producer admits a batch of one)."""
        outcomes: list[Admission | BusError | None] = [None] * len(requests)
        snapshot, loaded = dict(entries or {}), False
        admitted: list[tuple[int, BaseRequest, ServerEntry]] = []
        for i, request in enumerate(requests):
            try:
                check_public(request)
                if request.server not in snapshot and not loaded:
                    snapshot, loaded = {**self.registry.entries(), **snapshot}, True
                entry = snapshot.get(request.server) or self.registry.get(request.server)  # NotFound
                admitted.append((i, request.rerouted(submitted_at=time.time()), entry))
            except BusError as exc:
                outcomes[i] = exc
        claimed: list[Any] = []
        if admitted:
            pipe = self.redis.pipeline(transaction=False)
            claims = RedisLedger(pipe)  # the ledger's own claim (key, lifetime), queued for one round trip
            for _, request, _ in admitted:
                claims.claim_request(request.request_id)
            claimed = pipe.execute()
        for n, ((i, request, entry), first) in enumerate(zip(admitted, claimed, strict=True)):
            try:
                outcomes[i] = self._route(request, entry, bool(first))
            except Exception:
                self._release([r for (_, r, _), mine in zip(admitted[n + 1 :], claimed[n + 1 :], strict=True) if mine])
                raise
        return [outcome for outcome in outcomes if outcome is not None]

    def _release(self, unrouted: list[BaseRequest]) -> None:
        """Redis failed mid-batch: the claims of requests not yet routed are dropped (when Redis still
        answers), so sending them again is not mistaken for a duplicate. The one that failed keeps its
        claim: its job may be on the queue."""
        try:
            for request in unrouted:
                self.ledger.forget_request(request.request_id)
        except Exception:  # Redis is gone: the claims expire after DEDUP_SECONDS
            pass

    def _route(self, request: BaseRequest, entry: ServerEntry, first: bool) -> Admission | BusError:
        queue = queue_name(entry.type)
        rid = request.request_id
        if not first:
            # Submitted before within the window: the first submission's answer, never a second call.
            return Admission(request, queue, duplicate=True, result=self.ledger.result(rid))
        if not self.served(queue):
            self.ledger.forget_request(rid)
            return Unreachable(
                f"no worker serves {queue}: start `ifbus worker {entry.type}`, or set IFBUS_MODE=inline",
                queue=queue,
            )
        enqueue(self.redis, entry.type, request)
        return Admission(request, queue)

    def served(self, queue: str) -> bool:
        """Whether a live RQ worker listens on `queue` (seen within WORKER_SEEN_SECONDS)."""
        from rq import Queue, Worker

        now = time.monotonic()
        if self._served.get(queue, 0) < now and Worker.count(queue=Queue(queue, connection=self.redis)) > 0:
            self._served[queue] = now + WORKER_SEEN_SECONDS
        return self._served.get(queue, 0) >= now
