"""FusionPBX adapter against tests/peers/fusionpbx.py (written from FusionPBX's source: check_auth.php,
plugins/database.php, token.php, click_to_call.php; see that module) and, for hangup, the ESL peer
replaying tests/peers/captures/freeswitch-1.10.12/esl_originate_answer_kill_transcript.txt and
esl_api_transcript.txt (uuid_kill of an unknown uuid).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from bus.errors import AuthFailed, CallRejected, InvalidInput, Unreachable
from bus.server import ServerEntry
from tests.peers.esl import SCENARIOS, EslPeer
from tests.peers.fusionpbx import FusionPbxPeer, User
from workers.adapters import adapter_class
from workers.adapters.fusionpbx import FusionPbxAdapter

KEY = "k" * 40
USERS = [User("admin", "pass123", "fusion.local", api_key=KEY)]


@pytest.fixture(params=["master", "5.5"])
def web(request: pytest.FixtureRequest) -> Iterator[FusionPbxPeer]:
    with FusionPbxPeer(USERS, version=request.param) as peer:
        yield peer


def make(web: FusionPbxPeer, auth: dict[str, str], **options: str) -> FusionPbxAdapter:
    entry = ServerEntry.build(
        "fusionpbx",
        {"domain": "fusion.local", **auth},
        host="127.0.0.1",
        port=web.port,
        options={"scheme": "http", **options},
    )
    return FusionPbxAdapter("myfusion", entry)


PASSWORD = {"username": "admin", "password": "pass123"}
APIKEY = {"key": KEY}


def soon() -> float:
    return time.monotonic() + 10


def test_registered() -> None:
    assert adapter_class("fusionpbx") is FusionPbxAdapter


@pytest.mark.parametrize("auth", [PASSWORD, APIKEY], ids=["password", "key"])
def test_call_both_auth_forms(web: FusionPbxPeer, auth: dict[str, str]) -> None:
    adapter = make(web, auth)
    assert "click-to-call page reachable" in adapter.test().message
    ref = adapter.originate("100", "101", {}, soon())
    assert ref.call_id and len(ref.call_id) == 36
    assert adapter.follow(ref, soon()).call_id == ref.call_id
    (cmd,) = web.commands
    assert cmd.endswith("}user/100@fusion.local &transfer('101 XML fusion.local')")
    # the page's request: same User-Agent throughout, Host = the tenant's domain, no secret in a URL
    agents = {headers.get("User-Agent") for _, _, headers in web.requests}
    assert len(agents) == 1
    assert all(headers.get("Host") == "fusion.local" for _, _, headers in web.requests)
    assert not any("pass123" in path or KEY in path for _, path, _ in web.requests)
    adapter.close()


def test_session_is_reused_then_renewed(web: FusionPbxPeer) -> None:
    adapter = make(web, PASSWORD)
    adapter.originate("100", "101", {}, soon())
    logins = sum(1 for method, _, _ in web.requests if method == "POST")
    adapter.originate("100", "101", {}, soon())
    assert sum(1 for method, _, _ in web.requests if method == "POST") == logins  # same session
    web.sessions.clear()  # PHP's session store lost it (expiry, restart)
    adapter.originate("100", "101", {}, soon())
    assert len(web.commands) == 3


@pytest.mark.parametrize(
    "auth", [{"username": "admin", "password": "nope"}, {"key": "x" * 40}], ids=["password", "key"]
)
def test_bad_credentials_are_auth_failed(web: FusionPbxPeer, auth: dict[str, str]) -> None:
    adapter = make(web, auth)
    with pytest.raises(AuthFailed) as info:
        adapter.test()
    assert info.value.exit_code == 3 and "nope" not in info.value.message
    with pytest.raises(AuthFailed):
        adapter.originate("100", "101", {}, soon())
    assert web.commands == []


def test_busy_is_the_cause_sip_code(web: FusionPbxPeer) -> None:
    web.originate = lambda cmd: "-ERR USER_BUSY\n"  # esl_originate_sync_fail_transcript.txt, api originate to 486
    with pytest.raises(CallRejected) as info:
        make(web, APIKEY).originate("100", "101", {}, soon())
    assert info.value.sip_code == 486 and info.value.details["cause"] == "USER_BUSY"


def test_event_socket_down_is_unreachable(web: FusionPbxPeer) -> None:
    web.esl_down = True
    with pytest.raises(Unreachable):
        make(web, PASSWORD).originate("100", "101", {}, soon())


def test_missing_permission(web: FusionPbxPeer) -> None:
    web.users = [User("admin", "pass123", "fusion.local", KEY, permissions=set())]
    with pytest.raises(AuthFailed, match="click_to_call_view"):
        make(web, APIKEY).originate("100", "101", {}, soon())


@pytest.mark.parametrize(
    ("from_", "to"),
    [("100,user/666@evil", "101"), ("100", "101' XML evil"), ("100", "101 XML x"), ("100'", "101"), ("100", "a&b")],
)
def test_injection_is_refused(web: FusionPbxPeer, from_: str, to: str) -> None:
    with pytest.raises(InvalidInput):
        make(web, APIKEY).originate(from_, to, {}, soon())
    assert web.requests == []


def test_plain_http_only_on_loopback() -> None:
    entry = ServerEntry.build("fusionpbx", {"domain": "fusion.local", **APIKEY}, options={"scheme": "http"})
    with pytest.raises(InvalidInput, match="loopback"):
        FusionPbxAdapter("x", entry).test()


def test_hangup_needs_the_event_socket(web: FusionPbxPeer) -> None:
    with pytest.raises(InvalidInput, match="esl_password"):
        make(web, APIKEY).hangup("eaa3ea18-2b2b-4133-9ebf-d5e5c1c80aa9", None, {})


def test_hangup_through_the_event_socket(web: FusionPbxPeer) -> None:
    """esl_originate_answer_kill_transcript.txt: uuid_kill `+OK`, then `-ERR No such channel!`."""
    with EslPeer(password="ClueCon") as esl:
        adapter = make(web, {**APIKEY, "esl_password": "ClueCon"}, esl_port=str(esl.port))
        live = SCENARIOS["5070"].channel
        esl.live[live] = SCENARIOS["5070"]
        assert adapter.hangup(live, None, {}).message == f"Call {live} ended on myfusion"
        assert adapter.hangup(live, None, {}).data == {"already_ended": True}
        assert "event socket: FreeSWITCH Version 1.10.12" in adapter.test().message
        adapter.close()
