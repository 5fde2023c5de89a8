"""A small fake of Twilio's REST API 2010-04-01 (Accounts and Calls), served on 127.0.0.1 for tests.

It speaks the wire shapes Twilio documents, so the adapter is exercised over real loopback HTTP:

- Paths, methods, form fields, status enums and the JSON bodies of the account and call resources
  follow Twilio's own OpenAPI description, twilio/twilio-oai `spec/json/twilio_api_v2010.json`
  (copy in tests/specs/twilio/): `GET /2010-04-01/Accounts/{Sid}.json` → schema
  `api.v2010.account`; `POST /2010-04-01/Accounts/{AccountSid}/Calls.json` (form-encoded
  `CreateCallRequest`, required `To` and `From`) → 201 `api.v2010.account.call`;
  `GET` / `POST` (`UpdateCallRequest`, `Status` ∈ `call_enum_update_status` = canceled|completed)
  `/2010-04-01/Accounts/{AccountSid}/Calls/{Sid}.json` → 200 `api.v2010.account.call`; call `status`
  values from `call_enum_status`; sids `^AC[0-9a-fA-F]{32}$`, `^CA[0-9a-fA-F]{32}$`, `^PN…`.
- Authentication is HTTP Basic `AccountSid:AuthToken` (OpenAPI `securitySchemes.accountSid_authToken`;
  https://www.twilio.com/docs/iam/api). A wrong pair gets 401 with error 20003
  (https://www.twilio.com/docs/errors/20003).
- Error bodies are `{"code", "message", "more_info", "status"}` (https://www.twilio.com/docs/api/errors);
  codes used: 20003 (401), 20404 (404, unknown resource), 20429 (429, too many requests;
  https://www.twilio.com/docs/errors/20429), 21201 (no To), 21213 (no From), 21200 (no Url/Twiml/
  ApplicationSid), 21211 (invalid To). See docs/reference/vendors.md §5.2.
- `canceled` ends only a queued/ringing call and leaves an in-progress one alone; `completed` ends a
  call in any live state (https://www.twilio.com/docs/api/rest/change-call-state; vendors.md §5.1).

Test hooks: `statuses` scripts the status a new call shows on each fetch (it stays on the last);
`inject(kind, status, code, …)` makes the next request of a kind fail with a Twilio error;
`stall(kind)` makes the next request of a kind be read and never answered (a read timeout).
Every request is recorded (method, path, headers, body) in `requests`.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import urlsplit

from tests.http_fake import Answer, HttpFake, Recorded, ScriptedStatus, basic_auth_ok

API = "/2010-04-01"
ACCOUNT_RE = re.compile(r"^/2010-04-01/Accounts/(?P<account>[^/]+)\.json$")
CALLS_RE = re.compile(r"^/2010-04-01/Accounts/(?P<account>[^/]+)/Calls\.json$")
CALL_RE = re.compile(r"^/2010-04-01/Accounts/(?P<account>[^/]+)/Calls/(?P<sid>[^/]+)\.json$")
LIVE = ("queued", "initiated", "ringing", "in-progress")
PENDING = ("queued", "initiated", "ringing")

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "f00dfeedf00dfeedf00dfeedf00dfeed"


@dataclass
class FakeCall(ScriptedStatus):
    sid: str
    params: dict[str, str]
    statuses: list[str]
    created: datetime
    fetches: int = 0
    override: str | None = None
    updates: list[str] = field(default_factory=list)


def rfc2822(when: datetime) -> str:
    """Twilio's date format (OpenAPI `format: date-time-rfc-2822`), e.g. 'Tue, 31 Aug 2010 20:36:28 +0000'."""
    return format_datetime(when)


