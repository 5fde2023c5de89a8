"""Vonage adapter: Voice API v1 (calls) with a JWT, Account API (balance) with key and secret.

Wire facts (docs/reference/vendors.md §6; Vonage's OpenAPI, Nexmo/api-specification `definitions/voice.yml`
and `account.yml`, copies in tests/specs/vonage/):

- test   = GET  {rest_base_url}/account/get-balance, HTTP Basic api_key:api_secret → {"value", "autoReload"}
- call   = POST {base_url}/v1/calls, JSON {to: [endpoint], from | random_from_number, ncco | answer_url,
           ringing_timer} → 201 {"uuid", "status", "direction", "conversation_uuid"}; then, to follow
           it, GET {base_url}/v1/calls/{uuid} every `poll_interval` s
- hangup = PUT  {base_url}/v1/calls/{uuid} {"action": "hangup"} → 204
- Voice API auth = `Authorization: Bearer <RS256 JWT>` minted from application_id + private_key
  (workers/adapters/vonage_jwt.py); key/secret cannot place or end calls, so call/hangup without the
  application credentials are refused before any request.

Vonage has no idempotency key on call create: once it left, a timeout (raised by the HTTP helper) or
a 5xx other than 503 is OutcomeUnknown, never a class that is retried. api_secret, the private key and
the JWT never appear in a message: server text is scrubbed of them before it is quoted.
Public behaviour (tables, options): docs/vonage.md.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from functools import cache
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx

from bus.calls import CallRef
from bus.errors import (
    AuthFailed,
    BusError,
    CallRejected,
    InvalidInput,
    NotFound,
    OutcomeUnknown,
    Overloaded,
    Unreachable,
)
from bus.server import ServerEntry
from bus.sip import for_vendor, reason_phrase
from bus.validate import check_value, show
from bus.vendors import vendor
from workers.adapters.base import Adapter, Answer
from workers.adapters.vonage_jwt import BearerJWT, TokenMinter
from workers.transports.http import HttpSession, base_url_option, make_client, retry_after, send

USER_AGENT = "ifbus-sip"
NCCO_SCHEMA = Path(__file__).with_name("vonage_ncco") / "ncco-schema.json"
DEFAULT_TALK = "Hello. This is a test call placed by IF bus."
# OpenAPI CreateCallRequestBase.ringing_timer: 1–120 s, default 60 — "seconds that elapse before Vonage
# hangs up after the call state changes to ringing". answer_timeout is sent as ringing_timer.
RINGING_TIMER_MAX = 120
# Before `ringing` a call is `started` (Vonage is routing it): allow that much on top of the ring time
# before following gives up, so Vonage's own `timeout`/`unanswered` verdict normally arrives first.
SETUP_GRACE = 10.0
# OpenAPI AddressE164 `\d{7,15}`, AddressSip maxLength 50.
E164_DIGITS = re.compile(r"[0-9]{7,15}")
SIP_URI_MAX = 50

# GET /v1/calls/{uuid} `status` (Vonage call-flow / webhook reference, SDK CallState; vendors.md §6.3).
PENDING = frozenset({"started", "ringing"})
ANSWERED = frozenset({"answered", "machine", "completed"})  # machine: a voicemail answered; completed: answered, ended
# A call that ended unanswered → the SIP final response a gateway would have sent (reason phrases from bus.sip).
STATUS_SIP: dict[str, int] = {
    "busy": 486,  # busy signal = Q.850 17 USER_BUSY → 486 (RFC 3398 §7.2.4.1)
    "timeout": 480,  # rang for ringing_timer, nobody answered = Q.850 19 NO_ANSWER → 480 (RFC 3398)
    "unanswered": 480,  # the same verdict reported by the carrier
    "rejected": 603,  # the callee declined = Q.850 21 CALL_REJECTED → 603 (RFC 3398)
    "failed": 503,  # the call could not be routed/connected (carrier failure); final for this call
    "cancelled": 487,  # ended before answer (e.g. hangup while ringing): a CANCELed INVITE ends with 487
}

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LETTER = re.compile(r"[A-Za-z]")


class VonageAdapter(Adapter):
    type = "vonage"
    call_extras: ClassVar[frozenset[str]] = frozenset({"ncco", "answer_url"})
    hangup_extras: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, name: str, entry: ServerEntry) -> None:
        super().__init__(name, entry)
        # Two APIs, two hosts, two credentials: the Voice API (JWT) and the Account API (Basic).
        self.session = HttpSession(self._voice_client)
        self.rest_session = HttpSession(self._rest_client)
        self._minter: TokenMinter | None = None

    # Operations

    def test(self) -> Answer:
        response = self._send(self.rest_session, "GET", "/account/get-balance")
        if response.status_code != 200:
            raise self._error(response, "balance")
        body = _json_object(response)
        value = body.get("value") if body else None
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            raise InvalidInput(
                f"{self.name}: {self._origin('rest_base_url')} answered HTTP 200 without a Vonage account "
                "balance: check option rest_base_url",
                server=self.name,
            )
        auto_reload = body.get("autoReload") if body else None
        return Answer(
            f"Vonage account, balance {value:.2f} EUR",
            data={"balance": value, "currency": "EUR", "auto_reload": auto_reload},
        )

    def originate(self, from_: str, to: str, extras: dict[str, str], deadline: float) -> CallRef:
        # Everything is checked before the one request that may place a call.
        self.check_extras(extras, self.call_extras, "call")
        body: dict[str, Any] = {"to": [_endpoint(to)]}
        random_from = _is_application_name(from_)
        if random_from:
            body["random_from_number"] = True
        else:
            body["from"] = {"type": "phone", "number": _phone(from_, "from")}
        body.update(_instructions(extras))
        body["ringing_timer"] = min(RINGING_TIMER_MAX, max(1, math.ceil(self._positive("answer_timeout"))))
        self._application()
        self.session.ensure()  # a bad key is refused here, before anything is sent

        started = time.time()
        response = self._send(self.session, "POST", "/v1/calls", json=body, deadline=deadline)
        if response.status_code != 201:
            raise self._error(response, "create")
        created = _json_object(response) or {}
        call_uuid = created.get("uuid")
        if not isinstance(call_uuid, str) or not _is_uuid(call_uuid):
            raise OutcomeUnknown(
                f"{self.name}: Vonage answered HTTP {response.status_code} to the call request without a readable "
                "call uuid; a call may have been placed: check the Vonage dashboard before trying again",
                server=self.name,
            )
        # When following gives up, as wall-clock time: another process may follow this CallRef.
        settle_by = started + self._positive("answer_timeout") + SETUP_GRACE
        handle = {"status": self._clean(created.get("status")) or "started", "settle_by": f"{settle_by:.3f}"}
        conversation = self._clean(created.get("conversation_uuid"), 60)
        if conversation:
            handle["conversation_uuid"] = conversation
        if random_from:
            handle["from"] = "random_from_number"
        return CallRef(self.name, call_uuid, handle)

    def accepted(self, ref: CallRef) -> Answer:
        answer = super().accepted(ref)
        answer.message += _from_note(ref)
        return answer

    def follow(self, ref: CallRef, deadline: float) -> Answer:
        call_uuid = self._call_uuid(ref.call_id or "")
        poll_interval = self._positive("poll_interval")
        try:
            settle_by = float(ref.handle["settle_by"])
        except (KeyError, ValueError):
            settle_by = time.time() + self._positive("answer_timeout") + SETUP_GRACE
        limit = min(deadline, time.monotonic() + settle_by - time.time() + poll_interval)
        status = ref.handle.get("status", "started")
        last_error: str | None = None
        while True:
            pause = poll_interval
            try:
                status = self._fetch_status(call_uuid, deadline=max(limit, time.monotonic() + 0.5))
                last_error = None
            except Overloaded as exc:  # 429: Vonage allows 15 requests/s per account (vendors.md §6.4)
                last_error = exc.message
                pause = max(pause, exc.retry_after or 0.0)
            except (Unreachable, OutcomeUnknown) as exc:
                last_error = exc.message
            else:
                answer = self._settle(ref, status)
                if answer is not None:
                    return answer
            now = time.monotonic()
            if now >= limit:
                raise self._still_pending(call_uuid, status, last_error)
            time.sleep(min(pause, limit - now))

    def hangup(self, call_id: str, ref: CallRef | None, extras: dict[str, str]) -> Answer:
        self.check_extras(extras, self.hangup_extras, "hangup")
        call_uuid = self._call_uuid(call_id)
        self._application()
        response = self._send(self.session, "PUT", f"/v1/calls/{call_uuid}", json={"action": "hangup"})
        if 200 <= response.status_code < 300:  # 204 per the OpenAPI; some SDKs model a 200 body (vendors.md §13)
            return Answer(f"Call {call_uuid} ended", call_id=call_uuid, data={"requested": "hangup"})
        if response.status_code == 404:
            return self.already_ended(call_uuid, "Vonage has no live call with this uuid")
        raise self._error(response, "hangup", call_uuid)

    def close(self) -> None:
        self.session.close()
        self.rest_session.close()

    # Following a placed call

    def _settle(self, ref: CallRef, status: str) -> Answer | None:
        call_uuid = ref.call_id or ""
        if status in ANSWERED:
            detail = {"machine": " (by a machine)", "completed": " (already ended)"}.get(status, "")
            return Answer(
                f"Call {call_uuid} answered{detail}{_from_note(ref)}",
                call_id=call_uuid,
                data={"status": status, "handle": dict(ref.handle)},
            )
        if status in STATUS_SIP:
            code = STATUS_SIP[status]
            raise CallRejected(code, reason_phrase(code), call_id=call_uuid, server=self.name, vonage_status=status)
        return None

    def _still_pending(self, call_uuid: str, status: str, last_error: str | None) -> OutcomeUnknown:
        why = f"; last status check failed: {last_error}" if last_error else ""
        return OutcomeUnknown(
            f"{self.name}: call {call_uuid} was still {status} when the wait ended (answer_timeout "
            f"{self.options.get('answer_timeout')} s or the job timeout){why}; it may still be answered: look it "
            f"up in the Vonage dashboard or end it with `ifbus hangup sip {self.name} call_id={call_uuid}`",
            call_id=call_uuid,
            server=self.name,
            vonage_status=status,
        )

    def _fetch_status(self, call_uuid: str, **kwargs: Any) -> str:
        response = self._send(self.session, "GET", f"/v1/calls/{call_uuid}", **kwargs)
        if response.status_code != 200:
            raise self._error(response, "fetch", call_uuid)
        body = _json_object(response)
        status = self._clean(body.get("status")) if body else ""
        if not status:
            raise Unreachable(
                f"{self.name}: Vonage answered HTTP 200 for call {call_uuid} without a status", server=self.name
            )
        return status

    # HTTP

    def _send(self, session: HttpSession, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return send(session.client, self.name, method, path, **kwargs)

    def _rest_client(self) -> httpx.Client:
        creds = self.require_auth("api_key", "api_secret")
        return self._client("rest_base_url", httpx.BasicAuth(creds["api_key"], creds["api_secret"]))

    def _voice_client(self) -> httpx.Client:
        creds = self._application()
        lifetime = self._positive("jwt_lifetime")
        self._minter = TokenMinter(creds["application_id"], creds["private_key"], lifetime=lifetime)
        return self._client("base_url", BearerJWT(self._minter))

    def _client(self, option: str, auth: httpx.Auth) -> httpx.Client:
        return make_client(
            self._origin(option),
            self.option_float("connect_timeout"),
            self.option_float("read_timeout"),
            auth=auth,
            headers={"Accept": "application/json", "User-Agent": USER_AGENT},
        )

    def _application(self) -> dict[str, str]:
        """The Voice API credentials, or a clear InvalidInput naming what to add (nothing is sent)."""
        missing = [k for k in ("application_id", "private_key") if not self.entry.auth.get(k)]
        if missing:
            raise InvalidInput(
                f"{self.name}: Vonage places and ends calls only with a Voice application's JWT: add "
                f"{' and '.join(missing)} (re-add with `ifbus add sip {self.name} --type vonage --auth "
                "api_key=… api_secret=… application_id=<uuid> private_key=@private.key --replace`); "
                "api_key/api_secret are enough for `test` only"
            )
        return {k: self.entry.auth[k] for k in ("application_id", "private_key")}

    def _error(self, response: httpx.Response, op: str, call_uuid: str | None = None) -> BusError:
        """Vonage's RFC 7807 problem body {type, title, detail, invalid_parameters} → one outcome class."""
        body = _json_object(response) or {}
        http_status = response.status_code
        title = self._clean(body.get("title"), 100)
        detail = self._clean(body.get("detail"), 300) or self._clean(body.get("error-code-label"), 100)
        text = ": ".join(t for t in (title, detail) if t) or f"HTTP {http_status}"
        invalid = _invalid_parameters(body, self._clean)
        details = {"server": self.name, "http_status": http_status, "vonage_type": self._clean(body.get("type"), 120)}
        if http_status in (401, 403):
            if op == "balance":
                return self.auth_failed(f"{text} (HTTP {http_status})")
            return AuthFailed(  # the Voice API's credential is the application's JWT, not key/secret
                f"Authentication refused by {self.name} (vonage): {text} (HTTP {http_status}); check credentials: "
                "--auth application_id=… private_key=@… (the key must belong to that application)",
                server=self.name,
            )
        if http_status >= 500 or http_status < 400:
            if op == "create":
                return OutcomeUnknown(
                    f"{self.name}: Vonage answered HTTP {http_status} to the call request ({text}); a call may have "
                    "been placed: check the Vonage dashboard before trying again",
                    **details,
                )
            return Overloaded(
                f"{self.name}: Vonage server error (HTTP {http_status}): {text}",
                retry_after=retry_after(response),
                **details,
            )
        if call_uuid is not None and http_status == 404:
            return NotFound(f"Not found: no call {call_uuid} on Vonage ({text})", call_id=call_uuid, **details)
        hint = f"; invalid: {invalid}" if invalid else ""
        return InvalidInput(f"{self.name}: Vonage refused the request: {text} (HTTP {http_status}){hint}", **details)

    # Input

    def _call_uuid(self, call_id: str) -> str:
        check_value("call_id", call_id)
        if not _is_uuid(call_id):
            raise InvalidInput(f"call_id={show(call_id)} is not a Vonage call uuid (e.g. 63f61863-4a51-4f6b-86e1-…)")
        return call_id

    def _positive(self, key: str) -> float:
        raw = self.options.get(key)
        value = self.option_float(key)
        if not (value > 0 and math.isfinite(value)):
            raise InvalidInput(f"{self.name}: option {key}={raw!r} must be a positive number of seconds")
        return value

    def _origin(self, option: str) -> str:
        default = vendor(self.type).defaults[option]
        return base_url_option(self.name, self.options.get(option) or default, default, option)

    def _clean(self, value: object, limit: int = 64) -> str:
        """Server text fit for a message: a bounded single line with no secret in it."""
        if not isinstance(value, str):
            return ""
        text = _CONTROL.sub(" ", value).strip()
        for secret in self._secrets():
            text = text.replace(secret, "****")
        return text if len(text) <= limit else text[: limit - 1] + "…"

    def _secrets(self) -> list[str]:
        found = [self.entry.auth.get(k, "") for k in ("api_secret", "private_key")]
        if self._minter is not None:
            found.extend(self._minter.secrets())
        return [s for s in found if len(s) >= 4]


