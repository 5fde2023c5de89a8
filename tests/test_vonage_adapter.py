"""The Vonage adapter against a fake Vonage over real loopback HTTP (tests/fake_vonage.py); no Redis.

Every Voice API request's JWT is verified by the fake with the public half of a key pair made here;
tests read the verified claims back from the fake's records.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from bus.calls import CallRef
from bus.credentials import load_private_key, max_auth_len, resolve_auth
from bus.errors import (
    AuthFailed,
    BusError,
    CallRejected,
    InvalidInput,
    Outcome,
    OutcomeUnknown,
    Overloaded,
    Unreachable,
)
from bus.server import ServerEntry
from bus.sip import reason_phrase
from tests.fake_vonage import API_KEY, API_SECRET, APPLICATION_ID, FakeVonage, new_key_pair, problem
from workers.adapters import adapter_class
from workers.adapters.vonage import STATUS_SIP, VonageAdapter, check_ncco
from workers.adapters.vonage_jwt import TokenMinter

TO = "+14155552671"
FROM = "+44 7700 900001"


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return new_key_pair()


def pem(private: Any) -> bytes:
    return private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture(scope="module")
def compact(key: rsa.RSAPrivateKey, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The registry form of the key, made the way `add … private_key=@PATH` makes it."""
    path = tmp_path_factory.mktemp("keys") / "private.key"
    path.write_bytes(pem(key))
    return resolve_auth("vonage", {"private_key": f"@{path}"})["private_key"]


@pytest.fixture
def fake(key: rsa.RSAPrivateKey) -> Iterator[FakeVonage]:
    with FakeVonage(key.public_key()) as server:
        yield server


def make(base_url: str, compact: str | None, application: bool = True, **options: str) -> VonageAdapter:
    auth = {"api_key": API_KEY, "api_secret": API_SECRET}
    if application and compact:
        auth.update(application_id=APPLICATION_ID, private_key=compact)
    opts = {"base_url": base_url, "rest_base_url": base_url, "poll_interval": "0.01", "read_timeout": "5", **options}
    # ServerEntry(...) rather than .build(): a 2048-bit key's compact form is longer than check()'s
    # generic 1024-character bound until bus/server.py applies bus.credentials.max_auth_len.
    return VonageAdapter("von", ServerEntry("vonage", auth, options=opts))


@pytest.fixture
def adapter(fake: FakeVonage, compact: str) -> Iterator[VonageAdapter]:
    instance = make(fake.base_url, compact)
    yield instance
    instance.close()


def soon(seconds: float = 5.0) -> float:
    return time.monotonic() + seconds


def only(fake: FakeVonage, kind: str) -> Any:
    [record] = fake.of_kind(kind)
    return record


# registration and test


def test_registered_under_its_type() -> None:
    assert adapter_class("vonage") is VonageAdapter


def test_test_reports_the_balance_with_key_and_secret_only(fake: FakeVonage) -> None:
    adapter = make(fake.base_url, None, application=False)
    answer = adapter.test()
    assert answer.message == "Vonage account, balance 10.28 EUR"
    assert answer.data == {"balance": 10.28, "currency": "EUR", "auto_reload": False}
    record = only(fake, "balance")
    expected = base64.b64encode(f"{API_KEY}:{API_SECRET}".encode()).decode()
    assert record.headers["authorization"] == f"Basic {expected}"
    assert record.path == "/account/get-balance"  # key and secret never in the query string


def test_test_with_a_wrong_secret_is_an_auth_failure(fake: FakeVonage) -> None:
    fake.api_secret = "another-secret"
    with pytest.raises(AuthFailed) as caught:
        make(fake.base_url, None, application=False).test()
    assert caught.value.exit_code == 3
    assert "authentication failed" in caught.value.message
    assert "api_key=… api_secret=…" in caught.value.message
    assert API_SECRET not in caught.value.message


