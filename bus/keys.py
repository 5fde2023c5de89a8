"""Every name the bus uses on Redis, in one place (as arq keeps its keys in one `constants` module).

| key / name                    | type   | written by | expires        | what for                                    |
|-------------------------------|--------|------------|----------------|---------------------------------------------|
| `sip.<type>` (RQ queue)       | RQ     | producer   | RQ's own       | jobs for `ifbus worker <type>`              |
| `ifbus:reply:<request_id>`    | list   | worker     | REPLY_TTL      | the one JobResult a caller BLPOPs           |
| `ifbus:reply:<request_id>:<12 hex>` | list | worker | REPLY_TTL     | a duplicate submitter's own reply list      |
| `ifbus:request:<request_id>`  | string | producer   | DEDUP          | a re-submitted request is not re-queued     |
| `ifbus:result:<request_id>`   | string | worker     | DEDUP          | the final JobResult, for late waiters       |
| `ifbus:waiters:<request_id>`  | set    | producer   | DEDUP          | reply keys of duplicate submitters          |
| `ifbus:sent:<request_id>`     | string | worker     | DEDUP          | where an originate went (never twice)       |
| `ifbus:lease:<request_id>`    | string | worker     | LEASE, renewed | a live worker holds the request             |
| `ifbus:call:<call id>`        | string | worker     | CALL           | the CallRef JSON: who carries the call      |
| `ifbus:calls:<server>`        | zset   | worker     | CALL           | names of the calls placed there (score: time)|
| `ifbus:followed:<request_id>` | string | follower   | DEDUP          | a followed call (ledger.FollowRecord)      |
| `ifbus:inflight:<type>`       | zset   | follower   | none           | followed ids (score: owner's expiry, ms)    |
| `ifbus:inflight:<type>:owner` | hash   | follower   | none           | request id → the follower that owns it     |
| `ifbus:followers:<type>`      | zset   | follower   | 1 h idle       | live followers (score: expiry, ms)          |
| `ifbus:health:<server>`       | hash   | worker     | none           | the server's breaker                        |
| `ifbus:health:<server>:trial` | string | worker     | cool-down      | one half-open trial at a time               |
| `ifbus:probe:<server>`        | string | prober     | probe interval | one probe per server per period             |
| `ifbus:rate:<server>`         | hash   | worker     | 2 h idle       | limiter: waiter sequence, paused_until      |
| `ifbus:rate:<server>:sent`    | zset   | worker     | 2 h idle       | originates in the CPS window (score: expiry)|
| `ifbus:rate:<server>:live`    | zset   | worker     | 2 h idle       | calls in flight (score: lease expiry)       |
| `ifbus:rate:<server>:queue`   | zset   | worker     | 2 h idle       | calls waiting for a slot, in arrival order  |
| `ifbus:rate:<server>:waiting` | hash   | worker     | 2 h idle       | each waiter's lease (a dead one is skipped) |
| `ifbus:requests`              | list   | any producer | none         | public JSON requests (docs/producers.md)    |
| `ifbus:requests:processing:<ingress>` | list | ingress | none        | requests an ingress took, not yet done      |
| `ifbus:requests:dead`         | list   | ingress    | capped length  | unanswerable requests, with the reason      |
| `ifbus:ingresses`             | set    | ingress    | none           | ingress ids that own a processing list      |
| `ifbus:ingress:<ingress>`     | string | ingress    | INGRESS_TTL, renewed | that ingress is alive                 |
| `ifbus:registry`              | hash   | add/remove | none           | fleet registry (IFBUS_REGISTRY=redis), sealed |
| `ifbus:registry:version`      | string | add/remove | none           | bumped by each change: re-read the hash |
| `rq:queue:sip.<type>`         | list   | RQ         | none           | RQ's job list: KEDA and `status` measure it |
| `rq:job:<request_id>`         | hash   | RQ, rqwire | RQ's own       | RQ's job record (rqwire: the light submit)  |
| `rq:queues`                   | set    | RQ, rqwire | none           | every queue's `rq:queue:` key               |
| `rq:workers:sip.<type>`       | set    | RQ         | RQ's own       | workers listening on a queue ("served")     |

Durations (seconds) live in bus.ledger / bus.health beside the rules that need them.
"""

from __future__ import annotations

PREFIX = "ifbus:"
QUEUE_PREFIX = "sip."
REPLY_PREFIX = PREFIX + "reply:"
REPLY_TTL_SECONDS = 300


def queue(type_: str) -> str:
    return QUEUE_PREFIX + type_


