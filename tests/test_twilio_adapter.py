"""The Twilio adapter against a fake Twilio over real loopback HTTP (tests/fake_twilio.py); no Redis."""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus.errors import (
    AuthFailed,
    BusError,
    CallRejected,
    InvalidInput,
    NotFound,
    Outcome,
    OutcomeUnknown,
    Overloaded,
    Unreachable,
)
from bus.server import ServerEntry
from bus.sip import reason_phrase, twilio_endpoint
from tests.fake_twilio import ACCOUNT_SID, AUTH_TOKEN, FakeTwilio
from workers.adapters import adapter_class
from workers.adapters import twilio as twilio_module
from workers.adapters.twilio import CREATE_ERROR_SIP, STATUS_SIP, TwilioAdapter
from workers.testing import call_once

FROM = "+15005550006"
TO = "+14155550100"
CALL_SID = "CA" + "ab" * 16


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with FakeTwilio() as server:
        yield server


def make(base_url: str, account_sid: str = ACCOUNT_SID, auth_token: str = AUTH_TOKEN, **options: str) -> TwilioAdapter:
    opts = {"base_url": base_url, "poll_interval": "0.01", "read_timeout": "5", **options}
    entry = ServerEntry.build("twilio", {"account_sid": account_sid, "auth_token": auth_token}, options=opts)
    return TwilioAdapter("tw", entry)


@pytest.fixture
def adapter(fake: FakeTwilio) -> Iterator[TwilioAdapter]:
    instance = make(fake.base_url)
    yield instance
    instance.close()


def soon(seconds: float = 5.0) -> float:
    return time.monotonic() + seconds


def assert_no_secret(exc: BusError, token: str = AUTH_TOKEN) -> None:
    assert token not in str(exc)
    assert token not in repr(exc.details)


# test


def test_registered_under_its_type() -> None:
    assert adapter_class("twilio") is TwilioAdapter


def test_test_reports_the_account(adapter: TwilioAdapter, fake: FakeTwilio) -> None:
    answer = adapter.test()
    assert answer.message == "Twilio account IF bus test account (active, Full)"
    assert answer.data == {
        "sid": ACCOUNT_SID,
        "friendly_name": "IF bus test account",
        "status": "active",
        "type": "Full",
    }
    assert AUTH_TOKEN not in repr(answer)  # the account resource carries auth_token: never echoed
    [request] = fake.requests
    assert (request.method, request.path) == ("GET", f"/2010-04-01/Accounts/{ACCOUNT_SID}.json")
    expected = "Basic " + base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
    assert request.headers["authorization"] == expected
    assert request.headers["accept"] == "application/json"


def test_wrong_token_is_auth_failed_naming_the_keys_not_the_token(fake: FakeTwilio) -> None:
    wrong = "0badc0de0badc0de0badc0de0badc0de"
    adapter = make(fake.base_url, auth_token=wrong)
    with pytest.raises(AuthFailed) as info:
        adapter.test()
    assert "--auth account_sid=… auth_token=…" in info.value.message
    assert "20003" in info.value.message
    assert_no_secret(info.value, wrong)
    assert_no_secret(info.value)
    with pytest.raises(AuthFailed):  # on create too: a 401 is not processed, so failing over is safe
        call_once(adapter, FROM, TO, "answered", {}, soon())
    assert len(fake.of_kind("create")) == 1


def test_forbidden_20403_is_auth_failed(adapter: TwilioAdapter, fake: FakeTwilio) -> None:
    fake.inject("account", 403, 20403, "Forbidden")
    with pytest.raises(AuthFailed):
        adapter.test()


@pytest.mark.parametrize("sid", ["AC123", "ac" + "0" * 32, "AC" + "g" * 32, "AC" + "0" * 33, "SK" + "0" * 32])
def test_bad_account_sid_refused_before_any_request(fake: FakeTwilio, sid: str) -> None:
    adapter = make(fake.base_url, account_sid=sid)
    for op in (
        adapter.test,
        lambda: call_once(adapter, FROM, TO, "answered", {}, soon()),
        lambda: adapter.hangup(CALL_SID, None, {}),
    ):
        with pytest.raises(InvalidInput, match="AC followed by 32 hex digits"):
            op()
    assert fake.requests == []


@pytest.mark.parametrize("call_id", ["CA12345xyz", "CA" + "z" * 32, "AC" + "0" * 32, "ca" + "0" * 32])
def test_bad_call_sid_refused_before_any_request(adapter: TwilioAdapter, fake: FakeTwilio, call_id: str) -> None:
    with pytest.raises(InvalidInput, match="CA followed by 32 hex digits"):
        adapter.hangup(call_id, None, {})
    assert fake.requests == []