def test_test_on_a_server_that_is_not_vonage(fake: FakeVonage) -> None:
    fake.inject("balance", 200, {"hello": "world"})
    with pytest.raises(InvalidInput, match="without a Vonage account balance"):
        make(fake.base_url, None, application=False).test()


def test_balance_server_error_is_overloaded_with_retry_after(fake: FakeVonage) -> None:
    fake.inject("balance", 500, headers={"Retry-After": "3"})
    with pytest.raises(Overloaded) as caught:
        make(fake.base_url, None, application=False).test()
    assert caught.value.retry_after == 3.0


# originate


def test_spec_call_from_an_application_name(adapter: VonageAdapter, fake: FakeVonage) -> None:
    """`call from=MyApp to=+14155552671`: random_from_number, no from, digits without +."""
    ref = adapter.originate("MyApp", TO, {}, soon())
    create = only(fake, "create")
    body = create.json
    assert body["to"] == [{"type": "phone", "number": "14155552671"}]
    assert body["random_from_number"] is True and "from" not in body
    assert body["ncco"] == [{"action": "talk", "text": "Hello. This is a test call placed by IF bus."}]
    assert body["ringing_timer"] == 60
    assert create.headers["content-type"] == "application/json"
    assert ref.call_id == next(iter(fake.calls))
    assert ref.handle["from"] == "random_from_number"
    assert ref.handle["conversation_uuid"].startswith("CON-")
    assert "random_from_number" in adapter.accepted(ref).message


def test_jwt_claims_verify_with_the_public_key(adapter: VonageAdapter, fake: FakeVonage) -> None:
    before = int(time.time())
    adapter.originate("MyApp", TO, {}, soon())
    claims = only(fake, "create").claims  # None would mean the signature did not verify
    assert claims is not None
    assert claims["application_id"] == APPLICATION_ID
    assert before - 1 <= claims["iat"] <= time.time()
    assert claims["exp"] - claims["iat"] == 300  # minutes, not Vonage's 24 h maximum
    assert len(claims["jti"]) == 36


def test_a_token_signed_with_another_key_is_refused(fake: FakeVonage) -> None:
    other = resolve_auth_pem(new_key_pair())
    adapter = make(fake.base_url, other)
    with pytest.raises(AuthFailed) as caught:
        adapter.originate("MyApp", TO, {}, soon())
    assert "application_id=… private_key=@…" in caught.value.message
    assert fake.calls == {}


def resolve_auth_pem(private: rsa.RSAPrivateKey) -> str:
    return base64.b64encode(
        private.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    ).decode()


def test_token_is_reused_then_renewed_before_expiry(compact: str) -> None:
    now = [1_000_000.0]
    minter = TokenMinter(APPLICATION_ID, compact, lifetime=300, margin=60, clock=lambda: now[0])
    first = minter.token()
    now[0] += 200
    assert minter.token() == first
    now[0] += 41  # 241 s: within 60 s of exp
    second = minter.token()
    assert second != first
    assert "private" not in repr(minter) and compact not in repr(minter)


def test_status_polls_reuse_one_token(adapter: VonageAdapter, fake: FakeVonage) -> None:
    ref = adapter.originate("MyApp", TO, {}, soon())
    adapter.follow(ref, soon())
    assert len(fake.of_kind("fetch")) == 3
    assert len(set(fake.tokens)) == 1


def test_from_number_is_sent_as_digits(adapter: VonageAdapter, fake: FakeVonage) -> None:
    adapter.originate(FROM, "0014155552671", {}, soon())
    body = only(fake, "create").json
    assert body["from"] == {"type": "phone", "number": "447700900001"}
    assert body["to"] == [{"type": "phone", "number": "14155552671"}]
    assert "random_from_number" not in body


def test_sip_uri_destination(adapter: VonageAdapter, fake: FakeVonage) -> None:
    adapter.originate(FROM, "sip:alice@sip.example.com", {}, soon())
    assert only(fake, "create").json["to"] == [{"type": "sip", "uri": "sip:alice@sip.example.com"}]


