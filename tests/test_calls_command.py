"""`ifbus calls sip NAME`: the ledger's record of calls placed on a server, checked with the server.

The ledger part runs on a private redis-server (pytest-redis); the server part on a real Kamailio
(deploy/kamailio/kamailio.cfg) with SIPp phones and a real `ifbus worker`, so `active` is what
Kamailio's `dlg.list` said (/work/shared/kamailio-lab.md §7: only the A→B call is a dialog).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from bus.calls import CallRef
from bus.ledger import MemoryLedger, RedisLedger
from tests.conftest import BIN
from tests.lab import Kamailio, SippUA, kamailio_available, sipp_available


def ifbus(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "ifbus"), *args], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ))  # fmt: skip


@pytest.mark.parametrize("kind", ["redis", "memory"])
def test_ledger_lists_one_entry_per_call_at_its_placing_time(kind: str, request: pytest.FixtureRequest) -> None:
    if kind == "redis":
        from redis import Redis

        ledger = RedisLedger(Redis.from_url(request.getfixturevalue("redis_url")))
    else:
        ledger = MemoryLedger()
    first = CallRef("kam", None, {"tracking_id": "t1"})
    ledger.record_call(first)
    ledger.record_call(CallRef("other", "x1", {}))
    ledger.record_call(CallRef("kam", "sip-callid-1", {"tracking_id": "t1"}))  # follow() learnt the Call-ID
    ledger.record_call(CallRef("kam", None, {"tracking_id": "t2"}))
    found = ledger.recent_calls("kam")
    assert [ref for ref, _ in found] == [CallRef("kam", "sip-callid-1", {"tracking_id": "t1"}),
                                         CallRef("kam", None, {"tracking_id": "t2"})]  # fmt: skip
    assert found[0][1] <= found[1][1]
    assert ledger.recent_calls("nobody") == []


def test_a_vendor_without_a_check_says_cannot_tell(queue_mode: str) -> None:
    from redis import Redis

    assert ifbus("add", "sip", "myast", "--type", "asterisk", "--auth", "user=u", "secret=s").returncode == 0
    RedisLedger(Redis.from_url(queue_mode)).record_call(CallRef("myast", "1700000000.1", {"channel": "PJSIP/x"}))
    done = ifbus("calls", "sip", "myast", "--json")
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(done.stdout)["calls"]
    assert (row["call_id"], row["active"]) == ("1700000000.1", None)
    assert "unknown" in ifbus("calls", "sip", "myast").stdout


@pytest.fixture
def kam(tmp_path: Path) -> Iterator[Kamailio]:
    if not (kamailio_available() and sipp_available()):
        pytest.skip("kamailio and sipp are needed (tests/run.sh installs them)")
    with Kamailio(tmp_path / "kam", token="calls-token", fr_timer=2000, fr_inv_timer=5000) as k:
        yield k


@pytest.mark.integration
def test_kamailio_calls_active_then_ended(kam: Kamailio, start_worker, tmp_path: Path) -> None:
    added = ifbus(
        "add",
        "sip",
        "mykam",
        "--type",
        "kamailio",
        "--auth",
        "token=calls-token",
        "realm=127.0.0.1",
        "--port",
        str(kam.http_port),
        "--opt",
        "fr_timer=2",
        "fr_inv_timer=5",
        f"sip_port={kam.sip_port}",
    )
    assert added.returncode == 0, added.stderr  # fmt: skip
    start_worker("kamailio")
    with ExitStack() as stack:
        a = stack.enter_context(SippUA("refer_uas.xml", tmp_path, "a", kamailio_port=kam.sip_port))
        b = stack.enter_context(SippUA("answer_uas.xml", tmp_path, "b", kamailio_port=kam.sip_port))
        placed = ifbus("call", "sip", "mykam", f"from={a.uri}", f"to={b.uri}", "--json")
        assert placed.returncode == 0, placed.stderr
        call_id = json.loads(placed.stdout)["call_id"]
        listed = json.loads(ifbus("calls", "sip", "mykam", "--json").stdout)["calls"]
        assert [(r["call_id"], r["active"], r["state"]) for r in listed] == [(call_id, True, 4)]
        assert listed[0]["to_uri"].startswith(b.uri)
        assert [d["call-id"] for d in kam.dialogs() if d["state"] == 4] == [call_id]  # what kamcmd dlg.list says
        table = ifbus("calls", "sip", "mykam").stdout
        assert call_id in table and "yes" in table
        assert ifbus("hangup", "sip", "mykam", f"call_id={call_id}").returncode == 0
        assert b.wait_received("BYE")
        listed = json.loads(ifbus("calls", "sip", "mykam", "--json").stdout)["calls"]
        assert [(r["call_id"], r["active"]) for r in listed] == [(call_id, False)]
