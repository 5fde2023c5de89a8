"""The CLI's queue-mode submit without pydantic, pydantic-settings, redis-py, rq or structlog.

Why: `ifbus test sip NAME` runs in shell loops and monitoring checks, and the full producer
(producer.api) costs ~25x a bare `python -c pass` in imports alone (issue 16; bench/startup.py). The
worker validates every job with bus.models anyway, so here the request is checked with the same rule
functions the models wrap (bus.validate, bus.sip.check_call_id), written as the JSON the models dump,
queued as RQ's record (bus.rqwire) over a small client (bus.resp), and its answer awaited by the
loop producer.api uses too (producer.waiting). Keys come from bus.keys, the dedupe claim from
bus.ledger.

It takes only the plain case and says None for everything else, before anything is written, so the
full path (which words every error) handles it from the start: no IFBUS_REDIS_URL (auto mode's probe
of the default Redis, embedded mode), IFBUS_MODE other than auto/queue, an IFBUS_TIMEOUT it does not
read as a plain number in range, a fleet registry, --request-id (duplicates and joins), a URL form
redis-py alone speaks (TLS, Sentinel, @file, query options), invalid input, a Redis that does not
answer, or a queue no worker serves. tests/test_light_submit.py holds both paths to the same job.
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Any

from bus import keys, rqwire
from bus.errors import InvalidInput
from bus.ledger import RedisLedger
from bus.paths import env, redis_url
from bus.redis_conn import DEFAULT_PROBE_SECONDS
from bus.validate import DEFAULT_TIMEOUT, MAX_TIMEOUT, SCHEMA_VERSION, check_key, check_name, check_value
from producer.waiting import redis_failed, wait_reply

UNTIL = ("answered", "accepted")


def submit(op: str, fields: dict[str, Any], timeout: float | None, no_wait: bool,
           request_id: str | None) -> dict[str, Any] | str | None:  # fmt: skip
    """Queue the request and return its JobResult as JSON (or its id with `no_wait`); None when the
    full path should take it. Raises NotFound for an unknown server and, once the job is claimed,
    Unreachable / OutcomeUnknown as producer.api does."""
    if request_id is not None or not rqwire.usable() or env("mode") not in (None, "auto", "queue"):
        return None
    url, wait = redis_url(), timeout or _env_timeout()
    if url is None or wait is None or env("registry") not in (None, "file"):
        return None
    from bus import resp

    where = resp.address(url)
    rid = uuid.uuid4().hex
    payload = request_payload(op, fields, rid, wait, None if no_wait else keys.reply(rid))
    if where is None or payload is None:
        return None
    from bus.queues import queue_name
    from bus.registry import open_registry

    server = payload["server"]
    queue = queue_name(open_registry().get(server).type)  # NotFound, before anything is queued
    client = resp.Client(where, min(DEFAULT_PROBE_SECONDS, wait))
    enqueued = False
    try:
        try:
            if not client.ping() or not rqwire.served(client, queue):
                return None
        except OSError:
            return None
        ledger = RedisLedger(client)
        try:
            if not ledger.claim_request(rid):
                return None
            rqwire.enqueue(client, queue, payload, wait)
            enqueued = True
            if no_wait:
                return rid
            return wait_reply(client, ledger, keys.reply(rid), rid, wait, server, queue, (OSError,))
        except OSError as exc:
            raise redis_failed(exc, enqueued, rid, queue, server) from None
    finally:
        client.close()


def _env_timeout() -> float | None:
    """IFBUS_TIMEOUT when it is a plain number in (0, MAX_TIMEOUT]; None leaves anything else (and
    its error message) to bus.settings."""
    text = env("timeout")
    if text is None:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        return None
    plain = text.replace(".", "", 1).isdigit()
    return value if plain and math.isfinite(value) and 0 < value <= MAX_TIMEOUT else None


def request_payload(op: str, fields: dict[str, Any], request_id: str, timeout: float,
                    reply_key: str | None) -> dict[str, Any] | None:  # fmt: skip
    """The request as `bus.models` dumps it (`model_dump(mode="json", by_alias=True)`, stamped with the
    submission time as bus.routing does), or None when a model would refuse it: the same rule
    functions decide, and the full path then says why."""
    try:
        body = _op_fields(op, fields)
        check_name(fields["server"])
    except (InvalidInput, KeyError, TypeError):
        return None
    if not 0 < timeout <= MAX_TIMEOUT:
        return None
    routing = {"submitted_at": time.time(), "tried": [], "attempts": {}, "errors": {}, "last_outcome": None}
    return {"schema_version": SCHEMA_VERSION, "request_id": request_id, "server": fields["server"],
            "reply_key": reply_key, "timeout": float(timeout), "routing": routing, "op": op, **body}  # fmt: skip


def _op_fields(op: str, fields: dict[str, Any]) -> dict[str, Any]:
    extras = fields.get("extras", {})
    for key, value in extras.items():
        check_key(key)
        check_value("value", value)
    if op == "test" and set(fields) == {"server"}:
        return {}
    if op == "call" and set(fields) == {"server", "from", "to", "until", "extras"} and fields["until"] in UNTIL:
        return {"from": check_value("value", fields["from"]), "to": check_value("value", fields["to"]),
                "until": fields["until"], "extras": dict(extras)}  # fmt: skip
    if op == "hangup" and set(fields) == {"server", "call_id", "extras"}:
        from bus.sip.uri import check_call_id

        return {"call_id": check_call_id(fields["call_id"]), "extras": dict(extras)}
    raise InvalidInput(f"not a plain {op} request")
