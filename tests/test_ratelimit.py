"""Call-rate limits (bus/ratelimit.py): the store rules on both stores, the waiting loop, and the job
path's use of them (a slot before originate, 429 + Retry-After slows instead of opening the breaker,
`test`/`hangup` never counted). Redis tests use the private pytest-redis instance.

Peer in the job-path tests: tests/fake_twilio.py (Twilio's 2010-04-01 wire shapes, see its docstring).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from redis import Redis

from bus import keys
from bus.errors import InvalidInput
from bus.ratelimit import Limiter, Limits, MemoryLimiter, RateLimited, RedisLimiter, ring_window
from bus.server import ServerEntry
from tests.fake_twilio import ACCOUNT_SID, AUTH_TOKEN, FakeTwilio

FROM, TO = "+15005550006", "+14155550100"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------ limits


def test_limits_from_options_and_their_window() -> None:
    assert Limits.of("s", {}) == Limits(0.0, 0) and not Limits.of("s", {}).active
    two = Limits.of("s", {"cps": "2", "max_concurrent": "3"})
    assert (two.burst, two.window, two.describe()) == (2, 1.0, "2 calls/s, 3 calls in flight")
    assert (Limits(1.5).burst, round(Limits(1.5).window, 3)) == (2, 1.333)  # never 2 creates in 1.33 s
    assert (Limits(0.5).burst, Limits(0.5).window) == (1, 2.0)


@pytest.mark.parametrize("options", [{"cps": "fast"}, {"cps": "-1"}, {"cps": "nan"}, {"cps": "inf"},
                                     {"max_concurrent": "2.5"}, {"max_concurrent": "-3"}])  # fmt: skip
def test_bad_limits_are_bad_input_naming_the_server(options: dict[str, str]) -> None:
    with pytest.raises(InvalidInput, match=r"^edge1: option (cps|max_concurrent)="):
        Limits.of("edge1", options)


def test_class_defaults_are_shown_as_options() -> None:
    twilio = ServerEntry.build("twilio", {"account_sid": ACCOUNT_SID, "auth_token": AUTH_TOKEN})
    kam = ServerEntry.build("kamailio", {"token": "t"})
    assert (twilio.effective_options["cps"], twilio.effective_options["max_concurrent"]) == ("1", "0")
    assert Limits.of("kam", kam.effective_options).cps >= 10


def test_ring_window_is_the_vendors_own_ring_timeout() -> None:
    assert ring_window({"answer_timeout": "30"}) == 30.0
    assert ring_window({"originate_timeout": "45"}) == 45.0
    assert ring_window({"fr_inv_timer": "20"}) == 20.0
    assert ring_window({}) == 60.0


# ------------------------------------------------------------------ store rules, on both stores


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[MemoryLimiter | RedisLimiter]:
    if request.param == "memory":
        yield MemoryLimiter()
    else:
        yield RedisLimiter(Redis.from_url(request.getfixturevalue("redis_url")))


def test_cps_permits_start_their_window_when_the_server_answered(store) -> None:
    limits = Limits(cps=2)
    assert store.take("tw", "a", limits, 30).granted
    assert store.take("tw", "b", limits, 30).granted
    third = store.take("tw", "c", limits, 30)
    assert (third.granted, third.why, third.position) == (False, "rate", 0)
    assert third.wait > 29  # nobody said the first two were answered: held until their deadline
    store.settle("tw", "a", rate="sent", window=limits.window)
    again = store.take("tw", "c", limits, 30)
    assert not again.granted and 0.9 <= again.wait <= 1.0  # one window after the answer, no earlier
    store.settle("tw", "b", rate="unsent")  # nothing reached the server: freed at once
    assert store.take("tw", "c", limits, 30).granted


def test_waiters_are_served_in_arrival_order(store) -> None:
    limits = Limits(max_concurrent=1)
    assert store.take("tw", "first", limits, 30).granted
    assert store.take("tw", "w1", limits, 30).position == 0
    assert store.take("tw", "w2", limits, 30).position == 1
    store.settle("tw", "first", live="release")
    late = store.take("tw", "w2", limits, 30)  # asks first, but w1 is ahead
    assert (late.granted, late.why, late.position) == (False, "queue", 1)
    assert store.take("tw", "w1", limits, 30).granted
    store.settle("tw", "w1", live="release")
    assert store.take("tw", "w2", limits, 30).granted


def test_a_cancelled_waiter_leaves_the_queue(store) -> None:
    limits = Limits(max_concurrent=1)
    store.take("tw", "first", limits, 30)
    store.take("tw", "gives-up", limits, 30)
    store.take("tw", "next", limits, 30)
    store.cancel("tw", "gives-up")
    store.settle("tw", "first", live="release")
    assert store.take("tw", "next", limits, 30).granted


def test_accepted_calls_stay_counted_for_the_ring_window(store) -> None:
    limits = Limits(max_concurrent=1)
    store.take("tw", "a", limits, 30)
    store.settle("tw", "a", live="hold", ring=0.2)
    blocked = store.take("tw", "b", limits, 30)
    assert blocked.why == "concurrent" and 0.1 <= blocked.wait <= 0.2
    assert store.view("tw", limits)["in_flight"] == 1


def test_slow_pauses_every_grant(store) -> None:
    limits = Limits(cps=100)
    store.slow("tw", 5.0)
    paused = store.take("tw", "a", limits, 30)
    assert (paused.granted, paused.why) == (False, "paused") and 4.9 <= paused.wait <= 5.0
    assert store.view("tw", limits)["paused_s"] > 4.9
    assert store.take("other", "a", limits, 30).granted  # per server


def test_servers_do_not_share_permits(store) -> None:
    limits = Limits(cps=1)
    assert store.take("a", "x", limits, 30).granted
    assert store.take("b", "x", limits, 30).granted


def test_a_dead_waiter_gives_its_place_up() -> None:
    clock = Clock()
    store = MemoryLimiter(clock)
    limits = Limits(max_concurrent=1)
    store.take("tw", "first", limits, 30)
    store.take("tw", "dies", limits, 30)  # its worker stops asking
    store.take("tw", "alive", limits, 30)
    store.settle("tw", "first", live="release")
    assert store.take("tw", "alive", limits, 30).why == "queue"
    clock.now += 3.5  # past WAITER_LEASE; "alive" kept asking in between in real life
    assert store.take("tw", "alive", limits, 30).granted


def test_a_dead_waiter_gives_its_place_up_on_redis(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    store = RedisLimiter(redis)
    limits = Limits(max_concurrent=1)
    store.take("tw", "first", limits, 30)
    store.take("tw", "dies", limits, 30)
    store.take("tw", "alive", limits, 30)
    store.settle("tw", "first", live="release")
    redis.hset(keys.rate_keys("tw")[4], "dies", 0)  # its lease ran out long ago
    assert store.take("tw", "alive", limits, 30).granted


def test_redis_state_is_one_script_run_with_evalsha_and_expires(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    redis.config_resetstat()
    store = RedisLimiter(redis)
    for token in ("a", "b", "c"):
        store.take("tw", token, Limits(cps=2, max_concurrent=5), 30)
    stats = redis.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 3 and "cmdstat_eval" not in stats
    for key in keys.rate_keys("tw"):
        if redis.exists(key):
            assert 0 < redis.pttl(key) <= 2 * 3600 * 1000


# ------------------------------------------------------------------ the waiting loop


def test_acquire_waits_for_the_window_then_grants() -> None:
    limiter = Limiter(MemoryLimiter())
    options = {"cps": "20"}  # window 1 s, 20 permits
    slots = [limiter.acquire("s", options, f"req-{i}", time.monotonic() + 5, time.monotonic() + 5) for i in range(20)]
    for slot in slots:
        assert slot is not None
        slot.sent()
    started = time.monotonic()
    assert limiter.acquire("s", options, "req-late", time.monotonic() + 5, time.monotonic() + 5) is not None
    assert 0.95 <= time.monotonic() - started < 2.0


def test_acquire_gives_up_at_the_deadline_with_the_limit_named() -> None:
    store = MemoryLimiter()
    limiter = Limiter(store)
    assert limiter.acquire("tw", {"cps": "2"}, "req-1", time.monotonic() + 5, time.monotonic() + 60)
    assert limiter.acquire("tw", {"cps": "2"}, "req-2", time.monotonic() + 5, time.monotonic() + 60)
    with pytest.raises(RateLimited) as caught:
        limiter.acquire("tw", {"cps": "2"}, "req-3", time.monotonic() + 0.1, time.monotonic() + 60)
    assert caught.value.exit_code == 4
    assert caught.value.message.startswith("rate limit of tw: 2 calls/s; no slot before the caller's deadline")
    assert store.view("tw", Limits(cps=2))["waiting"] == 0  # it left the queue


def test_unlimited_server_costs_nothing() -> None:
    class Exploding(MemoryLimiter):
        def take(self, *args: object) -> None:  # type: ignore[override]
            raise AssertionError("no store call for a server without limits")

    assert Limiter(Exploding()).acquire("s", {"cps": "0", "max_concurrent": "0"}, "r", 0, 0) is None


def test_waiters_on_one_server_do_not_hold_another() -> None:
    limiter = Limiter(MemoryLimiter())
    far = time.monotonic() + 10
    busy = limiter.acquire("busy", {"max_concurrent": "1"}, "req-a", far, far)
    assert busy is not None
    waiting = threading.Thread(target=lambda: limiter.acquire("busy", {"max_concurrent": "1"}, "req-b", far, far))
    waiting.start()
    started = time.monotonic()
    assert limiter.acquire("idle", {"max_concurrent": "1"}, "req-c", far, far) is not None
    assert time.monotonic() - started < 0.5
    busy.done()
    waiting.join(5)
    assert not waiting.is_alive()


# ------------------------------------------------------------------ the job path (embedded mode, fake Twilio)


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with FakeTwilio() as server:
        yield server


def register(fake: FakeTwilio, **options: str) -> None:
    from bus.registry import open_registry

    opts = {"base_url": fake.base_url, "poll_interval": "0.01", "connect_timeout": "0.5", **options}
    open_registry().add("tw", ServerEntry.build("twilio", {"account_sid": ACCOUNT_SID, "auth_token": AUTH_TOKEN},
                                                options=opts))  # fmt: skip


def call(timeout: float = 10, **fields: str) -> dict:
    from workers.jobs import execute

    return execute({"op": "call", "server": "tw", "from": FROM, "to": TO, "timeout": timeout, **fields})


def test_a_call_without_a_slot_before_its_deadline_ends_with_exit_4(fake: FakeTwilio) -> None:
    register(fake, cps="1")
    assert call(until="accepted")["exit_code"] == 0
    result = call(timeout=0.8, until="accepted")
    assert (result["outcome"], result["exit_code"]) == ("overloaded", 4)
    assert result["message"].startswith("rate limit of tw: 1 calls/s")
    assert len(fake.of_kind("create")) == 1  # never sent, never silently dropped
    from workers.jobs import inline_context

    assert inline_context().health.get("tw").failures == 0  # the bus's limit is not the server's health


def test_429_with_retry_after_slows_the_bucket_instead_of_opening_the_breaker(fake: FakeTwilio) -> None:
    register(fake, cps="5", breaker_threshold="1")
    fake.inject("create", 429, 20429, "Too Many Requests", headers={"Retry-After": "1"})
    result = call()
    assert result["exit_code"] == 0, result
    creates = fake.of_kind("create")
    assert [r.response_status for r in creates] == [429, 201]
    from workers.jobs import inline_context

    health = inline_context().health.get("tw")
    assert (health.state, health.failures) == ("closed", 0)
    assert result["attempts"] == {"tw": 2}


def test_test_and_hangup_are_never_counted(fake: FakeTwilio) -> None:
    from workers.jobs import execute, inline_context

    register(fake, cps="1")
    placed = call()
    assert placed["exit_code"] == 0
    started = time.monotonic()
    assert execute({"op": "test", "server": "tw"})["exit_code"] == 0
    assert execute({"op": "hangup", "server": "tw", "call_id": placed["call_id"]})["exit_code"] == 0
    assert time.monotonic() - started < 0.5  # the only CPS permit is still held: neither waited for it
    limiter = inline_context().limiter
    assert limiter is not None and limiter.view("tw", {"cps": "1"})["sent_in_window"] == 1


def test_two_calls_at_1_cps_arrive_a_window_apart(fake: FakeTwilio) -> None:
    register(fake, cps="1")
    stamps: list[float] = []
    original = fake.handle

    def stamped(method: str, path: str, headers: dict, body: bytes):
        if method == "POST" and path.endswith("/Calls.json"):
            stamps.append(time.monotonic())
        return original(method, path, headers, body)

    fake.handle = stamped  # type: ignore[method-assign]
    results = []
    threads = [threading.Thread(target=lambda: results.append(call(until="accepted"))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert [r["exit_code"] for r in results] == [0, 0]
    assert len(stamps) == 2 and stamps[1] - stamps[0] >= 1.0
