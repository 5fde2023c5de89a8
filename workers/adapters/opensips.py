"""OpenSIPS 3.x through its management interface, mi_http (JSON-RPC 2.0 over HTTP POST).

Click-to-call is b2b_logic's `b2b_trigger_scenario`: OpenSIPS, as a B2BUA, calls `from`, and once it
answers calls `to` and bridges the two. The command answers only `"OK"` — no session key, no outcome —
and a refused call leaves little behind (a busy callee's session lingers in `b2b_list` for 30-130 s in
state 5, a refusing caller's vanishes at once; tests/peers/captures/README.md). So the server's config
(deploy/opensips/opensips.cfg, the "IF.bus: c2c outcome tracking" block) records what happened in
cachedb_local, under a tag this adapter makes up and passes as the session's `ifbus` context value:

    ifbus:<tag>:key   the b2b_logic session key (stored before the MI command answers)
    ifbus:<tag>:a     latest, then first final, SIP code of the leg to `from`
    ifbus:<tag>:b     the same for the leg to `to` (only once `from` answered)
    ifbus:<tag>:dlg   `callid;from-tag;to-tag` of the answered `from` leg (a hang-up target never reused)
    ifbus:b2b:<key>   the tag of the newest IF.bus session holding that key

and `follow` reads them back with MI `cache_fetch` (one loopback request each, ~1 ms). Hang-up is
`b2b_terminate_call <key>`, which BYEs (or CANCELs) both legs; "B2B session not found" means the call
is already over. OpenSIPS 3.x mi_http has no authentication: `user`/`secret` are sent as HTTP Basic for
an authenticating reverse proxy in front of it (deploy/opensips/README.md). mi_http answers a GET with
headers and then never finishes (captured), so only POST is ever sent.
"""

from __future__ import annotations

import itertools
import re
import time
import uuid
from typing import Any

import httpx

from bus.calls import CallRef
from bus.errors import CallRejected, InvalidInput, OutcomeUnknown, Unreachable
from bus.sip import for_vendor, reason_phrase
from bus.validate import show
from workers.adapters.base import Adapter, Answer
from workers.transports.http import HttpSession, make_client, path_option, send, server_url

# The scenario id the config's routes recognise (deploy/opensips/opensips.cfg); entity ids "a"/"b" too.
SCENARIO = "ifbus-c2c"
CACHE = "local"
# Slack on top of the config's fr_timeout before a missing session key means the config lacks the
# IF.bus blocks (the key is stored while the trigger runs, so on a working server it is there at once).
CONFIG_MARGIN_SECONDS = 1.0
_READS = frozenset({"version", "uptime", "cache_fetch"})
_TAG_RE = re.compile(r"^[0-9a-f]{16}$")
_B2B_KEY_RE = re.compile(r"^[0-9]+\.[0-9]+$")
# b2b_trigger_scenario's entity strings are CSV (`id,uri[,display]`): a comma or a quote in a URI would
# move the fields, so such URIs are refused rather than quoted.
_CSV_UNSAFE = re.compile(r'[,"\s]')


