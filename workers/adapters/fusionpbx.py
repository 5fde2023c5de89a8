"""FusionPBX adapter: FusionPBX's own click-to-call page, and the box's event socket for hangup.

FusionPBX core has no REST API (docs/reference/vendors.md §7.1). Calls go through
`app/click_to_call/click_to_call.php?src=<from>&dest=<to>`, which runs a *blocking* `api originate`
over the box's ESL and prints `+OK <uuid>` (the A-leg answered) or `-ERR <CAUSE>`; so `originate`
returns only once the outcome is known, and `follow` has nothing left to wait for.

Login (resources/check_auth.php, core/authentication/…/plugins/database.php):
- `--auth key=<user API key>`: the key rides in the POST body of the click-to-call request itself;
  FusionPBX master (PR #7968) first wants the login form's token (`302 login.php`): then we fetch the
  form and post again with it;
- `username`/`password`/`domain`: GET the page (login form, session cookie, token on master), POST the
  credentials (`302 /core/dashboard/` = logged in, `302 /?path=…` = refused), then GET the page with the
  session. The session is bound to the User-Agent, so one fixed User-Agent is sent throughout.
The PHPSESSID cookie is `secure`; we keep and resend it ourselves (so loopback http works too).
Hangup: `uuid_kill` through the box's event socket (`esl_password`, `esl_host`, `esl_port`): the web
hangup needs a CSRF token bound to the active-calls page and is not usable by an API client.
Public behaviour: docs/fusionpbx.md.
"""

from __future__ import annotations

import html
import ipaddress
import re
import threading
import time
from typing import ClassVar

import httpx

from bus.calls import CallRef
from bus.errors import AuthFailed, CallRejected, InvalidInput, OutcomeUnknown, Unreachable
from bus.server import ServerEntry
from bus.sip import for_vendor, q850_cause, q850_to_sip, reason_phrase
from bus.validate import show
from workers.adapters.base import Adapter, Answer
from workers.adapters.freeswitch import EslSession, esl_password, kill
from workers.transports.http import make_client, send

PATH = "/app/click_to_call/click_to_call.php"
USER_AGENT = "ifbus-sip (FusionPBX click-to-call)"
_SRC = re.compile(r"[A-Za-z0-9*#+._-]{1,64}")  # becomes user/<src>@<domain> inside FusionPBX's originate
_DEST = re.compile(r"[A-Za-z0-9*#+._@:-]{1,128}")  # becomes '<dest> XML <domain>' or sofia/external/<dest>
_TOKEN = re.compile(r"<input type='hidden' name='([0-9a-f]{64})' value='([0-9a-f]{64})'>")
_SESSID = re.compile(r"PHPSESSID=([A-Za-z0-9,-]{1,128})")
_RESULT = re.compile(r"<br />\s*([+-](?:OK|ERR|USAGE)[^<]*)<br /><br />")
_CAUSE = re.compile(r"-ERR ([A-Z_0-9]{1,64})")
_UUID = re.compile(r"\+OK ([0-9a-fA-F-]{36})")
# How much longer than FreeSWITCH's originate wait the page may take (login, PHP, the transfer).
WEB_MARGIN = 15.0


def _is_login_form(response: httpx.Response) -> bool:
    return response.status_code == 200 and "name='password'" in response.text


