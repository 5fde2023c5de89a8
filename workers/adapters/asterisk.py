"""Asterisk adapter: the Asterisk Manager Interface (AMI, TCP, default port 5038).

Actions sent (wire shapes: workers/adapters/ami.py; public behaviour, manager.conf: docs/asterisk.md):

- session = `Login` (Username, Secret, `Events: call`) once per server per worker process, kept by the
  pool between jobs and proven with `Ping` when it has been idle (the transport's heartbeat);
- test    = `CoreSettings` (AsteriskVersion, AMIversion) and `Ping`, written together (one round trip);
- call    = `Originate` with `Async: true` and a `ChannelId` we generate, so the call id is known
  before anything rings; the call's events are subscribed to BEFORE the action is sent (they can
  beat its reply). `OriginateResponse` `Reason: 4` = answered; any other reason is settled with the
  channel's `Hangup` event (`TechCause` = the SIP code, else `Cause` through bus.sip's Q.850 table);
- hangup  = `Hangup` `Channel: <ChannelId>` (Asterisk also looks channels up by uniqueid);
  `No such channel` = the call had already ended;
- recover = a call another worker placed (it died; the follower adopted it): subscribe to the
  channel's events, then `Status` `Channel: <ChannelId>` (read-only: it can never place a call) and
  decide from what the server itself says — see `recover`.

Events are matched by Uniqueid (= our ChannelId), never by position: the captures show
OriginateResponse before or after the channel's Hangup, and before or after Newstate Up, from one
run to the next (tests/peers/captures/README.md).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import ClassVar

from bus.calls import CallRef
from bus.errors import BusError, CallRejected, InvalidInput, OutcomeUnknown, Unreachable
from bus.server import ServerEntry
from bus.sip import for_vendor, q850_to_sip, reason_phrase
from bus.validate import show
from workers.adapters import ami
from workers.adapters.base import Adapter, Answer, Session
from workers.transports.stream import StreamTransport, Subscription

# OriginateResponse `Reason` (enum ast_control_frame_type, main/pbx.c pbx_dial_reason()) → the Q.850
# cause to report when no Hangup event names a better one. 0 is "the channel could not be created":
# for chan_pjsip an unknown endpoint, whose request cause is NO_ROUTE_DESTINATION (3) → SIP 404.
REASON_CAUSE = {0: 3, 1: 16, 3: 19, 5: 17, 8: 34}
ANSWERED = 4
UP = "6"  # ChannelState of an answered channel (AST_STATE_UP, include/asterisk/channelstate.h)
# After a non-answer OriginateResponse with no channel event seen, how long to wait for a Hangup
# that may still be on its way. A channel that never existed (unknown endpoint) sends none at all.
HANGUP_GRACE = 1.0
HEARTBEAT_IDLE = 30.0  # an idle session proves itself with one Ping before a job uses it
_TECH = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")
_CONTEXT = re.compile(r"[A-Za-z0-9_.-]{1,79}")  # AST_MAX_CONTEXT 80
_EXTEN = re.compile(r"[A-Za-z0-9*#+.-]{1,79}")  # AST_MAX_EXTENSION 80; '/' would start a caller-id match
_CID_NUMBER = re.compile(r"\+?[0-9*#]{1,32}")
_CID_NAME = re.compile(r"[^\"<>\\]{1,64}")
_IDS = itertools.count(1)
_PROCESS = uuid.uuid4().hex[:8]


def _action_id(kind: str) -> str:
    """Unique within this process, so a reply can only ever meet the request that sent it."""
    return f"ifbus-{_PROCESS}-{os.getpid()}-{kind}-{next(_IDS)}"


class AmiSession(Session):
    """One logged-in AMI connection with call events on."""

    def __init__(self, adapter: AsteriskAdapter, host: str, port: int, user: str, secret: str) -> None:
        self.adapter = adapter
        self.host = host
        self.port = port
        self._user = user
        self._secret = secret
        self.transport: StreamTransport[ami.AmiMessage] | None = None
        self.logins = 0  # how many times this session logged in (bench: a warm worker pays none)
        self._lock = threading.Lock()

    def open(self) -> None:
        a = self.adapter
        connect_timeout = a.option_float("connect_timeout")
        read_timeout = a.option_float("read_timeout")
        # a wrong secret is answered only after Asterisk's deliberate 1 s pause: leave room for it
        deadline = time.monotonic() + connect_timeout + max(read_timeout, 2.0)
        transport: StreamTransport[ami.AmiMessage] = StreamTransport(
            a.name,
            self.host,
            self.port,
            ami.AmiFraming,
            ami.route,
            connect_timeout=connect_timeout,
            heartbeat=_ping,
            heartbeat_idle=HEARTBEAT_IDLE,
            heartbeat_timeout=min(read_timeout, 2.0),
        )
        transport.connect(deadline)
        try:
            aid = _action_id("login")
            data = ami.action("Login", aid, [("Username", self._user), ("Secret", self._secret), ("Events", "call")])
            try:
                reply = transport.request(data, deadline, aid)
            except OutcomeUnknown as exc:  # a login places no call: safe to retry, so unreachable
                raise Unreachable(exc.message, server=a.name) from None
            if reply.response != "Success":
                raise a.auth_failed(f"AMI answered {show(reply.get('Message') or reply.response, 60)}")
        except BaseException:
            transport.close()
            raise
        self.logins += 1
        self.transport = transport

    def alive(self) -> bool:
        return self.transport is not None and self.transport.alive()

    def close(self) -> None:
        transport, self.transport = self.transport, None
        if transport is None:
            return
        if transport.alive():  # a clean Logoff, so Asterisk logs "logged off" rather than a dropped socket
            aid = _action_id("logoff")
            with contextlib.suppress(BusError):
                transport.request(ami.action("Logoff", aid), time.monotonic() + 1.0, aid)
        transport.close()

    def ready(self) -> StreamTransport[ami.AmiMessage]:
        """The logged-in transport, (re)connecting first when needed; one opener at a time."""
        with self._lock:
            self.ensure()
            assert self.transport is not None
            return self.transport


def _ping() -> tuple[bytes, str]:
    aid = _action_id("ping")
    return ami.action("Ping", aid), aid


@dataclass
class _Call:
    action_id: str
    sub: Subscription[ami.AmiMessage]


class AsteriskAdapter(Adapter):
    type = "asterisk"
    call_extras: ClassVar[frozenset[str]] = frozenset()
    hangup_extras: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, name: str, entry: ServerEntry) -> None:
        super().__init__(name, entry)
        self._session: AmiSession | None = None
        self._calls: dict[str, _Call] = {}
        self._calls_lock = threading.Lock()

    # ------------------------------------------------------------------ plumbing

    def session(self) -> AmiSession:
        if self._session is None:
            auth = self.require_auth("user", "secret")
            port = self.entry.effective_port or 5038
            self._session = AmiSession(self, self.entry.host or "127.0.0.1", port, auth["user"], auth["secret"])
        return self._session

    def request(self, name: str, fields: list[tuple[str, str]], deadline: float | None = None) -> ami.AmiMessage:
        """One action on the (re)opened session; the reply, whatever its Response."""
        aid = _action_id(name.lower())
        data = ami.action(name, aid, fields)
        return self.session().ready().request(data, self._deadline(deadline), aid)

    def _deadline(self, limit: float | None = None) -> float:
        wait = time.monotonic() + self.option_float("read_timeout")
        return wait if limit is None else min(wait, limit)

    def close(self) -> None:
        with self._calls_lock:
            calls, self._calls = self._calls, {}
        for call in calls.values():
            call.sub.close()
        if self._session is not None:
            self._session.close()
            self._session = None

    def _denied(self, reply: ami.AmiMessage, action: str, needs: str) -> BusError | None:
        if reply.get("Message") == "Permission denied":
            return self.auth_failed(
                f"the AMI user may not run {action} (manager.conf: add {needs} to its write= permissions)"
            )
        return None

    # ------------------------------------------------------------------ test

    def test(self) -> Answer:
        """`CoreSettings` and `Ping` written back to back (pipelined; replies matched by ActionID): one
        round trip instead of two. `ping_ms` is the time from that write to the Ping's reply."""
        cs_id, ping_id = _action_id("coresettings"), _action_id("ping")
        batch = [(ami.action("CoreSettings", cs_id), cs_id), (ami.action("Ping", ping_id), ping_id)]
        transport = self.session().ready()
        start = time.monotonic()
        settings, pong = transport.request_many(batch, self._deadline())
        rtt_ms = (time.monotonic() - start) * 1000
        if settings.response != "Success":
            raise self._denied(settings, "CoreSettings", "system or reporting") or OutcomeUnknown(
                f"{self.name}: CoreSettings answered {show(settings.get('Message'), 80)}", server=self.name
            )
        version, ami_version = settings.get("AsteriskVersion") or "?", settings.get("AMIversion") or "?"
        if pong.get("Ping") != "Pong":
            raise OutcomeUnknown(f"{self.name}: Ping answered {show(str(pong), 80)}", server=self.name)
        return Answer(
            f"Asterisk {version} (AMI {ami_version}) on {self.name}",
            data={"version": version, "ami_version": ami_version, "ping_ms": round(rtt_ms, 2)},
        )

    # ------------------------------------------------------------------ call

    def channel(self, from_: str) -> str:
        """`1001` → `<channel_tech>/1001`; a dial string with `/` (PJSIP/1001, Local/1001@from-internal,
        SIP/…) as given."""
        party = for_vendor(from_, self.type, role="from")
        if "/" in party:
            return party
        if ":" in party or "@" in party:
            raise InvalidInput(
                f"from={show(party)}: Asterisk dials channels, not SIP URIs; give an extension (1001) or a "
                "dial string such as PJSIP/1001 or PJSIP/trunk/sip:1001@host"
            )
        tech = self.options.get("channel_tech", "PJSIP")
        if not _TECH.fullmatch(tech):
            raise InvalidInput(f"{self.name}: option channel_tech={show(tech)} is not a channel technology name")
        return f"{tech}/{party}"

    def extension(self, to: str) -> str:
        party = for_vendor(to, self.type, role="to")
        if not _EXTEN.fullmatch(party):
            raise InvalidInput(
                f"to={show(party)}: an Asterisk dialplan extension is letters, digits, * # + . - "
                f"(it is dialled in context {self.options.get('context', 'from-internal')})"
            )
        return party

    def originate_fields(self, from_: str, to: str, channel_id: str) -> list[tuple[str, str]]:
        context = self.options.get("context", "from-internal")
        if not _CONTEXT.fullmatch(context):
            raise InvalidInput(f"{self.name}: option context={show(context)} is not a dialplan context name")
        timeout = self.option_float("answer_timeout")
        if not 1 <= timeout <= 3600:
            raise InvalidInput(f"{self.name}: option answer_timeout={timeout:g}: expected 1-3600 seconds")
        exten = self.extension(to)
        name = self.options.get("caller_id_name", "Click2Call")
        if not _CID_NAME.fullmatch(name):
            raise InvalidInput(f"{self.name}: option caller_id_name={show(name)}: no quotes, < > or \\")
        # the phone that rings first shows whom it will be connected to
        caller_id = f'"{name}" <{exten}>' if _CID_NUMBER.fullmatch(exten) else f'"{name}"'
        return [
            ("Channel", self.channel(from_)),
            ("Context", context),
            ("Exten", exten),
            ("Priority", "1"),
            ("CallerID", caller_id),
            ("Timeout", str(int(timeout * 1000))),
            ("Async", "true"),
            ("ChannelId", channel_id),
        ]

    def originate(self, from_: str, to: str, extras: dict[str, str], deadline: float) -> CallRef:
        self.check_extras(extras, self.call_extras, "call")
        channel_id = f"ifbus-{uuid.uuid4().hex}"
        aid = _action_id("originate")
        data = ami.action("Originate", aid, self.originate_fields(from_, to, channel_id))  # checked before I/O
        transport = self.session().ready()
        sub = transport.subscribe(
            lambda m: (
                m.get("Uniqueid") == channel_id or (m.get("Event") == "OriginateResponse" and m.get("ActionID") == aid)
            )
        )
        try:
            reply = transport.request(data, self._deadline(deadline), aid)
        except OutcomeUnknown as exc:
            sub.close()
            exc.details.setdefault("call_id", channel_id)
            raise
        except BaseException:
            sub.close()
            raise
        if reply.response == "Success":
            with self._calls_lock:
                self._calls[channel_id] = _Call(aid, sub)
            return CallRef(self.name, channel_id, {"channel_id": channel_id})
        sub.close()
        raise self._refused_originate(reply, to)

    def _refused_originate(self, reply: ami.AmiMessage, to: str) -> BusError:
        message = reply.get("Message") or ""
        denied = self._denied(reply, "Originate", "originate")
        if denied is not None:
            return denied
        if message == "Extension does not exist.":
            context = self.options.get("context", "from-internal")
            return CallRejected(404, f"{reason_phrase(404)} (no extension {to} in context {context})", server=self.name)
        if reply.response == "Error" and message:
            return InvalidInput(f"{self.name} refused the Originate: {show(message, 100)}", server=self.name)
        return OutcomeUnknown(f"{self.name}: Originate answered {show(str(reply), 100)}", server=self.name)

    # ------------------------------------------------------------------ follow

    def follow(self, ref: CallRef, deadline: float) -> Answer:
        call_id = ref.call_id or ""
        with self._calls_lock:
            call = self._calls.pop(call_id, None)
        if call is None:
            raise OutcomeUnknown(
                f"{self.name}: call {call_id} was not placed through this worker's AMI session; cannot follow it",
                server=self.name,
                call_id=call_id,
            )
        try:
            return self._settle(call_id, call, deadline)
        finally:
            call.sub.close()

    def accepted(self, ref: CallRef) -> Answer:
        """`--until accepted`: nobody follows the call, so its subscription goes now."""
        with self._calls_lock:
            call = self._calls.pop(ref.call_id or "", None)
        if call is not None:
            call.sub.close()
        return super().accepted(ref)

    def _settle(self, call_id: str, call: _Call, deadline: float) -> Answer:
        reason: int | None = None
        hangup: ami.AmiMessage | None = None
        channel_seen = False
        limit = deadline
        while True:
            try:
                msg = call.sub.get(limit)
            except TimeoutError:
                if reason is not None:
                    break  # refused, and no Hangup came within the grace: the channel never existed
                raise self.no_outcome_yet(call_id, "ringing" if channel_seen else "no channel event yet") from None
            event = msg.event
            if event == "OriginateResponse":
                try:
                    reason = int(msg.get("Reason") or "")
                except ValueError:
                    raise OutcomeUnknown(
                        f"{self.name}: OriginateResponse for {call_id} without a Reason", server=self.name
                    ) from None
                if reason == ANSWERED:
                    return Answer(
                        f"Call {call_id} answered on {self.name}",
                        call_id=call_id,
                        data={"channel": msg.get("Channel") or ""},
                    )
                if hangup is not None:
                    break
                limit = deadline if channel_seen else min(deadline, time.monotonic() + HANGUP_GRACE)
            elif event == "Hangup":
                hangup = msg
                if reason is not None:
                    break
            elif event is not None:
                channel_seen = True
                if reason is not None:
                    limit = deadline  # the channel exists after all: its Hangup will come
        raise self._rejection(call_id, reason, hangup)

    def _rejection(self, call_id: str, reason: int | None, hangup: ami.AmiMessage | None) -> CallRejected:
        """`reason` is None for an adopted call whose OriginateResponse went to the dead worker."""
        details: dict[str, str] = {} if reason is None else {"originate_reason": str(reason)}
        code: int | None = None
        cause = 0
        if hangup is not None:
            tech = hangup.get("TechCause") or ""
            cause = int(hangup.get("Cause") or 0) if (hangup.get("Cause") or "").isdigit() else 0
            details.update(cause=str(cause), cause_txt=hangup.get("Cause-txt") or "")
            if tech.isdigit() and 300 <= int(tech) < 700:  # chan_pjsip: the SIP final response itself
                code = int(tech)
                details["tech_cause"] = tech
        if code is None:
            if cause == 0:  # "Unknown": the channel's own cause says nothing, the Reason does
                cause = REASON_CAUSE.get(reason, 31) if reason is not None else 31
            code = q850_to_sip(cause, self.type) or 480
        return CallRejected(code, reason_phrase(code), server=self.name, call_id=call_id, **details)

    # ------------------------------------------------------------------ recover

    def recover(self, ref: CallRef, deadline: float) -> Answer:
        """Follow a call another worker placed (it died; the follower adopted the call), from Asterisk's
        own state. Its OriginateResponse and first channel events went to the dead worker's session, so
        listening alone could wait for what already passed. So: subscribe to the channel's events
        first (nothing slips between the look and the listening), then look with `Status`
        `Channel: <ChannelId>` (read-only; it can never place a call), and read what follows in the
        order the server wrote it (`_recovered`)."""
        channel_id = ref.call_id or ref.handle.get("channel_id") or ""
        aid = _action_id("status")
        data = ami.action("Status", aid, [("Channel", channel_id)])  # checked before any I/O
        transport = self.session().ready()
        # the Status event carries the channel's Uniqueid and our ActionID; StatusComplete only the ActionID
        with transport.subscribe(lambda m: m.get("Uniqueid") == channel_id or m.get("ActionID") == aid) as sub:
            reply = transport.request(data, self._deadline(deadline), aid)
            message = reply.get("Message") or ""
            if reply.response != "Success" and message != "No such channel":
                raise self._denied(reply, "Status", "call, system or reporting") or OutcomeUnknown(
                    f"{self.name}: Status {channel_id} answered {show(message or str(reply), 80)}",
                    server=self.name,
                    call_id=channel_id,
                )
            return self._recovered(channel_id, sub, reply.response == "Success", deadline)

    def _recovered(self, channel_id: str, sub: Subscription[ami.AmiMessage], found: bool, deadline: float) -> Answer:
        """Decide from the server's words, in wire order (events queued before the Status reply
        happened before the look):

        - the channel is Up (`ChannelState: 6` in Status, Newstate, or the Hangup of a call that was
          answered and has ended since), or an OriginateResponse says `Reason: 4` → answered;
        - it exists and is not Up (Down, Ringing) → keep following to its end: Up → answered; its
          Hangup → refused, with the SIP code as `follow` finds it (TechCause, else Cause);
        - `No such channel` and nothing of it queued → it ended before we looked; AMI keeps no record
          of how (answered and hung up, or refused): outcome unknown, never a guess.
        """
        reason: int | None = None
        hangup: ami.AmiMessage | None = None
        looked = "" if found else "gone"  # what Status showed, for the answer's data
        limit = deadline if found else time.monotonic()  # gone: only what is already queued counts
        while hangup is None:
            try:
                msg = sub.get(limit)
            except TimeoutError:
                break
            event = msg.event
            if event == "Status":
                looked = msg.get("ChannelStateDesc") or "?"
            if event == "Hangup":
                hangup = msg
            elif event == "OriginateResponse":
                raw = msg.get("Reason") or ""
                reason = int(raw) if raw.isdigit() else -1
                if reason == ANSWERED:
                    return self._answered(channel_id, msg, looked)
            elif msg.get("ChannelState") == UP:
                return self._answered(channel_id, msg, looked)
            elif event == "StatusComplete" and found and msg.get("ListItems") == "0":
                limit = time.monotonic()  # the channel went between the lookup and the list: gone
                found = False
        if hangup is not None:
            if hangup.get("ChannelState") == UP:
                return self._answered(channel_id, hangup, looked, ended=True)
            raise self._rejection(channel_id, reason, hangup)
        if reason is not None:
            raise self._rejection(channel_id, reason, None)
        if not found:
            raise self.gone_without_record(channel_id, "is no longer on the server (Status: No such channel)")
        raise self.no_outcome_yet(channel_id, "still ringing")

    def _answered(self, channel_id: str, msg: ami.AmiMessage, looked: str, ended: bool = False) -> Answer:
        """The answer `follow` gives, marked as recovered, with what the look saw (`Ringing`, `Up`, …;
        empty when an event settled it first) and saying so when the call has ended since."""
        since = " (it has ended since)" if ended else ""
        return Answer(
            f"Call {channel_id} answered on {self.name}{since}",
            call_id=channel_id,
            data={"channel": msg.get("Channel") or "", "recovered": True, "state_at_adoption": looked},
        )

    # ------------------------------------------------------------------ hangup

    def hangup(self, call_id: str, ref: CallRef | None, extras: dict[str, str]) -> Answer:
        self.check_extras(extras, self.hangup_extras, "hangup")
        channel = (ref.call_id if ref is not None and ref.call_id else None) or call_id
        # Cause 16: the far end gets a BYE with `Reason: Q.850;cause=16` (normal clearing)
        reply = self.request("Hangup", [("Channel", channel), ("Cause", "16")])
        message = reply.get("Message") or ""
        if reply.response == "Success":
            return Answer(f"Call {call_id} ended on {self.name}", call_id=call_id)
        if message == "No such channel":
            return self.already_ended(call_id, "Asterisk: no such channel")
        raise self._denied(reply, "Hangup", "call or system") or OutcomeUnknown(
            f"{self.name}: Hangup {call_id} answered {show(message or str(reply), 80)}", server=self.name
        )