# Request body pieces (pure functions: unit-testable without a server)


def _is_application_name(value: str) -> bool:
    """`from=MyApp`: a name, not a number → "a number of this application" (random_from_number)."""
    check_value("from", value)
    lowered = value.lower()
    return not lowered.startswith(("sip:", "sips:", "tel:")) and bool(_LETTER.search(value))


def _phone(value: str, role: str) -> str:
    number = for_vendor(value, "vonage", role=role)
    if number.lower().startswith(("sip:", "sips:")):
        raise InvalidInput(f"{role}={show(value)}: Vonage's `from` must be a phone number of the application")
    if not E164_DIGITS.fullmatch(number):
        raise InvalidInput(f"{role}={show(value)}: Vonage needs 7 to 15 digits (E.164 without +), e.g. 14155550100")
    return number


def _endpoint(to: str) -> dict[str, str]:
    value = for_vendor(to, "vonage", role="to")
    if value.lower().startswith(("sip:", "sips:")):
        if len(value) > SIP_URI_MAX or any(c.isspace() or c in "<>\"'" for c in value):
            raise InvalidInput(f"to={show(to)}: Vonage takes a sip: URI of at most {SIP_URI_MAX} characters")
        return {"type": "sip", "uri": value}
    return {"type": "phone", "number": _phone(to, "to")}


