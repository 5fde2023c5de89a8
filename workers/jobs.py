"""The job entry point RQ runs, and the same function embedded mode calls in-process.

`run` is the only function a worker will execute (workers.worker refuses any other name). A job
picks its server when it starts (round-robin over the pool, skipping open breakers), runs the
operation under that server's attempt budget, and either finishes with exactly one JobResult or,
when the server is down, re-queues itself for the next server of the pool. The rules (DESIGN.md):

- unreachable / overloaded: retried on the same server with backoff, then failover (`call`);
- auth failure: no retry on that server, breaker opened, failover (`call`);
- call rejected: final, never failed over (another server would ring the same person again);
- ambiguous: final for `call` ("outcome unknown"); `test`/`hangup` are idempotent and retry.

A call is two steps on the adapter seam (workers.adapters.base): `originate` until the server
accepted it, then `follow` until it is answered or refused. The rule that makes "never a call placed
twice" hold lives here, once: a failure before acceptance keeps its class (and may be retried or failed
over); once the server accepted, the CallRef is in the ledger and anything but a final answer is
"outcome unknown", naming the server and the call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from bus import backoff
from bus.calls import CallRef
from bus.errors import BusError, CallRejected, InvalidInput, NotFound, Outcome, OutcomeUnknown
from bus.failover import candidates_left, next_server, pool_order
from bus.health import CLOSED, HealthStore, MemoryHealth
from bus.keys import reply as reply_key_for
from bus.ledger import REQUEUED, FollowRecord, LeaseKeeper, Ledger, MemoryLedger
from bus.logging import get_logger
from bus.models import (
    REQUEST_ID_RE,
    BaseRequest,
    CallRequest,
    HangupRequest,
    JobResult,
    TestRequest,
    parse_request,
)
from bus.ratelimit import Limiter, MemoryLimiter, RateLimited, RedisLimiter, Slot
from bus.registry import open_registry
from bus.server import ServerEntry
from workers.adapters.base import Adapter, Answer, Until
from workers.pool import POOL
from workers.sip_check import with_sip_reachability

log = get_logger("ifbus.job")

_OPS = ("test", "call", "hangup")

# The answer of a call handed to the process's follower: nobody is answered by the job itself.
FOLLOWED: Any = Answer("handed to the follower")
Handoff = Callable[[Adapter, CallRef, "Slot | None"], None]


@dataclass
class Context:
    """Where health and request state live: Redis for workers, this process for embedded mode."""

    health: HealthStore
    ledger: Ledger
    requeue: Callable[[BaseRequest], None] | None = None  # None: fail over in this process
    limiter: Limiter | None = None  # per-server call-rate limits (bus.ratelimit); None: none enforced
    follower: Any = None  # workers.follower.Follower: `until=answered` calls settle there; None: in the job


_inline: Context | None = None

# Outcomes that say something about the server's health (a rejected call says the server works).
_UNHEALTHY = frozenset({Outcome.UNREACHABLE, Outcome.OVERLOADED, Outcome.AMBIGUOUS, Outcome.AUTH})


def inline_context() -> Context:
    global _inline
    if _inline is None:
        _inline = Context(MemoryHealth(), MemoryLedger(), limiter=Limiter(MemoryLimiter()))
    return _inline


def run(payload: dict[str, Any]) -> dict[str, Any]:
    """RQ entry point: health and ledger in the worker's Redis; failover by re-queue."""
    from rq import get_current_job

    from bus.health import RedisHealth
    from bus.ledger import RedisLedger
    from workers.follower import process_follower

    job = get_current_job()
    assert job is not None, "workers.jobs.run runs inside an RQ job"
    redis = job.connection
    context = Context(RedisHealth(redis), RedisLedger(redis), requeue=lambda request: _requeue(redis, request),
                      limiter=Limiter(RedisLimiter(redis)), follower=process_follower(redis))  # fmt: skip
    done = execute(payload, mode="queue", context=context)
    if done.get("followed"):
        # RQ keeps a finished job only if it has a result TTL (the bus enqueues with 0: it stores its own
        # results). A followed call's job stays readable while its call may ring, so `rq info` and an
        # operator's `rq requeue` see it (a redelivery finds the send claim and never sends twice).
        timeout = payload.get("timeout") if isinstance(payload, dict) else None
        job.result_ttl = int(timeout if isinstance(timeout, int | float) else 60) + 60
    return done


