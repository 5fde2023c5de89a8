"""The follower: one per worker process, it waits on every call this process placed (and adopted).

A click-to-call is seconds of ringing for a millisecond of work. The RQ job does the short part —
server choice, send claim, rate-limit slot, originate, CallRef in the ledger — and hands the accepted
`until=answered` call here (workers.jobs `_handoff`); the worker takes its next job at once. This
thread settles each call through workers.jobs (`finish_followed`: the after-acceptance rule stays in
one place) and delivers the one JobResult exactly as the job would have. Why a thread and not
asyncio: docs/inflight.md. In short, every adapter and transport is synchronous; one thread that runs
a timer wheel of batched polls (one `htable.dump` per Kamailio per period, whatever the number of
calls) gives a poll-based vendor thousands of calls per process with no second implementation of
any adapter, and vendors without a batched poll get one small helper thread per call running their
own `follow` (their event sessions already have a reader thread each).

While it owns calls the follower refreshes, per vendor type, its own liveness and every call's
lease in one Redis script per second. If it dies, its calls' leases run out and another process's
follower adopts them from the ledger (bus.ledger: atomically, one adopter per call) and follows them
from the server's own state (`Adapter.recover` / `poll_many`) — an accepted call is never sent again.

Backpressure: at `max_inflight` calls the worker stops taking jobs (`wait_for_room`). SIGTERM: the
worker stops taking jobs, `drain` keeps following until the calls settle or the drain timeout,
then gives the rest up for adoption at once.
"""

from __future__ import annotations

import os
import queue
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bus.errors import NotFound, OutcomeUnknown
from bus.ledger import LEASE_REFRESH_SECONDS, FollowRecord, RedisLedger
from bus.logging import get_logger
from workers.adapters.base import Adapter, Answer, Pending

log = get_logger("ifbus.follower")

MAX_INFLIGHT = 1000  # calls one process follows at most (IFBUS_MAX_INFLIGHT / `run_workers(max_inflight=…)`)
DRAIN_SECONDS = 30.0  # how long a stopping worker keeps following (IFBUS_DRAIN_TIMEOUT)
ADOPT_EVERY = 0.5  # seconds between two looks for orphaned calls
POLL_GRACE = 2.0  # a poll round that keeps failing this long settles its calls with the error
SWITCH_INTERVAL = 0.0005  # seconds: see _start
LATE_MARGIN = 0.5  # a polled call still ringing this long past its deadline is settled as outcome unknown


@dataclass(eq=False)
class _Call:
    record: FollowRecord
    adapter: Adapter
    pending: Pending
    done: Callable[[bool], None] | None
    failing_since: float | None = None
    outcome: Answer | BaseException | None = None  # settled, answer not yet delivered (Redis away)


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


