"""The job entry point RQ runs, and the same function embedded mode calls in-process.

`run` is the only function a worker will execute (workers.worker refuses any other name). It
resolves the server by name in the registry, runs the operation on that server's adapter under a
bounded retry for transient failures, and hands back exactly one JobResult.
"""

from __future__ import annotations

import json
import time
from typing import Any

from pydantic import ValidationError

from bus import backoff
from bus.errors import BusError, InvalidInput, Outcome
from bus.logging import get_logger
from bus.models import CallRequest, HangupRequest, JobResult, TestRequest, parse_request
from bus.queues import REPLY_TTL_SECONDS
from bus.registry import open_registry
from bus.server import ServerEntry
from workers.adapters import adapter_class
from workers.adapters.base import Adapter, Answer

log = get_logger("ifbus.job")

# Adapters kept between jobs of one worker process, so keep-alive connections are reused.
_adapters: dict[str, tuple[ServerEntry, Adapter]] = {}


def run(payload: dict[str, Any]) -> dict[str, Any]:
    """RQ entry point: execute, then push the result to the caller's reply key, if any."""
    from rq import get_current_job

    result = execute(payload, mode="queue")
    reply_key = payload.get("reply_key") if isinstance(payload, dict) else None
    job = get_current_job()
    if reply_key and job is not None:
        with job.connection.pipeline() as pipe:
            pipe.lpush(reply_key, json.dumps(result))
            pipe.expire(reply_key, REPLY_TTL_SECONDS)
            pipe.execute()
    return result


def execute(payload: Any, mode: str = "inline") -> dict[str, Any]:
    """Run one request; every failure becomes a JobResult, never an exception."""
    started = time.monotonic()
    request_id = payload.get("request_id", "") if isinstance(payload, dict) else ""
    try:
        request = parse_request(payload)
    except ValidationError as exc:
        return _failure(str(request_id), "test", "", InvalidInput(_validation_message(exc)), {}, mode)
    attempts: dict[str, int] = {}
    try:
        entry = open_registry().get(request.server)
        adapter = _adapter(request.server, entry)
        answer = _attempt(adapter, request, attempts, started)
    except BusError as exc:
        log.info(
            "job.failed",
            request_id=request.request_id,
            op=request.op,
            server=request.server,
            outcome=exc.outcome.value,
            error=exc.message,
        )
        return _failure(request.request_id, request.op, request.server, exc, attempts, mode)
    log.info(
        "job.done",
        request_id=request.request_id,
        op=request.op,
        server=request.server,
        call_id=answer.call_id,
        ms=round((time.monotonic() - started) * 1000, 1),
    )
    return JobResult(
        request_id=request.request_id,
        op=request.op,
        server=request.server,
        outcome=Outcome.OK,
        exit_code=0,
        message=answer.message,
        call_id=answer.call_id,
        sip_code=answer.data.get("sip_code"),
        data=answer.data,
        attempts=attempts,
        mode=mode,
    ).model_dump(mode="json")


def _attempt(adapter: Adapter, request: Any, attempts: dict[str, int], started: float) -> Answer:
    """Try the operation on one server within its attempt budget.

    Only failures where the server did nothing are retried for `call` (unreachable, overloaded):
    an ambiguous originate is final, so a call is never placed twice. `test` and `hangup` are
    idempotent and also retry after an ambiguous failure.
    """
    budget = max(1, int(adapter.option_float("attempts")))
    deadline = started + request.timeout
    for attempt in range(budget):
        attempts[adapter.name] = attempt + 1
        try:
            return _perform(adapter, request, deadline)
        except BusError as exc:
            retryable = exc.outcome.transient or (
                exc.outcome is Outcome.AMBIGUOUS and not isinstance(request, CallRequest)
            )
            wait = backoff.delay(attempt, getattr(exc, "retry_after", None))
            if not retryable or attempt + 1 >= budget or time.monotonic() + wait >= deadline:
                raise
            log.info(
                "job.retry",
                server=adapter.name,
                attempt=attempt + 1,
                outcome=exc.outcome.value,
                wait_ms=round(wait * 1000, 1),
            )
            time.sleep(wait)
    raise AssertionError("unreachable: the loop returns or raises")


def _perform(adapter: Adapter, request: Any, deadline: float) -> Answer:
    if isinstance(request, TestRequest):
        return adapter.test()
    if isinstance(request, CallRequest):
        adapter.check_extras(request.extras, adapter.call_extras, "call")
        return adapter.call(request.from_, request.to, request.until, dict(request.extras), deadline)
    if isinstance(request, HangupRequest):
        adapter.check_extras(request.extras, adapter.hangup_extras, "hangup")
        return adapter.hangup(request.call_id, dict(request.extras))
    raise InvalidInput(f"unknown operation {request!r}")


def _adapter(name: str, entry: ServerEntry) -> Adapter:
    cached = _adapters.get(name)
    if cached is not None and cached[0] == entry:
        return cached[1]
    if cached is not None:
        cached[1].close()
    adapter = adapter_class(entry.type)(name, entry)
    _adapters[name] = (entry, adapter)
    return adapter


def _failure(
    request_id: str, op: str, server: str, exc: BusError, attempts: dict[str, int], mode: str
) -> dict[str, Any]:
    message = exc.message
    if exc.outcome.transient and attempts:
        message += " (attempts: " + ", ".join(f"{name} ×{count}" for name, count in attempts.items()) + ")"
    return JobResult(
        request_id=request_id or "invalid",
        op=op if op in ("test", "call", "hangup") else "test",
        server=server,
        outcome=exc.outcome,
        exit_code=exc.exit_code,
        message=message,
        call_id=exc.details.get("call_id"),
        sip_code=exc.details.get("sip_code"),
        reason=exc.details.get("reason"),
        data={k: v for k, v in exc.details.items() if k not in ("call_id", "sip_code", "reason", "server")},
        attempts=attempts,
        mode=mode,
    ).model_dump(mode="json")


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in error["loc"]) or "message"
        parts.append(f"{where}: {error['msg']}")
    return "Invalid request: " + "; ".join(parts)
