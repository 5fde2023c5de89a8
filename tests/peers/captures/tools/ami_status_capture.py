#!/usr/bin/env python3
"""Record ../asterisk-22.10.1/ami_status_transcript.txt: AMI `Status` of calls placed through ANOTHER AMI
session, as a worker adopting a dead worker's calls sees them (workers/adapters/asterisk.py `recover`).

Two sessions log in with `Events: call`: [worker] places three async Originates with our own ChannelId
(a party that rings until Timeout, one that answers, one that is busy); [adopt] never sent them, reads
the calls' events and asks `Status Channel: <ChannelId>` while ringing, once answered, and after each
Hangup. Built on the lab's own probe client (labs/asterisk/ami_probe.py: its Conn and line format).

Needs the lab Asterisk and its SIPp far ends up (labs/asterisk/run.sh: `sipp` 200, `sippring` rings,
`sippbusy` 486); run it inside the lab's namespace, as root, from the repository root:

    LAB_NETNS=labast ../shared/labs/asterisk/run.sh
    ip netns exec labast .venv/bin/python tests/peers/captures/tools/ami_status_capture.py > /tmp/ami_status.txt
    ../shared/labs/asterisk/stop.sh

The transcript is what it prints, below a header written by hand (what the run shows).
"""

import contextlib
import os
import sys
import time
from pathlib import Path

LABS = Path(os.environ.get("IFBUS_LAB_SCRIPTS", Path(__file__).resolve().parents[5] / "shared" / "labs"))
sys.path.insert(0, str(LABS / "asterisk"))
from ami_probe import Conn, section, ts  # noqa: E402


def login(c, aid):
    c.read_line()
    c.action([("Action", "Login"), ("ActionID", aid), ("Username", "admin"), ("Secret", "pass123"), ("Events", "call")])
    c.wait_for(lambda m: m.get("ActionID") == aid and "Response" in m)


def originate(c, aid, chan, cid, timeout_ms):
    c.action([("Action", "Originate"), ("ActionID", aid), ("Channel", chan), ("Context", "ctx"),
              ("Exten", "park"), ("Priority", "1"), ("CallerID", "\"Lab\" <1000>"),
              ("Timeout", str(timeout_ms)), ("Async", "true"), ("ChannelId", cid)])


def status(c, aid, cid):
    c.action([("Action", "Status"), ("ActionID", aid), ("Channel", cid)])
    m = c.wait_for(lambda m: m.get("ActionID") == aid and "Response" in m and "Event" not in m)
    if m.get("Response") == "Success":
        c.wait_for(lambda m: m.get("Event") == "StatusComplete" and m.get("ActionID") == aid)


def ev(c, name, cid, timeout=15, **kv):
    return c.wait_for(lambda m: m.get("Event") == name and m.get("Uniqueid") == cid
                      and all(m.get(k) == v for k, v in kv.items()), timeout=timeout)


def drain(c, seconds):
    """Read (and so record) whatever else arrives within `seconds`: the events around the one waited for."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            c.read_msg(timeout=max(0.05, end - time.monotonic()))
        except TimeoutError:
            break


def main():
    section("worker connection (it places the calls; this transcript does not read it again)")
    w = Conn("worker")
    login(w, "login-w")
    section("adopter connection (a second AMI session, Events: call)")
    a = Conn("adopt")
    login(a, "login-a")

    section("Originate PJSIP/sippring (rings, never answers) Timeout 6000 ChannelId chan-r1 on the worker")
    originate(w, "orig-r1", "PJSIP/sippring", "chan-r1", 6000)
    w.wait_for(lambda m: m.get("ActionID") == "orig-r1" and "Event" not in m)
    section("adopter: the call's events, until it rings")
    ev(a, "Newstate", "chan-r1", ChannelState="5")
    drain(a, 0.3)
    section("adopter: Status Channel chan-r1 while it rings")
    status(a, "st-r1", "chan-r1")
    section("adopter: until the Hangup (Timeout 6000 ends it)")
    ev(a, "Hangup", "chan-r1", timeout=15)
    drain(a, 1.0)
    section("adopter: Status Channel chan-r1 after its Hangup")
    status(a, "st-r2", "chan-r1")

    section("Originate PJSIP/sipp (answers 200) ChannelId chan-s1 on the worker")
    originate(w, "orig-s1", "PJSIP/sipp", "chan-s1", 10000)
    w.wait_for(lambda m: m.get("ActionID") == "orig-s1" and "Event" not in m)
    section("adopter: the call's events, until it is Up")
    ev(a, "Newstate", "chan-s1", ChannelState="6")
    drain(a, 0.5)
    section("adopter: Status Channel chan-s1 (answered)")
    status(a, "st-s1", "chan-s1")
    section("adopter: Hangup chan-s1")
    a.action([("Action", "Hangup"), ("ActionID", "hup-s1"), ("Channel", "chan-s1"), ("Cause", "16")])
    ev(a, "Hangup", "chan-s1")
    drain(a, 0.5)
    section("adopter: Status Channel chan-s1 after its Hangup")
    status(a, "st-s2", "chan-s1")

    section("Originate PJSIP/sippbusy (486) ChannelId chan-b2 on the worker, then Status from the adopter")
    originate(w, "orig-b2", "PJSIP/sippbusy", "chan-b2", 10000)
    ev(a, "Hangup", "chan-b2")
    drain(a, 0.5)
    status(a, "st-b2", "chan-b2")
    section("adopter: Logoff")
    a.action([("Action", "Logoff"), ("ActionID", "bye-a")])
    with contextlib.suppress(EOFError, TimeoutError):
        a.wait_for(lambda m: m.get("ActionID") == "bye-a", timeout=3)
    print(f"{ts()} (done)")


main()
