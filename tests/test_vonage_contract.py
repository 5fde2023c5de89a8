"""Contract: every request the Vonage adapter sends is valid against Vonage's own OpenAPI descriptions.

Requests are captured by the fake (tests/fake_vonage.py) over loopback and validated with openapi-core
against Nexmo/api-specification `definitions/voice.yml` and `definitions/account.yml` (the derived copies
in tests/specs/vonage/: paths under /v1/calls, endpoint `type` enums so `to[]`'s oneOf can match, Basic
auth on get-balance; README there), the loopback origin mapped back to https://api.nexmo.com and
https://rest.nexmo.com. The fake's successful answers are checked against the same descriptions, so the
fake cannot drift from Vonage's documented shapes either. The specs ship with the tests (MIT, LICENSE
beside them), so this runs in a clone without ../shared.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa
from openapi_core import OpenAPI
from openapi_core.validation.request.exceptions import InvalidRequestBody, SecurityValidationError

from bus.credentials import resolve_auth
from bus.server import ServerEntry
from tests import contract
from tests.fake_vonage import API_KEY, API_SECRET, APPLICATION_ID, FakeVonage, Recorded, new_key_pair
from workers.adapters.vonage import VonageAdapter

SPECS = Path(__file__).resolve().parent / "specs" / "vonage"
VOICE_ORIGIN = "https://api.nexmo.com"
REST_ORIGIN = "https://rest.nexmo.com"
TO = "+14155552671"


@pytest.fixture(scope="module")
def voice_spec() -> OpenAPI:
    return OpenAPI.from_dict(yaml.safe_load((SPECS / "vonage-voice.v1-paths.patched.yml").read_text("utf-8")))


@pytest.fixture(scope="module")
def account_spec() -> OpenAPI:
    return OpenAPI.from_dict(yaml.safe_load((SPECS / "vonage-account.basic-auth.yml").read_text("utf-8")))


def check(spec: OpenAPI, record: Recorded, origin: str = VOICE_ORIGIN, response: bool = True) -> None:
    contract.check(spec, record, origin, response)


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return new_key_pair()


@pytest.fixture
def fake(key: rsa.RSAPrivateKey) -> Iterator[FakeVonage]:
    with FakeVonage(key.public_key()) as server:
        yield server


@pytest.fixture
def adapter(fake: FakeVonage, key: rsa.RSAPrivateKey, tmp_path: Path) -> Iterator[VonageAdapter]:
    from cryptography.hazmat.primitives import serialization

    path = tmp_path / "private.key"
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    auth = resolve_auth(
        "vonage",
        {"api_key": API_KEY, "api_secret": API_SECRET, "application_id": APPLICATION_ID, "private_key": f"@{path}"},
    )
    options = {"base_url": fake.base_url, "rest_base_url": fake.base_url, "poll_interval": "0.01"}
    instance = VonageAdapter("von", ServerEntry("vonage", auth, options=options))
    yield instance
    instance.close()


def only(fake: FakeVonage, kind: str) -> Recorded:
    [record] = fake.of_kind(kind)
    return record


def soon() -> float:
    return time.monotonic() + 5


def test_balance(account_spec: OpenAPI, adapter: VonageAdapter, fake: FakeVonage) -> None:
    adapter.test()
    check(account_spec, only(fake, "balance"), REST_ORIGIN)


@pytest.mark.parametrize(
    ("from_", "to", "extras"),
    [
        ("MyApp", TO, {}),  # the spec's line: random_from_number
        ("+447700900001", "+1 (415) 555-2671", {}),
        ("447700900001", "sip:alice@sip.example.com", {}),
        ("MyApp", TO, {"answer_url": "https://example.com/answer"}),
        ("MyApp", TO, {"ncco": '[{"action":"connect","endpoint":[{"type":"phone","number":"14155550199"}]}]'}),
    ],
)
def test_call_create_follow_and_hangup(
    voice_spec: OpenAPI, adapter: VonageAdapter, fake: FakeVonage, from_: str, to: str, extras: dict[str, str]
) -> None:
    ref = adapter.originate(from_, to, extras, soon())
    adapter.follow(ref, soon())
    assert ref.call_id
    adapter.hangup(ref.call_id, ref, {})
    check(voice_spec, only(fake, "create"))
    for record in fake.of_kind("fetch"):
        check(voice_spec, record)
    hangup = only(fake, "hangup")
    assert hangup.response_status == 204
    check(voice_spec, hangup)


def test_spec_example_is_sent_as_digits(voice_spec: OpenAPI, adapter: VonageAdapter, fake: FakeVonage) -> None:
    adapter.originate("MyApp", TO, {}, soon())
    body = only(fake, "create").json
    assert body["to"][0]["number"] == "14155552671" and body["random_from_number"] is True


# The check can fail: requests the adapter never sends are refused by the same validation.


def created(adapter: VonageAdapter, fake: FakeVonage) -> Recorded:
    adapter.originate("+447700900001", TO, {}, soon())
    return only(fake, "create")


def with_body(record: Recorded, change: Any) -> Recorded:
    body = json.loads(record.body)
    change(body)
    return replace(record, body=json.dumps(body).encode())


def test_short_number_fails_validation(voice_spec: OpenAPI, adapter: VonageAdapter, fake: FakeVonage) -> None:
    create = created(adapter, fake)
    check(voice_spec, create, response=False)
    with pytest.raises(InvalidRequestBody):
        check(voice_spec, with_body(create, lambda b: b["to"][0].update(number="123456")), response=False)


def test_the_spec_does_not_catch_a_plus(voice_spec: OpenAPI, adapter: VonageAdapter, fake: FakeVonage) -> None:
    """AddressE164's `pattern: \\d{7,15}` is unanchored (JSON Schema patterns search), so `+1415…` passes
    the published contract: the adapter's own digits-only check (test_vonage_adapter) is what keeps `+` out."""
    plus = with_body(created(adapter, fake), lambda b: b["to"][0].update(number="+14155552671"))
    check(voice_spec, plus, response=False)