def test_plain_http_refused_off_loopback(fake: FakeTwilio) -> None:
    adapter = make("http://api.example.com")
    with pytest.raises(InvalidInput, match="in clear"):
        adapter.test()
    for ok in ("http://localhost:1", "http://[::1]:1", "https://api.example.com"):
        assert str(make(ok).session.client.base_url).rstrip("/") == ok


# call


def test_call_accepted_returns_at_once(adapter: TwilioAdapter, fake: FakeTwilio) -> None:
    answer = call_once(adapter, FROM, TO, "accepted", {}, soon())
    assert answer.call_id is not None and twilio_module.CALL_SID_RE.fullmatch(answer.call_id)
    assert answer.data["status"] == "queued"
    [request] = fake.requests
    assert (request.method, request.path) == ("POST", f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls.json")
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    form = request.form
    assert form["To"] == [TO] and form["From"] == [FROM]
    assert form["Twiml"] == [twilio_module.DEFAULT_TWIML]
    assert form["Timeout"] == ["60"]  # answer_timeout's class default
    assert "Url" not in form


def test_call_followed_to_in_progress(fake: FakeTwilio) -> None:
    fake.statuses = ["queued", "ringing", "ringing", "in-progress"]
    adapter = make(fake.base_url)
    answer = call_once(adapter, FROM, TO, "answered", {}, soon())
    assert answer.message == f"Call {answer.call_id} answered"
    assert answer.data == {"status": "in-progress"}
    assert len(fake.of_kind("create")) == 1
    assert len(fake.of_kind("fetch")) == 3
    assert {r.path for r in fake.of_kind("fetch")} == {
        f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls/{answer.call_id}.json"
    }


def test_completed_counts_as_answered(fake: FakeTwilio) -> None:
    fake.statuses = ["queued", "completed"]
    answer = call_once(make(fake.base_url), FROM, TO, "answered", {}, soon())
    assert answer.call_id and "already ended" in answer.message


@pytest.mark.parametrize(
    ("status", "sip_code", "reason"),
    [
        ("busy", 486, "Busy Here"),
        ("no-answer", 480, "Temporarily Unavailable"),
        ("canceled", 487, "Request Terminated"),
        ("failed", 404, "Not Found"),
    ],
)
def test_unanswered_statuses_map_to_sip(fake: FakeTwilio, status: str, sip_code: int, reason: str) -> None:
    fake.statuses = ["queued", "ringing", status]
    with pytest.raises(CallRejected) as info:
        call_once(make(fake.base_url), FROM, TO, "answered", {}, soon())
    exc = info.value
    assert (exc.sip_code, exc.reason) == (sip_code, reason)
    assert exc.message == f"Call failed: SIP {sip_code} {reason}"
    assert exc.details["call_id"] in fake.calls and exc.details["twilio_status"] == status
    assert exc.details["server"] == "tw" and exc.exit_code == 5
    assert len(fake.of_kind("create")) == 1
    assert (STATUS_SIP[status], reason_phrase(STATUS_SIP[status])) == (sip_code, reason)


@pytest.mark.parametrize("code", sorted(CREATE_ERROR_SIP))
def test_create_refusals_map_to_sip(adapter: TwilioAdapter, fake: FakeTwilio, code: int) -> None:
    fake.inject("create", 400, code, f"Twilio says {code}")
    with pytest.raises(CallRejected) as info:
        call_once(adapter, FROM, TO, "answered", {}, soon())
    assert (info.value.sip_code, info.value.reason) == (CREATE_ERROR_SIP[code], reason_phrase(CREATE_ERROR_SIP[code]))
    assert info.value.details["twilio_code"] == code
    assert info.value.details["twilio_message"] == f"Twilio says {code}"
    assert len(fake.requests) == 1


def test_invalid_to_21211_from_the_fake_is_484(adapter: TwilioAdapter, fake: FakeTwilio) -> None:
    with pytest.raises(CallRejected) as info:
        call_once(adapter, FROM, "not-a-number", "answered", {}, soon())
    assert info.value.sip_code == 484 and info.value.details["twilio_code"] == 21211
    assert "not a valid phone number" in info.value.details["twilio_message"]


def test_other_4xx_is_invalid_input_with_twilios_message(adapter: TwilioAdapter, fake: FakeTwilio) -> None:
    fake.inject("create", 400, 21205, "Url is not a valid URL: foo")
    with pytest.raises(InvalidInput, match="Url is not a valid URL") as info:
        call_once(adapter, FROM, TO, "answered", {}, soon())
    assert info.value.details["twilio_code"] == 21205
    assert "https://www.twilio.com/docs/errors/21205" in info.value.message


def test_429_is_overloaded_with_retry_after(adapter: TwilioAdapter, fake: FakeTwilio) -> None:
    fake.inject("create", 429, 20429, "Too Many Requests", headers={"Retry-After": "3"})
    with pytest.raises(Overloaded) as info:
        call_once(adapter, FROM, TO, "answered", {}, soon())
    assert info.value.retry_after == 3.0
    assert info.value.outcome.transient
    assert len(fake.requests) == 1


def test_create_read_timeout_is_outcome_unknown_and_never_resent(fake: FakeTwilio) -> None:
    fake.stall("create")
    adapter = make(fake.base_url, read_timeout="0.3")
    started = time.monotonic()
    with pytest.raises(OutcomeUnknown) as info:
        call_once(adapter, FROM, TO, "answered", {}, soon())
    assert time.monotonic() - started < 3
    assert info.value.outcome is Outcome.AMBIGUOUS and not info.value.outcome.transient
    assert len(fake.of_kind("create")) == 1 and len(fake.requests) == 1


@pytest.mark.parametrize("status", [500, 502])
def test_create_5xx_is_outcome_unknown(adapter: TwilioAdapter, fake: FakeTwilio, status: int) -> None:
    fake.inject("create", status, 20500, "Internal Server Error")
    with pytest.raises(OutcomeUnknown, match="a call may have been placed"):
        call_once(adapter, FROM, TO, "answered", {}, soon())


def test_test_5xx_is_transient(adapter: TwilioAdapter, fake: FakeTwilio) -> None:
    fake.inject("account", 500, 20500, "Internal Server Error")
    with pytest.raises(Unreachable) as info:
        adapter.test()
    assert info.value.outcome.transient


def test_connection_refused_is_unreachable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    adapter = make(f"http://127.0.0.1:{port}", connect_timeout="1")
    with pytest.raises(Unreachable):
        adapter.test()
    with pytest.raises(Unreachable):  # nothing left us: safe to retry or fail over
        call_once(adapter, FROM, TO, "answered", {}, soon())


def test_deadline_while_ringing_is_outcome_unknown_naming_the_sid(fake: FakeTwilio) -> None:
    fake.statuses = ["queued", "ringing"]
    adapter = make(fake.base_url, poll_interval="0.05")
    started = time.monotonic()
    with pytest.raises(OutcomeUnknown) as info:
        call_once(adapter, FROM, TO, "answered", {}, soon(0.4))
    assert time.monotonic() - started < 2
    [sid] = fake.calls
    assert info.value.details["call_id"] == sid and sid in info.value.message
    assert "still ringing" in info.value.message and f"call_id={sid}" in info.value.message
    assert len(fake.of_kind("create")) == 1 and len(fake.of_kind("fetch")) >= 2


def test_answer_timeout_bounds_the_wait(fake: FakeTwilio, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(twilio_module, "RING_GRACE", 0.0)
    fake.statuses = ["queued"]
    adapter = make(fake.base_url, answer_timeout="0.3", poll_interval="0.05")
    started = time.monotonic()
    with pytest.raises(OutcomeUnknown, match="still queued"):
        call_once(adapter, FROM, TO, "answered", {}, soon(30))
    assert time.monotonic() - started < 2
    assert fake.of_kind("create")[0].form["Timeout"] == ["1"]


def test_status_poll_survives_transient_errors(fake: FakeTwilio) -> None:
    fake.statuses = ["queued", "in-progress"]
    fake.inject("fetch", 500, 20500, "Internal Server Error")
    fake.inject("fetch", 429, 20429, "Too Many Requests", headers={"Retry-After": "0"})
    answer = call_once(make(fake.base_url), FROM, TO, "answered", {}, soon())
    assert answer.data["status"] == "in-progress"
    assert len(fake.of_kind("create")) == 1 and len(fake.of_kind("fetch")) == 3


def test_auth_lost_while_following_is_outcome_unknown_not_auth(fake: FakeTwilio) -> None:
    """A failover after the call exists would ring the callee twice."""
    fake.statuses = ["queued", "ringing"]
    fake.inject("fetch", 401, 20003, "Authenticate")
    with pytest.raises(OutcomeUnknown) as info:
        call_once(make(fake.base_url), FROM, TO, "answered", {}, soon())
    assert info.value.details["call_id"] in fake.calls
    assert len(fake.of_kind("create")) == 1


def test_extras_url_instead_of_twiml(adapter: TwilioAdapter, fake: FakeTwilio) -> None:
    call_once(adapter, FROM, TO, "accepted", {"url": "https://example.com/twiml.xml"}, soon())
    form = fake.requests[0].form
    assert form["Url"] == ["https://example.com/twiml.xml"] and "Twiml" not in form


def test_extras_twiml(adapter: TwilioAdapter, fake: FakeTwilio) -> None:
    twiml = '<Response><Dial callerId="+15005550006">+14155550199</Dial></Response>'
    call_once(adapter, FROM, TO, "accepted", {"twiml": twiml}, soon())
    assert fake.requests[0].form["Twiml"] == [twiml]


@pytest.mark.parametrize(
    "extras",
    [
        {"twiml": "<Response/>", "url": "https://example.com/t"},
        {"url": "ftp://example.com/t"},
        {"url": "/relative"},
        {"twiml": "hello"},
        {"twiml": "<Response>" + "x" * 4000 + "</Response>"},
        {"record": "true"},
    ],
)
def test_bad_extras_refused_before_any_request(adapter: TwilioAdapter, fake: FakeTwilio, extras: dict) -> None:
    with pytest.raises(InvalidInput):
        call_once(adapter, FROM, TO, "answered", extras, soon())
    assert fake.requests == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("to", "+14155550100\r\nX-Injected: 1"),
        ("from", "+15005550006\nX-Injected: 1"),
        ("to", "sip:alice@example.com\r\nX-Injected: 1"),
        ("twiml", "<Response>\r\nX-Injected: 1</Response>"),
        ("url", "https://example.com/\r\nX-Injected: 1"),
    ],
)
def test_cr_lf_refused_and_never_sent(adapter: TwilioAdapter, fake: FakeTwilio, field: str, value: str) -> None:
    args = {"to": TO, "from": FROM}
    extras = {}
    if field in args:
        args[field] = value
    else:
        extras[field] = value
    with pytest.raises(InvalidInput, match="control characters"):
        call_once(adapter, args["from"], args["to"], "answered", extras, soon())
    with pytest.raises(InvalidInput, match="control characters"):
        adapter.hangup(CALL_SID + "\r\nX-Injected: 1", None, {})
    assert fake.requests == []


