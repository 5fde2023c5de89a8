"""Prove the real-Kamailio lab itself, with raw httpx JSON-RPC (not IF.bus code).

What is proven here is what the Kamailio adapter relies on, against kamailio
5.6 running ``deploy/kamailio/kamailio.cfg`` and SIPp UAs running
``tests/sipp/*.xml``, all on 127.0.0.1 with ports picked at run time:

* the token check of the config (/work/shared/kamailio-lab.md §4 "HTTP and the
  token", §5(b)): right token -> 200 + ``kamailio 5.x``; wrong, missing or
  lowercase ``bearer`` -> 401 with ``WWW-Authenticate: Bearer`` and a JSON-RPC
  error body; HTTP on the SIP port -> 403; another path -> 404;
* click-to-call through ``dlg.bridge_dlg`` (§5(c)) with ``;c2c=<id>`` on both
  URIs and the outcome table (§4 "Outcome tracking", §5(d)): ``<id>::a``,
  ``<id>::b`` (SIP codes, first final wins) and ``<id>::b::callid``;
* ``dlg.list`` shows that Call-ID in state 4, and ``dlg.end_dlg [h_entry, h_id]``
  (JSON numbers, §7 pitfall 11) makes kamailio send BYE to both parties;
* failure codes (§5(d)): busy B -> ``::b`` 486, busy A -> ``::a`` 486, A that
  never answers -> ``::a`` 487 (tm CANCELs at fr_inv_timer, §7 pitfall 14),
  B that never answers -> ``::b`` 408, unreachable A -> no ``::a`` at all.

Timers are short (fr_timer 2000 ms, fr_inv_timer 5000 ms) to keep this fast.
Observed on the dev VM (2 cores), ms after the bridge RPC: connected a=200 at
~210 and b=200 at ~525 (A answers after 200 ms, B after 300 ms); busy A
a=486 at ~2; busy B b=486 at ~210; A never answers a=487 at ~4970
(fr_inv_timer); B never answers b=408 at ~5210 (A's answer + fr_inv_timer);
unreachable A: nothing at fr_timer + 1 s, or a=408 at ~1970 with this
kamailio as outbound proxy; dlg.end_dlg -> BYE at B within ~2 ms.  The whole
module runs in ~21 s, mostly the two fr_inv_timer waits.

Skipped with a reason when ``kamailio`` or ``sipp`` is not installed.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest

from tests.integration.conftest import FR_INV_TIMER_MS, FR_TIMER_MS, KAMAILIO_LAB, TOKEN, UaFactory
from tests.lab import Kamailio, SippUA, free_port, wait_for

pytestmark = KAMAILIO_LAB


def bridge(kam: Kamailio, a_uri: str, b_uri: str, op: str | None = None) -> tuple[str, float]:
    """dlg.bridge_dlg with ``;c2c=<id>`` on both URIs, ``to`` wrapped in <...>,
    and optionally an outbound proxy ``op`` for the hold INVITE.

    Returns (id, monotonic time of the call).  The RPC is fire-and-forget and
    always returns {}.
    """
    cid = uuid.uuid4().hex
    started = time.monotonic()
    params = [f"{a_uri};c2c={cid}", f"<{b_uri};c2c={cid}>"] + ([op] if op else [])
    result = kam.rpc("dlg.bridge_dlg", *params)
    assert result == {}
    return cid, started


def final_code(kam: Kamailio, key: str, timeout: float) -> Any:
    """Wait for a final (>= 200) code under ``key``; None on timeout."""

    def probe() -> Any:
        value = kam.htable_get(key)
        return value if isinstance(value, int) and value >= 200 else None

    return wait_for(probe, timeout, 0.02)


def confirmed_dialog(kam: Kamailio, call_id: str) -> dict[str, Any] | None:
    for dlg in kam.dialogs():
        if dlg["call-id"] == call_id and dlg["state"] == 4:
            return dlg
    return None


def report(label: str, started: float) -> None:
    print(f"{label}: {1000 * (time.monotonic() - started):.0f} ms")


# --------------------------------------------------------------------------
# JSON-RPC over HTTP + token
# --------------------------------------------------------------------------


def test_core_version_with_right_token(kam: Kamailio) -> None:
    response = kam.post({"jsonrpc": "2.0", "method": "core.version", "params": [], "id": 1})
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == 1
    assert body["result"].startswith("kamailio 5.")


@pytest.mark.parametrize("header", ["Bearer wrong", "bearer " + TOKEN, None, "Bearer " + TOKEN + "x"])
def test_bad_or_missing_token_is_401(kam: Kamailio, header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}
    response = httpx.post(
        kam.rpc_url,
        json={"jsonrpc": "2.0", "method": "core.version", "params": [], "id": 1},
        headers=headers,
        timeout=5,
    )
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")
    assert response.json() == {"jsonrpc": "2.0", "error": {"code": -32001, "message": "Unauthorized"}, "id": None}


def test_http_only_on_rpc_port_and_path(kam: Kamailio) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    payload = {"jsonrpc": "2.0", "method": "core.version", "params": [], "id": 1}
    # xhttp would also serve HTTP on the SIP TCP listener: the config refuses it.
    on_sip_port = httpx.post(f"http://127.0.0.1:{kam.sip_port}/RPC", json=payload, headers=auth, timeout=5)
    assert on_sip_port.status_code == 403
    other_path = httpx.post(f"http://127.0.0.1:{kam.http_port}/other", json=payload, headers=auth, timeout=5)
    assert other_path.status_code == 404


def test_rpc_errors_carry_http_status_of_error_code(kam: Kamailio) -> None:
    """Unlike the lab doc's §5(b) table, jsonrpcs 5.6 sends an error object with
    HTTP status = its code (500 here); the body is still JSON-RPC."""
    response = kam.post({"jsonrpc": "2.0", "method": "no.such_method", "params": [], "id": 7})
    assert response.status_code == 500
    assert response.json()["error"] == {"code": 500, "message": "Method Not Found"}
    assert kam.htable_get("no-such-key") is None


# --------------------------------------------------------------------------
# click-to-call
# --------------------------------------------------------------------------


def connect(kam: Kamailio, a: SippUA, b: SippUA, op: str | None = None) -> tuple[str, str, dict[str, Any]]:
    """Bridge a and b, wait until both legs are 200 and the dialog is confirmed.

    Returns (id, B-leg Call-ID, dlg.list entry).
    """
    cid, started = bridge(kam, a.uri, b.uri, op)
    assert final_code(kam, f"{cid}::a", 3) == 200
    report("a=200", started)
    assert final_code(kam, f"{cid}::b", 3) == 200
    report("b=200", started)
    call_id = kam.htable_get(f"{cid}::b::callid")
    assert isinstance(call_id, str) and call_id
    dlg = wait_for(lambda: confirmed_dialog(kam, call_id), 2)
    assert dlg is not None, kam.dialogs()
    assert dlg["to_uri"] == f"{b.uri};c2c={cid}"
    return cid, call_id, dlg


def hang_up(kam: Kamailio, call_id: str, dlg: dict[str, Any], a: SippUA, b: SippUA) -> None:
    """dlg.end_dlg and check that both parties got one more BYE."""
    a_byes, b_byes = a.received("BYE"), b.received("BYE")
    assert kam.rpc("dlg.end_dlg", dlg["h_entry"], dlg["h_id"]) == {}
    assert a.wait_received("BYE", a_byes + 1, 3)
    assert b.wait_received("BYE", b_byes + 1, 3)
    assert wait_for(lambda: confirmed_dialog(kam, call_id) is None, 2)


def test_click_to_call_connects_and_end_dlg_sends_bye_to_both(kam: Kamailio, ua: UaFactory) -> None:
    a = ua("refer_uas.xml", "alice")
    b = ua("answer_uas.xml", "bob")
    _, call_id, dlg = connect(kam, a, b)
    # A saw: hold INVITE, ACK, REFER, BYE (hold leg); B saw: INVITE, ACK.
    assert a.received("REFER") >= 1
    assert a.received("BYE") == 1
    assert b.received("INVITE") >= 1 and b.received("BYE") == 0
    hang_up(kam, call_id, dlg, a, b)
    assert a.received("BYE") == 2
    assert b.received("BYE") == 1


def test_same_uas_serve_calls_one_after_another(kam: Kamailio, ua: UaFactory) -> None:
    a = ua("refer_uas.xml", "alice")
    b = ua("answer_uas.xml", "bob")
    for _ in range(3):
        _, call_id, dlg = connect(kam, a, b)
        hang_up(kam, call_id, dlg, a, b)
    assert b.received("BYE") == 3


def test_integer_params_matter_for_end_dlg(kam: Kamailio, ua: UaFactory) -> None:
    """h_entry/h_id as strings give 404 for a live dialog (§7 pitfall 11)."""
    a = ua("refer_uas.xml", "alice")
    b = ua("answer_uas.xml", "bob")
    _, call_id, dlg = connect(kam, a, b)
    response = kam.post(
        {"jsonrpc": "2.0", "method": "dlg.end_dlg", "params": [str(dlg["h_entry"]), str(dlg["h_id"])], "id": 1}
    )
    assert response.json()["error"]["code"] == 404
    hang_up(kam, call_id, dlg, a, b)


# --------------------------------------------------------------------------
# failures
# --------------------------------------------------------------------------


def test_busy_b(kam: Kamailio, ua: UaFactory) -> None:
    a = ua("refer_uas.xml", "alice")
    b = ua("busy_uas.xml", "bob")
    cid, started = bridge(kam, a.uri, b.uri)
    assert final_code(kam, f"{cid}::a", 3) == 200
    assert final_code(kam, f"{cid}::b", 3) == 486
    report("busy B: b=486", started)
    assert isinstance(kam.htable_get(f"{cid}::b::callid"), str)


def test_busy_a(kam: Kamailio, ua: UaFactory) -> None:
    a = ua("busy_uas.xml", "alice")
    b = ua("answer_uas.xml", "bob")
    cid, started = bridge(kam, a.uri, b.uri)
    assert final_code(kam, f"{cid}::a", 3) == 486
    report("busy A: a=486", started)
    time.sleep(0.5)
    assert kam.htable_get(f"{cid}::b") is None
    assert b.received("INVITE") == 0


def test_unreachable_a_leaves_no_a_code(kam: Kamailio, ua: UaFactory) -> None:
    """tm's internal 408 is not a network reply, so ::a is never set; a client
    must treat "no ::a after fr_timer + margin" as 408 (§5(d))."""
    b = ua("answer_uas.xml", "bob")
    nobody = f"sip:ghost@127.0.0.1:{free_port(udp=True, tcp=False)}"
    cid, _ = bridge(kam, nobody, b.uri)
    time.sleep(FR_TIMER_MS / 1000 + 1.0)
    assert kam.htable_get(f"{cid}::a") is None
    assert kam.htable_get(f"{cid}::b") is None
    assert b.received("INVITE") == 0


def test_a_never_answers_is_487(kam: Kamailio, ua: UaFactory) -> None:
    a = ua("ring_uas.xml", "alice")
    b = ua("answer_uas.xml", "bob")
    cid, started = bridge(kam, a.uri, b.uri)
    assert wait_for(lambda: kam.htable_get(f"{cid}::a") == 180, 2)
    assert final_code(kam, f"{cid}::a", FR_INV_TIMER_MS / 1000 + 3) == 487
    report("ring A: a=487", started)
    assert a.received("CANCEL") == 1
    assert b.received("INVITE") == 0


def test_b_never_answers_is_408(kam: Kamailio, ua: UaFactory) -> None:
    a = ua("refer_uas.xml", "alice")
    b = ua("ring_uas.xml", "bob")
    cid, started = bridge(kam, a.uri, b.uri)
    assert final_code(kam, f"{cid}::a", 3) == 200
    assert wait_for(lambda: kam.htable_get(f"{cid}::b") == 180, 3)
    assert final_code(kam, f"{cid}::b", FR_INV_TIMER_MS / 1000 + 3) == 408
    report("ring B: b=408", started)
    assert b.wait_received("CANCEL", 1, 2)


# --------------------------------------------------------------------------
# outbound proxy = this kamailio (third bridge_dlg parameter)
# --------------------------------------------------------------------------


def test_outbound_proxy_self_turns_unreachable_a_into_408(kam: Kamailio, ua: UaFactory) -> None:
    """With the loop, tm's timeout of the proxied leg is a real 408 reply
    (failure_route), written at fr_timer."""
    b = ua("answer_uas.xml", "bob")
    nobody = f"sip:ghost@127.0.0.1:{free_port(udp=True, tcp=False)}"
    cid, started = bridge(kam, nobody, b.uri, op=kam.sip_uri)
    assert wait_for(lambda: kam.htable_get(f"{cid}::a") == 100, 1)
    assert final_code(kam, f"{cid}::a", FR_TIMER_MS / 1000 + 2) == 408
    report("unreachable A with op: a=408", started)
    assert b.received("INVITE") == 0
