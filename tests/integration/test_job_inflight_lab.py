"""`ifbus job` while a real call rings (issue 15): a real `ifbus worker kamailio` hands the call to its
follower and its RQ job returns; `ifbus job` says "in flight" (followed by that worker) while the callee
rings, then "finished" with the bus's answer once it picks up.

The callee (tests/sipp/ring2_answer_uas.xml) rings 2 s, then answers; the first party is the REFER UAS
the Kamailio lab uses for every click-to-call (tests/sipp/refer_uas.xml).
"""

from __future__ import annotations

import json
import socket
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from redis import Redis
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from producer.cli import cli
from tests.integration.conftest import KAMAILIO_LAB, register
from tests.lab import Kamailio, SippUA, wait_for

pytestmark = KAMAILIO_LAB

RID = "req-job-ringing-01"


def job_status() -> dict[str, Any]:
    looked = CliRunner().invoke(cli, ["job", RID, "--json"], catch_exceptions=False)
    assert looked.exit_code == 0, looked.output
    return json.loads(looked.stdout)


def test_job_says_in_flight_while_the_callee_rings_then_the_answer(queue_mode: str, tmp_path: Path,
                                                                   start_worker) -> None:  # fmt: skip
    with ExitStack() as lab:
        kam = lab.enter_context(Kamailio(tmp_path / "k", token="job-token"))
        register("kam", kam, fr_inv_timer_ms=10_000)
        alice = lab.enter_context(SippUA("refer_uas.xml", tmp_path, "alice", kamailio_port=kam.sip_port))
        bob = lab.enter_context(SippUA("ring2_answer_uas.xml", tmp_path, "bob", kamailio_port=kam.sip_port))
        start_worker("kamailio")
        queued = CliRunner().invoke(cli, ["call", "sip", "kam", f"from={alice.uri}", f"to={bob.uri}", "--no-wait",
                                          "--timeout", "30", "--request-id", RID], catch_exceptions=False)  # fmt: skip
        assert queued.exit_code == 0, queued.output
        assert bob.wait_received("INVITE", 1, timeout=15)  # bob rings for 2 s from here

        ringing = wait_for(lambda: (s := job_status())["status"] == "in_flight" and s, 2.0, 0.05)
        assert ringing, job_status()
        rq_says = Job.fetch(RID, connection=Redis.from_url(queue_mode), serializer=JSONSerializer).get_status()
        assert rq_says == JobStatus.FINISHED  # what `ifbus job` printed before: "finished", with no answer
        assert ringing["result"] is None and ringing["server"] == "kam"
        assert ringing["followed_by"].startswith(f"{socket.gethostname()}:")

        settled = wait_for(lambda: (s := job_status())["status"] == "finished" and s, 15, 0.1)
        assert settled, job_status()
        assert settled["result"]["exit_code"] == 0 and settled["result"]["sip_code"] == 200
        assert settled["result"]["call_id"] and bob.received("INVITE") == 1