def test_server_text_is_scrubbed_of_the_token(adapter: TwilioAdapter, fake: FakeTwilio) -> None:
    fake.inject("create", 400, 21999, f"echo {AUTH_TOKEN}\r\nX-Evil: 1")
    with pytest.raises(InvalidInput) as info:
        call_once(adapter, FROM, TO, "answered", {}, soon())
    assert_no_secret(info.value)
    assert "\n" not in info.value.message


def test_one_client_reused_and_closed(adapter: TwilioAdapter, fake: FakeTwilio) -> None:
    adapter.test()
    client = adapter.session._client
    call_once(adapter, FROM, TO, "accepted", {}, soon())
    assert adapter.session._client is client and client is not None
    adapter.close()
    assert client.is_closed and adapter.session._client is None
    adapter.test()  # rebuilt lazily
    assert adapter.session._client is not None


# hangup


def placed(fake: FakeTwilio, adapter: TwilioAdapter, statuses: list[str]) -> str:
    fake.statuses = statuses
    answer = call_once(adapter, FROM, TO, "accepted", {}, soon())
    assert answer.call_id
    fake.requests.clear()
    return answer.call_id


def test_hangup_in_progress_sends_completed(adapter: TwilioAdapter, fake: FakeTwilio) -> None:
    sid = placed(fake, adapter, ["in-progress"])
    answer = adapter.hangup(sid, None, {})
    assert answer.call_id == sid and answer.data == {"status": "completed", "requested": "completed"}
    fetch, update = fake.requests
    path = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls/{sid}.json"
    assert (fetch.method, fetch.path) == ("GET", path)
    assert (update.method, update.path, update.form) == ("POST", path, {"Status": ["completed"]})