class FusionPbxAdapter(Adapter):
    type = "fusionpbx"
    call_extras: ClassVar[frozenset[str]] = frozenset()
    hangup_extras: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, name: str, entry: ServerEntry) -> None:
        super().__init__(name, entry)
        self._client: httpx.Client | None = None
        self._sessid: str | None = None
        self._esl: EslSession | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ HTTP plumbing

    def _domain(self) -> str:
        domain = self.entry.auth.get("domain") or self.entry.host
        if not domain:
            raise InvalidInput(f"{self.name}: FusionPBX needs --auth domain=<the tenant's domain>")
        return domain

    def _base_url(self) -> str:
        scheme = self.options.get("scheme", "https")
        host = self.entry.host or self._domain()
        if scheme not in ("http", "https"):
            raise InvalidInput(f"{self.name}: option scheme={show(scheme)}: expected https (or http on loopback)")
        if scheme == "http" and not _loopback(host):
            raise InvalidInput(f"{self.name}: plain http only to a loopback host (passwords would cross the network)")
        port = self.entry.effective_port or 443
        bracket = f"[{host}]" if ":" in host else host
        return f"{scheme}://{bracket}:{port}"

    def _http(self) -> httpx.Client:
        if self._client is None:
            headers = {"User-Agent": USER_AGENT}
            if (self.entry.host or "") != self._domain():
                headers["Host"] = self._domain()  # FusionPBX picks the tenant by Host
            self._client = make_client(
                self._base_url(),
                self.option_float("connect_timeout"),
                self.option_float("read_timeout"),
                headers=headers,
                follow_redirects=False,
            )
        return self._client

    def _send(
        self,
        method: str,
        params: dict[str, str] | None = None,
        data: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        client = self._http()
        headers = {"Cookie": f"PHPSESSID={self._sessid}"} if self._sessid else {}
        kwargs: dict[str, object] = {"params": params, "data": data, "headers": headers}
        if timeout is not None:
            kwargs["timeout"] = httpx.Timeout(timeout, connect=self.option_float("connect_timeout"))
        response = send(client, self.name, method, PATH, **kwargs)
        client.cookies.clear()  # the session cookie is ours to keep (it is `secure`; see the module docstring)
        for value in response.headers.get_list("set-cookie"):
            match = _SESSID.search(value)
            if match:
                self._sessid = match[1]
        return response

    def _key_form(self) -> dict[str, str] | None:
        key = self.entry.auth.get("key")
        return {"key": key, "domain_name": self._domain()} if key else None

    def _refused(self, response: httpx.Response) -> AuthFailed:
        where = response.headers.get("location", "")
        if "login.php" in where:
            return self.auth_failed("the login form's token was refused")
        return self.auth_failed(f"login refused (HTTP {response.status_code} to {show(where, 60)})")

    def _token(self) -> dict[str, str]:
        """GET the page without credentials: the login form, a session, and (master) its token."""
        response = self._send("GET")
        if not _is_login_form(response):
            raise OutcomeUnknown(
                f"{self.name}: {PATH} did not show FusionPBX's login form (HTTP {response.status_code})",
                server=self.name,
            )
        match = _TOKEN.search(response.text)
        return {match[1]: match[2]} if match else {}

    def _login(self) -> None:
        creds = self.require_auth("username", "password")
        self._sessid = None
        form = {**creds, "domain_name": self._domain(), **self._token()}
        response = self._send("POST", data=form)
        where = response.headers.get("location", "")
        if response.status_code != 302 or "/?path=" in where or "login.php" in where:
            raise self._refused(response)

    def _page(self, params: dict[str, str], timeout: float | None = None) -> httpx.Response:
        """The click-to-call page, logged in. Only a login form or a refusal (the page did not run) is
        retried; with `key`, through the token form on FusionPBX master."""
        key_form = self._key_form()
        if key_form is not None:
            response = self._send("POST", params=params, data=key_form, timeout=timeout)
            if response.status_code == 302 and "login.php" in response.headers.get("location", ""):
                token = self._token()
                response = self._send("POST", params=params, data={**key_form, **token}, timeout=timeout)
            if response.status_code == 302 and "/?path=" in response.headers.get("location", ""):
                raise self._refused(response)
            return response
        if self._sessid is None:
            self._login()
        response = self._send("GET", params=params, timeout=timeout)
        if _is_login_form(response) or "/?path=" in response.headers.get("location", ""):
            self._login()  # the session expired; the page did not run
            response = self._send("GET", params=params, timeout=timeout)
        return response

    # ------------------------------------------------------------------ operations

    def test(self) -> Answer:
        with self._lock:
            if self._key_form() is None:
                self._login()
            response = self._page({})
        if response.text.strip() == "access denied":
            raise self.auth_failed("this user lacks the click_to_call_view permission")
        if response.status_code != 200 or 'name="src"' not in response.text:
            raise self._refused(response)
        message = f"FusionPBX at {self._base_url()}: logged in to {self._domain()}; click-to-call page reachable"
        data: dict[str, object] = {"domain": self._domain()}
        session = self._esl_session(required=False)
        if session is not None:
            version = session.api(b"api version\n\n", time.monotonic() + self.option_float("read_timeout"))
            text = version.text.strip()
            message += f"; event socket: {text}"
            data["freeswitch"] = text
        return Answer(message, data=data)

    def originate(self, from_: str, to: str, extras: dict[str, str], deadline: float) -> CallRef:
        self.check_extras(extras, self.call_extras, "call")
        src = for_vendor(from_, self.type, role="from")
        dest = for_vendor(to, self.type, role="to")
        if dest.lower().startswith("sip:"):
            dest = dest[4:]
        if not _SRC.fullmatch(src):
            raise InvalidInput(
                f"from={show(src)}: FusionPBX click-to-call rings a local extension (letters, digits, + * # . _ -)"
            )
        if not _DEST.fullmatch(dest):
            raise InvalidInput(f"to={show(dest)}: expected an extension, a number or user@host")
        timeout = min(self.option_float("originate_timeout") + WEB_MARGIN, deadline - time.monotonic())
        if timeout <= 0:
            raise Unreachable(f"{self.name}: no time left to place the call; nothing was sent", server=self.name)
        with self._lock:
            response = self._page({"src": src, "dest": dest}, timeout=timeout)
        return self._outcome(response, src, dest)

    def _outcome(self, response: httpx.Response, src: str, dest: str) -> CallRef:
        body = response.text
        if "has called" not in body:
            if "Connection to Event Socket failed." in body:
                raise Unreachable(
                    f"{self.name}: FusionPBX cannot reach its own FreeSWITCH event socket; nothing was dialled",
                    server=self.name,
                )
            if body.strip() == "access denied":
                raise self.auth_failed("this user lacks the click_to_call_view permission")
            if response.status_code == 302 or _is_login_form(response):
                raise self._refused(response)
            raise OutcomeUnknown(
                f"{self.name}: unexpected click-to-call answer (HTTP {response.status_code})", server=self.name
            )
        match = _RESULT.search(body)
        result = html.unescape(match[1]).strip() if match else ""
        ok = _UUID.match(result)
        if ok:
            return CallRef(self.name, ok[1], {"via": "click_to_call"})
        cause = _CAUSE.match(result)
        if cause:
            number = q850_cause(cause[1])
            code = q850_to_sip(number if number is not None else 31, self.type) or 480
            raise CallRejected(code, reason_phrase(code), server=self.name, cause=cause[1])
        if result.startswith("-USAGE"):
            raise InvalidInput(
                f"{self.name}: FusionPBX dialled nothing for to={show(dest)}: not a local extension, and this "
                "user lacks the click_to_call_call permission for outside destinations"
            )
        raise OutcomeUnknown(
            f"{self.name}: FusionPBX ran the call from {src} to {dest} but its result is unreadable: "
            f"{show(result, 80)}",
            server=self.name,
        )

    def follow(self, ref: CallRef, deadline: float) -> Answer:
        """Nothing to wait for: click_to_call.php's originate returned `+OK` after the A-leg answered."""
        return Answer(f"Call {ref.call_id} answered on {self.name}", call_id=ref.call_id, data={"via": "click_to_call"})

    def hangup(self, call_id: str, ref: CallRef | None, extras: dict[str, str]) -> Answer:
        session = self._esl_session(required=True)
        assert session is not None
        return kill(self, session, call_id)

    def _esl_session(self, *, required: bool) -> EslSession | None:
        if self._esl is None:
            password = esl_password(self.entry, "esl_password")
            if password is None:
                if required:
                    raise InvalidInput(
                        f"{self.name}: hangup on FusionPBX goes through the box's event socket: re-add with "
                        "--auth … esl_password=<event_socket.conf.xml password> [--opt esl_host=… esl_port=8021] "
                        "(FusionPBX's web hangup needs a CSRF token from the active-calls page and cannot be used)"
                    )
                return None
            host = self.options.get("esl_host") or self.entry.host or self._domain()
            self._esl = EslSession(self, host, int(self.option_float("esl_port")), password)
        return self._esl

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._esl is not None:
            self._esl.close()
            self._esl = None


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
