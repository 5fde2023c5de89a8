"""Waiting for a queued request's one answer: the loop both producers share.

producer.api.Producer (redis-py, pydantic) and the CLI's light submit (producer.light: bus.resp, plain
dicts) wait the same way, through this one loop, so the rules about leases, late answers and lost
Redis live once. It imports neither redis nor pydantic: the caller hands in its client, the ledger on
that client, and the exception classes its client raises.
"""

from __future__ import annotations

import json
import time
from typing import Any

from bus.errors import OutcomeUnknown, Unreachable
from bus.ledger import LEASE_REFRESH_SECONDS, REQUEUED

Failures = tuple[type[BaseException], ...]


def wait_reply(redis: Any, ledger: Any, key: str, rid: str, timeout: float, server: str, queue: str,
               failures: Failures) -> dict[str, Any]:  # fmt: skip
    """Block on the reply key in slices; between slices read the request's lease. Returns the
    JobResult as decoded JSON.

    A worker refreshes the lease every second while it works, so a lease that vanished with no
    answer means the worker died mid-request: the caller hears "outcome unknown" within about
    LEASE_SECONDS + 1 s instead of waiting out its whole timeout.
    """
    deadline = time.monotonic() + timeout
    holder: str | None = None
    lost: BaseException | None = None
    while (left := deadline - time.monotonic()) > 0:
        try:
            popped = redis.blpop([key], timeout=min(LEASE_REFRESH_SECONDS, left))
            lease = None if popped is not None else ledger.read_lease(rid)
        except failures as exc:
            # Redis restarting: keep trying until the deadline. A restarted Redis has no lease
            # yet, so forget the holder until the worker refreshes it (within a second).
            lost, holder = exc, None
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
            continue
        if popped is not None:
            return dict(json.loads(popped[1]))
        if lease is not None:
            holder = None if lease.startswith(REQUEUED) else lease
            continue
        if holder is not None:
            late = redis.lpop(key)  # the worker pushes the answer before it drops the lease
            if late is not None:
                return dict(json.loads(late))
            # A duplicate submitter's list is filled just after the lease is dropped; the stored
            # result went in with the drop, in one transaction: read it before calling the worker dead.
            stored = ledger.result(rid)
            if stored is not None:
                return stored
            raise OutcomeUnknown(
                f"the worker serving request {rid} on {holder} stopped without answering (killed or lost); "
                f"the call may have been placed on {holder}: check it before trying again (a worker started "
                f"later still settles a call it can adopt: `ifbus job {rid}`)",
                job_id=rid,
                server=holder,
            )
    why = f"Redis was lost while waiting ({lost})" if lost else f"no answer within {timeout:g} s"
    raise OutcomeUnknown(
        f"{why}; job {rid} on {queue} may still run: look it up with `ifbus job {rid}`",
        job_id=rid,
        server=server,
    )


def redis_failed(exc: BaseException, enqueued: bool, rid: str, queue: str, server: str) -> Exception:
    """What a Redis failure outside the wait's own retries means to the caller: before the job was
    queued nothing happened (unreachable, exit 4); after, the job may still run (outcome unknown, 6)."""
    if enqueued:
        return OutcomeUnknown(
            f"lost Redis while waiting ({exc}); job {rid} on {queue} may still run: look it up with `ifbus job {rid}`",
            job_id=rid,
            server=server,
        )
    return Unreachable(f"Redis failed before the job was queued: {exc}")