def execute(payload: Any, mode: str = "inline", context: Context | None = None) -> dict[str, Any]:
    """Serve one request; every failure becomes a JobResult, never an exception."""
    context = context or inline_context()
    fields = payload if isinstance(payload, dict) else {}
    request_id, reply_key, op = fields.get("request_id"), fields.get("reply_key"), fields.get("op")
    try:
        request = parse_request(payload)
    except ValidationError as exc:
        answerable = isinstance(request_id, str) and REQUEST_ID_RE.fullmatch(request_id)
        op = op if op in _OPS else "test"
        result = _result(request_id if answerable else "", op, "", InvalidInput(_validation_message(exc)), {}, {}, mode)
        if answerable and isinstance(reply_key, str) and reply_key == reply_key_for(request_id):
            context.ledger.finish(request_id, result, reply_key)  # the caller still gets its one answer
        return result
    served = _serve(request, context, mode)
    if served is FOLLOWED:
        return {"request_id": request.request_id, "followed": True}  # the follower delivers the one answer
    if served is not None:
        result, healthy = served
        close = (lambda pipe: context.health.success(healthy, pipe)) if healthy else None
        context.ledger.finish(request.request_id, result, request.reply_key, also=close)
        return result
    return {"request_id": request.request_id, "requeued": True}  # RQ's record of this hop; the caller waits on


def _serve(request: BaseRequest, context: Context, mode: str) -> tuple[dict[str, Any], str | None] | object | None:
    """The request's one result and the server that just proved healthy (its breaker is closed in
    the same round trip that delivers the result), None when it was re-queued, or FOLLOWED when the
    call was handed to the process's follower (which answers the caller when it settles)."""
    attempts, errors, tried = dict(request.attempts), dict(request.errors), list(request.tried)
    last = request.last_outcome
    deadline = _deadline(request)
    keeper = LeaseKeeper(context.ledger, request.request_id)
    server = request.server
    try:
        entries = open_registry().entries()
        if request.server not in entries:
            raise NotFound(f"Not found: {request.server}")
        while True:
            server = _choose(request, entries, tried, context)
            if server is None:  # another worker took the last half-open trial meanwhile
                return _exhausted(request, attempts, errors, last or Outcome.UNREACHABLE, mode), None
            keeper.hold(server)
            handoff = _handoff(request, context, entries[server].type, attempts, errors, mode, deadline)
            try:
                answer = _attempt(POOL.get(server, entries[server]), request, attempts, deadline, context, handoff)
            except BusError as exc:
                if not _fails_over(request, exc):
                    raise
                tried.append(server)
                errors[server] = exc.message
                last = exc.outcome
                if not candidates_left(entries, request.server, tried, context.health):
                    raise
                log.info("job.failover", request_id=request.request_id, server=server, outcome=exc.outcome.value)
                if context.requeue is not None:
                    keeper.stop()
                    context.ledger.lease(request.request_id, REQUEUED, max(1.0, deadline - time.monotonic()))
                    routing = {"tried": tried, "attempts": attempts, "errors": errors, "last_outcome": last}
                    context.requeue(request.rerouted(**routing))
                    return None
                continue
            if answer is FOLLOWED:
                log.info("job.followed", request_id=request.request_id, server=server)
                return FOLLOWED
            log.info("job.done", request_id=request.request_id, op=request.op, server=server, call_id=answer.call_id)
            return _success(request.request_id, request.op, server, answer, attempts, errors, mode), server
    except BusError as exc:
        if server:
            exc.details.setdefault("health", context.health.get(server).state)
        log.info("job.failed", request_id=request.request_id, op=request.op, server=server,
                 outcome=exc.outcome.value, error=exc.message)  # fmt: skip
        return _result(request.request_id, request.op, server, exc, attempts, errors, mode), None
    finally:
        keeper.stop()


def _success(
    request_id: str, op: str, server: str, answer: Answer, attempts: dict[str, int], errors: dict[str, str], mode: str
) -> dict[str, Any]:
    return JobResult(
        request_id=request_id,
        op=op,
        server=server,
        outcome=Outcome.OK,
        exit_code=0,
        message=answer.message,
        call_id=answer.call_id,
        sip_code=answer.data.get("sip_code"),
        data={**answer.data, "health": CLOSED},  # closed as the result is delivered
        attempts=attempts,
        errors=errors,
        mode=mode,
    ).model_dump(mode="json")