class Follower:
    """Follows calls until they settle; see the module docstring."""

    def __init__(self, redis: Any, *, max_inflight: int | None = None, adopt: bool = True) -> None:
        from bus.health import RedisHealth
        from bus.ratelimit import Limiter, RedisLimiter
        from workers.jobs import Context

        self.ledger = RedisLedger(redis)
        self.context = Context(RedisHealth(redis), self.ledger)
        self.limiter = Limiter(RedisLimiter(redis))  # for the permits of calls it adopts
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.max_inflight = max_inflight or int(_env_float("IFBUS_MAX_INFLIGHT", MAX_INFLIGHT))
        self.adopting = adopt
        self.types: set[str] = set()  # vendor types whose orphans this process adopts
        self._calls: dict[str, _Call] = {}
        self._room = threading.Condition()
        self._reports: queue.SimpleQueue[tuple[_Call, Answer | BaseException]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_poll: dict[int, float] = {}
        self._next_beat = 0.0
        self._next_adopt = 0.0

    # ------------------------------------------------------------ what workers and jobs call

    def serve(self, types: list[str], adopt: bool = True) -> None:
        """Adopt orphaned calls of these vendor types (a worker's queues) from now on."""
        self.types.update(types)
        self.adopting = adopt
        self._start()

    def take(self, record: FollowRecord, adapter: Adapter, done: Callable[[bool], None] | None) -> None:
        """A job hands over a call its server just accepted; from here on this process answers its caller."""
        self.ledger.follow(record, self.owner)
        self._track(record, adapter, done, time.monotonic(), adopted=False)

    @property
    def inflight(self) -> int:
        return len(self._calls)

    def wait_for_room(self, timeout: float) -> bool:
        """True once fewer than `max_inflight` calls are followed (False if `timeout` passed first)."""
        with self._room:
            return self._room.wait_for(lambda: len(self._calls) < self.max_inflight, timeout)

    def drain(self, timeout: float | None = None) -> int:
        """Stop adopting; follow until every call settled or `timeout` (IFBUS_DRAIN_TIMEOUT) passed; give
        what is left up for adoption at once. Returns how many calls were given up."""
        self.adopting = False
        timeout = _env_float("IFBUS_DRAIN_TIMEOUT", DRAIN_SECONDS) if timeout is None else timeout
        if self._calls:
            log.info("follower.draining", calls=len(self._calls), timeout_s=timeout)
        with self._room:
            self._room.wait_for(lambda: not self._calls, timeout)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
        with self._room:
            left, self._calls = self._calls, {}
        by_type: dict[str, list[str]] = {}
        for call in left.values():
            by_type.setdefault(call.record.type, []).append(call.record.request_id)
        for type_, ids in by_type.items():
            try:
                self.ledger.release(type_, ids)
            except Exception as exc:  # their leases run out on their own: adoption only comes later
                log.warning("follower.release_failed", type=type_, calls=len(ids), error=type(exc).__name__)
        if left:
            log.warning("follower.left_for_adoption", calls=len(left))
        return len(left)

    # ------------------------------------------------------------ tracking

    def _track(self, record: FollowRecord, adapter: Adapter, done: Callable[[bool], None] | None,
               since: float, adopted: bool) -> None:  # fmt: skip
        deadline = time.monotonic() + (record.deadline_at - time.time())
        call = _Call(record, adapter, Pending(record.call_ref, since, deadline), done)
        with self._room:
            self._calls[record.request_id] = call
        if adapter.poll_interval is None:
            follow = adapter.recover if adopted else adapter.follow
            threading.Thread(target=self._follow_one, args=(call, follow), name="ifbus-follow", daemon=True).start()
        self._start()
        self._wake.set()

    def _follow_one(self, call: _Call, follow: Callable[[Any, float], Answer]) -> None:
        """A vendor without a batched poll: its own blocking follow, in a thread of its own."""
        try:
            outcome: Answer | BaseException = follow(call.pending.ref, call.pending.deadline)
        except Exception as exc:
            outcome = exc
        self._reports.put((call, outcome))
        self._wake.set()

    def _start(self) -> None:
        # The job thread is CPU-bound Python between its network waits; at CPython's default 5 ms GIL
        # switch interval every Redis or HTTP reply this thread waits on can cost it 5 ms more.
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="ifbus-follower", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------ the loop

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                wait = self._round()
            except Exception as exc:  # a bug must not stop every call of the process from settling
                log.error("follower.round_failed", error=f"{type(exc).__name__}: {exc}")
                wait = 0.1
            self._wake.wait(wait)
            self._wake.clear()

    def _round(self) -> float:
        """One pass: reports from helper threads, due polls, the heartbeat, adoption; returns how long
        to sleep until the next thing is due."""
        now = time.monotonic()
        while True:
            try:
                call, outcome = self._reports.get_nowait()
            except queue.Empty:
                break
            self._settle(call, outcome)
        due = now + 1.0
        groups: dict[int, list[_Call]] = {}
        for call in list(self._calls.values()):
            if call.adapter.poll_interval is not None and call.outcome is None:
                groups.setdefault(id(call.adapter), []).append(call)
        for key, calls in groups.items():
            at = self._next_poll.get(key, 0.0)
            if at <= now:
                self._poll(calls)
                interval = calls[0].adapter.poll_interval or 0.02
                at = max(now, at) + interval
                self._next_poll[key] = at if at > time.monotonic() else time.monotonic() + interval
                at = self._next_poll[key]
            due = min(due, at)
        for key in set(self._next_poll) - set(groups):
            del self._next_poll[key]
        self._deliver()
        if now >= self._next_beat:
            self._heartbeat()
            self._next_beat = now + LEASE_REFRESH_SECONDS
        due = min(due, self._next_beat)
        if self.adopting and self.types:
            if now >= self._next_adopt:
                self._adopt()
                self._deliver()
                self._next_adopt = now + ADOPT_EVERY
            due = min(due, self._next_adopt)
        return max(0.0, due - time.monotonic())

    def _poll(self, calls: list[_Call]) -> None:
        adapter = calls[0].adapter
        now = time.monotonic()
        try:
            verdicts = adapter.poll_many([c.pending for c in calls])
            if len(verdicts) != len(calls):
                raise RuntimeError(f"{adapter.name}: poll_many answered {len(verdicts)} for {len(calls)} calls")
        except Exception as exc:  # the server did not answer this round: try again, within a grace
            for call in calls:
                call.failing_since = call.failing_since or now
                if now - call.failing_since >= POLL_GRACE or now >= call.pending.deadline:
                    self._settle(call, exc)
            return
        for call, verdict in zip(calls, verdicts, strict=True):
            call.failing_since = None
            if verdict is None and now >= call.pending.deadline + LATE_MARGIN:
                verdict = OutcomeUnknown(
                    f"call setup on {adapter.name} still in progress when the caller's wait ended; it may still "
                    f"connect", server=adapter.name,
                )  # fmt: skip
            if verdict is not None:
                self._settle(call, verdict)

    def _settle(self, call: _Call, outcome: Answer | BaseException) -> None:
        """The call's outcome is known: its answer goes out with the round's others (`_deliver`)."""
        if self._calls.get(call.record.request_id) is call and call.outcome is None:
            call.outcome = outcome

    def _deliver(self) -> None:
        """Answer every caller whose call settled, in one transaction (workers.jobs applies the rule),
        then let their slots go. Redis away: the outcomes stay, a later round delivers them."""
        from workers.jobs import finish_followed

        ready = [c for c in list(self._calls.values()) if c.outcome is not None]
        if not ready:
            return
        try:
            results = finish_followed(self.context, [(c.record, c.outcome) for c in ready])  # type: ignore[misc]
        except Exception as exc:
            log.warning("follower.deliver_failed", calls=len(ready), error=type(exc).__name__)
            return
        for call, result in zip(ready, results, strict=True):
            if call.done is not None:
                call.done(result.get("outcome") == "ambiguous")
        with self._room:
            for call in ready:
                if self._calls.get(call.record.request_id) is call:
                    del self._calls[call.record.request_id]
            self._room.notify_all()

    def _heartbeat(self) -> None:
        """Per vendor type, one script: this follower is alive, and so is each of its calls' lease."""
        by_type: dict[str, list[tuple[str, str]]] = {t: [] for t in self.types}
        for call in list(self._calls.values()):
            by_type.setdefault(call.record.type, []).append((call.record.request_id, call.record.server))
        for type_, calls in by_type.items():
            try:
                lost = self.ledger.heartbeat(type_, self.owner, calls)
            except Exception as exc:  # a lost refresh only shortens the leases
                log.warning("follower.heartbeat_failed", type=type_, error=type(exc).__name__)
                continue
            for rid in lost:
                call = self._calls.get(rid)
                if call is not None and call.outcome is None:
                    log.warning("follower.call_lost", request_id=rid, reason="owned by another follower now")
                    with self._room:
                        self._calls.pop(rid, None)
                        self._room.notify_all()

    def _adopt(self) -> None:
        from bus.registry import open_registry
        from workers.pool import POOL

        room = self.max_inflight - len(self._calls)
        for type_ in sorted(self.types):
            if room <= 0:
                return
            try:
                records = self.ledger.adopt(type_, self.owner, room)
            except Exception as exc:
                log.warning("follower.adopt_failed", type=type_, error=type(exc).__name__)
                continue
            if not records:
                continue
            entries = open_registry().entries()
            for record in records:
                room -= 1
                since = time.monotonic() - max(0.0, time.time() - record.accepted_at)
                entry = entries.get(record.server)
                log.info("follower.adopted", request_id=record.request_id, server=record.server)
                if entry is None:
                    call = _Call(record, _Gone(record.server), Pending(record.call_ref, since, 0.0), None)
                    with self._room:
                        self._calls[record.request_id] = call
                    self._settle(call, NotFound(f"Not found: {record.server} (removed from the registry)"))
                    continue
                self._track(record, POOL.get(record.server, entry), self._slot_of(record, entry), since, adopted=True)

    def _slot_of(self, record: FollowRecord, entry: Any) -> Callable[[bool], None] | None:
        """The adopted call's place in its server's max_concurrent: this follower frees it when the call
        settles, as the dead one would have (else it stays held until the dead caller's deadline)."""
        if not record.permit:
            return None
        try:
            slot = self.limiter.resume(record.server, entry.effective_options, record.permit)
        except Exception as exc:  # bad limit options now: the permit expires on its own (the safe side)
            log.warning("follower.permit_unknown", request_id=record.request_id, error=type(exc).__name__)
            return None
        return slot.done if slot is not None else None


class _Gone(Adapter):
    """Stands for a server removed from the registry while one of its calls waited for adoption."""

    type = "gone"

    def test(self) -> Answer:
        raise NotFound(f"Not found: {self.name}")

    def originate(self, from_: str, to: str, extras: dict[str, str], deadline: float) -> Any:
        raise NotFound(f"Not found: {self.name}")

    def follow(self, ref: Any, deadline: float) -> Answer:
        raise NotFound(f"Not found: {self.name}")

    def hangup(self, call_id: str, ref: Any, extras: dict[str, str]) -> Answer:
        raise NotFound(f"Not found: {self.name}")

    def __init__(self, name: str) -> None:  # no registry entry to read
        self.name = name
        self.options = {}
        self.poll_interval = 0.0  # type: ignore[misc]  # never polled: settled at once


_process: tuple[int, Follower] | None = None
_process_lock = threading.Lock()


def process_follower(redis: Any) -> Follower:
    """This process's follower (one per process: a forked child gets its own)."""
    global _process
    with _process_lock:
        if _process is None or _process[0] != os.getpid():
            _process = (os.getpid(), Follower(redis))
        return _process[1]


def current() -> Follower | None:
    """The follower of this process, if a job or worker created one."""
    found = _process
    return found[1] if found is not None and found[0] == os.getpid() else None


__all__ = ["Follower", "current", "process_follower"]