@pytest.mark.parametrize(
    ("from_", "to", "match"),
    [
        ("MyApp", "+123", "E.164|7 to 15"),
        ("MyApp", "1415555", None),  # 7 digits: the spec's minimum, accepted
        ("+1 41", TO, "E.164|7 to 15"),
        ("sip:me@example.com", TO, "phone number of the application"),
        ("MyApp", "sip:" + "a" * 60 + "@example.com", "at most 50"),
        ("MyApp", "+1415\r\n555", "control characters"),
    ],
)
def test_parties_are_checked_before_sending(
    adapter: VonageAdapter, fake: FakeVonage, from_: str, to: str, match: str | None
) -> None:
    if match is None:
        adapter.originate(from_, to, {}, soon())
        return
    with pytest.raises(InvalidInput, match=match):
        adapter.originate(from_, to, {}, soon())
    assert fake.requests == []


def test_given_ncco_is_sent(adapter: VonageAdapter, fake: FakeVonage) -> None:
    ncco = '[{"action":"talk","text":"Hi"},{"action":"connect","endpoint":[{"type":"phone","number":"14155550199"}]}]'
    adapter.originate("MyApp", TO, {"ncco": ncco}, soon())
    assert only(fake, "create").json["ncco"][1]["endpoint"][0]["number"] == "14155550199"


def test_answer_url_is_sent(adapter: VonageAdapter, fake: FakeVonage) -> None:
    adapter.originate("MyApp", TO, {"answer_url": "https://example.com/ncco.json"}, soon())
    body = only(fake, "create").json
    assert body["answer_url"] == ["https://example.com/ncco.json"] and "ncco" not in body


@pytest.mark.parametrize(
    ("extras", "match"),
    [
        ({"ncco": "[{"}, "not JSON"),
        ({"ncco": "[]"}, "array of actions"),
        ({"ncco": '[{"action":"dance"}]'}, r"ncco\[0\]: action 'dance' is not one of"),
        ({"ncco": '[{"action":"talk"}]'}, r"ncco\[0\] \(talk\): 'text' is a required property"),
        ({"ncco": '[{"action":"talk","text":"x","loop":-1}]'}, r"ncco\[0\]\.loop \(talk\)"),
        ({"ncco": '[{"action":"connect","endpoint":[{"type":"phone","number":"+1"}]}]'}, r"ncco\[0\]\.endpoint"),
        ({"ncco": "[]", "answer_url": "https://example.com/a"}, "not both"),
        ({"answer_url": "ftp://example.com/a"}, "http"),
        ({"twiml": "<Response/>"}, "unknown key"),
    ],
)
def test_bad_instructions_are_refused_before_sending(
    adapter: VonageAdapter, fake: FakeVonage, extras: dict[str, str], match: str
) -> None:
    with pytest.raises(InvalidInput, match=match):
        adapter.originate("MyApp", TO, extras, soon())
    assert fake.requests == []


def test_check_ncco_accepts_vonage_examples() -> None:
    check_ncco([{"action": "talk", "text": "Hello", "language": "en-GB", "bargeIn": False}])
    check_ncco([{"action": "stream", "streamUrl": ["https://example.com/a.mp3"]}])
    check_ncco([{"action": "connect", "endpoint": [{"type": "sip", "uri": "sip:a@example.com"}]}])


@pytest.mark.parametrize("missing", ["application_id", "private_key", "both"])
def test_call_and_hangup_need_the_application_credentials(
    fake: FakeVonage, compact: str, missing: str
) -> None:
    adapter = make(fake.base_url, compact)
    auth = dict(adapter.entry.auth)
    for key in ("application_id", "private_key") if missing == "both" else (missing,):
        del auth[key]
    adapter = VonageAdapter("von", ServerEntry("vonage", auth, options=adapter.entry.options))
    with pytest.raises(InvalidInput) as caught:
        adapter.originate("MyApp", TO, {}, soon())
    message = caught.value.message
    assert caught.value.exit_code == 2
    for key in ("application_id", "private_key") if missing == "both" else (missing,):
        assert key in message.split(": add ")[1]
    assert "private_key=@" in message
    with pytest.raises(InvalidInput, match="add"):
        adapter.hangup("63f61863-4a51-4f6b-86e1-46edebcf9356", None, {})
    assert fake.requests == []