def _handoff(
    request: BaseRequest,
    context: Context,
    type_: str,
    attempts: dict[str, int],
    errors: dict[str, str],
    mode: str,
    deadline: float,
) -> Handoff | None:
    """How an accepted `until=answered` call leaves this job for the process's follower (None: it is
    followed in the job, as in embedded mode). The record is built when the server accepted, so the
    attempts it carries are the final ones."""
    follower = context.follower
    if follower is None or not isinstance(request, CallRequest) or request.until != "answered":
        return None

    def hand(adapter: Adapter, ref: CallRef, slot: Slot | None) -> None:
        now = time.time()
        record = FollowRecord(
            request_id=request.request_id, reply_key=request.reply_key, op=request.op, server=adapter.name,
            type=type_, ref=ref.to_json(), deadline_at=now + max(0.0, deadline - time.monotonic()),
            accepted_at=now, mode=mode, attempts=dict(attempts), errors=dict(errors),
            permit=slot.token if slot is not None else "",
        )  # fmt: skip
        follower.take(record, adapter, slot.done if slot is not None else None)

    return hand


def _choose(request: BaseRequest, entries: dict[str, ServerEntry], tried: list[str], context: Context) -> str | None:
    """Which server this run talks to: decided now, with the health every worker shares."""
    if isinstance(request, CallRequest):
        return next_server(entries, request.server, tried, context.health)
    if tried:
        return None
    if isinstance(request, HangupRequest):
        ref = context.ledger.call_ref(request.call_id)
        if ref and ref.server in entries and ref.server in pool_order(entries, request.server):
            return ref.server  # the server that really carries the call, whichever pool member was named
    return request.server


def _fails_over(request: BaseRequest, exc: BusError) -> bool:
    """Only a call moves to another server, and only when this one provably did nothing."""
    return isinstance(request, CallRequest) and (exc.outcome.transient or exc.outcome is Outcome.AUTH)


def _attempt(
    adapter: Adapter,
    request: BaseRequest,
    attempts: dict[str, int],
    deadline: float,
    context: Context,
    handoff: Handoff | None = None,
) -> Answer:
    """Try the operation on one server within its attempt budget, feeding its breaker."""
    name = adapter.name
    budget = max(1, int(adapter.option_float("attempts")))
    threshold = max(1, int(adapter.option_float("breaker_threshold")))
    cooldown = adapter.option_float("breaker_cooldown")
    for attempt in range(budget):
        attempts[name] = attempts.get(name, 0) + 1
        try:
            return _perform(adapter, request, deadline, context, handoff)
        except BusError as exc:
            if isinstance(exc, RateLimited):
                raise  # the bus's own limit, reached at the caller's deadline: says nothing of the server
            retryable = exc.outcome.transient or (
                exc.outcome is Outcome.AMBIGUOUS and not isinstance(request, CallRequest)
            )
            retry_after = getattr(exc, "retry_after", None)
            if exc.outcome is Outcome.OVERLOADED and retry_after is not None and context.limiter is not None:
                slowed = context.limiter.slow(name, adapter.options, retry_after)  # "not now", not "down"
            else:
                slowed = False
            if exc.outcome in _UNHEALTHY and not slowed:
                auth = exc.outcome is Outcome.AUTH
                context.health.failure(name, exc.message, threshold, cooldown, force_open=auth)
            wait = backoff.delay(attempt, retry_after)
            if not retryable or attempt + 1 >= budget or time.monotonic() + wait >= deadline:
                raise
            log.info("job.retry", server=name, attempt=attempt + 1, outcome=exc.outcome.value,
                     wait_ms=round(wait * 1000, 1))  # fmt: skip
            time.sleep(wait)
    raise AssertionError("unreachable: the loop returns or raises")


def _perform(
    adapter: Adapter, request: BaseRequest, deadline: float, context: Context, handoff: Handoff | None = None
) -> Answer:
    if isinstance(request, TestRequest):
        return with_sip_reachability(adapter, adapter.test())
    if isinstance(request, CallRequest):
        adapter.check_extras(request.extras, adapter.call_extras, "call")
        return place_call(
            adapter, context.ledger, request.request_id, request.from_, request.to, request.until,
            dict(request.extras), deadline, limiter=context.limiter, handoff=handoff,
        )  # fmt: skip
    if isinstance(request, HangupRequest):
        adapter.check_extras(request.extras, adapter.hangup_extras, "hangup")
        ref = context.ledger.call_ref(request.call_id)
        mine = ref if ref is not None and ref.server == adapter.name else None
        return adapter.hangup(request.call_id, mine, dict(request.extras))
    raise InvalidInput(f"unknown operation {request!r}")


