"""A small fake of Vonage's Voice API v1 and Account API balance call, served on 127.0.0.1 for tests.

It speaks the wire shapes Vonage publishes, so the adapter is exercised over real loopback HTTP:

- Paths, bodies and response schemas follow Vonage's OpenAPI descriptions, Nexmo/api-specification
  `definitions/voice.yml` (Voice API 1.3.7) and `definitions/account.yml` (copies in tests/specs/vonage/):
  `POST /v1/calls` (`CreateCallRequestNcco` | `CreateCallRequestAnswerUrl`) → 201 `CreateCallResponse`
  `{uuid, status: started, direction: outbound, conversation_uuid: CON-…}`; `GET /v1/calls/{uuid}` →
  200 `GetCallResponse`; `PUT /v1/calls/{uuid}` `{"action": "hangup"}` → 204 No Content;
  `GET /account/get-balance` → 200 `accountBalance` `{value, autoReload}` (example of vendors.md §6.1).
- Voice auth: `Authorization: Bearer <JWT>`, RS256 with the application's private key, claims
  `application_id`, `iat`, `exp`, `jti` (developer.vonage.com/jwt; vendors.md §6.1). The fake VERIFIES
  every token with the application's public key and keeps the decoded claims in `claims`.
  Account auth: HTTP Basic `api_key:api_secret` (the derived spec `vonage-account.basic-auth.yml`).
- Errors are RFC 7807 problem JSON (`application/problem+json`), bodies as in Vonage's SDK fixtures
  (vendors.md §6.3): 401 unauthorized, 404 not-found, 429 rate-limit; the balance 401 is the account
  spec's `ErrorAuthenticationFailedAccountBalance` `{"error-code": "401", "error-code-label": …}`.
- Statuses: `started`, `ringing`, `answered`, `machine`, `completed`, `busy`, `cancelled`, `failed`,
  `rejected`, `timeout`, `unanswered` (vendors.md §6.3). A hangup of an ended call answers 404
  (vendors.md §6.4, "[inferred]"), of a live one 204 and the call becomes completed/cancelled.

Test hooks: `statuses` scripts the status a new call shows on each fetch (it stays on the last);
`inject(kind, status, body, headers)` answers the next request of a kind with that; `stall(kind)`
reads the next request of a kind in full and never answers it (a read timeout). Kinds: balance,
create, fetch, hangup. Every request is recorded in `requests`.
"""

from __future__ import annotations

import json
import re
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from tests import http_fake
from tests.http_fake import Answer, HttpFake, ScriptedStatus, basic_auth_ok

API_KEY = "abcd1234"
API_SECRET = "Sup3rS3cretVonage"
APPLICATION_ID = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"
APP_NUMBERS = ("447700900001", "447700900002")  # numbers linked to the fake application
CALL_RE = re.compile(r"^/v1/calls/(?P<uuid>[^/]+)$")
LIVE = ("started", "ringing", "answered", "machine")
ERRORS = "https://developer.nexmo.com/api-errors"


