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