def test_missing_to_fails_validation(voice_spec: OpenAPI, adapter: VonageAdapter, fake: FakeVonage) -> None:
    with pytest.raises(InvalidRequestBody):
        check(voice_spec, with_body(created(adapter, fake), lambda b: b.pop("to")), response=False)


def test_ringing_timer_out_of_range_fails_validation(
    voice_spec: OpenAPI, adapter: VonageAdapter, fake: FakeVonage
) -> None:
    with pytest.raises(InvalidRequestBody):
        check(voice_spec, with_body(created(adapter, fake), lambda b: b.update(ringing_timer=600)), response=False)


def test_missing_bearer_fails_validation(voice_spec: OpenAPI, adapter: VonageAdapter, fake: FakeVonage) -> None:
    create = created(adapter, fake)
    headers = {k: v for k, v in create.headers.items() if k != "authorization"}
    with pytest.raises(SecurityValidationError):
        check(voice_spec, replace(create, headers=headers), response=False)


def test_unknown_update_action_fails_validation(
    voice_spec: OpenAPI, adapter: VonageAdapter, fake: FakeVonage
) -> None:
    fake.statuses = ["answered"]
    ref = adapter.originate("MyApp", TO, {}, soon())
    assert ref.call_id
    adapter.hangup(ref.call_id, ref, {})
    hangup = only(fake, "hangup")
    with pytest.raises(InvalidRequestBody):
        check(voice_spec, replace(hangup, body=b'{"action":"end"}'), response=False)


def test_balance_without_basic_auth_fails_validation(
    account_spec: OpenAPI, adapter: VonageAdapter, fake: FakeVonage
) -> None:
    adapter.test()
    record = only(fake, "balance")
    headers = {k: v for k, v in record.headers.items() if k != "authorization"}
    with pytest.raises(SecurityValidationError):
        check(account_spec, replace(record, headers=headers), REST_ORIGIN, response=False)