def new_key_pair() -> rsa.RSAPrivateKey:
    """A fresh RSA-2048 key pair, as Vonage makes for an application (its private.key file)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class Recorded(http_fake.Recorded):
    claims: dict[str, Any] | None = None  # the verified JWT claims, for Voice API requests


@dataclass
class FakeCall(ScriptedStatus):
    uuid: str
    request: dict[str, Any]
    statuses: list[str]
    created: datetime
    conversation_uuid: str = field(default_factory=lambda: f"CON-{uuid.uuid4()}")
    fetches: int = 0
    override: str | None = None


class FakeVonage(HttpFake):
    name = "fake-vonage"
    methods = ("GET", "POST", "PUT", "DELETE")
    server_version = "nginx"  # Vonage's REST responses carry `server: nginx` (vendors.md §6.5)
    record_type = Recorded

    def __init__(
        self,
        public_key: rsa.RSAPublicKey,
        application_id: str = APPLICATION_ID,
        api_key: str = API_KEY,
        api_secret: str = API_SECRET,
        statuses: list[str] | tuple[str, ...] = ("started", "ringing", "answered"),
        balance: float = 10.28,
    ) -> None:
        super().__init__()
        self.public_key = public_key
        self.application_id = application_id
        self.api_key = api_key
        self.api_secret = api_secret
        self.statuses = list(statuses)
        self.balance = balance
        self.calls: dict[str, FakeCall] = {}
        self.tokens: list[str] = []  # every bearer token received, verified or not

    # Test hooks (stall, of_kind and the lifecycle: tests/http_fake.py)

    def inject(self, kind: str, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        """The next request of `kind` gets this answer (body None: a problem JSON for the status)."""
        self.answer_next(kind, status, problem(status) if body is None else body, headers)

    def call_json(self, call: FakeCall) -> dict[str, Any]:
        request = call.request
        to = request["to"][0]
        sender = request.get("from") or {"type": "phone", "number": APP_NUMBERS[0]}
        body: dict[str, Any] = {
            "_links": {"self": {"href": f"/calls/{call.uuid}"}},
            "uuid": call.uuid,
            "conversation_uuid": call.conversation_uuid,
            "to": {"type": to["type"], "number": to.get("number") or to.get("uri", "")},
            "from": sender,
            "status": call.status,
            "direction": "outbound",
            "network": "23410",
        }
        if call.status == "completed":
            stamp = call.created.strftime("%Y-%m-%d %H:%M:%S")
            body.update({"rate": "0.01", "price": "0.00", "duration": "1", "start_time": stamp, "end_time": stamp})
        return body

    # Request handling (on the server's threads)

    def content_type(self, record: http_fake.Recorded) -> str:
        assert record.response_status is not None
        ok = record.response_status < 400 or record.kind == "balance"
        return "application/json" if ok else "application/problem+json"

    def per_response_headers(self) -> dict[str, str]:
        return {"X-Nexmo-Trace-Id": secrets.token_hex(16)}

    def route(self, record: http_fake.Recorded) -> Answer:
        assert isinstance(record, Recorded)
        route = urlsplit(record.path).path
        kind, match = _classify(record.method, route)
        record.kind = kind
        if kind == "balance":
            if not basic_auth_ok(record.headers.get("authorization", ""), self.api_key, self.api_secret):
                return 401, {"error-code": "401", "error-code-label": "authentication failed"}, {}
        elif kind != "other":
            record.claims = self._verify(record.headers.get("authorization", ""))
            if record.claims is None:
                return 401, problem(401), {}
        injected = self.scripted(kind)
        if injected is not None:
            return injected
        if kind == "balance":
            return 200, {"value": self.balance, "autoReload": False}, {}
        if kind == "create":
            return self._create(record)
        if match is None:
            return 404, problem(404), {}
        call = self.calls.get(match.group("uuid"))
        if call is None:
            return 404, problem(404), {}
        if kind == "fetch":
            with self._lock:
                answer = self.call_json(call)
                call.fetches += 1
            return 200, answer, {}
        return self._hangup(call, record)

    def _create(self, record: Recorded) -> Answer:
        try:
            request = json.loads(record.body)
        except ValueError:
            return 400, problem(400, "Invalid JSON"), {}
        invalid = []
        if not isinstance(request, dict):
            return 400, problem(400, "Expected an object"), {}
        if not isinstance(request.get("to"), list) or not request["to"]:
            invalid.append("to")
        if ("ncco" in request) == ("answer_url" in request):
            invalid.append("ncco")
        if ("from" in request) == bool(request.get("random_from_number")):
            invalid.append("from")
        if invalid:
            body = problem(400, "Invalid request")
            body["invalid_parameters"] = [{"name": n, "reason": "Is invalid"} for n in invalid]
            return 400, body, {}
        call = FakeCall(str(uuid.uuid4()), request, list(self.statuses), datetime.now(UTC))
        with self._lock:
            self.calls[call.uuid] = call
        created = {
            "uuid": call.uuid,
            "status": "started",
            "direction": "outbound",
            "conversation_uuid": call.conversation_uuid,
        }
        return 201, created, {}

    def _hangup(self, call: FakeCall, record: Recorded) -> Answer:
        try:
            action = json.loads(record.body).get("action")
        except (ValueError, AttributeError):
            action = None
        if action != "hangup":
            return 400, problem(400, "Unsupported action"), {}
        with self._lock:
            current = call.status
            if current not in LIVE:
                return 404, problem(404), {}
            call.override = "completed" if current in ("answered", "machine") else "cancelled"
        return 204, None, {}

    def _verify(self, header: str) -> dict[str, Any] | None:
        scheme, _, token = header.partition(" ")
        if scheme != "Bearer" or not token:
            return None
        with self._lock:
            self.tokens.append(token)
        try:
            required = {"require": ["application_id", "iat", "exp", "jti"]}
            claims = jwt.decode(token, self.public_key, algorithms=["RS256"], options=required)
        except jwt.PyJWTError:
            return None
        return claims if claims.get("application_id") == self.application_id else None


def problem(status: int, detail: str | None = None) -> dict[str, Any]:
    """RFC 7807 bodies as Vonage sends them (SDK fixtures, vendors.md §6.3)."""
    known = {
        400: ("bad-request", "Bad Request", "The request failed due to validation errors"),
        401: ("unauthorized", "Unauthorized", "You did not provide correct credentials."),
        403: ("forbidden", "Forbidden", "Your account does not have permission to perform this action."),
        404: ("not-found", "Not Found", "The requested resource does not exist"),
        429: ("rate-limit", "Rate Limit Hit", "Please wait, then retry your request"),
        500: ("internal-error", "Internal Error", "Something went wrong"),
        503: ("service-unavailable", "Service Unavailable", "Please retry later"),
    }
    code, title, text = known.get(status, ("error", "Error", "Error"))
    return {"type": f"{ERRORS}#{code}", "title": title, "detail": detail or text, "instance": str(uuid.uuid4())}


def _classify(method: str, route: str) -> tuple[str, re.Match[str] | None]:
    if route == "/account/get-balance" and method == "GET":
        return "balance", None
    if route == "/v1/calls" and method == "POST":
        return "create", None
    match = CALL_RE.match(route)
    if match and method in ("GET", "PUT"):
        return ("fetch" if method == "GET" else "hangup"), match
    return "other", None