def test_plain_http_only_on_loopback(compact: str) -> None:
    adapter = make("http://api.example.com", compact)
    with pytest.raises(InvalidInput, match="plain http"):
        adapter.originate("MyApp", TO, {}, soon())
    adapter = make("https://api.example.com", compact, rest_base_url="http://10.0.0.1:8080")
    with pytest.raises(InvalidInput, match="plain http"):
        adapter.test()


# errors on create


def test_rate_limit_on_create_is_overloaded(adapter: VonageAdapter, fake: FakeVonage) -> None:
    fake.inject("create", 429, headers={"Retry-After": "7"})
    with pytest.raises(Overloaded) as caught:
        adapter.originate("MyApp", TO, {}, soon())
    assert caught.value.retry_after == 7.0
    assert caught.value.outcome.transient


@pytest.mark.parametrize("status", [500, 502, 504])
def test_server_error_on_create_is_outcome_unknown(adapter: VonageAdapter, fake: FakeVonage, status: int) -> None:
    """Vonage has no idempotency key: a 5xx other than 503 may have placed the call."""
    fake.inject("create", status)
    with pytest.raises(OutcomeUnknown, match="may have been placed"):
        adapter.originate("MyApp", TO, {}, soon())


def test_timeout_after_create_was_sent_is_outcome_unknown_and_not_resent(fake: FakeVonage, compact: str) -> None:
    adapter = make(fake.base_url, compact, read_timeout="0.3")
    fake.stall("create")
    with pytest.raises(OutcomeUnknown) as caught:
        adapter.originate("MyApp", TO, {}, soon())
    assert caught.value.exit_code == 6
    assert len(fake.of_kind("create")) == 1


def test_deadline_bounds_the_create_wait(fake: FakeVonage, compact: str) -> None:
    adapter = make(fake.base_url, compact, read_timeout="30")
    adapter.originate("MyApp", TO, {}, soon())  # connected: the short deadline below can only cut the read
    fake.stall("create")
    started = time.monotonic()
    with pytest.raises(OutcomeUnknown):
        adapter.originate("MyApp", TO, {}, soon(0.5))
    assert time.monotonic() - started < 5
    assert len(fake.of_kind("create")) == 2


