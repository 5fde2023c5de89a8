"""The process's follower (workers.follower) with scripted servers and a private Redis.

What is checked: a queue job hands an accepted `until=answered` call over and returns at once; the
follower delivers the one JobResult through the same after-acceptance rule as the job; a follower
that died has its calls adopted — followed from the server's state, never originated again — and
the caller keeps waiting meanwhile only while a live follower can adopt; backpressure; drain.
Tests wait on events (a reply key, a condition), never on fixed sleeps.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from redis import Redis

from bus.calls import CallRef
from bus.errors import CallRejected, Unreachable
from bus.health import RedisHealth
from bus.ledger import RedisLedger
from bus.registry import open_registry
from bus.server import ServerEntry
from workers import jobs
from workers.adapters.base import Answer, Pending
from workers.follower import Follower
from workers.pool import POOL
from workers.testing import ScriptedAdapter, install


class PolledAdapter(ScriptedAdapter):
    """A server whose calls are looked at in batches (as Kamailio's htable dump): each call answers
    `ring` seconds after acceptance with the outcome scripted for its tracking id (default: answered)."""

    poll_interval: ClassVar[float | None] = 0.01

    def __init__(self, name: str, entry: ServerEntry, ring: float = 0.2, **steps: Any) -> None:
        super().__init__(name, entry, **steps)
        self.ring = ring
        self.outcomes: dict[str, Any] = {}
        self.polls = 0
        self.placed = 0
        self.fail_polls = False

    def originate(self, from_: str, to: str, extras: dict[str, str], deadline: float) -> CallRef:
        self.calls.append(("originate", from_, to))
        self.placed += 1
        return CallRef(self.name, None, {"tracking_id": f"{self.name}-t{self.placed}"})

    def poll_many(self, calls: list[Pending]) -> list[Answer | BaseException | None]:
        self.polls += 1
        if self.fail_polls:
            raise Unreachable(f"{self.name}: connection refused")
        out: list[Answer | BaseException | None] = []
        for call in calls:
            track = call.ref.handle["tracking_id"]
            if time.monotonic() - call.since < self.ring:
                out.append(None)
            else:
                out.append(self.outcomes.get(track, Answer("up", call_id=f"sip-{track}", data={"sip_code": 200})))
        return out


@pytest.fixture(autouse=True)
def empty_pool() -> Iterator[None]:
    POOL.close_all()
    yield
    POOL.close_all()


@pytest.fixture
def redis(redis_url: str) -> Redis:
    return Redis.from_url(redis_url)


def polled(name: str, ring: float = 0.2) -> PolledAdapter:
    entry = ServerEntry.build("kamailio", {"token": "t"}, options={"attempts": "1", "breaker_threshold": "9"})
    open_registry().add(name, entry)
    adapter = PolledAdapter(name, open_registry().get(name), ring=ring)
    install(adapter)
    return adapter


def submit(redis: Redis, follower: Follower, server: str, rid: str, timeout: float = 20) -> dict[str, Any]:
    """What a queue worker does with one request (workers.jobs.run), with `follower` as the process's."""
    context = jobs.Context(RedisHealth(redis), RedisLedger(redis), follower=follower)
    payload = {"op": "call", "server": server, "from": "1001", "to": "2000", "request_id": rid,
               "reply_key": f"ifbus:reply:{rid}", "timeout": timeout}  # fmt: skip
    return jobs.execute(payload, mode="queue", context=context)


def answer_of(redis: Redis, rid: str, timeout: float = 4) -> dict[str, Any]:
    popped = redis.blpop([f"ifbus:reply:{rid}"], timeout=timeout)
    assert popped is not None, f"no answer for {rid}"
    return json.loads(popped[1])


def test_jobs_hand_calls_over_and_the_follower_answers_each_caller_once(redis: Redis) -> None:
    adapter = polled("kam", ring=0.3)
    follower = Follower(redis, max_inflight=100)
    started = time.monotonic()
    handed = [submit(redis, follower, "kam", f"req-call-{i:02d}") for i in range(50)]
    placing = time.monotonic() - started
    assert all(h == {"request_id": f"req-call-{i:02d}", "followed": True} for i, h in enumerate(handed)), handed[0]
    assert placing < 0.3 * 50 / 4  # the jobs did not wait for the ringing
    results = [answer_of(redis, f"req-call-{i:02d}") for i in range(50)]
    assert all(r["exit_code"] == 0 and r["sip_code"] == 200 and r["mode"] == "queue" for r in results)
    assert [r["call_id"] for r in results] == [f"sip-kam-t{i + 1}" for i in range(50)]
    assert adapter.placed == 50 and adapter.polls < 50 * 10  # batched: one look covers every call
    assert RedisLedger(redis).call_ref("sip-kam-t1") == CallRef("kam", "sip-kam-t1", {"tracking_id": "kam-t1"})
    assert redis.llen("ifbus:reply:req-call-00") == 0 and redis.get("ifbus:lease:req-call-00") is None
    assert redis.zcard("ifbus:inflight:kamailio") == 0 and not redis.keys("ifbus:followed:*")
    # The answers are delivered before the follower forgets the calls: wait for that, do not race it.
    assert wait_for_value(lambda: follower.inflight == 0, 5)
    follower.drain(0)


def test_the_follower_applies_the_after_acceptance_rule(redis: Redis) -> None:
    adapter = polled("kam", ring=0.0)
    adapter.outcomes["kam-t1"] = CallRejected(486, "Busy Here", leg="to")
    adapter.outcomes["kam-t2"] = RuntimeError("a bug in the poll")
    follower = Follower(redis)
    submit(redis, follower, "kam", "req-busy")
    submit(redis, follower, "kam", "req-buggy")
    busy, bug = answer_of(redis, "req-busy"), answer_of(redis, "req-buggy")
    assert (busy["exit_code"], busy["sip_code"], busy["server"]) == (5, 486, "kam")
    assert (bug["exit_code"], bug["outcome"]) == (6, "ambiguous")
    assert "kam accepted the call (kam-t2) but following it failed" in bug["message"]
    assert bug["data"]["tracking_id"] == "kam-t2"
    adapter.outcomes.clear()
    adapter.fail_polls = True  # the server stops answering: retried within the grace, then unknown
    submit(redis, follower, "kam", "req-down")
    down = answer_of(redis, "req-down")
    assert down["outcome"] == "ambiguous" and "connection refused" in down["message"]
    assert [c[0] for c in adapter.calls] == ["originate"] * 3
    follower.drain(0)


def test_a_dead_followers_calls_are_adopted_and_followed_never_placed_again(redis: Redis) -> None:
    adapter = polled("kam", ring=60)  # rings until the test lets it answer
    dead = Follower(redis)
    for i in range(5):
        submit(redis, dead, "kam", f"req-orphan-{i}")
    assert dead.inflight == 5
    dead._stop.set()  # its thread stops as a killed process would: no heartbeat, no answer
    dead._wake.set()
    dead._thread.join(5)
    ledger = RedisLedger(redis)
    assert ledger.read_lease("req-orphan-0") == "kam"
    # Nobody alive to adopt: once the lease runs out the caller hears at once that the worker stopped.
    assert wait_for_value(lambda: ledger.read_lease("req-orphan-0") is None, 6)

    adopter = Follower(redis)
    adopter.serve(["kamailio"])
    assert wait_for_value(lambda: adopter.inflight == 5, 5)
    assert ledger.read_lease("req-orphan-0") == "kam"  # held again, by the adopter
    adapter.ring = 0
    results = [answer_of(redis, f"req-orphan-{i}") for i in range(5)]
    assert all(r["exit_code"] == 0 and r["sip_code"] == 200 for r in results)
    assert adapter.placed == 5 and [c[0] for c in adapter.calls] == ["originate"] * 5
    adopter.drain(0)


def test_a_caller_keeps_waiting_while_a_live_follower_can_adopt(redis: Redis) -> None:
    polled("kam", ring=60)
    alive = Follower(redis)
    alive.serve(["kamailio"], adopt=False)  # alive (heartbeating) but not adopting yet
    dead = Follower(redis)
    submit(redis, dead, "kam", "req-waiting")
    dead._stop.set()
    dead._wake.set()
    dead._thread.join(5)
    redis.delete("ifbus:lease:req-waiting")  # as if its lease had run out
    seconds, micros = redis.time()
    redis.zadd("ifbus:inflight:kamailio", {"req-waiting": seconds * 1000 + micros // 1000 - 100})  # orphaned
    assert RedisLedger(redis).read_lease("req-waiting") == "kam"  # an adoption is coming: keep waiting
    alive.adopting = True
    assert wait_for_value(lambda: alive.inflight == 1, 5)
    alive.drain(0)


def test_backpressure_and_drain_give_ringing_calls_up_for_adoption(redis: Redis) -> None:
    adapter = polled("kam", ring=60)
    follower = Follower(redis, max_inflight=2)
    submit(redis, follower, "kam", "req-aaaa")
    assert follower.wait_for_room(0.01)
    submit(redis, follower, "kam", "req-bbbb")
    assert not follower.wait_for_room(0.05)  # a worker stops taking jobs here
    room = threading.Event()
    threading.Thread(target=lambda: follower.wait_for_room(10) and room.set(), daemon=True).start()
    adapter.outcomes["kam-t1"] = CallRejected(480, "Temporarily Unavailable")
    adapter.ring = 0
    assert answer_of(redis, "req-aaaa")["sip_code"] == 480
    assert answer_of(redis, "req-bbbb")["sip_code"] == 200
    assert room.wait(5)
    adapter.ring = 60
    submit(redis, follower, "kam", "req-cccc")
    submit(redis, follower, "kam", "req-dddd")
    assert follower.drain(0.2) == 2  # still ringing at the drain timeout: left for adoption at once
    adopter = Follower(redis)
    adopter.serve(["kamailio"])
    assert wait_for_value(lambda: adopter.inflight == 2, 2)  # no lease wait: released
    adapter.ring = 0
    assert answer_of(redis, "req-cccc")["exit_code"] == 0 and answer_of(redis, "req-dddd")["exit_code"] == 0
    assert adapter.placed == 4
    adopter.drain(0)


def test_an_adapter_without_batched_poll_is_followed_in_a_thread_of_its_own(redis: Redis) -> None:
    entry = ServerEntry.build("kamailio", {"token": "t"}, options={"attempts": "1"})
    open_registry().add("ev", entry)
    gate = threading.Event()

    class Evented(ScriptedAdapter):
        def follow(self, ref: CallRef, deadline: float) -> Answer:
            gate.wait(10)
            return Answer("up", call_id="ev-1", data={"sip_code": 200})

    adapter = Evented("ev", open_registry().get("ev"), originate=[CallRef("ev", "ev-1", {})])
    install(adapter)
    follower = Follower(redis)
    assert submit(redis, follower, "ev", "req-evented")["followed"]
    gate.set()
    assert answer_of(redis, "req-evented")["call_id"] == "ev-1"
    follower.drain(0)


def test_until_accepted_and_embedded_mode_are_unchanged(redis: Redis) -> None:
    adapter = polled("kam")
    adapter.script["follow"] = [Answer("up", call_id="inline-1", data={"sip_code": 200})]
    inline = jobs.execute({"op": "call", "server": "kam", "from": "1001", "to": "2000"})
    assert inline["call_id"] == "inline-1" and inline["mode"] == "inline"  # followed in the job
    follower = Follower(redis)
    context = jobs.Context(RedisHealth(redis), RedisLedger(redis), follower=follower)
    payload = {"op": "call", "server": "kam", "from": "1", "to": "2", "until": "accepted",
               "request_id": "req-accepted", "reply_key": "ifbus:reply:req-accepted"}  # fmt: skip
    accepted = jobs.execute(payload, "queue", context)
    assert accepted["exit_code"] == 0 and follower.inflight == 0


def wait_for_value(probe: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return True
        time.sleep(0.02)
    return bool(probe())


def test_a_failed_handoff_leaves_the_call_to_its_job(redis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    adapter = polled("kam")
    adapter.script["follow"] = [Answer("up", call_id="in-job-1", data={"sip_code": 200})]
    follower = Follower(redis)

    def refused(*args: Any) -> None:
        raise RedisConnectionError("Redis went away")

    monkeypatch.setattr(follower.ledger, "follow", refused)
    done = submit(redis, follower, "kam", "req-handoff-failed")
    assert done["call_id"] == "in-job-1" and done["exit_code"] == 0  # followed in the job, answered once
    assert follower.inflight == 0 and adapter.placed == 1
    assert json.loads(redis.lpop("ifbus:reply:req-handoff-failed"))["call_id"] == "in-job-1"


def test_an_adopted_calls_max_concurrent_permit_is_settled_by_the_adopter(redis: Redis) -> None:
    """The dead worker's slot (bus.ratelimit) travels in the follow record: the adopter frees it when
    the call is answered, and holds it for the server's ring window when the outcome is unknown —
    instead of leaving it held until the dead caller's deadline (a server slowed for nothing) or
    letting it lapse then while the call may still ring (the limit overrun)."""
    from bus import keys
    from bus.ratelimit import Limiter, RedisLimiter

    entry = ServerEntry.build("kamailio", {"token": "t"}, options={"attempts": "1", "max_concurrent": "5",
                                                                   "fr_inv_timer": "40"})  # fmt: skip
    open_registry().add("kam", entry)
    adapter = PolledAdapter("kam", open_registry().get("kam"), ring=60)
    install(adapter)
    live = keys.rate_keys("kam")[2]
    dead = Follower(redis)
    context = jobs.Context(RedisHealth(redis), RedisLedger(redis), limiter=Limiter(RedisLimiter(redis)), follower=dead)
    for rid in ("req-permit-up", "req-permit-lost"):
        payload = {"op": "call", "server": "kam", "from": "1001", "to": "2000", "request_id": rid,
                   "reply_key": f"ifbus:reply:{rid}", "timeout": 30}  # fmt: skip
        assert jobs.execute(payload, mode="queue", context=context)["followed"]
    held = {token.decode(): score for token, score in redis.zrange(live, 0, -1, withscores=True)}
    assert len(held) == 2 and all(token.startswith("req-permit-") for token in held)
    dead._stop.set()
    dead._wake.set()
    dead._thread.join(5)  # type: ignore[union-attr]
    ledger = RedisLedger(redis)
    assert wait_for_value(lambda: ledger.read_lease("req-permit-up") is None, 6)

    adapter.outcomes["kam-t2"] = RuntimeError("the server lost track of it")  # the second call: outcome unknown
    adopter = Follower(redis)
    adopter.serve(["kamailio"])
    assert wait_for_value(lambda: adopter.inflight == 2, 5)
    adapter.ring = 0
    up, lost = answer_of(redis, "req-permit-up"), answer_of(redis, "req-permit-lost")
    assert (up["exit_code"], lost["exit_code"]) == (0, 6)
    def settled() -> bool:
        """The answered call's permit freed; the unknown one's held for the ring window (fr_inv_timer,
        40 s from its settling), no longer until the dead caller's deadline (~30 s from the submit).
        The adopter settles the two one after the other: wait for both, do not race it."""
        seconds, micros = redis.time()
        now_ms = seconds * 1000 + micros / 1000
        left = {token.decode(): expiry - now_ms for token, expiry in redis.zrange(live, 0, -1, withscores=True)}
        lost = [ms for token, ms in left.items() if token.startswith("req-permit-lost:")]
        return len(left) == 1 and len(lost) == 1 and 35_000 < lost[0] <= 40_000

    assert wait_for_value(settled, 5), (held, redis.zrange(live, 0, -1, withscores=True))
    adopter.drain(0)