def queue_type(name: str) -> str:
    """The vendor type a queue name serves (`sip.kamailio` → `kamailio`)."""
    return name.removeprefix(QUEUE_PREFIX)


def reply(request_id: str) -> str:
    return REPLY_PREFIX + request_id


def waiter_reply(request_id: str, token: str) -> str:
    """A duplicate submitter's own reply list: `ifbus:reply:<request_id>:<12 hex>`."""
    return f"{reply(request_id)}:{token}"


def is_waiter_reply(request_id: str, key: str) -> bool:
    """Whether `key` has that form for this request: the only keys a result is ever pushed to besides
    `reply(request_id)`, whatever else someone with Redis access put in the waiters set."""
    token = key.removeprefix(reply(request_id) + ":")
    return token != key and len(token) == 12 and all(c in "0123456789abcdef" for c in token)


def request(request_id: str) -> str:
    return f"{PREFIX}request:{request_id}"


def result(request_id: str) -> str:
    return f"{PREFIX}result:{request_id}"


def waiters(request_id: str) -> str:
    return f"{PREFIX}waiters:{request_id}"


def sent(request_id: str) -> str:
    return f"{PREFIX}sent:{request_id}"


def lease(request_id: str) -> str:
    return f"{PREFIX}lease:{request_id}"


def call(call_id: str) -> str:
    return f"{PREFIX}call:{call_id}"


def calls(server: str) -> str:
    """The recent calls the bus placed on `server` (`ifbus calls sip NAME`)."""
    return f"{PREFIX}calls:{server}"


def followed(request_id: str) -> str:
    """A call handed from its job to a follower, with what is needed to answer its caller."""
    return f"{PREFIX}followed:{request_id}"


def inflight(type_: str) -> str:
    return f"{PREFIX}inflight:{type_}"


def inflight_owner(type_: str) -> str:
    return inflight(type_) + ":owner"


def followers(type_: str) -> str:
    return f"{PREFIX}followers:{type_}"


def health(server: str) -> str:
    return f"{PREFIX}health:{server}"


def health_trial(server: str) -> str:
    return health(server) + ":trial"


def probe(server: str) -> str:
    return f"{PREFIX}probe:{server}"


def rate(server: str) -> str:
    return f"{PREFIX}rate:{server}"


def rate_keys(server: str) -> tuple[str, str, str, str, str]:
    """The limiter's keys for one server, in the order bus.ratelimit's script takes them."""
    base = rate(server)
    return base, base + ":sent", base + ":live", base + ":queue", base + ":waiting"


# The public request list (the wire contract in docs/producers.md: stable) and the ingress's own keys.
REQUESTS = PREFIX + "requests"
REQUESTS_DEAD = REQUESTS + ":dead"
INGRESSES = PREFIX + "ingresses"


def requests_processing(ingress_id: str) -> str:
    return f"{REQUESTS}:processing:{ingress_id}"


def ingress(ingress_id: str) -> str:
    return f"{PREFIX}ingress:{ingress_id}"


# The fleet's registry (bus.registry_redis).
REGISTRY = PREFIX + "registry"
REGISTRY_VERSION = REGISTRY + ":version"
# RQ's own key names, which bus.rqwire writes without importing rq (tests/test_light_submit.py pins
# them to rq's constants); RQ_KEY_PREFIX would move them, and then only RQ itself writes (rqwire.usable).
# A queue's job list (rq.Queue.redis_queue_namespace_prefix) is KEDA's `listName`.
RQ_QUEUE_PREFIX = "rq:queue:"
RQ_JOB_PREFIX = "rq:job:"  # rq.job.Job.redis_job_namespace_prefix
RQ_QUEUES = "rq:queues"  # rq.queue.Queue.redis_queues_keys
RQ_WORKERS_PREFIX = "rq:workers:"  # rq.worker_registration.WORKERS_BY_QUEUE_KEY without its %s


def rq_queue(type_: str) -> str:
    """The Redis list RQ keeps a vendor queue's waiting job ids in (`rq:queue:sip.kamailio`)."""
    return RQ_QUEUE_PREFIX + queue(type_)


def rq_job(job_id: str) -> str:
    """RQ's hash for one job (`rq:job:<request_id>`: the bus's job id is the request id)."""
    return RQ_JOB_PREFIX + job_id


def rq_workers(queue_name: str) -> str:
    """RQ's set of the workers listening on a queue (`rq:workers:sip.kamailio`)."""
    return RQ_WORKERS_PREFIX + queue_name