def test_nothing_listening_is_unreachable(compact: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    adapter = make(f"http://127.0.0.1:{port}", compact)
    with pytest.raises(Unreachable):
        adapter.originate("MyApp", TO, {}, soon())


def test_validation_error_names_the_parameters(adapter: VonageAdapter, fake: FakeVonage) -> None:
    body = problem(400, "Invalid request")
    body["invalid_parameters"] = [{"name": "to", "reason": "Is invalid"}]
    fake.inject("create", 400, body)
    with pytest.raises(InvalidInput, match="invalid: to"):
        adapter.originate("MyApp", TO, {}, soon())


def test_forbidden_is_an_auth_failure(adapter: VonageAdapter, fake: FakeVonage) -> None:
    fake.inject("create", 403)
    with pytest.raises(AuthFailed, match="permission"):
        adapter.originate("MyApp", TO, {}, soon())


# follow


@pytest.mark.parametrize("final", ["answered", "machine", "completed"])
def test_follow_answered(adapter: VonageAdapter, fake: FakeVonage, final: str) -> None:
    fake.statuses = ["started", "ringing", final]
    ref = adapter.originate("MyApp", TO, {}, soon())
    answer = adapter.follow(ref, soon())
    assert answer.call_id == ref.call_id
    assert answer.message.startswith(f"Call {ref.call_id} answered")
    assert "random_from_number" in answer.message
    assert answer.data["status"] == final


@pytest.mark.parametrize("status", sorted(STATUS_SIP))
def test_follow_refusals(adapter: VonageAdapter, fake: FakeVonage, status: str) -> None:
    fake.statuses = ["ringing", status]
    ref = adapter.originate("MyApp", TO, {}, soon())
    with pytest.raises(CallRejected) as caught:
        adapter.follow(ref, soon())
    code = STATUS_SIP[status]
    assert caught.value.sip_code == code
    assert caught.value.message == f"Call failed: SIP {code} {reason_phrase(code)}"
    assert caught.value.details["vonage_status"] == status
    assert caught.value.details["call_id"] == ref.call_id


def test_status_table_is_the_issue_s() -> None:
    assert STATUS_SIP == {
        "busy": 486,
        "timeout": 480,
        "unanswered": 480,
        "rejected": 603,
        "failed": 503,
        "cancelled": 487,
    }


def test_follow_gives_up_at_the_deadline_as_outcome_unknown(adapter: VonageAdapter, fake: FakeVonage) -> None:
    fake.statuses = ["ringing"]
    ref = adapter.originate("MyApp", TO, {}, soon())
    with pytest.raises(OutcomeUnknown, match="still ringing") as caught:
        adapter.follow(ref, soon(0.2))
    assert caught.value.details["call_id"] == ref.call_id


def test_follow_rides_out_a_rate_limited_poll(adapter: VonageAdapter, fake: FakeVonage) -> None:
    ref = adapter.originate("MyApp", TO, {}, soon())
    fake.inject("fetch", 429, headers={"Retry-After": "0"})
    fake.inject("fetch", 503)
    assert adapter.follow(ref, soon()).data["status"] == "answered"


def test_follow_an_unknown_call_raises(adapter: VonageAdapter) -> None:
    ref = CallRef("von", "63f61863-4a51-4f6b-86e1-46edebcf9356", {})
    with pytest.raises(BusError) as caught:
        adapter.follow(ref, soon())
    assert caught.value.outcome is Outcome.NOT_FOUND


# hangup


def test_hangup_of_a_live_call(adapter: VonageAdapter, fake: FakeVonage) -> None:
    fake.statuses = ["answered"]
    ref = adapter.originate("MyApp", TO, {}, soon())
    assert ref.call_id
    answer = adapter.hangup(ref.call_id, ref, {})
    assert answer.message == f"Call {ref.call_id} ended"
    hangup = only(fake, "hangup")
    assert hangup.method == "PUT" and hangup.path == f"/v1/calls/{ref.call_id}"
    assert hangup.json == {"action": "hangup"}
    assert hangup.claims is not None and hangup.claims["application_id"] == APPLICATION_ID
    assert fake.calls[ref.call_id].status == "completed"


def test_hangup_of_an_ended_call_is_already_ended(adapter: VonageAdapter, fake: FakeVonage) -> None:
    fake.statuses = ["completed"]
    ref = adapter.originate("MyApp", TO, {}, soon())
    assert ref.call_id
    answer = adapter.hangup(ref.call_id, None, {})
    assert answer.data == {"already_ended": True}
    assert "had already ended" in answer.message


def test_hangup_with_a_malformed_id_sends_nothing(adapter: VonageAdapter, fake: FakeVonage) -> None:
    for bad in ("chan-001", "63f61863-4a51-4f6b-86e1-46edebcf935", "../account"):
        with pytest.raises(InvalidInput, match="not a Vonage call uuid"):
            adapter.hangup(bad, None, {})
    assert fake.requests == []


def test_hangup_server_error_is_overloaded(adapter: VonageAdapter, fake: FakeVonage) -> None:
    fake.inject("hangup", 500, headers={"Retry-After": "2"})
    with pytest.raises(Overloaded) as caught:
        adapter.hangup("63f61863-4a51-4f6b-86e1-46edebcf9356", None, {})
    assert caught.value.retry_after == 2.0


# secrets


def test_no_secret_in_any_output(
    adapter: VonageAdapter, fake: FakeVonage, compact: str, key: rsa.RSAPrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    """api_secret, the private key and every JWT stay out of messages, details, results and logs,
    even when the server quotes them back."""
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []

    def keep(obj: Any) -> None:
        seen.append(repr(obj))
        if isinstance(obj, BusError):
            seen.extend([obj.message, repr(obj.details), str(obj)])

    keep(adapter.test())
    ref = adapter.originate("MyApp", TO, {}, soon())
    keep(ref)
    keep(adapter.accepted(ref))
    keep(adapter.follow(ref, soon()))
    token = fake.tokens[-1]
    echo = problem(400, f"bad token {token} for {API_SECRET}")
    echo["title"] = f"from {API_KEY}:{API_SECRET}"  # a server can only echo what it received: never the key
    echo["invalid_parameters"] = [{"name": token}]
    fake.inject("create", 400, echo)
    fake.inject("balance", 401, {"error-code": "401", "error-code-label": f"secret {API_SECRET} wrong"})
    fake.inject("hangup", 500, problem(500, f"{token}"))
    for action in (
        lambda: adapter.originate("MyApp", TO, {}, soon()),
        lambda: adapter.test(),
        lambda: adapter.hangup(ref.call_id or "", ref, {}),
    ):
        with pytest.raises(BusError) as caught:
            action()
        keep(caught.value)
    keep(adapter)
    keep(adapter._minter)
    text = "\n".join(seen) + "\n".join(r.getMessage() for r in caplog.records)
    pem_lines = [line for line in pem(key).decode().splitlines() if "-----" not in line]
    for secret in [API_SECRET, compact[100:140], compact[-40:], *pem_lines[2:5], *set(fake.tokens)]:
        assert secret not in text
    assert "****" in text  # the echoed secrets were there, scrubbed


# credentials read at `add`


def test_private_key_file_is_read_and_stored_compact(key: rsa.RSAPrivateKey, tmp_path: Path) -> None:
    path = tmp_path / "private.key"
    path.write_bytes(pem(key))
    auth = resolve_auth("vonage", {"api_key": API_KEY, "private_key": f"@{path}"})
    assert auth["api_key"] == API_KEY
    stored = auth["private_key"]
    assert "\n" not in stored and len(stored) <= max_auth_len("vonage", "private_key", 1024)
    assert load_private_key(stored).private_numbers() == key.private_numbers()
    assert resolve_auth("vonage", auth) == auth  # a stored value passes again (e.g. --replace from a copy)


def test_traditional_rsa_pem_is_accepted(key: rsa.RSAPrivateKey, tmp_path: Path) -> None:
    path = tmp_path / "rsa.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )
    assert load_private_key(resolve_auth("vonage", {"private_key": f"@{path}"})["private_key"])


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "no such file"),
        (b"hello\n", "not a PEM"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "not a PEM private key"),
        ("encrypted", "encrypted"),
        ("ec", "RSA"),
    ],
)
def test_bad_key_files_are_refused(
    key: rsa.RSAPrivateKey, tmp_path: Path, content: bytes | str | None, match: str
) -> None:
    path = tmp_path / "k.pem"
    if content == "encrypted":
        content = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    elif content == "ec":
        content = pem(ec.generate_private_key(ec.SECP256R1()))
    if isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(InvalidInput, match=match) as caught:
        resolve_auth("vonage", {"private_key": f"@{path}"})
    assert caught.value.exit_code == 2


