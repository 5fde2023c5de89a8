"""The baselines: plain RQ with its non-forking SimpleWorker and the JSON serializer.

    python -m bench.plain_rq REDIS_URL QUEUE      # runs a worker (used by bench.delivery)

Jobs: `noop` (RQ's own cost) and `same_work` (what the bus's `test` job sends, without the bus).
"""

from __future__ import annotations

import sys


def noop() -> None:
    """The job: nothing, so only RQ's own cost is measured."""


_adapter = None


def same_work() -> str:
    """The network work of the bus's `test` job, without the bus: the same Kamailio adapter call and
    SIP OPTIONS probe, so the difference to the bus is its delivery machinery (ledger, health,
    lease, typed messages)."""
    global _adapter
    from bus.registry import open_registry
    from workers.adapters.kamailio import KamailioAdapter
    from workers.sip_check import with_sip_reachability

    if _adapter is None:
        _adapter = KamailioAdapter("peer", open_registry().get("peer"))
    return with_sip_reachability(_adapter, _adapter.test()).message


def main() -> None:
    from redis import Redis
    from rq import SimpleWorker
    from rq.serializers import JSONSerializer

    url, queue = sys.argv[1], sys.argv[2]
    SimpleWorker([queue], connection=Redis.from_url(url), serializer=JSONSerializer).work(logging_level="WARNING")


if __name__ == "__main__":
    main()
