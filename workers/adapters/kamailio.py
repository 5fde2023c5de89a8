"""Kamailio through JSON-RPC 2.0 over HTTP (jsonrpcs + xhttp), per ../shared/vendors.md §3.

Click-to-call is `dlg.bridge_dlg`, which answers `{}` for every outcome and returns before anyone
rings. To report the real setup outcome, both bridge URIs carry `;c2c=<id>` and the server's config
(deploy/kamailio/kamailio.cfg, the "IF.bus: c2c outcome tracking" block) records each leg's SIP
code in the htable `c2c`; this adapter reads those codes back with `htable.get`:

    <id>::a          final (or latest) code of the leg to `from` (the hold INVITE)
    <id>::b          code of `from`'s INVITE to `to` after the REFER
    <id>::b::callid  Call-ID of that call: the dialog `hangup` ends

Kamailio offers no event push over JSON-RPC, so this is a poll of a local htable (~0.2 ms each).
"""

from __future__ import annotations

import itertools
import time
import uuid
from typing import Any

from bus.calls import CallRef
from bus.errors import BusError, CallRejected, InvalidInput, NotFound, OutcomeUnknown
from bus.logging import get_logger
from bus.sip import for_vendor, reason_phrase, with_uri_param
from workers.adapters.base import Adapter, Answer, Pending
from workers.transports.http import HttpSession, make_client, path_option, send, server_url

log = get_logger("ifbus.kamailio")

HTABLE = "c2c"
POLL_SECONDS = 0.02
# Slack on top of Kamailio's own tm timers before we conclude a timer fired without a reply.
TIMER_MARGIN_SECONDS = 1.0
CONFIRMED_STATES = (1, 2, 3, 4)  # dialog states before 5 (deleted)


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


class RpcError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message