class MiError(Exception):
    """A JSON-RPC error object; mi_http sends them inside HTTP 200 (mi_errors_transcript.txt)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message


class OpensipsAdapter(Adapter):
    type = "opensips"

    def __init__(self, name: str, entry: Any) -> None:
        super().__init__(name, entry)
        self.session = HttpSession(self._client)
        self._ids = itertools.count(1)

    # ------------------------------------------------------------ operations

    def test(self) -> Answer:
        """`version` names the build ("OpenSIPS (3.4.18 (x86_64/linux))"); `uptime` proves it is the live one."""
        server = str(self._result("version", None).get("Server", "")).strip()
        match = re.fullmatch(r"OpenSIPS \((\S+)(?: \((.+)\))?\)", server)
        version = match.group(1) if match else server
        label = f"OpenSIPS {version}" + (f" ({match.group(2)})" if match and match.group(2) else "")
        up = _seconds(str(self._result("uptime", None).get("Up time", "")))
        message = label + (f", up {_human(up)}" if up is not None else "")
        return Answer(message, data={"server": server, "version": version, "uptime_seconds": up})

    def originate(self, from_: str, to: str, extras: dict[str, str], deadline: float) -> CallRef:
        self.check_extras(extras, self.call_extras, "call")
        domain = self.entry.auth.get("domain") or self.entry.host
        a_uri = self._party(from_, "from", domain)
        b_uri = self._party(to, "to", domain)
        tag = uuid.uuid4().hex[:16]
        params = {
            "scenario_id": SCENARIO,
            "entity1": f"a,{a_uri}",
            "entity2": f"b,{b_uri}",
            "context": [f"ifbus={tag}"],
        }
        try:
            self._rpc("b2b_trigger_scenario", params, deadline)
        except MiError as exc:
            raise self._trigger_problem(exc) from None
        # Accepted. The key is normally stored already; if reading it fails, follow() finds it later.
        key: str | None = None
        try:
            key = self._fetch(f"ifbus:{tag}:key", deadline)
        except Exception:  # after acceptance nothing may look like "not placed": follow() retries
            key = None
        handle = {"tag": tag}
        if key:
            handle["key"] = key
        return CallRef(self.name, key, handle)

    def follow(self, ref: CallRef, deadline: float) -> Answer:
        """Poll the recorded leg codes until both legs answered or one refused."""
        try:
            return self._follow(ref, deadline)
        except (OutcomeUnknown, Unreachable) as exc:
            if time.monotonic() < deadline or "still in progress" in exc.message:
                raise
            # A poll cut short by the caller's deadline says only that the wait ended, not that MI failed.
            raise self._in_progress(ref.handle["tag"], ref.handle.get("key") or ref.call_id) from None

    def _in_progress(self, tag: str, key: str | None) -> OutcomeUnknown:
        return OutcomeUnknown(
            f"call setup on {self.name} still in progress when the wait ended (b2b key {key or '?'}, "
            f"tag {tag}); it may still connect",
            tag=tag,
            call_id=key,
            server=self.name,
        )

    def _follow(self, ref: CallRef, deadline: float) -> Answer:
        tag = ref.handle["tag"]
        key = ref.handle.get("key") or ref.call_id
        poll = self.option_float("poll_interval")
        config_limit = time.monotonic() + self.option_float("fr_timer") + CONFIG_MARGIN_SECONDS
        while True:
            a = self._code(f"ifbus:{tag}:a", deadline)
            if a is not None and a >= 300:
                raise CallRejected(a, reason_phrase(a), leg="from", tag=tag, call_id=key, server=self.name)
            if a == 200:
                b = self._code(f"ifbus:{tag}:b", deadline)
                if b is not None and b >= 300:
                    raise CallRejected(b, reason_phrase(b), leg="to", tag=tag, call_id=key, server=self.name)
                if b == 200:
                    key = key or self._fetch(f"ifbus:{tag}:key", deadline)
                    return Answer(
                        f"Call connected on {self.name}: {key or tag}",
                        call_id=key or tag,
                        data={"sip_code": 200, "tag": tag, "b2b_key": key},
                    )
            if key is None:
                key = self._fetch(f"ifbus:{tag}:key", deadline)
                if key is None and a is None and time.monotonic() > config_limit:
                    raise OutcomeUnknown(
                        f"{self.name} accepted the call (tag {tag}) but records no outcome for it: is the "
                        "IF.bus c2c block of deploy/opensips/opensips.cfg (cachedb_local) in its config?",
                        tag=tag,
                        server=self.name,
                    )
            if time.monotonic() + poll >= deadline:
                raise self._in_progress(tag, key)
            time.sleep(poll)

    def hangup(self, call_id: str, ref: CallRef | None, extras: dict[str, str]) -> Answer:
        """b2b_terminate_call, aimed so that a reused key never ends somebody else's call.

        b2b_logic reuses a key once its session is gone (the lab gave 547.0 to three calls in a row), so
        for a call the bus placed (a tag is known) the target is the answered first leg's
        `callid;from-tag;to-tag`, else the key only while `ifbus:b2b:<key>` still names this call's tag.
        A bare key or dialog triple from the user is used as given.
        """
        self.check_extras(extras, self.hangup_extras, "hangup")
        tag = ref.handle.get("tag") if ref is not None else (call_id if _TAG_RE.match(call_id) else None)
        if tag is not None:
            target = self._fetch(f"ifbus:{tag}:dlg", None)
            if target is None:
                key = (ref.handle.get("key") if ref is not None else None) or self._fetch(f"ifbus:{tag}:key", None)
                if key is None:
                    return self.already_ended(call_id, "it never started on the server")
                if self._fetch(f"ifbus:b2b:{key}", None) != tag:
                    return self.already_ended(call_id, f"its b2b session {key} is gone")
                target = key
        elif _B2B_KEY_RE.match(call_id) or call_id.count(";") == 2:
            target = call_id
        else:
            raise InvalidInput(
                f"{show(call_id)} is not an OpenSIPS call id: expected a b2b_logic key such as 415.0, "
                "callid;from-tag;to-tag, or an IF.bus tag"
            )
        try:
            self._rpc("b2b_terminate_call", {"key": target}, None)
        except MiError as exc:
            if exc.code == 404:
                return self.already_ended(call_id, exc.message)
            raise self._problem("b2b_terminate_call", exc) from None
        return Answer(f"Hung up {call_id} on {self.name}", call_id=call_id, data={"b2b_target": target})

    def close(self) -> None:
        self.session.close()

    # ------------------------------------------------------------ helpers

    def _party(self, value: str, role: str, domain: str | None) -> str:
        uri = for_vendor(value, "opensips", role=role, domain=domain)
        if _CSV_UNSAFE.search(uri):
            raise InvalidInput(f"{role}: commas, quotes and spaces cannot be passed to b2b_trigger_scenario")
        return uri

    def _code(self, key: str, deadline: float) -> int | None:
        value = self._fetch(key, deadline)
        try:
            return int(value) if value is not None else None
        except ValueError:
            return None

    def _fetch(self, attr: str, deadline: float | None) -> str | None:
        try:
            found = self._rpc("cache_fetch", {"system": CACHE, "attr": attr}, deadline)
        except MiError as exc:
            if exc.code == 400 and "not found" in exc.message.lower():
                return None
            raise self._problem("cache_fetch", exc) from None
        value = found.get("value") if isinstance(found, dict) else None
        return str(value) if value not in (None, "") else None

    def _trigger_problem(self, exc: MiError) -> Exception:
        if exc.code == 500 and "initialize" in exc.message:
            # Nothing was sent: b2b_logic could not create the first leg (log: "could not resolve hostname").
            return CallRejected(
                500,
                f"{reason_phrase(500)} (OpenSIPS could not start the call: {exc.message}; an unresolvable host "
                "in from/to is the usual cause, its log says which)",
                leg="from",
                server=self.name,
            )
        return self._problem("b2b_trigger_scenario", exc)

    def _problem(self, method: str, exc: MiError) -> InvalidInput:
        if exc.code == -32601:
            module = "cachedb_local" if method.startswith("cache_") else "b2b_logic"
            return InvalidInput(
                f"{self.name}: {method} is not available on this OpenSIPS (load {module} and the IF.bus blocks of "
                "deploy/opensips/opensips.cfg)"
            )
        return InvalidInput(f"{self.name}: {method} failed: {exc.code} {exc.message}")

    def _result(self, method: str, params: dict[str, Any] | None) -> dict[str, Any]:
        try:
            result = self._rpc(method, params, None)
        except MiError as exc:
            raise self._problem(method, exc) from None
        if not isinstance(result, dict):
            raise InvalidInput(f"{self.name}: unexpected answer to {method}")
        return result

    # ------------------------------------------------------------ JSON-RPC over mi_http

    def _rpc(self, method: str, params: dict[str, Any] | None, deadline: float | None) -> Any:
        body: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": next(self._ids)}
        if params is not None:
            body["params"] = params  # named: the MI recipes match on parameter names
        path = path_option(self.name, "path", self.options["path"])
        try:
            response = send(self.session.client, self.name, "POST", path, json=body, deadline=deadline)
        except (OutcomeUnknown, Unreachable):
            # A kept-alive connection the server dropped (a restart) fails the next request. Reads are
            # safe to send again once on a fresh connection; the trigger and the hang-up are not.
            if method not in _READS:
                raise
            self.session.close()
            response = send(self.session.client, self.name, "POST", path, json=body, deadline=deadline)
        if response.status_code in (401, 403):
            raise self.auth_failed(f"HTTP {response.status_code} from {response.request.url}")
        try:
            reply = response.json()
        except ValueError:
            reply = None
        if response.status_code != 200 or not isinstance(reply, dict):
            raise InvalidInput(
                f"{self.name}: no mi_http JSON-RPC at {response.request.url} (HTTP {response.status_code}); "
                "check --port and --opt path= (mi_http's root, /mi by default)"
            )
        if "error" in reply:
            error = reply.get("error") or {}
            raise MiError(int(error.get("code", 0)), str(error.get("message", "")))
        if "result" not in reply:
            raise InvalidInput(f"{self.name}: unexpected JSON-RPC reply to {method}")
        return reply["result"]

    def _client(self) -> httpx.Client:
        user, secret = self.entry.auth.get("user"), self.entry.auth.get("secret")
        auth = httpx.BasicAuth(user, secret) if user and secret else None
        base = server_url(
            self.name, self.options.get("scheme", "http"), self.entry.host or "127.0.0.1", self.entry.effective_port
        )
        # One request per connection: on the lab's OpenSIPS 3.4.18, about 1 in 11 requests sent on a kept-alive
        # mi_http connection was never answered (26 of 300); with `Connection: close`, 0 of 300 (docs/opensips.md).
        return make_client(
            base,
            self.option_float("connect_timeout"),
            self.option_float("read_timeout"),
            auth=auth,
            headers={"Connection": "close"},
        )


def _seconds(up_time: str) -> int | None:
    """`"Up time": "7265 [sec]"` (mi_basic_transcript.txt) → 7265."""
    match = re.match(r"\s*(\d+)", up_time)
    return int(match.group(1)) if match else None


def _human(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"
