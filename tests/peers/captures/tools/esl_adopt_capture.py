#!/usr/bin/env python3
"""Record ../freeswitch-1.10.12/esl_adopt_transcript.txt: `api uuid_dump` and the events of calls placed
through ANOTHER event socket, as a worker adopting a dead worker's calls sees them
(workers/adapters/freeswitch.py `recover`).

Two sockets with the adapter's own set-up (`event plain BACKGROUND_JOB CHANNEL_ANSWER
CHANNEL_HANGUP_COMPLETE`, `filter Unique-ID <zero uuid>`): [worker] places each call with `bgapi
originate {origination_uuid=…}` and our own Job-UUID and is not read again; [adopt] adds the call's two
filters one second later (on purpose: the adopter comes after the call started) and looks with uuid_dump —
a party that rings until originate_timeout, then one that answers and is killed with uuid_kill. Built on
the lab's own probe client (labs/freeswitch/esl_probe.py: its ESL class, SIPp helpers and line format),
which starts the SIPp parties itself (127.0.0.1:5070 answers, :5072 rings).

Needs the lab FreeSWITCH up (labs/freeswitch/run.sh); run it inside the namespace, as root, from the
repository root:

    ../shared/labs/freeswitch/run.sh
    ip netns exec labfs .venv/bin/python tests/peers/captures/tools/esl_adopt_capture.py /tmp/esl_adopt.txt
    ../shared/labs/freeswitch/stop.sh

The transcript is the file written, its header replaced by hand with what the run shows.
"""

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

LABS = Path(os.environ.get("IFBUS_LAB_SCRIPTS", Path(__file__).resolve().parents[5] / "shared" / "labs"))
sys.path.insert(0, str(LABS / "freeswitch"))
import esl_probe as P  # noqa: E402

EV = "event plain BACKGROUND_JOB CHANNEL_ANSWER CHANNEL_HANGUP_COMPLETE"
ZERO = "00000000-0000-0000-0000-000000000000"
ADOPTER_LATE = 1.0  # seconds between the originate and the adopter's filters: it arrives after the call started
HEADER = "Recorded by tests/peers/captures/tools/esl_adopt_capture.py (header to be written: what this run shows)."


def udp_bound(port):
    return bool(subprocess.run(["ss", "-Hlun", f"sport = :{port}"], capture_output=True, text=True).stdout.strip())


def setup(conn):
    conn.auth()
    for cmd in (EV, "filter Unique-ID " + ZERO):
        conn.send(cmd)
        conn.read_frame()


def adopt(a, call_uuid, job):
    for cmd in ("filter Unique-ID " + call_uuid, "filter Job-UUID " + job):
        a.send(cmd)
        a.read_frame()
    a.api("uuid_dump " + call_uuid)


def originate(w, call_uuid, job, port):
    variables = f"{{origination_uuid={call_uuid},originate_timeout=6,ignore_early_media=true}}"
    w.send(f"bgapi originate {variables}sofia/internal/sipp@127.0.0.1:{port} &park()", [("Job-UUID", job)])
    w.read_frame()
    time.sleep(ADOPTER_LATE)


def main(out):
    os.makedirs(os.path.join(P.RUN, "log"), exist_ok=True)
    os.makedirs(os.path.join(P.RUN, "run"), exist_ok=True)
    P.start_sipp("adopt-200", 5070, "uas")
    P.start_sipp("adopt-ring", 5072, "sipp_uas_ring.xml")
    deadline = time.monotonic() + 10
    while not (udp_bound(5070) and udp_bound(5072)) and time.monotonic() < deadline:
        time.sleep(0.05)
    tr = P.Transcript()
    try:
        tr.section("worker connection: auth, events, zero filter (it places the calls; not read again)")
        w = P.ESL(tr, "worker")
        setup(w)
        tr.section("adopter connection: the same set-up")
        a = P.ESL(tr, "adopt")
        setup(a)

        u1, j1 = str(uuid.uuid4()), str(uuid.uuid4())
        tr.section("worker: bgapi originate to a party that rings forever (5072), originate_timeout=6")
        originate(w, u1, j1, 5072)
        tr.section("adopter: filters for the call, then uuid_dump while it rings")
        adopt(a, u1, j1)
        tr.section("adopter: until BACKGROUND_JOB and CHANNEL_HANGUP_COMPLETE")
        seen = set()
        while len(seen) < 2:
            f = a.wait(lambda f: f["ev"] is not None, timeout=15)
            if f is None:
                break
            seen.add(f["ev"].get("Event-Name"))
            P.summary(tr, a, f["ev"])
        tr.section("adopter: uuid_dump after the end, filters deleted")
        a.api("uuid_dump " + u1)
        for cmd in ("filter delete Unique-ID " + u1, "filter delete Job-UUID " + j1):
            a.send(cmd)
            a.read_frame()

        u2, j2 = str(uuid.uuid4()), str(uuid.uuid4())
        tr.section("worker: bgapi originate to a party that answers (5070)")
        originate(w, u2, j2, 5070)
        tr.section("adopter: filters, then uuid_dump of the answered call")
        adopt(a, u2, j2)
        tr.section("adopter: uuid_kill, its hangup event, uuid_dump again")
        a.api("uuid_kill " + u2)
        f = a.wait(P.is_event("CHANNEL_HANGUP_COMPLETE"), timeout=10)
        P.summary(tr, a, f and f["ev"])
        a.api("uuid_dump " + u2)
        a.close()
        w.close()
    finally:
        P.stop_sipp()
    tr.write(out, HEADER)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: esl_adopt_capture.py OUTFILE   (inside the lab namespace: ip netns exec labfs …)")
    main(sys.argv[1])
