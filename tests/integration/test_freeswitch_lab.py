"""The FreeSWITCH adapter against a REAL FreeSWITCH 1.10.12 (../shared/labs/freeswitch: ESL 127.0.0.1:8021,
password `labpass`, profile `internal` on udp 5080, domain `lab.test`, context `public`: 9196 echo, 486 busy).

Runs only inside the lab's network namespace with the lab server up (`ip netns exec labfs …`); anywhere
else it skips and says why. Start the lab with ../shared/labs/freeswitch/run.sh.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from bus.errors import AuthFailed, CallRejected
from bus.server import ServerEntry
from workers.adapters.freeswitch import FreeSwitchAdapter

BINARY = Path("/opt/lab/freeswitch/bin/freeswitch")


def _esl_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 8021), timeout=1):
            return True
    except OSError:
        return False


pytestmark = [
    pytest.mark.skipif(
        not BINARY.exists(), reason=f"no lab FreeSWITCH at {BINARY} (../shared/labs/freeswitch/build.sh)"
    ),
    pytest.mark.skipif(
        BINARY.exists() and not _esl_up(),
        reason="the lab FreeSWITCH's ESL (127.0.0.1:8021) does not answer here: run inside `ip netns exec labfs`",
    ),
]


def adapter(password: str = "labpass") -> FreeSwitchAdapter:
    entry = ServerEntry.build(
        "freeswitch",
        {"apikey": password, "domain": "lab.test"},
        host="127.0.0.1",
        port=8021,
        options={"context": "public", "originate_timeout": "10"},
    )
    return FreeSwitchAdapter("labfs", entry)


def test_version() -> None:
    assert "FreeSWITCH 1.10.12" in adapter().test().message


def test_wrong_password() -> None:
    with pytest.raises(AuthFailed):
        adapter("wrong").test()


def test_loopback_call_answered_then_hung_up() -> None:
    """loopback/9196/public answers (echo); the A-leg bridges nothing: `9196 XML public` runs on it."""
    fs = adapter()
    ref = fs.originate("loopback/9196/public", "9196", {}, time.monotonic() + 20)
    assert fs.follow(ref, time.monotonic() + 20).call_id == ref.call_id
    assert "ended" in fs.hangup(ref.call_id or "", ref, {}).message
    fs.close()


@pytest.mark.skipif(
    not os.environ.get("IFBUS_LAB_SIPP_BUSY"),
    reason="needs a SIPp UAS answering 486 (set IFBUS_LAB_SIPP_BUSY=host:port)",
)
def test_busy_party_is_486() -> None:
    fs = adapter()
    ref = fs.originate(f"sofia/internal/sipp@{os.environ['IFBUS_LAB_SIPP_BUSY']}", "9196", {}, time.monotonic() + 20)
    with pytest.raises(CallRejected) as info:
        fs.follow(ref, time.monotonic() + 40)
    assert info.value.sip_code == 486