def test_inline_key_that_is_not_a_key_is_refused_without_echo() -> None:
    with pytest.raises(InvalidInput, match="@PATH") as caught:
        resolve_auth("vonage", {"private_key": "hunter2-not-a-key"})
    assert "hunter2" not in caught.value.message


def test_other_types_and_keys_are_untouched() -> None:
    assert resolve_auth("twilio", {"auth_token": "@x"}) == {"auth_token": "@x"}
    assert resolve_auth("vonage", {"api_secret": "@x"}) == {"api_secret": "@x"}


# the spec's lines through the real CLI (`ifbus`, embedded mode, a temp IFBUS_HOME from conftest)

IFBUS = Path(sys.executable).parent / "ifbus"


def ifbus(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(IFBUS), *args], capture_output=True, text=True, timeout=60, env=os.environ.copy())


def add(fake: FakeVonage, *auth: str) -> None:
    opts = ("--opt", f"base_url={fake.base_url}", f"rest_base_url={fake.base_url}", "poll_interval=0.01")
    result = ifbus("add", "sip", "myvonage", "vonage", "--auth", f"api_key={API_KEY}", f"api_secret={API_SECRET}",
                   *auth, *opts)
    assert result.returncode == 0, result.stderr


def test_cli_spec_lines_test_and_call_without_application(ifbus_env: Path, fake: FakeVonage) -> None:
    """`add … --auth api_key= api_secret=`, `test` → balance (exit 0), `call` → exit 2 naming what to add."""
    add(fake)
    tested = ifbus("test", "sip", "myvonage")
    assert tested.returncode == 0, tested.stderr
    assert "Vonage account, balance 10.28 EUR" in tested.stdout
    called = ifbus("call", "sip", "myvonage", "from=MyApp", "to=+14155552671")
    assert called.returncode == 2
    assert "application_id and private_key" in called.stderr and "private_key=@" in called.stderr
    assert fake.of_kind("create") == []
    listing = ifbus("list", "sip", "--json")
    for text in (tested.stdout, tested.stderr, called.stdout, called.stderr, listing.stdout):
        assert API_SECRET not in text