def place_call(
    adapter: Adapter,
    ledger: Ledger,
    request_id: str,
    from_: str,
    to: str,
    until: Until,
    extras: dict[str, str],
    deadline: float,
    limiter: Limiter | None = None,
    handoff: Handoff | None = None,
) -> Answer:
    """originate, record, follow: the one place the after-acceptance rule is applied; with a limiter,
    inside a slot of the server's call-rate limits (bus.ratelimit), taken before the deadline or not at all.

    With `handoff` (a queue worker), an accepted `until=answered` call is handed to the process's
    follower instead of being followed here, and FOLLOWED is returned: the follower settles it through
    `settle` (the same rule) and then tells the slot `done`.

    max_concurrent counts a call from its slot until it settles; a call the bus stops following while
    it may still ring (`until=accepted`, outcome unknown) stays counted for the server's ring window."""
    slot = None
    if limiter is not None:  # waits stop while connect_timeout is left: an originate needs at least that
        give_up_at = deadline - adapter.option_float("connect_timeout")
        slot = limiter.acquire(adapter.name, adapter.options, request_id, give_up_at, hold_until=deadline)
    if slot is None:
        return _place(adapter, ledger, request_id, from_, to, until, extras, deadline, lambda reached: None, handoff)
    try:
        answer = _place(adapter, ledger, request_id, from_, to, until, extras, deadline, slot.sent, handoff, slot)
    except BaseException as exc:
        slot.done(ringing=isinstance(exc, OutcomeUnknown))
        raise
    if answer is not FOLLOWED:  # a followed call's slot is the follower's to close
        slot.done(ringing=until == "accepted")
    return answer


def _place(
    adapter: Adapter,
    ledger: Ledger,
    request_id: str,
    from_: str,
    to: str,
    until: Until,
    extras: dict[str, str],
    deadline: float,
    sent: Callable[[bool], None],
    handoff: Handoff | None = None,
    slot: Slot | None = None,
) -> Answer:
    """`sent(reached)` is told when the originate is over: whether the server got (or may have got) it."""
    holder = ledger.claim_send(request_id, adapter.name)
    if holder is not None:
        raise OutcomeUnknown(
            f"request {request_id} was already sent to {holder} by an earlier run (a worker stopped "
            f"mid-call?); it is not sent again: check {holder} for the call",
            server=holder,
        )
    try:
        ref = adapter.originate(from_, to, extras, deadline)
    except BusError as exc:
        sent(exc.outcome is not Outcome.UNREACHABLE)  # unreachable: nothing reached the server
        if exc.outcome.transient or exc.outcome is Outcome.AUTH:
            ledger.release_send(request_id)  # refused, nothing placed: sending again is safe
        raise
    except Exception as exc:  # a bug after the request may have left: never treat it as "nothing happened"
        sent(True)
        raise OutcomeUnknown(
            f"{adapter.name}: the call request failed in an unexpected way ({type(exc).__name__}); "
            f"it may have been placed: check {adapter.name} before trying again",
            server=adapter.name,
        ) from exc
    sent(True)
    ledger.record_call(ref)
    if until == "accepted":
        return adapter.accepted(ref)
    if handoff is not None:
        try:
            handoff(adapter, ref, slot)
            return FOLLOWED
        except Exception as exc:  # Redis refused the follow record: this job follows the call itself
            log.warning("job.handoff_failed", request_id=request_id, server=adapter.name, error=type(exc).__name__)
    try:
        outcome: Answer | BaseException = adapter.follow(ref, deadline)
    except Exception as exc:
        outcome = exc
    return settle(ledger, ref, outcome)


def settle(
    ledger: Ledger, ref: CallRef, outcome: Answer | BaseException, record: Callable[[CallRef], None] | None = None
) -> Answer:
    """What following an accepted call came to, under the after-acceptance rule: an Answer (its call
    id recorded for hangup, through `record` if given, else the ledger), the party's CallRejected,
    or — for anything else — outcome unknown. The job (embedded mode) and the process's follower
    (workers.follower) both settle calls here."""
    if isinstance(outcome, Answer):
        if outcome.call_id and outcome.call_id not in ref.names():
            (record or ledger.record_call)(CallRef(ref.server, outcome.call_id, ref.handle))
        return outcome
    if isinstance(outcome, CallRejected):
        outcome.details.setdefault("server", ref.server)
        if ref.call_id:
            outcome.details.setdefault("call_id", ref.call_id)
        raise outcome
    raise _after_acceptance(ref, outcome) from None


