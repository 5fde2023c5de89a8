"""Names on Redis: one RQ queue per vendor type, and the per-request reply keys.

| queue           | served by                  |
|-----------------|----------------------------|
| `sip.<type>`    | `ifbus worker <type>`      |

Reply keys are `ifbus:reply:<request_id>`: a list the worker LPUSHes one result to and the caller
BLPOPs, so waiting costs no polling and no RQ result-stream round trips.
"""

from __future__ import annotations

from bus.vendors import vendor

JOB_FUNCTION = "workers.jobs.run"
REPLY_TTL_SECONDS = 300


def queue_name(type_: str) -> str:
    vendor(type_)
    return f"sip.{type_}"


def reply_key(request_id: str) -> str:
    return f"ifbus:reply:{request_id}"