def test_cli_test_with_a_wrong_secret_exits_3(ifbus_env: Path, fake: FakeVonage) -> None:
    fake.api_secret = "rotated-secret"
    add(fake)
    result = ifbus("test", "sip", "myvonage")
    assert result.returncode == 3, result.stderr
    assert API_SECRET not in result.stdout + result.stderr


def test_cli_add_refuses_a_missing_key_file(ifbus_env: Path, fake: FakeVonage, tmp_path: Path) -> None:
    opts = ("--opt", f"base_url={fake.base_url}")
    result = ifbus("add", "sip", "myvonage", "vonage", "--auth", f"api_key={API_KEY}", f"api_secret={API_SECRET}",
                   f"application_id={APPLICATION_ID}", f"private_key=@{tmp_path / 'nope.key'}", *opts)
    assert result.returncode == 2 and "no such file" in result.stderr


def test_cli_call_and_hangup_with_the_application_key(
    ifbus_env: Path, fake: FakeVonage, key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    path = tmp_path / "private.key"
    path.write_bytes(pem(key))
    add(fake, f"application_id={APPLICATION_ID}", f"private_key=@{path}")
    registry = (ifbus_env / "sip_servers.json").read_text()
    assert str(path) not in registry  # the key itself is stored, not a path only this host has
    called = ifbus("call", "sip", "myvonage", "from=MyApp", "to=+14155552671", "--json")
    assert called.returncode == 0, called.stderr
    create = only(fake, "create")
    assert create.claims is not None and create.json["to"][0]["number"] == "14155552671"
    assert create.json["random_from_number"] is True
    call_id = json.loads(called.stdout)["call_id"]
    assert call_id == next(iter(fake.calls))
    ended = ifbus("hangup", "sip", "myvonage", f"call_id={call_id}")
    assert ended.returncode == 0, ended.stderr
    assert only(fake, "hangup").json == {"action": "hangup"}
    listing = ifbus("list", "sip", "--json")
    for text in (called.stdout, called.stderr, ended.stdout, ended.stderr, listing.stdout):
        for secret in (API_SECRET, *fake.tokens, pem(key).decode().splitlines()[3]):
            assert secret not in text