def _instructions(extras: dict[str, str]) -> dict[str, Any]:
    ncco_text, answer_url = extras.get("ncco"), extras.get("answer_url")
    if ncco_text is not None and answer_url is not None:
        raise InvalidInput("call on vonage: give ncco= or answer_url=, not both")
    if answer_url is not None:
        check_value("answer_url", answer_url)
        parts = urlsplit(answer_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidInput(f"answer_url={show(answer_url)}: expected an absolute http(s) URL that returns an NCCO")
        return {"answer_url": [answer_url]}
    if ncco_text is None:
        return {"ncco": [{"action": "talk", "text": DEFAULT_TALK}]}
    check_value("ncco", ncco_text)
    try:
        ncco = json.loads(ncco_text)
    except ValueError as exc:
        raise InvalidInput(f"ncco={show(ncco_text)}: not JSON ({exc.msg} at character {exc.pos})") from None
    if isinstance(ncco, dict):
        ncco = [ncco]  # one action given on its own
    check_ncco(ncco)
    return {"ncco": ncco}


def check_ncco(ncco: object) -> None:
    """Validate against Vonage's NCCO JSON schema; the message names the action and field at fault."""
    import jsonschema

    schema = _ncco_schema()
    validator = jsonschema.Draft4Validator(schema)
    if not isinstance(ncco, list) or not ncco:
        raise InvalidInput("ncco: expected a JSON array of actions, e.g. [{\"action\":\"talk\",\"text\":\"Hello\"}]")
    actions = sorted(name.removeprefix("ncco-") for name in schema["definitions"] if name.startswith("ncco-"))
    actions.remove("base")
    for index, item in enumerate(ncco):
        action = item.get("action") if isinstance(item, dict) else None
        if action not in actions:
            raise InvalidInput(f"ncco[{index}]: action {show(action)} is not one of {', '.join(actions)}")
        sub = {**schema, "$ref": f"#/definitions/ncco-{action}"}
        sub.pop("type", None)
        sub.pop("items", None)
        sub.pop("minItems", None)
        error = jsonschema.exceptions.best_match(jsonschema.Draft4Validator(sub).iter_errors(item))
        if error is not None:
            where = "".join(f".{p}" if isinstance(p, str) else f"[{p}]" for p in error.absolute_path)
            raise InvalidInput(f"ncco[{index}]{where} ({action}): {error.message[:200]}")
    error = jsonschema.exceptions.best_match(validator.iter_errors(ncco))
    if error is not None:
        raise InvalidInput(f"ncco: {error.message[:200]}")


@cache
def _ncco_schema() -> dict[str, Any]:
    return json.loads(NCCO_SCHEMA.read_text(encoding="utf-8"))


def _invalid_parameters(body: dict[str, Any], clean: Any) -> str:
    items = body.get("invalid_parameters")
    if not isinstance(items, list):
        return ""
    names = [clean(i.get("name"), 40) for i in items if isinstance(i, dict)]
    return ", ".join(n for n in names if n)[:200]


def _from_note(ref: CallRef) -> str:
    if ref.handle.get("from") == "random_from_number":
        return "; from: a number of the Vonage application, picked by Vonage (random_from_number)"
    return ""


def _is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value.lower() and len(value) == 36
    except ValueError:
        return False


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None
