"""Issue 15's two kill -9 scenarios, once, for every lab server whose adapter can `recover` a call.

Why one home: Asterisk and FreeSWITCH are asked the same thing — a worker killed with calls ringing, then
adoption by another worker from the ledger — and only their words differ (the dialled target, the call id's
shape, the state word recover reports for a ringing channel, how a SIPp party is dialled). Each lab test
module describes its server in an `AdoptionLab` and calls these; netns_lab does the plumbing (Redis, the
workers, the kill).

Timing (none of it is waited on as a sleep; it only sizes the parties' ring times): the lease of a killed
worker's calls runs out LEASE_SECONDS = 3 s after its last refresh (at most 1 s before the kill), and
adoption then looks every 0.5 s. A party that rings RING_PAST_ADOPTION s is still ringing when the adopter
looks, and so is one the server refuses only at REFUSE_AFTER s: the adopter follows both to their end. The
2 s party may answer just before or just after the look. When the second worker starts only once the
callers gave up (about 3 s after the kill, plus its own start-up), a party that rings
RING_PAST_LATE_ADOPTION s is still ringing when it looks.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests import netns_lab

# tests/sipp/ring2_answer_uas.xml: 180, 2 s of ringing, then 200 — the adopter looks while it rings.
RING_THEN_ANSWER = netns_lab.SIPP / "ring2_answer_uas.xml"
# tests/sipp/ring_uas.xml: 180 and then nothing, until the server CANCELs at its ring timeout.
RING_FOREVER = netns_lab.SIPP / "ring_uas.xml"
RING_PAST_ADOPTION = 6
RING_PAST_LATE_ADOPTION = 9
REFUSE_AFTER = 10


@dataclass(frozen=True)
class AdoptionLab:
    """One lab server in the words the scenarios need."""

    worker: str  # the `ifbus worker` type
    label: str  # for the printed figures
    server: str  # the registry name the scenarios add
    add: tuple[str, ...]  # `ifbus add sip <server>` arguments; the ring timeout must be REFUSE_AFTER
    to: str  # the `to=` every call dials
    call_id: re.Pattern[str]
    ringing: str  # the state recover reports for a channel still ringing when it looks
    party: Callable[[Path, str, Path], netns_lab.Party]  # (work, name, SIPp scenario) → a party to dial


def _add_server(lab: netns_lab.LabCli, vendor: AdoptionLab) -> None:
    code, _, err = lab.ifbus("add", "sip", vendor.server, *vendor.add, "--replace")
    assert code == 0, err


def _same_as_stored(adoption: netns_lab.Adoption, caller: netns_lab.Caller) -> None:
    """What the caller printed is what the bus stored for its request (`ifbus job`): one result."""
    stored = adoption.settled(caller.request_id, 5.0)
    assert (stored["message"], stored["call_id"], stored["sip_code"]) == (
        caller.result["message"], caller.result["call_id"], caller.result["sip_code"]
    ), (stored, caller.result)  # fmt: skip


def _hang_up(lab: netns_lab.LabCli, vendor: AdoptionLab, call_id: str) -> None:
    code, answer, err = lab.ifbus("hangup", "sip", vendor.server, f"call_id={call_id}")
    assert code == 0 and answer["message"] == f"Call {call_id} ended on {vendor.server}", err


def every_caller_gets_the_real_outcome(lab: netns_lab.LabCli, vendor: AdoptionLab, work: Path) -> None:
    """Seven calls through `ifbus worker <type>`: three to a party that rings 2 s and answers, two to one
    that rings RING_PAST_ADOPTION s and answers, two to one that rings until the server gives up at
    REFUSE_AFTER s. Once all seven ring at their parties and are in the worker's follower, kill -9 it and
    start another worker.

    Every caller gets the real final outcome from the adopting worker (the same one `ifbus job` shows):
    answered (data `recovered`, with the state recover saw: ringing for the 6 s party, which answered
    while the adopter followed it) for five, SIP 480 for two. Each party saw exactly one INVITE per call
    (nothing placed twice), and the answered calls are real channels: hanging them up sends each its BYE."""
    slow = vendor.party(work, "ring2", RING_THEN_ANSWER)
    later = vendor.party(work, "ring6", netns_lab.ring_then_answer(work, RING_PAST_ADOPTION))
    ring = vendor.party(work, "ring", RING_FOREVER)
    try:
        _add_server(lab, vendor)
        args = (f"to={vendor.to}", "--timeout", "40")
        calls = {f"{vendor.worker}-kill9-answer2-{i}": [vendor.server, f"from={slow.dial}", *args] for i in range(3)}
        calls |= {f"{vendor.worker}-kill9-answer6-{i}": [vendor.server, f"from={later.dial}", *args] for i in range(2)}
        calls |= {f"{vendor.worker}-kill9-refuse-{i}": [vendor.server, f"from={ring.dial}", *args] for i in range(2)}
        started = time.monotonic()

        def ringing() -> bool:
            return (slow.count("INVITE"), later.count("INVITE"), ring.count("INVITE")) == (3, 2, 2)

        with netns_lab.kill_9_with_calls_ringing(lab.ns, lab.home, vendor.worker, work, calls, ringing) as adoption:
            answered = [c for c in adoption.callers if "answer" in c.request_id]
            for caller in adoption.callers:
                why = (caller.result, caller.stderr[-500:], adoption.adopter_log[-3000:])
                if caller in answered:
                    assert caller.code == 0, why
                    call_id = str(caller.result["call_id"])
                    assert vendor.call_id.fullmatch(call_id), why
                    assert caller.result["message"] == f"Call {call_id} answered on {vendor.server}", why
                    assert caller.result["data"]["recovered"] is True, why  # type: ignore[index]
                else:
                    assert caller.code == 5 and caller.result["sip_code"] == 480, why
                if "answer6" in caller.request_id:
                    assert caller.result["data"]["state_at_adoption"] == vendor.ringing, why  # type: ignore[index]
                _same_as_stored(adoption, caller)
            assert adoption.adopted() == set(calls), adoption.adopter_log[-3000:]

        invites = slow.invites_by_call() + later.invites_by_call() + ring.invites_by_call()
        assert len(invites) == 7 and set(invites.values()) == {1}, invites
        assert ring.wait_count("CANCEL", 2) == 2  # the server gave up on each at its ring timeout
        call_ids = {str(c.result["call_id"]) for c in answered}
        assert len(call_ids) == 5
        for call_id in call_ids:
            _hang_up(lab, vendor, call_id)
        assert slow.wait_count("BYE", 3) == 3 and later.wait_count("BYE", 2) == 2
        # counted after the BYEs: no second or retransmitted INVITE came later
        assert (slow.count("INVITE"), later.count("INVITE"), ring.count("INVITE")) == (3, 2, 2)

        after = {c.request_id: round(c.ended - adoption.killed_at, 2) for c in adoption.callers if c.ended}
        states = {c.request_id: c.result["data"]["state_at_adoption"] for c in answered}  # type: ignore[index]
        print(f"\n{vendor.label} kill -9 with 7 calls ringing, killed {adoption.killed_at - started:.2f} s after "
              f"submit; answers (s after the kill): {after}; state at adoption: {states}")  # fmt: skip
    finally:
        for party in (slow, later, ring):
            party.stop()


def a_later_worker_still_settles_the_calls(lab: netns_lab.LabCli, vendor: AdoptionLab, work: Path) -> None:
    """The only `ifbus worker <type>` is killed -9 with two calls ringing and nothing else serves the type:
    within its window (the lease, about 3 s) no follower is alive to adopt them, so each caller hears
    "stopped without answering" (exit 6, outcome unknown) rather than waiting in vain. A worker started
    after that still adopts both and settles them from the server's state, once: `ifbus job` then shows
    the real outcome (answered after it followed the ringing call; SIP 480 for the one the server gave up
    on), and each party saw one INVITE."""
    later = vendor.party(work, "ring9", netns_lab.ring_then_answer(work, RING_PAST_LATE_ADOPTION))
    ring = vendor.party(work, "ring", RING_FOREVER)
    try:
        _add_server(lab, vendor)
        args = (f"to={vendor.to}", "--timeout", "40")
        answer_id, refuse_id = f"{vendor.worker}-late-answer", f"{vendor.worker}-late-refuse"
        calls = {answer_id: [vendor.server, f"from={later.dial}", *args],
                 refuse_id: [vendor.server, f"from={ring.dial}", *args]}  # fmt: skip

        def ringing() -> bool:
            return (later.count("INVITE"), ring.count("INVITE")) == (1, 1)

        with netns_lab.kill_9_with_calls_ringing(lab.ns, lab.home, vendor.worker, work, calls, ringing,
                                                 restart_late=True) as adoption:  # fmt: skip
            for caller in adoption.callers:
                assert caller.code == 6 and "stopped without answering" in str(caller.result["message"]), caller.result
            answered = adoption.settled(answer_id, 20.0)
            refused = adoption.settled(refuse_id, 20.0)
            assert adoption.adopted() == set(calls), adoption.adopter_log[-3000:]
        call_id = str(answered["call_id"])
        assert answered["outcome"] == "ok", answered
        assert answered["message"] == f"Call {call_id} answered on {vendor.server}", answered
        assert answered["data"] == {**answered["data"], "recovered": True, "state_at_adoption": vendor.ringing}  # type: ignore[dict-item]
        assert refused["outcome"] == "rejected" and refused["sip_code"] == 480, refused
        _hang_up(lab, vendor, call_id)
        assert later.wait_count("BYE", 1) == 1
        assert ring.wait_count("CANCEL", 1) == 1
        invites = later.invites_by_call() + ring.invites_by_call()
        assert len(invites) == 2 and set(invites.values()) == {1}, invites
    finally:
        later.stop()
        ring.stop()