class FakeTwilio(HttpFake):
    name = "fake-twilio"
    server_version = "FakeTwilio/1.0"

    def __init__(
        self,
        account_sid: str = ACCOUNT_SID,
        auth_token: str = AUTH_TOKEN,
        statuses: list[str] | tuple[str, ...] = ("queued", "ringing", "in-progress"),
        friendly_name: str = "IF bus test account",
    ) -> None:
        super().__init__()
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.statuses = list(statuses)
        self.friendly_name = friendly_name
        self.calls: dict[str, FakeCall] = {}
        #: after a `canceled` update, the status the call shows (simulates an answer racing the cancel)
        self.cancel_result: str | None = None

    # Test hooks (stall, of_kind and the lifecycle: tests/http_fake.py)

    def inject(
        self,
        kind: str,
        status: int,
        code: int,
        message: str = "Injected error",
        headers: dict[str, str] | None = None,
    ) -> None:
        """The next request of `kind` (account, create, fetch, update) gets this Twilio error."""
        self.answer_next(kind, status, _error(code, message, status), headers)

    # Resources

    def account_json(self) -> dict[str, Any]:
        now = rfc2822(datetime.now(UTC))
        sid = self.account_sid
        return {
            "auth_token": self.auth_token,  # the real API returns it too; the adapter must never echo it
            "date_created": now,
            "date_updated": now,
            "friendly_name": self.friendly_name,
            "owner_account_sid": sid,
            "sid": sid,
            "status": "active",
            "subresource_uris": {"calls": f"{API}/Accounts/{sid}/Calls.json"},
            "type": "Full",
            "uri": f"{API}/Accounts/{sid}.json",
        }

    def call_json(self, call: FakeCall) -> dict[str, Any]:
        account = self.account_sid
        base = f"{API}/Accounts/{account}/Calls/{call.sid}"
        status = call.status
        answered = status in ("in-progress", "completed")
        return {
            "sid": call.sid,
            "date_created": rfc2822(call.created),
            "date_updated": rfc2822(datetime.now(UTC)),
            "parent_call_sid": None,
            "account_sid": account,
            "to": call.params.get("To"),
            "to_formatted": call.params.get("To"),
            "from": call.params.get("From"),
            "from_formatted": call.params.get("From"),
            "phone_number_sid": "PN" + "ab" * 16,
            "status": status,
            "start_time": rfc2822(call.created) if status not in ("queued",) else None,
            "end_time": rfc2822(datetime.now(UTC)) if status not in LIVE else None,
            "duration": "0" if status not in LIVE and answered else None,
            "price": None,
            "price_unit": "USD",
            "direction": "outbound-api",
            "answered_by": None,
            "api_version": "2010-04-01",
            "forwarded_from": None,
            "group_sid": None,
            "caller_name": None,
            "queue_time": "0",
            "trunk_sid": None,
            "uri": f"{base}.json",
            "subresource_uris": {
                "notifications": f"{base}/Notifications.json",
                "recordings": f"{base}/Recordings.json",
                "events": f"{base}/Events.json",
            },
        }

    # Request handling (runs on the server's threads)

    def content_type(self, record: Recorded) -> str:
        return "application/json; charset=utf-8"

    def route(self, record: Recorded) -> Answer:
        method, headers, body = record.method, record.headers, record.body
        route = urlsplit(record.path).path
        kind, match = _classify(method, route)
        record.kind = kind
        if not basic_auth_ok(headers.get("authorization", ""), self.account_sid, self.auth_token):
            return 401, _error(20003, "Authenticate", 401), {}
        injected = self.scripted(kind)
        if injected is not None:
            return injected
        if match is None or match.group("account") != self.account_sid:
            return 404, _error(20404, f"The requested resource {route} was not found", 404), {}
        if kind == "account":
            return 200, self.account_json(), {}
        form = {k: v[0] for k, v in record.form.items()} if body else {}
        if kind == "create":
            return self._create(form)
        call = self.calls.get(match.group("sid"))
        if call is None:
            return 404, _error(20404, f"The requested resource {route} was not found", 404), {}
        if kind == "fetch":
            with self._lock:
                call.fetches += 1
            return 200, self.call_json(call), {}
        return self._update(call, form)

    def _create(self, form: dict[str, str]) -> Answer:
        if not form.get("To"):
            return 400, _error(21201, "No 'To' number is specified", 400), {}
        if not form.get("From"):
            return 400, _error(21213, "No 'From' number is specified", 400), {}
        if not any(form.get(k) for k in ("Url", "Twiml", "ApplicationSid")):
            return 400, _error(21200, "Either a 'Url', 'Twiml' or 'ApplicationSid' parameter is required", 400), {}
        to = form["To"]
        if not re.fullmatch(r"\+?[0-9]{2,15}|(client|sip|sim):.+", to):
            return 400, _error(21211, f"The 'To' number {to} is not a valid phone number.", 400), {}
        sid = "CA" + secrets.token_hex(16)
        call = FakeCall(sid, form, list(self.statuses), datetime.now(UTC))
        with self._lock:
            self.calls[sid] = call
        return 201, self.call_json(call), {}

    def _update(self, call: FakeCall, form: dict[str, str]) -> Answer:
        target = form.get("Status")
        if target not in (None, "canceled", "completed"):
            return 400, _error(20001, f"Invalid Status {target}", 400), {}
        with self._lock:
            current = call.status
            if target:
                call.updates.append(target)
            if target == "canceled" and current in PENDING:
                call.override = self.cancel_result or "canceled"
            elif target == "completed" and current in LIVE:
                call.override = "completed"
        return 200, self.call_json(call), {}


def _classify(method: str, route: str) -> tuple[str, re.Match[str] | None]:
    for kind_by_method, pattern in (
        ({"GET": "account"}, ACCOUNT_RE),
        ({"POST": "create"}, CALLS_RE),
        ({"GET": "fetch", "POST": "update"}, CALL_RE),
    ):
        match = pattern.match(route)
        if match and method in kind_by_method:
            return kind_by_method[method], match
    return "other", None


def _error(code: int, message: str, status: int) -> dict[str, Any]:
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