def finish_followed(
    context: Context, settled: list[tuple[FollowRecord, Answer | BaseException]]
) -> list[dict[str, Any]]:
    """Answer the callers of calls a follower settled, exactly as their jobs would have: each one
    JobResult stored and pushed to its reply key, the server's breaker closed on success, the call id
    recorded and the follow records dropped — for the whole round in one transaction (ledger.finish_many)."""
    ledger: Any = context.ledger
    done, results = [], []
    for record, outcome in settled:
        ref, queued = record.call_ref, []
        try:
            answer = settle(ledger, ref, outcome, record=queued.append)
        except BusError as exc:
            exc.details.setdefault("health", context.health.get(record.server).state)
            log.info("job.failed", request_id=record.request_id, op=record.op, server=record.server,
                     outcome=exc.outcome.value, error=exc.message)  # fmt: skip
            result = _result(record.request_id, record.op, record.server, exc, record.attempts, record.errors,
                             record.mode)  # fmt: skip
            healthy = False
        else:
            log.info("job.done", request_id=record.request_id, op=record.op, server=record.server,
                     call_id=answer.call_id)  # fmt: skip
            result = _success(record.request_id, record.op, record.server, answer, record.attempts, record.errors,
                              record.mode)  # fmt: skip
            healthy = True
        done.append((record.request_id, result, record.reply_key, _closing(context, record, queued, healthy)))
        results.append(result)
    ledger.finish_many(done)
    return results


def _closing(context: Context, record: FollowRecord, refs: list[CallRef], healthy: bool) -> Callable[[Any], None]:
    """The commands that go with a followed call's answer, in the same transaction."""

    def add(pipe: Any) -> None:
        for ref in refs:
            context.ledger.record_call(ref, pipe)  # type: ignore[call-arg]
        context.ledger.unfollow(record.type, record.request_id)(pipe)  # type: ignore[attr-defined]
        if healthy:
            context.health.success(record.server, pipe)

    return add


def _after_acceptance(ref: CallRef, exc: BaseException) -> OutcomeUnknown:
    """Whatever broke while following an accepted call, it may be ringing: outcome unknown, with
    the server and the id to hang up with."""
    details = {**ref.handle, "server": ref.server, "call_id": ref.call_id}
    if isinstance(exc, OutcomeUnknown):
        for key, value in details.items():
            exc.details.setdefault(key, value)
        return exc
    why = exc.message if isinstance(exc, BusError) else f"{type(exc).__name__}: {exc}"
    return OutcomeUnknown(
        f"{ref.server} accepted the call ({ref.label}) but following it failed: {why}; it may still connect: "
        f"end it with `ifbus hangup sip {ref.server} call_id={ref.label}` if needed",
        **details,
    )


def _exhausted(
    request: BaseRequest, attempts: dict[str, int], errors: dict[str, str], outcome: Outcome, mode: str
) -> dict[str, Any]:
    """The final answer when no server is left: the class of the last failure, every error named."""
    exc = BusError("no server left to try: " + "; ".join(f"{name}: {why}" for name, why in errors.items()))
    exc.outcome = outcome
    return _result(request.request_id, request.op, next(reversed(errors), request.server), exc, attempts, errors, mode)


def _deadline(request: BaseRequest) -> float:
    """The caller's deadline as a time.monotonic() value, across hops and hosts."""
    remaining = request.timeout
    if request.submitted_at is not None:
        remaining = request.submitted_at + request.timeout - time.time()
    return time.monotonic() + max(0.0, remaining)


def _requeue(redis: Any, request: BaseRequest) -> None:
    """Put the job back on its vendor queue; the worker that takes it picks the next server."""
    from bus.queues import enqueue

    vendor_type = open_registry().get(request.server).type
    enqueue(redis, vendor_type, request, job_id=f"{request.request_id}-hop{len(request.tried)}")


def _result(
    request_id: str,
    op: str,
    server: str,
    exc: BusError,
    attempts: dict[str, int],
    errors: dict[str, str],
    mode: str,
) -> dict[str, Any]:
    message = exc.message
    if exc.outcome.transient and attempts:
        message += " (attempts: " + ", ".join(f"{name} ×{count}" for name, count in attempts.items()) + ")"
    return JobResult(
        request_id=request_id or "invalid",
        op=op if op in _OPS else "test",
        server=str(exc.details.get("server") or server),
        outcome=exc.outcome,
        exit_code=exc.exit_code,
        message=message,
        call_id=exc.details.get("call_id"),
        sip_code=exc.details.get("sip_code"),
        reason=exc.details.get("reason"),
        data={k: v for k, v in exc.details.items() if k not in ("call_id", "sip_code", "reason", "server")},
        attempts=attempts,
        errors=errors,
        mode=mode,
    ).model_dump(mode="json")


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in error["loc"]) or "message"
        parts.append(f"{where}: {error['msg']}")
    return "Invalid request: " + "; ".join(parts)