def test_hangup_ringing_sends_canceled(adapter: TwilioAdapter, fake: FakeTwilio) -> None:
    sid = placed(fake, adapter, ["ringing"])
    answer = adapter.hangup(sid, None, {})
    assert answer.data == {"status": "canceled", "requested": "canceled"}
    assert fake.calls[sid].updates == ["canceled"]


def test_hangup_answered_during_cancel_then_completes(adapter: TwilioAdapter, fake: FakeTwilio) -> None:
    sid = placed(fake, adapter, ["ringing"])
    fake.cancel_result = "in-progress"
    answer = adapter.hangup(sid, None, {})
    assert answer.data == {"status": "completed", "requested": "completed"}
    assert fake.calls[sid].updates == ["canceled", "completed"]


@pytest.mark.parametrize("status", ["busy", "completed", "no-answer"])
def test_hangup_of_an_ended_call_sends_nothing(adapter: TwilioAdapter, fake: FakeTwilio, status: str) -> None:
    sid = placed(fake, adapter, [status])
    answer = adapter.hangup(sid, None, {})
    assert "already ended" in answer.message and answer.data["status"] == status
    assert [r.method for r in fake.requests] == ["GET"]


def test_hangup_is_idempotent(adapter: TwilioAdapter, fake: FakeTwilio) -> None:
    sid = placed(fake, adapter, ["in-progress"])
    adapter.hangup(sid, None, {})
    assert "already ended" in adapter.hangup(sid, None, {}).message


