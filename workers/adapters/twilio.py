"""Twilio adapter: Programmable Voice REST API 2010-04-01, Accounts and Calls resources.

Wire facts (docs/reference/vendors.md §5; Twilio's OpenAPI twilio/twilio-oai `spec/json/twilio_api_v2010.json`):

- test   = GET  /2010-04-01/Accounts/{AccountSid}.json
- call   = POST /2010-04-01/Accounts/{AccountSid}/Calls.json, form-encoded To, From, Twiml|Url, Timeout → 201
           then, with until=answered, GET …/Calls/{Sid}.json every `poll_interval` s until the call settles
- hangup = GET  …/Calls/{Sid}.json, then POST …/Calls/{Sid}.json with Status=canceled (queued/ringing)
           or Status=completed (in progress); nothing is sent for a call that already ended
- auth   = HTTP Basic AccountSid:AuthToken

Never a call placed twice: Call create has no idempotency key (vendors.md §5.3), so once the create
request has left, every failure (timeout, 5xx, a status poll that cannot be made) is OutcomeUnknown
carrying the call sid when there is one — never a class the worker retries or fails over.
The auth token never appears in a message, exception or log line: messages built from server text
are scrubbed of it, and it only travels inside httpx's Basic auth header.
Public behaviour (tables, timings): docs/twilio.md.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx

from bus.calls import CallRef
from bus.errors import BusError, CallRejected, InvalidInput, NotFound, OutcomeUnknown, Overloaded, Unreachable
from bus.server import ServerEntry
from bus.sip import E164_RE, for_vendor, reason_phrase
from bus.validate import check_value, show
from workers.adapters.base import Adapter, Answer
from workers.transports.http import HttpSession, base_url_option, make_client, send

API = "/2010-04-01"
DEFAULT_BASE_URL = "https://api.twilio.com"
USER_AGENT = "ifbus-sip"

# OpenAPI path parameter patterns (AccountSid / Sid of the Calls paths).
ACCOUNT_SID_RE = re.compile(r"AC[0-9a-fA-F]{32}")
CALL_SID_RE = re.compile(r"CA[0-9a-fA-F]{32}")

DEFAULT_TWIML = "<Response><Say>Hello. This is a test call placed by IF bus.</Say></Response>"
TWIML_MAX = 4000  # OpenAPI CreateCallRequest.Twiml: "Max 4000 characters."
TWIML_RE = re.compile(r"\s*(<\?xml[^>]*\?>\s*)?<Response[\s>/]")
RING_TIMEOUT_MAX = 600  # OpenAPI CreateCallRequest.Timeout: "default is 60 seconds and the maximum is 600"
# OpenAPI CreateCallRequest.Timeout: "For some call flows, we will add a 5-second buffer to the timeout
# value you provide": wait that much longer than answer_timeout for Twilio's own no-answer verdict.
RING_GRACE = 5.0
DEFAULT_POLL_INTERVAL = 1.0  # Twilio accounts start at 1 call/s and limit concurrent REST requests (§5.3)

# Call `status` values (OpenAPI `call_enum_status`, plus `initiated` which Twilio's status documentation
# lists between queued and ringing). Unknown values are treated as still pending, never as an outcome.
PENDING = frozenset({"queued", "initiated", "ringing"})

# A call that ended without being answered → the SIP final response a gateway would have sent
# (reason phrases from bus.sip, the one home for SIP facts).
# Sources: Twilio "What do the call statuses mean?" (help.twilio.com, support article 223132547);
# RFC 3398 §7.2.4.1 Q.850→SIP as tabled in docs/reference/vendors.md §8.1; RFC 3261 §9.1 / §21.4.25.
STATUS_SIP: dict[str, int] = {
    # "Twilio dialed the number and received a busy signal" = Q.850 17 USER_BUSY → 486 (RFC 3398).
    "busy": 486,
    # "no one answered before the Timeout elapsed": the callee was alerted (it rang) = Q.850 19
    # NO_ANSWER → 480 (RFC 3398). Not 408: that is Q.850 18 NO_USER_RESPONSE (nothing alerted) and,
    # in SIP, a transaction timeout, which would read as a network fault rather than an unanswered phone.
    "no-answer": 480,
    # "canceled using the REST API" before it was answered: a CANCELed INVITE ends with 487 (RFC 3261 §9.1).
    "canceled": 487,
    # "Twilio's carriers could not connect the call, most likely because the phone number was entered
    # incorrectly" → the unallocated / no-route causes (Q.850 1–3) → 404 (RFC 3398). Chosen over 500/503
    # because Twilio names a wrong number as the likely cause, and over 503 because a SIP 503 reads as
    # "overloaded, try again" in this project's outcome classes. The raw status stays in `twilio_status`.
    "failed": 404,
}

# Final statuses; `completed` means "answered, and has ended" (Twilio) and counts as answered.
ENDED = frozenset(STATUS_SIP) | {"completed"}

# Twilio REST error codes on call create → the SIP response a gateway would have given. These are
# refusals (HTTP 400: nothing was placed), final for the call: CallRejected, never retried or failed over.
# Code meanings: docs/reference/vendors.md §5.2 and https://www.twilio.com/docs/api/errors/<code>.
CREATE_ERROR_SIP: dict[int, int] = {
    21200: 400,  # required parameter missing / invalid method or URL
    21201: 484,  # no To number: the address to dial is missing
    21210: 403,  # From is not a Twilio number or verified caller id: caller id refused
    21211: 484,  # invalid To number = Q.850 28 INVALID_NUMBER_FORMAT → 484 (RFC 3398)
    21212: 403,  # invalid From / caller id number: caller id refused
    21213: 400,  # From is required: a malformed request
    21215: 403,  # geo permissions forbid the destination = Q.850 57/55 barred → 403 (RFC 3398)
    21217: 484,  # "phone number does not appear to be valid": as 21211
}
# 401/20003 (authenticate) and 403/20403 (no permission, suspended account) → AuthFailed.
AUTH_CODES = frozenset({20003, 20403})
NOT_FOUND_CODE = 20404
INVALID_STATE_CODE = 21220  # update on a call that is no longer in a state that allows it

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Number forms live in bus.sip (one home for SIP facts); the E.164 pattern is re-exported for tests.
_E164 = E164_RE


class TwilioAdapter(Adapter):
    type = "twilio"
    call_extras: ClassVar[frozenset[str]] = frozenset({"twiml", "url"})
    hangup_extras: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, name: str, entry: ServerEntry) -> None:
        super().__init__(name, entry)
        self.session = HttpSession(self._client)

    # Operations

    def test(self) -> Answer:
        account_sid = self._account_sid()
        response = self._send("GET", f"{API}/Accounts/{account_sid}.json")
        if response.status_code != 200:
            raise self._error(response, "test")
        body = _json_object(response)
        if body is None or body.get("sid") != account_sid:
            raise InvalidInput(
                f"{self.name}: {self.session.client.base_url} answered HTTP 200 without the Twilio account "
                f"{account_sid}: check option base_url",
                server=self.name,
            )
        friendly = self._clean(body.get("friendly_name")) or account_sid
        status = self._clean(body.get("status")) or "unknown"
        kind = self._clean(body.get("type")) or "unknown"
        return Answer(
            f"Twilio account {friendly} ({status}, {kind})",
            data={"sid": account_sid, "friendly_name": friendly, "status": status, "type": kind},
        )

    def originate(self, from_: str, to: str, extras: dict[str, str], deadline: float) -> CallRef:
        # Everything is checked before the one request that may place a call.
        self.check_extras(extras, self.call_extras, "call")
        account_sid = self._account_sid()
        form = {"To": for_vendor(to, "twilio", role="to"), "From": for_vendor(from_, "twilio", role="from")}
        form.update(self._instructions(extras))
        answer_timeout = self._positive("answer_timeout", None)
        self._positive("poll_interval", DEFAULT_POLL_INTERVAL)
        form["Timeout"] = str(min(RING_TIMEOUT_MAX, max(1, math.ceil(answer_timeout))))
        self.session.ensure()

        started = time.time()
        response = self._send("POST", f"{API}/Accounts/{account_sid}/Calls.json", data=form, deadline=deadline)
        if response.status_code not in (200, 201):
            raise self._error(response, "create")
        body = _json_object(response) or {}
        call_sid = body.get("sid")
        if not isinstance(call_sid, str) or not CALL_SID_RE.fullmatch(call_sid):
            raise OutcomeUnknown(
                f"{self.name}: Twilio answered HTTP {response.status_code} to the call request without a "
                "readable call sid; a call may have been placed: check the Twilio call log before trying again",
                server=self.name,
            )
        status = self._clean(body.get("status")) or "queued"
        # When to stop following, as wall-clock time: the CallRef may be followed by another process.
        window = _seconds(body.get("queue_time")) + answer_timeout + RING_GRACE
        return CallRef(self.name, call_sid, {"status": status, "settle_by": f"{started + window:.3f}"})

    def follow(self, ref: CallRef, deadline: float) -> Answer:
        assert ref.call_id is not None
        poll_interval = self._positive("poll_interval", DEFAULT_POLL_INTERVAL)
        settle_by = time.monotonic() + float(ref.handle["settle_by"]) - time.time() + poll_interval
        return self._follow(ref.call_id, ref.handle.get("status", "queued"), min(deadline, settle_by), poll_interval)

    def hangup(self, call_id: str, ref: CallRef | None, extras: dict[str, str]) -> Answer:
        self.check_extras(extras, self.hangup_extras, "hangup")
        account_sid = self._account_sid()
        call_sid = self._call_sid(call_id)
        status = self._fetch_status(account_sid, call_sid)
        if status in ENDED:
            answer = self.already_ended(call_sid, status)
            answer.data.update(status=status, requested=None)
            return answer
        # canceled ends a queued/ringing call; completed is needed once it is in progress (vendors.md §5.1).
        requested = "canceled" if status in PENDING else "completed"
        new_status = self._update(account_sid, call_sid, requested)
        if requested == "canceled" and new_status == "in-progress":
            # Answered between our look and the cancel, which leaves in-progress calls alone.
            requested = "completed"
            new_status = self._update(account_sid, call_sid, requested)
        return Answer(
            f"Call {call_sid} ended ({new_status})",
            call_id=call_sid,
            data={"status": new_status, "requested": requested},
        )

    def close(self) -> None:
        self.session.close()

    # Following a placed call

    def _follow(self, call_sid: str, status: str, limit: float, poll_interval: float) -> Answer:
        account_sid = self._account_sid()
        read_timeout = self.option_float("read_timeout")
        pause = poll_interval
        last_error: str | None = None
        while True:
            answer = self._settle(call_sid, status)
            if answer is not None:
                return answer
            now = time.monotonic()
            if now >= limit:
                raise self._still_pending(call_sid, status, last_error)
            time.sleep(min(pause, limit - now))
            pause = poll_interval
            timeout = min(read_timeout, max(1.0, limit - time.monotonic()))
            try:
                status = self._fetch_status(account_sid, call_sid, timeout=timeout)
                last_error = None
            except Overloaded as exc:
                last_error = exc.message
                pause = max(poll_interval, exc.retry_after or 0.0)
            except (Unreachable, OutcomeUnknown) as exc:
                last_error = exc.message

    def _settle(self, call_sid: str, status: str) -> Answer | None:
        if status == "in-progress":
            return Answer(f"Call {call_sid} answered", call_id=call_sid, data={"status": status})
        if status == "completed":
            return Answer(f"Call {call_sid} answered (already ended)", call_id=call_sid, data={"status": status})
        if status in STATUS_SIP:
            code = STATUS_SIP[status]
            raise CallRejected(code, reason_phrase(code), call_id=call_sid, server=self.name, twilio_status=status)
        return None

    def _still_pending(self, call_sid: str, status: str, last_error: str | None) -> OutcomeUnknown:
        why = f"; last status check failed: {last_error}" if last_error else ""
        return OutcomeUnknown(
            f"{self.name}: call {call_sid} was still {status} when the wait ended (answer_timeout "
            f"{self.options.get('answer_timeout')} s or the job timeout){why}; it may still be answered: look it "
            f"up in the Twilio call log or end it with `ifbus hangup sip {self.name} call_id={call_sid}`",
            call_id=call_sid,
            server=self.name,
            twilio_status=status,
        )

    # Requests

    def _fetch_status(self, account_sid: str, call_sid: str, **kwargs: Any) -> str:
        response = self._send("GET", f"{API}/Accounts/{account_sid}/Calls/{call_sid}.json", **kwargs)
        if response.status_code != 200:
            raise self._error(response, "fetch", call_sid)
        return self._call_status(response, call_sid)

    def _update(self, account_sid: str, call_sid: str, status: str) -> str:
        path = f"{API}/Accounts/{account_sid}/Calls/{call_sid}.json"
        response = self._send("POST", path, data={"Status": status})
        if response.status_code == 200:
            return self._call_status(response, call_sid)
        body = _json_object(response) or {}
        if response.status_code == 400 and body.get("code") == INVALID_STATE_CODE:
            return self._fetch_status(account_sid, call_sid)  # it ended on its own meanwhile
        raise self._error(response, "update", call_sid)

    def _call_status(self, response: httpx.Response, call_sid: str) -> str:
        body = _json_object(response)
        status = self._clean(body.get("status")) if body else ""
        if not status:
            raise Unreachable(
                f"{self.name}: Twilio answered HTTP {response.status_code} for call {call_sid} without a status",
                server=self.name,
            )
        return status

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return send(self.session.client, self.name, method, path, **kwargs)

    def _client(self) -> httpx.Client:
        account_sid = self._account_sid()
        token = self.require_auth("auth_token")["auth_token"]
        return make_client(
            base_url_option(self.name, self.options.get("base_url") or DEFAULT_BASE_URL, DEFAULT_BASE_URL),
            self.option_float("connect_timeout"),
            self.option_float("read_timeout"),
            auth=httpx.BasicAuth(account_sid, token),
            headers={"Accept": "application/json", "User-Agent": USER_AGENT},
        )

    def _error(self, response: httpx.Response, op: str, call_sid: str | None = None) -> BusError:
        """Twilio's error body {code, message, more_info, status} → one outcome class."""
        body = _json_object(response) or {}
        http_status = response.status_code
        code = body.get("code") if isinstance(body.get("code"), int) else None
        message = self._clean(body.get("message"), 300) or f"HTTP {http_status}"
        more_info = self._clean(body.get("more_info"), 200) or None
        what = f"HTTP {http_status}" + (f", Twilio error {code}" if code is not None else "")
        details = {"server": self.name, "http_status": http_status, "twilio_code": code, "more_info": more_info}
        if http_status == 401 or code in AUTH_CODES:
            return self.auth_failed(f"{message} ({what})")
        if op == "create" and code in CREATE_ERROR_SIP:
            sip_code = CREATE_ERROR_SIP[code]
            return CallRejected(sip_code, reason_phrase(sip_code), twilio_message=message, **details)
        if http_status >= 500 or http_status < 400:
            if op == "create":
                return OutcomeUnknown(
                    f"{self.name}: Twilio answered {what} to the call request ({message}); a call may have been "
                    "placed: check the Twilio call log before trying again",
                    **details,
                )
            return Unreachable(f"{self.name}: Twilio server error ({what}): {message}", **details)
        if call_sid is not None and (http_status == 404 or code == NOT_FOUND_CODE):
            return NotFound(
                f"Not found: no call {call_sid} on Twilio account {self._account_sid()} ({what}): check the "
                "call id; a call placed through another Twilio account can only be ended there",
                call_id=call_sid,
                **details,
            )
        hint = f"; see {more_info}" if more_info else ""
        return InvalidInput(f"{self.name}: Twilio refused the request: {message} ({what}){hint}", **details)

    # Input

    def _account_sid(self) -> str:
        sid = self.require_auth("account_sid", "auth_token")["account_sid"]
        if not ACCOUNT_SID_RE.fullmatch(sid):
            raise InvalidInput(
                f"{self.name}: --auth account_sid={show(sid)} is not a Twilio Account SID: expected AC followed by "
                "32 hex digits (34 characters, as shown in the Twilio Console), e.g. account_sid=AC0123…cdef"
            )
        return sid

    def _call_sid(self, call_id: str) -> str:
        check_value("call_id", call_id)
        if not CALL_SID_RE.fullmatch(call_id):
            raise InvalidInput(
                f"call_id={show(call_id)} is not a Twilio Call SID: expected CA followed by 32 hex digits "
                "(34 characters), as `call` returned it"
            )
        return call_id

    def _instructions(self, extras: dict[str, str]) -> dict[str, str]:
        twiml, url = extras.get("twiml"), extras.get("url")
        if twiml is not None and url is not None:
            raise InvalidInput("call on twilio: give twiml= or url=, not both (Twilio would silently ignore twiml)")
        if url is not None:
            check_value("url", url)
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise InvalidInput(f"url={show(url)}: expected an absolute http(s) URL that returns TwiML")
            return {"Url": url}
        twiml = twiml if twiml is not None else self.options.get("twiml") or DEFAULT_TWIML
        check_value("twiml", twiml, TWIML_MAX)
        if not TWIML_RE.match(twiml):
            raise InvalidInput(f"twiml={show(twiml)}: expected TwiML, e.g. <Response><Say>Hello</Say></Response>")
        return {"Twiml": twiml}

    def _positive(self, key: str, default: float | None) -> float:
        raw = self.options.get(key)
        if raw is None and default is not None:
            return default
        value = self.option_float(key)
        if not (value > 0 and math.isfinite(value)):
            raise InvalidInput(f"{self.name}: option {key}={raw!r} must be a positive number of seconds")
        return value

    def _clean(self, value: object, limit: int = 64) -> str:
        """Server text fit for a message: a bounded single line, never containing the auth token."""
        if not isinstance(value, str):
            return ""
        text = _CONTROL.sub(" ", value).strip()
        token = self.entry.auth.get("auth_token")
        if token:
            text = text.replace(token, "****")
        return text if len(text) <= limit else text[: limit - 1] + "…"


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _seconds(queue_time_ms: object) -> float:
    """`queue_time` is a string of milliseconds (OpenAPI: "The wait time in milliseconds before the call is placed")."""
    try:
        value = float(str(queue_time_ms)) / 1000.0
    except ValueError:
        return 0.0
    return value if math.isfinite(value) and value > 0 else 0.0
