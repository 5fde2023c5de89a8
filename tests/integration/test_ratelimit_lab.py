"""Call-rate limits across real `ifbus worker twilio` processes sharing one private Redis.

The peer is tests/fake_twilio.py (Twilio REST 2010-04-01 wire shapes from twilio/twilio-oai, see its
docstring) with a stamp taken on the peer when each request has been read and before it is answered.
The assertions are on those stamps, strictly: a window of one second is half-open, [t, t + 1), and a
create exactly 1.000 s after another is outside it; no slack is given that could hide a violation.
Scheduling jitter on a busy machine can only delay a stamp relative to when the limiter released
the next call — which only ever widens the gaps the assertions measure from the causal side (the
next create's grant comes after this create's answer, which comes after its stamp).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from redis import Redis
from rq import Queue, Worker

from bus.health import RedisHealth
from bus.models import CallRequest
from bus.registry import open_registry
from bus.server import ServerEntry
from tests.fake_twilio import ACCOUNT_SID, AUTH_TOKEN, FakeTwilio
from tests.http_fake import Recorded

pytestmark = pytest.mark.integration

FROM, TO = "+15005550006", "+14155550100"


class StampedTwilio(FakeTwilio):
    """FakeTwilio that also records, per call, when the peer saw its create and its settling answer."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.creates: list[float] = []
        self.settled: dict[str, float] = {}
        self.created: dict[str, float] = {}

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Recorded:
        seen = time.monotonic()  # the request is read; its answer has not been sent yet
        record = super().handle(method, path, headers, body)
        data = record.response_body
        with self._lock:
            if record.kind == "create" and record.response_status == 201:
                self.creates.append(seen)
                self.created[_sid(data)] = seen
            elif record.kind == "fetch" and b'"status": "in-progress"' in data:
                self.settled.setdefault(_sid(data), seen)  # the answer that ends the call's setup
        return record


def _sid(data: bytes) -> str:
    import json

    return json.loads(data)["sid"]


@pytest.fixture
def fake() -> Iterator[StampedTwilio]:
    with StampedTwilio() as server:
        yield server


def register(fake: FakeTwilio, **options: str) -> None:
    opts = {"base_url": fake.base_url, "poll_interval": "0.02", **options}
    entry = ServerEntry.build("twilio", {"account_sid": ACCOUNT_SID, "auth_token": AUTH_TOKEN}, options=opts)
    open_registry().add("tw", entry)


def place_concurrently(n: int, timeout: float = 90) -> list[dict]:
    """`n` callers at once, each with its own producer (as n services would), all in flight together."""
    from producer import Producer

    results: list[dict] = []
    gate = threading.Barrier(n)

    def one() -> None:
        producer = Producer()
        request = CallRequest(server="tw", timeout=timeout, **{"from": FROM, "to": TO})
        gate.wait()
        result = producer.submit(request)
        results.append(result.model_dump(mode="json"))  # type: ignore[union-attr]

    threads = [threading.Thread(target=one) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout + 10)
    return results


def test_cps_2_across_two_workers_never_puts_3_creates_in_one_second(
    start_worker, queue_mode: str, fake: StampedTwilio
) -> None:
    register(fake, cps="2")
    start_worker("twilio")
    start_worker("twilio")
    results = place_concurrently(10)
    assert sorted(r["exit_code"] for r in results) == [0] * 10, [r["message"] for r in results]
    assert len(fake.creates) == 10
    stamps = sorted(fake.creates)
    closest = min(stamps[i + 2] - stamps[i] for i in range(len(stamps) - 2))
    assert closest >= 1.0, f"3 creates within {closest:.3f} s: {[round(s - stamps[0], 3) for s in stamps]}"
    health = RedisHealth(Redis.from_url(queue_mode)).get("tw")
    assert (health.state, health.failures) == ("closed", 0)
    # Both workers served calls: the limit was shared between processes, not one worker doing everything.
    workers = Worker.all(queue=Queue("sip.twilio", connection=Redis.from_url(queue_mode)))
    assert sorted(w.successful_job_count > 0 for w in workers) == [True, True]


def test_max_concurrent_3_with_ringing_callees_never_has_4_in_flight(
    start_worker, queue_mode: str, fake: StampedTwilio
) -> None:
    fake.statuses = ["queued"] + ["ringing"] * 8 + ["in-progress"]  # each callee rings for ~8 polls
    register(fake, cps="50", max_concurrent="3")
    start_worker("twilio", concurrency=3)
    start_worker("twilio", concurrency=3)  # 6 jobs can run at once: only the limit keeps it to 3
    results = place_concurrently(8)
    assert sorted(r["exit_code"] for r in results) == [0] * 8, [r["message"] for r in results]
    assert len(fake.created) == 8 and set(fake.settled) == set(fake.created)
    # Sweep the peer's timeline; at equal times a create counts before a settle (never hides an overlap).
    events = sorted([(t, 0, +1) for t in fake.created.values()] + [(t, 1, -1) for t in fake.settled.values()])
    in_flight = peak = 0
    for _, _, step in events:
        in_flight += step
        peak = max(peak, in_flight)
    assert peak == 3  # never more; and exactly 3 proves the workers could and did push up to the limit
    health = RedisHealth(Redis.from_url(queue_mode)).get("tw")
    assert (health.state, health.failures) == ("closed", 0)
