"""The baseline: plain RQ with its non-forking SimpleWorker and a no-op job, JSON serializer.

python -m bench.plain_rq REDIS_URL QUEUE      # runs a worker (used by bench.delivery)
"""

from __future__ import annotations

import sys


def noop() -> None:
    """The job: nothing, so only RQ's own cost is measured."""


def main() -> None:
    from redis import Redis
    from rq import SimpleWorker
    from rq.serializers import JSONSerializer

    url, queue = sys.argv[1], sys.argv[2]
    SimpleWorker([queue], connection=Redis.from_url(url), serializer=JSONSerializer).work(logging_level="WARNING")


if __name__ == "__main__":
    main()