class KamailioAdapter(Adapter):
    type = "kamailio"

    def __init__(self, name: str, entry: Any) -> None:
        super().__init__(name, entry)
        self.session = HttpSession(self._client)
        self._ids = itertools.count(1)
        self._dump_cost = 0.0  # seconds the last htable.dump took (0: unknown, so the first look dumps)
        self._get_cost = 0.001  # seconds per htable.get, as last measured
        self._can_dump = True

    # ------------------------------------------------------------ operations

    def test(self) -> Answer:
        version = str(self._rpc("core.version")).strip()
        parts = version.split()
        data = {"server": version, "version": parts[1] if len(parts) > 1 else version}
        return Answer(version, data=data)

    def originate(self, from_: str, to: str, extras: dict[str, str], deadline: float) -> CallRef:
        domain = self.entry.auth.get("realm") or self.entry.host or "127.0.0.1"
        track = uuid.uuid4().hex[:16]
        a_uri = with_uri_param(for_vendor(from_, "kamailio", role="from", domain=domain), HTABLE, track)
        b_uri = with_uri_param(for_vendor(to, "kamailio", role="to", domain=domain), HTABLE, track)
        try:
            self._rpc("dlg.bridge_dlg", a_uri, f"<{b_uri}>", deadline=deadline)  # <…> keeps the param in Refer-To
        except RpcError as exc:
            raise self._rpc_problem("dlg.bridge_dlg", exc) from None
        return CallRef(self.name, None, {"tracking_id": track})

    def follow(self, ref: CallRef, deadline: float) -> Answer:
        """Poll the htable until the call connects, a leg fails, or a timer says nobody answered."""
        pending = Pending(ref, time.monotonic(), deadline)
        track = ref.handle["tracking_id"]
        while True:
            codes = {f"{track}::a": self._htable(f"{track}::a")}
            if _int(codes[f"{track}::a"]) == 200:
                codes[f"{track}::b"] = self._htable(f"{track}::b")
                if _int(codes[f"{track}::b"]) == 200:
                    codes[f"{track}::b::callid"] = self._htable(f"{track}::b::callid")
            verdict = self._judge(pending, codes)
            if isinstance(verdict, Answer):
                return verdict
            if verdict is not None:
                raise verdict
            if time.monotonic() + POLL_SECONDS >= deadline:
                raise self._still_ringing(track)
            time.sleep(POLL_SECONDS)

    poll_interval = POLL_SECONDS

    def poll_many(self, calls: list[Pending]) -> list[Answer | BaseException | None]:
        """One look at every call this process follows here, whichever way costs less now: one
        `htable.dump c2c` (its cost grows with the table: Kamailio keeps settled calls' codes for the
        table's autoexpire, 1 h; lab: 1.4 ms for 600 entries) or one `htable.get` per key still
        needed (~2 per ringing call; lab: 0.6 ms each). Both costs are measured as they happen."""
        values: dict[str, Any] | None = None
        if self._can_dump and self._dump_cost <= 2 * len(calls) * self._get_cost:
            started = time.monotonic()
            try:
                values = self._dump()
            except RpcError as exc:  # htable.dump refused (an RPC ACL?): the per-key gets still work
                log.warning("kamailio.dump_refused", server=self.name, error=f"{exc.code} {exc.message}")
                self._can_dump = False
            self._dump_cost = time.monotonic() - started
        if values is None:
            values, gets, started = {}, 0, time.monotonic()
            for call in calls:
                track = call.ref.handle["tracking_id"]
                for key in (f"{track}::a", f"{track}::b", f"{track}::b::callid"):
                    values[key] = self._htable(key)
                    gets += 1
                    if not key.endswith("::callid") and _int(values[key]) != 200:
                        break  # the next key only matters once this leg answered
            self._get_cost = (time.monotonic() - started) / max(1, gets)
            self._dump_cost *= 0.9  # the table shrinks as its entries expire: try a dump again now and then
        out: list[Answer | BaseException | None] = []
        for call in calls:
            verdict = self._judge(call, values)
            if verdict is None and time.monotonic() >= call.deadline:
                verdict = self._still_ringing(call.ref.handle["tracking_id"])
            out.append(verdict)
        return out

    def _judge(self, call: Pending, values: dict[str, Any]) -> Answer | BusError | None:
        """The one reading of a call's c2c codes: answered, refused (a leg's code, or a timer that
        fired without a reply: 408 before the first party answered, 501 when it ignored the REFER),
        or None while it rings. `call.notes["b_since"]` remembers when the first party answered."""
        track = call.ref.handle["tracking_id"]
        fr_timer = self.option_float("fr_timer") + TIMER_MARGIN_SECONDS
        now = time.monotonic()
        a = _int(values.get(f"{track}::a"))
        if a is not None and a >= 300:
            return CallRejected(a, reason_phrase(a), leg="from", tracking_id=track, server=self.name)
        if a == 200:
            b_since = call.notes.setdefault("b_since", now)
            b = _int(values.get(f"{track}::b"))
            if b is not None and b >= 300:
                return CallRejected(b, reason_phrase(b), leg="to", tracking_id=track, server=self.name)
            if b == 200:
                call_id = values.get(f"{track}::b::callid")
                return Answer(
                    f"Call connected on {self.name}",
                    call_id=str(call_id) if call_id is not None else None,
                    data={"sip_code": 200, "tracking_id": track},
                )
            if b is None and now - b_since > fr_timer:
                return CallRejected(
                    501,
                    "Not Implemented (the from party answered but did not act on the REFER)",
                    leg="from",
                    tracking_id=track,
                    server=self.name,
                )
        elif a is None and now - call.since > fr_timer:
            # tm's own 408 for a local INVITE is never a network reply, so it is never recorded.
            return CallRejected(408, reason_phrase(408), leg="from", tracking_id=track, server=self.name)
        return None

    def _still_ringing(self, track: str) -> OutcomeUnknown:
        return OutcomeUnknown(
            f"call setup on {self.name} still in progress when the wait ended (tracking id {track}); "
            f"it may still connect",
            tracking_id=track,
            server=self.name,
        )

    def _dump(self) -> dict[str, Any]:
        """The c2c table as {key: value}."""
        found = self._rpc("htable.dump", HTABLE)
        values: dict[str, Any] = {}
        for entry in found if isinstance(found, list) else []:
            for item in entry.get("slot") or [] if isinstance(entry, dict) else []:
                if isinstance(item, dict) and "name" in item:
                    values[str(item["name"])] = item.get("value")
        return values

    def hangup(self, call_id: str, ref: CallRef | None, extras: dict[str, str]) -> Answer:
        sip_call_id = call_id
        if ref is not None and call_id == ref.handle.get("tracking_id"):
            # The call ended "outcome unknown" before it connected: its Call-ID, if it ever connected.
            found = self._htable(f"{call_id}::b::callid")
            if found is None:
                return self.already_ended(call_id, "it never connected")
            sip_call_id = str(found)
        dialogs = [d for d in self._dialogs(sip_call_id) if d.get("state") in CONFIRMED_STATES]
        if not dialogs:
            if ref is not None:  # the bus placed it here, and no live dialog is left: it is over
                return self.already_ended(call_id)
            raise NotFound(f"Not found: no active call {call_id} on {self.name}", call_id=call_id)
        for dialog in dialogs:
            try:
                # h_entry/h_id must be JSON numbers: as strings Kamailio answers 404 (kamailio-lab.md §7.11).
                self._rpc("dlg.end_dlg", int(dialog["h_entry"]), int(dialog["h_id"]))
            except RpcError as exc:
                if exc.code != 404:  # ended meanwhile: the goal is reached
                    raise self._rpc_problem("dlg.end_dlg", exc) from None
        return Answer(f"Hung up {call_id} on {self.name}", call_id=call_id, data={"dialogs": len(dialogs)})

    def close(self) -> None:
        self.session.close()

    def active_calls(self, refs: list[CallRef]) -> list[dict[str, Any]]:
        """`dlg.list` once (kamcmd dlg.list), matched to the bus's calls by SIP Call-ID. Only the A→B
        call is a dialog (the hold leg never is); a ref still known by its tracking id alone is looked
        up in the c2c htable first (it connected after the bus stopped following it)."""
        try:
            found = self._rpc("dlg.list")
        except RpcError as exc:
            raise self._rpc_problem("dlg.list", exc) from None
        if isinstance(found, dict):
            found = [found]
        live = [d for d in found or [] if isinstance(d, dict) and d.get("state") in CONFIRMED_STATES]
        dialogs = {d.get("call-id"): d for d in live}
        out = []
        for ref in refs:
            call_id = ref.call_id
            track = ref.handle.get("tracking_id")
            if call_id is None and track:
                found_id = self._htable(f"{track}::b::callid")
                call_id = str(found_id) if found_id is not None else None
            dialog = dialogs.get(call_id) if call_id else None
            row: dict[str, Any] = {**ref.to_json(), "active": dialog is not None}
            if dialog is not None:
                row.update(
                    sip_call_id=call_id,
                    state=dialog.get("state"),
                    from_uri=dialog.get("from_uri"),
                    to_uri=dialog.get("to_uri"),
                    start_ts=dialog.get("start_ts"),
                )
            out.append(row)
        return out

    # ------------------------------------------------------------ outcome tracking

    def _htable(self, key: str) -> Any:
        try:
            result = self._rpc("htable.get", HTABLE, key)
        except RpcError as exc:
            if "doesn't exist" in exc.message or exc.code == 404:
                return None
            raise self._rpc_problem("htable.get", exc) from None
        return result.get("item", {}).get("value") if isinstance(result, dict) else result

    def _dialogs(self, call_id: str) -> list[dict[str, Any]]:
        try:
            found = self._rpc("dlg.list_match", "callid", "eq", call_id)
        except RpcError as exc:
            if exc.code == 404 or "not found" in exc.message.lower():
                return []
            raise self._rpc_problem("dlg.list_match", exc) from None
        if isinstance(found, dict):
            found = [found]
        return [d for d in found or [] if isinstance(d, dict) and d.get("call-id") == call_id]

    # ------------------------------------------------------------ JSON-RPC

    def _rpc(self, method: str, *params: Any, deadline: float | None = None) -> Any:
        body: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": next(self._ids)}
        if params:
            body["params"] = list(params)  # positional: "only the order of the values" matters
        path = path_option(self.name, "path", self.options["path"])
        response = send(self.session.client, self.name, "POST", path, json=body, deadline=deadline)
        if response.status_code in (401, 403):
            raise self.auth_failed(f"HTTP {response.status_code} from JSON-RPC")
        try:
            reply = response.json()
        except ValueError:
            raise InvalidInput(
                f"{self.name}: no JSON-RPC at {response.request.url} (HTTP {response.status_code}); "
                "check --port and --opt path= (deploy/kamailio/README.md)"
            ) from None
        if isinstance(reply, dict) and "error" in reply:
            error = reply["error"] or {}
            raise RpcError(int(error.get("code", 0)), str(error.get("message", "")))
        if not isinstance(reply, dict) or "result" not in reply:
            raise InvalidInput(f"{self.name}: unexpected JSON-RPC reply to {method}")
        return reply["result"]

    def _rpc_problem(self, method: str, exc: RpcError) -> InvalidInput:
        if "method not found" in exc.message.lower():
            return InvalidInput(
                f"{self.name}: {method} is not available on this Kamailio (load the dialog and htable modules "
                "and the IF.bus blocks of deploy/kamailio/kamailio.cfg)"
            )
        return InvalidInput(f"{self.name}: {method} failed: {exc.code} {exc.message}")

    def _client(self) -> Any:
        token = self.entry.auth.get("token")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        base = server_url(
            self.name, self.options.get("scheme", "http"), self.entry.host or "127.0.0.1", self.entry.effective_port
        )
        return make_client(
            base, self.option_float("connect_timeout"), self.option_float("read_timeout"), headers=headers
        )
