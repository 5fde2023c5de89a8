"""Contract: every request the Twilio adapter sends is valid against Twilio's own OpenAPI description.

Requests are captured by the fake (tests/fake_twilio.py) over loopback and validated with openapi-core
against twilio/twilio-oai `spec/json/twilio_api_v2010.json`, the loopback origin mapped back to the
spec's server https://api.twilio.com. The fake's answers are checked against the same description, so
the fake cannot drift from Twilio's documented shapes either. The part of the spec these paths use ships
in tests/specs/twilio/ (MIT, see its README), so the tests run in any clone; IFBUS_SPECS_DIR may point at
a folder holding the full description instead.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

import pytest
from openapi_core import OpenAPI
from openapi_core.validation.request.exceptions import (
    InvalidParameter,
    InvalidRequestBody,
    RequestBodyValidationError,
    SecurityValidationError,
)

from bus.server import ServerEntry
from tests import contract
from tests.fake_twilio import ACCOUNT_SID, AUTH_TOKEN, FakeTwilio
from tests.http_fake import Recorded
from workers.adapters.twilio import TwilioAdapter
from workers.testing import call_once

TWILIO_ORIGIN = "https://api.twilio.com"  # the spec's `servers` entry for every path used here
# The subset shipped in tests/specs/twilio/ (see its README); with IFBUS_SPECS_DIR, a full copy there.
SPEC_FILES = (
    "twilio/twilio_api_v2010.subset.json",
    "twilio/twilio_api_v2010.json",
    "derived/twilio_api_v2010.form-arrays.json",
)


def specs_dir() -> Path:
    configured = os.environ.get("IFBUS_SPECS_DIR")
    return Path(configured) if configured else Path(__file__).resolve().parent / "specs"


@pytest.fixture(scope="module")
def spec() -> OpenAPI:
    folder = specs_dir()
    for name in SPEC_FILES:
        path = folder / name
        if path.is_file():
            return OpenAPI.from_dict(json.loads(path.read_text(encoding="utf-8")))
    pytest.fail(f"Twilio OpenAPI description not found: none of {', '.join(SPEC_FILES)} in {folder} (IFBUS_SPECS_DIR)")


def check(spec: OpenAPI, record: Recorded, response: bool = True) -> None:
    contract.check(spec, record, TWILIO_ORIGIN, response)


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with FakeTwilio() as server:
        yield server


@pytest.fixture
def adapter(fake: FakeTwilio) -> Iterator[TwilioAdapter]:
    entry = ServerEntry.build(
        "twilio",
        {"account_sid": ACCOUNT_SID, "auth_token": AUTH_TOKEN},
        options={"base_url": fake.base_url, "poll_interval": "0.01"},
    )
    instance = TwilioAdapter("tw", entry)
    yield instance
    instance.close()


def only(fake: FakeTwilio, kind: str) -> Recorded:
    [record] = fake.of_kind(kind)
    return record


def test_account_fetch(spec: OpenAPI, adapter: TwilioAdapter, fake: FakeTwilio) -> None:
    adapter.test()
    check(spec, only(fake, "account"))


def test_call_create_with_default_twiml_and_fetches(spec: OpenAPI, adapter: TwilioAdapter, fake: FakeTwilio) -> None:
    call_once(adapter, "+15005550006", "+1 (415) 555-0100", "answered", {}, time.monotonic() + 5)
    create = only(fake, "create")
    assert "Twiml" in create.form and "Timeout" in create.form
    check(spec, create)
    fetches = fake.of_kind("fetch")
    assert len(fetches) == 2
    for record in fetches:
        check(spec, record)


def test_call_create_with_url(spec: OpenAPI, adapter: TwilioAdapter, fake: FakeTwilio) -> None:
    call_once(adapter,
        "client:alice", "sip:bob@example.com", "accepted", {"url": "https://example.com/t.xml"}, time.monotonic() + 5
    )
    create = only(fake, "create")
    assert create.form["Url"] == ["https://example.com/t.xml"]
    check(spec, create)


def test_call_create_with_given_twiml(spec: OpenAPI, adapter: TwilioAdapter, fake: FakeTwilio) -> None:
    twiml = "<Response><Dial>+14155550199</Dial></Response>"
    call_once(adapter, "+15005550006", "+14155550100", "accepted", {"twiml": twiml}, time.monotonic() + 5)
    check(spec, only(fake, "create"))


@pytest.mark.parametrize(("statuses", "sent"), [(["in-progress"], "completed"), (["ringing"], "canceled")])
def test_call_update(spec: OpenAPI, adapter: TwilioAdapter, fake: FakeTwilio, statuses: list[str], sent: str) -> None:
    fake.statuses = statuses
    sid = call_once(adapter, "+15005550006", "+14155550100", "accepted", {}, time.monotonic() + 5).call_id
    assert sid
    adapter.hangup(sid, None, {})
    update = only(fake, "update")
    assert update.form == {"Status": [sent]}
    check(spec, update)
    check(spec, only(fake, "fetch"))


# The check can fail: requests the adapter never sends are refused by the same validation.


def captured_create(adapter: TwilioAdapter, fake: FakeTwilio) -> Recorded:
    call_once(adapter, "+15005550006", "+14155550100", "accepted", {}, time.monotonic() + 5)
    return only(fake, "create")


def with_form(record: Recorded, **changes: str | None) -> Recorded:
    form = dict(parse_qsl(record.body.decode()))
    for key, value in changes.items():
        if value is None:
            form.pop(key, None)
        else:
            form[key] = value
    return replace(record, body=urlencode(form).encode())


def test_missing_to_fails_validation(spec: OpenAPI, adapter: TwilioAdapter, fake: FakeTwilio) -> None:
    create = captured_create(adapter, fake)
    check(spec, create, response=False)
    with pytest.raises(InvalidRequestBody):
        check(spec, with_form(create, To=None), response=False)


def test_non_integer_timeout_fails_validation(spec: OpenAPI, adapter: TwilioAdapter, fake: FakeTwilio) -> None:
    with pytest.raises(RequestBodyValidationError, match="integer"):
        check(spec, with_form(captured_create(adapter, fake), Timeout="soon"), response=False)


def test_bad_update_status_fails_validation(spec: OpenAPI, adapter: TwilioAdapter, fake: FakeTwilio) -> None:
    fake.statuses = ["in-progress"]
    sid = call_once(adapter, "+15005550006", "+14155550100", "accepted", {}, time.monotonic() + 5).call_id
    assert sid
    adapter.hangup(sid, None, {})
    update = only(fake, "update")
    with pytest.raises(InvalidRequestBody):
        check(spec, replace(update, body=b"Status=hangup"), response=False)


def test_short_account_sid_fails_validation(spec: OpenAPI, adapter: TwilioAdapter, fake: FakeTwilio) -> None:
    create = captured_create(adapter, fake)
    with pytest.raises(InvalidParameter):
        check(spec, replace(create, path=create.path.replace(ACCOUNT_SID, "AC123")), response=False)


def test_missing_basic_auth_fails_validation(spec: OpenAPI, adapter: TwilioAdapter, fake: FakeTwilio) -> None:
    create = captured_create(adapter, fake)
    headers = {k: v for k, v in create.headers.items() if k != "authorization"}
    with pytest.raises(SecurityValidationError):
        check(spec, replace(create, headers=headers), response=False)
