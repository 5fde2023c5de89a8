"""Secrets never reach a log line, whichever way they slip into an event."""

from __future__ import annotations

import json
import logging

import pytest

from bus.logging import configure, get_logger, redact


@pytest.mark.parametrize(
    ("value", "secret"),
    [
        ({"auth": {"token": "xyz789", "realm": "sip.local"}}, "xyz789"),
        ("redis://user:hunter2@127.0.0.1:6379/0", "hunter2"),
        ("login failed with secret=pass123 for admin", "pass123"),
        ("Authorization: Bearer lab-token-123", "lab-token-123"),
        (["auth_token: AbC123", "ok"], "AbC123"),
    ],
)
def test_redact_masks_secrets(value: object, secret: str) -> None:
    assert secret not in json.dumps(redact(value))


def test_redact_keeps_what_is_not_secret() -> None:
    assert redact({"realm": "sip.local", "server": "mykam"}) == {"realm": "sip.local", "server": "mykam"}


def test_our_events_and_stdlib_records_are_json_lines_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    configure("INFO")
    get_logger("t").info("job.done", auth={"secret": "pass123"})
    logging.getLogger("rq.worker").info("connected to redis://:pw123@h:1/0")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["event"] for line in lines] == ["job.done", "connected to redis://:****@h:1/0"]
    assert lines[0]["auth"] == {"secret": "****"}


INTERLEAVED = """
import sys, threading, logging
from bus.logging import configure, get_logger
configure("INFO")
sys.setswitchinterval(1e-6)  # switch threads as often as CPython allows: a split write gets interleaved
ours, stdlib = get_logger("ifbus.test"), logging.getLogger("rq.worker")
def bus_lines():
    for i in range(3000):
        ours.info("follower.adopted", request_id=f"req-{i}")
def rq_lines():
    for i in range(3000):
        stdlib.info("Worker %s: started", i)
threads = [threading.Thread(target=bus_lines), threading.Thread(target=rq_lines)]
for t in threads: t.start()
for t in threads: t.join()
"""


def test_lines_from_our_logger_and_rqs_never_glue_together() -> None:
    """structlog's PrintLogger printed a line and its newline as two writes; a line RQ's stdlib handler
    wrote from another thread in between glued two JSON lines into one (a lab test lost the
    `follower.adopted` line of an adopted call that way, beside a CPU burner). Every line must parse."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", INTERLEAVED], capture_output=True, text=True, timeout=120)
    lines = done.stderr.splitlines()
    bad = [line for line in lines if not line.startswith("{") or not isinstance(json.loads(line), dict)]
    assert len(lines) == 6000 and not bad, (len(lines), bad[:3])