def test_hangup_unknown_sid_is_a_clear_final_error(adapter: TwilioAdapter, fake: FakeTwilio) -> None:
    with pytest.raises(NotFound) as info:
        adapter.hangup(CALL_SID, None, {})
    exc = info.value
    assert exc.message.startswith(f"Not found: no call {CALL_SID}") and exc.details["twilio_code"] == 20404
    assert exc.exit_code == 1
    assert exc.details["call_id"] == CALL_SID
    assert not exc.outcome.transient and exc.outcome is not Outcome.AMBIGUOUS  # never retried
    assert len(fake.requests) == 1


def test_hangup_extras_refused(adapter: TwilioAdapter) -> None:
    with pytest.raises(InvalidInput, match="unknown key"):
        adapter.hangup(CALL_SID, None, {"status": "canceled"})


# number forms


@pytest.mark.parametrize(
    ("raw", "sent"),
    [
        ("+14155550100", "+14155550100"),
        ("+1 (415) 555-0100", "+14155550100"),
        ("+44 20.7183.8750", "+442071838750"),
        ("0044207183 8750", "+442071838750"),
        ("14155550100", "14155550100"),  # bare digits: not clearly E.164, Twilio decides
        ("13812345678", "13812345678"),
        ("1001", "1001"),
        ("client:alice", "client:alice"),
        ("sip:alice@example.com", "sip:alice@example.com"),
        ("SIP:alice@example.com;transport=tls", "SIP:alice@example.com;transport=tls"),
    ],
)
def test_number_forms(raw: str, sent: str) -> None:
    assert twilio_endpoint(raw, "to") == sent


@pytest.mark.parametrize("raw", ["+", "+0441234", "+1415555010012345", "+1415abc", ""])
def test_bad_plus_numbers_refused(raw: str) -> None:
    with pytest.raises(InvalidInput):
        twilio_endpoint(raw, "to")


@settings(database=None)
@given(st.text(max_size=40))
def test_number_forms_never_fail_otherwise(raw: str) -> None:
    try:
        sent = twilio_endpoint(raw, "to")
    except InvalidInput:
        return
    if sent.startswith("+"):
        assert twilio_module._E164.fullmatch(sent)
    assert "\r" not in sent and "\n" not in sent


# through the job entry point (inline mode, no Redis): results are JSON and a call is never re-sent


def register(fake: FakeTwilio, **options: str) -> None:
    from bus.registry import open_registry

    opts = {"base_url": fake.base_url, "poll_interval": "0.01", **options}
    entry = ServerEntry.build("twilio", {"account_sid": ACCOUNT_SID, "auth_token": AUTH_TOKEN}, options=opts)
    open_registry().add("tw", entry)


def test_job_busy_result(fake: FakeTwilio) -> None:
    from workers.jobs import execute

    fake.statuses = ["queued", "busy"]
    register(fake)
    result = execute({"op": "call", "server": "tw", "from": FROM, "to": TO})
    assert (result["outcome"], result["exit_code"], result["sip_code"]) == ("rejected", 5, 486)
    assert result["call_id"] in fake.calls and result["data"]["twilio_status"] == "busy"
    assert result["attempts"] == {"tw": 1}


def test_job_create_timeout_is_not_retried(fake: FakeTwilio) -> None:
    from workers.jobs import execute

    fake.stall("create", times=5)
    register(fake, read_timeout="0.2")
    result = execute({"op": "call", "server": "tw", "from": FROM, "to": TO})
    assert (result["outcome"], result["exit_code"]) == ("ambiguous", 6)
    assert len(fake.of_kind("create")) == 1
    assert AUTH_TOKEN not in repr(result)
