"""FreeSWITCH adapter: the event socket (mod_event_socket, inbound, default port 8021).

Commands sent (wire shapes: workers/adapters/esl.py; public behaviour: docs/freeswitch.md):

- session = `auth <apikey>` (FreeSWITCH has no API keys: `apikey` is the event-socket password),
  `event plain BACKGROUND_JOB CHANNEL_ANSWER CHANNEL_HANGUP_COMPLETE`, and `filter Unique-ID <zero uuid>`
  so that nothing is delivered until a call of ours adds its own filters (a busy PBX's other calls
  never cross the socket);
- test   = `api version`, `api status`;
- call   = `filter Unique-ID <uuid>`, `filter Job-UUID <job>`, then
  `bgapi originate {origination_uuid=<uuid>,originate_timeout=<s>,ignore_early_media=true}<A> <B-part>`
  with our own Job-UUID; answered = BACKGROUND_JOB `+OK <uuid>`; refused = `-ERR <CAUSE>`, settled with
  the CHANNEL_HANGUP_COMPLETE of that uuid (`variable_sip_term_status`, else the cause via bus.sip);
- hangup = `api uuid_kill <uuid>`; `-ERR No such channel!` = already ended;
- recover = a call another worker placed (it died; the follower adopted it): the same two filters and
  subscription first, then `api uuid_dump <uuid>` (read-only) and a decision from the server's own
  state — see `recover`.

Events are matched by origination_uuid and Job-UUID, never by order: the captures show
CHANNEL_HANGUP_COMPLETE before BACKGROUND_JOB for busy and timer B, after it for NO_ANSWER, and no
CHANNEL event carries the Job-UUID (tests/peers/captures/README.md).
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import ClassVar

from bus.calls import CallRef
from bus.errors import BusError, CallRejected, InvalidInput, OutcomeUnknown, Unreachable
from bus.server import ServerEntry
from bus.sip import for_vendor, q850_cause, q850_to_sip, reason_phrase
from bus.validate import show
from workers.adapters import esl
from workers.adapters.base import Adapter, Answer, Session
from workers.transports.stream import StreamTransport, Subscription

EVENTS = ("BACKGROUND_JOB", "CHANNEL_ANSWER", "CHANNEL_HANGUP_COMPLETE")
NO_CALL = "00000000-0000-0000-0000-000000000000"  # the filter that lets nothing through until a call adds its own
# After BACKGROUND_JOB `-ERR <CAUSE>`, how long to wait for the channel's CHANNEL_HANGUP_COMPLETE (it
# carries the SIP code). The captures show it within 2 ms; a channel that never existed (unknown
# endpoint, bad profile) sends none, so this bounds what such a refusal costs.
HANGUP_GRACE = 1.0
FREESWITCH_UA_VERSION = re.compile(r"FreeSWITCH Version (\S+)")
STATUS_READY = re.compile(r"FreeSWITCH \(Version ([^)]*?)\s*\) is (\w+)")


class EslSession(Session):
    """One authenticated event socket, subscribed to the three events calls need."""

    def __init__(self, adapter: Adapter, host: str, port: int, password: str) -> None:
        self.adapter = adapter
        self.host = host
        self.port = port
        self._password = password
        self.transport: StreamTransport[esl.EslFrame] | None = None
        self._lock = threading.Lock()

    def open(self) -> None:
        name = self.adapter.name
        connect_timeout = self.adapter.option_float("connect_timeout")
        deadline = time.monotonic() + connect_timeout + self.adapter.option_float("read_timeout")
        transport: StreamTransport[esl.EslFrame] = StreamTransport(
            name,
            self.host,
            self.port,
            esl.EslFraming,
            esl.route,
            connect_timeout=connect_timeout,
            heartbeat=lambda: (esl.api("version"), None),
        )
        greeting = transport.connect(deadline)
        try:
            if greeting.content_type == esl.RUDE_REJECTION:
                raise self.adapter.auth_failed(
                    "the event socket's ACL refused this address (text/rude-rejection: add it to "
                    "apply-inbound-acl in event_socket.conf.xml)"
                )
            if greeting.content_type != esl.AUTH_REQUEST:
                raise Unreachable(
                    f"{name} ({self.host}:{self.port}) greeted with {show(greeting.content_type)}, not the "
                    "event socket's auth/request: is this FreeSWITCH's ESL port?",
                    server=name,
                )
            reply = self._setup(transport, esl.auth(self._password), deadline)
            if not reply.ok:
                raise self.adapter.auth_failed(f"the event socket answered {show(reply.reply_text)}")
            for data in (esl.event_plain(EVENTS), esl.filter_add("Unique-ID", NO_CALL)):
                reply = self._setup(transport, data, deadline)
                if not reply.ok:
                    raise Unreachable(f"{name}: event socket setup refused: {show(reply.reply_text)}", server=name)
        except BaseException:
            transport.close()
            raise
        self.transport = transport

    @staticmethod
    def _setup(transport: StreamTransport[esl.EslFrame], data: bytes, deadline: float) -> esl.EslFrame:
        """Session set-up places no call, so a lost reply here is Unreachable (safe to retry), never unknown."""
        try:
            return transport.request(data, deadline)
        except OutcomeUnknown as exc:
            raise Unreachable(exc.message, server=transport.server) from None

    def alive(self) -> bool:
        return self.transport is not None and self.transport.alive()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def ready(self) -> StreamTransport[esl.EslFrame]:
        """The open transport, (re)connecting first when needed; one opener at a time."""
        with self._lock:
            self.ensure()
            assert self.transport is not None
            return self.transport

    def api(self, command: bytes, deadline: float) -> esl.EslFrame:
        return self.ready().request(command, deadline)


@dataclass
class _Call:
    job: str
    sub: Subscription[esl.EslFrame]


def esl_password(entry: ServerEntry, *keys: str) -> str | None:
    for key in keys:
        value = entry.auth.get(key) or entry.options.get(key)
        if value:
            return value
    return None


class FreeSwitchAdapter(Adapter):
    type = "freeswitch"
    call_extras: ClassVar[frozenset[str]] = frozenset()
    hangup_extras: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, name: str, entry: ServerEntry) -> None:
        super().__init__(name, entry)
        self._session: EslSession | None = None
        self._calls: dict[str, _Call] = {}
        self._calls_lock = threading.Lock()

    # ------------------------------------------------------------------ plumbing

    def session(self) -> EslSession:
        if self._session is None:
            password = self.require_auth("apikey")["apikey"]
            port = self.entry.effective_port or 8021
            self._session = EslSession(self, self.entry.host or "127.0.0.1", port, password)
        return self._session

    def _deadline(self, limit: float | None = None) -> float:
        wait = time.monotonic() + self.option_float("read_timeout")
        return wait if limit is None else min(wait, limit)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    # ------------------------------------------------------------------ test

    def test(self) -> Answer:
        session = self.session()
        version_text = session.api(esl.api("version"), self._deadline()).text.strip()
        status_text = session.api(esl.api("status"), self._deadline()).text
        version = FREESWITCH_UA_VERSION.search(version_text)
        ready = STATUS_READY.search(status_text)
        if version is None or ready is None:
            raise OutcomeUnknown(
                f"{self.name}: the event socket answered but not like FreeSWITCH: {show(version_text, 80)}",
                server=self.name,
            )
        state = ready[2]
        lines = [line.strip() for line in status_text.splitlines() if line.strip()]
        uptime = lines[0] if lines else ""
        sessions = next((line for line in lines if "session(s) - peak" in line), "")
        return Answer(
            f"FreeSWITCH {version[1]} on {self.name} is {state} ({uptime}; {sessions})",
            data={"version": version[1], "state": state, "uptime": uptime, "sessions": sessions},
        )

    # ------------------------------------------------------------------ call

    def a_leg(self, from_: str) -> str:
        """`sofia/1001` → `sofia/<profile>/1001@<domain>`; a full dial string as given;
        `1001` → `user/1001@<domain>`."""
        party = for_vendor(from_, self.type, role="from")
        if party.lower().startswith(("sip:", "sips:")):
            return esl.check_dial_string(f"sofia/{self._profile()}/{party}", "from")
        if "/" not in party:
            return esl.check_dial_string(f"user/{party}@{self._domain()}", "from")
        tech, _, rest = party.partition("/")
        if tech == "sofia" and "/" not in rest:
            target = rest if "@" in rest else f"{rest}@{self._domain()}"
            return esl.check_dial_string(f"sofia/{self._profile()}/{target}", "from")
        return esl.check_dial_string(party, "from")

    def b_part(self, to: str) -> str:
        """A dial string → `&bridge(<B>)`; a bare extension → `<B> XML <context>`."""
        party = for_vendor(to, self.type, role="to")
        if party.lower().startswith(("sip:", "sips:")):
            return esl.bridge_part(f"sofia/{self._profile()}/{party}")
        if "/" in party:
            tech, _, rest = party.partition("/")
            if tech == "sofia" and "/" not in rest:
                target = rest if "@" in rest else f"{rest}@{self._domain()}"
                party = f"sofia/{self._profile()}/{target}"
            return esl.bridge_part(party)
        return esl.dialplan_part(party, self.options.get("context", "default"))

    def _profile(self) -> str:
        return esl.check_context(self.options.get("profile", "internal"), "option profile")

    def _domain(self) -> str:
        domain = self.entry.auth.get("domain") or self.options.get("domain")
        if not domain:
            raise InvalidInput(
                f"{self.name}: a bare extension needs the FreeSWITCH domain: re-add with --auth domain=… "
                "or give a full dial string (user/1001@domain, sofia/internal/1001@host)"
            )
        return esl.check_context(domain, "domain")

    def originate_command(self, from_: str, to: str, call_uuid: str) -> str:
        timeout = self.option_float("originate_timeout")
        if not 1 <= timeout <= 3600:
            raise InvalidInput(f"{self.name}: option originate_timeout={timeout:g}: expected 1-3600 seconds")
        variables = {
            "origination_uuid": call_uuid,
            "originate_timeout": str(int(timeout)),
            # Without it originate returns +OK on early media (183): "answered" must mean a 200 OK.
            "ignore_early_media": "true",
        }
        return "originate " + esl.originate_args(variables, self.a_leg(from_), self.b_part(to))

    def _listen(self, call_uuid: str, job: str, deadline: float) -> tuple[StreamTransport[esl.EslFrame], _Call]:
        """Subscribe to the call's events and let them through the session's filters, before anything
        about the call is sent or asked (its events can beat the reply)."""
        transport = self.session().ready()
        sub = transport.subscribe(
            lambda f: f.event is not None and (f.event.get("Unique-ID") == call_uuid or f.event.get("Job-UUID") == job)
        )
        try:
            for header, value in (("Unique-ID", call_uuid), ("Job-UUID", job)):
                reply = EslSession._setup(transport, esl.filter_add(header, value), self._deadline(deadline))
                if not reply.ok:
                    raise Unreachable(f"{self.name}: event filter refused: {show(reply.reply_text)}", server=self.name)
        except BaseException:
            sub.close()
            raise
        return transport, _Call(job, sub)

    def originate(self, from_: str, to: str, extras: dict[str, str], deadline: float) -> CallRef:
        self.check_extras(extras, self.call_extras, "call")
        call_uuid, job = esl.new_uuid(), esl.new_uuid()
        command = esl.bgapi(self.originate_command(from_, to, call_uuid), job)
        transport, call = self._listen(call_uuid, job, deadline)
        try:
            reply = transport.request(command, self._deadline(deadline))
        except BaseException as exc:
            call.sub.close()
            if isinstance(exc, OutcomeUnknown):
                exc.details.setdefault("call_id", call_uuid)
            raise
        text = reply.reply_text
        if not text.startswith("+OK"):
            call.sub.close()
            if "permission denied" in text:
                raise self.auth_failed("this event-socket login may not run originate (esl-allowed-api)")
            raise OutcomeUnknown(
                f"{self.name}: bgapi originate answered {show(text, 80)}; no call should have started",
                server=self.name,
            )
        with self._calls_lock:
            self._calls[call_uuid] = call
        return CallRef(self.name, call_uuid, {"job_uuid": job})

    # ------------------------------------------------------------------ follow

    def follow(self, ref: CallRef, deadline: float) -> Answer:
        call_uuid = ref.call_id or ""
        with self._calls_lock:
            call = self._calls.pop(call_uuid, None)
        if call is None:
            raise OutcomeUnknown(
                f"{self.name}: call {call_uuid} was not placed through this worker's event socket; cannot follow it",
                server=self.name,
                call_id=call_uuid,
            )
        try:
            return self._settle(call_uuid, call, deadline)
        finally:
            self._release(call_uuid, call)

    def accepted(self, ref: CallRef) -> Answer:
        """`--until accepted`: nobody follows the call, so its filters and subscription go now."""
        with self._calls_lock:
            call = self._calls.pop(ref.call_id or "", None)
        if call is not None:
            self._release(ref.call_id or "", call)
        return super().accepted(ref)

    def _settle(self, call_uuid: str, call: _Call, deadline: float) -> Answer:
        result: str | None = None
        hangup: esl.EslEvent | None = None
        answered = False
        limit = deadline
        while True:
            try:
                frame = call.sub.get(limit)
            except TimeoutError:
                if result is not None:
                    break  # -ERR seen; no hangup event came within the grace
                seen = f"{'answered, ' if answered else ''}no BACKGROUND_JOB yet"
                raise self.no_outcome_yet(call_uuid, seen) from None
            event = frame.event
            assert event is not None
            if event.name == "BACKGROUND_JOB" and event.get("Job-UUID") == call.job:
                result = (event.body or "").strip()
                if result.startswith("+OK"):
                    return Answer(
                        f"Call {call_uuid} answered on {self.name}", call_id=call_uuid, data={"job_uuid": call.job}
                    )
                if hangup is not None:
                    break
                limit = min(deadline, time.monotonic() + HANGUP_GRACE)
            elif event.name == "CHANNEL_HANGUP_COMPLETE" and event.get("Unique-ID") == call_uuid:
                hangup = event
                if result is not None:
                    break
            elif event.name == "CHANNEL_ANSWER" and event.get("Unique-ID") == call_uuid:
                answered = True
        raise self._rejection(call_uuid, result or "", hangup)

    def _rejection(self, call_uuid: str, result: str, hangup: esl.EslEvent | None) -> BusError:
        cause = result[len("-ERR") :].strip() if result.startswith("-ERR") else ""
        if not re.fullmatch(r"[A-Z_0-9]{1,64}", cause):
            return OutcomeUnknown(
                f"{self.name}: originate of {call_uuid} ended with {show(result, 80)}",
                server=self.name,
                call_id=call_uuid,
            )
        details: dict[str, str] = {"cause": cause}
        code: int | None = None
        if hangup is not None:
            term = hangup.get("variable_sip_term_status")
            if term.isdigit() and 300 <= int(term) < 700:
                code = int(term)
            details["hangup_disposition"] = hangup.get("variable_sip_hangup_disposition")
        if code is None:
            number = q850_cause(cause)
            code = q850_to_sip(number if number is not None else 31, self.type) or 480
        return CallRejected(code, reason_phrase(code), server=self.name, call_id=call_uuid, **details)

    # ------------------------------------------------------------------ recover

    def recover(self, ref: CallRef, deadline: float) -> Answer:
        """Follow a call another worker placed (it died; the follower adopted the call), from
        FreeSWITCH's own state. Its BACKGROUND_JOB and CHANNEL_ANSWER may have gone to the dead worker's
        socket already, so listening alone could wait for what passed. So: the call's filters and
        subscription first (nothing slips between the look and the listening), then `api uuid_dump
        <uuid>` (read-only; it can never place a call), and the decision of `_recovered`."""
        call_uuid = ref.call_id or ""
        look = esl.uuid_dump(call_uuid)  # checked before any I/O
        # a CallRef of this adapter always names its Job-UUID; without one, the call's events still pass
        job = ref.handle.get("job_uuid") or NO_CALL
        transport, call = self._listen(call_uuid, job, deadline)
        try:
            dump = transport.request(look, self._deadline(deadline))
            return self._recovered(call_uuid, call, dump, deadline)
        finally:
            self._release(call_uuid, call)

    def _recovered(self, call_uuid: str, call: _Call, dump: esl.EslFrame, deadline: float) -> Answer:
        """Decide from the server's words. The dump is the newest state; events queued before its reply
        happened before it, events after it are the call going on:

        - `Answer-State: answered` → answered; `ringing` or `early` → keep following to the end:
          CHANNEL_ANSWER or BACKGROUND_JOB `+OK` → answered, `-ERR <CAUSE>` and CHANNEL_HANGUP_COMPLETE
          → refused with the SIP code as `follow` finds it; a hang-up event whose
          `variable_answer_epoch` is not 0 was answered first (and has ended since);
        - `-ERR No such channel!` (or `Answer-State: hangup`: its last events may have gone before our
          filters) and no event of it queued → it ended before we looked; FreeSWITCH keeps no record
          of how (answered, or refused): outcome unknown, never a guess.
        """
        text = dump.text.strip()
        if text.startswith("-ERR No such channel"):
            state = "gone"
        elif text.startswith(("-ERR", "-USAGE")) or dump.content_type != esl.API_RESPONSE:
            raise OutcomeUnknown(
                f"{self.name}: uuid_dump {call_uuid} answered {show(text, 80)}", server=self.name, call_id=call_uuid
            )
        else:
            state = esl.parse_event(dump.body).get("Answer-State") or "?"
        if state == "answered":
            return self._answered(call_uuid, call.job, state)
        now = time.monotonic()
        limit = {"gone": now, "hangup": min(deadline, now + HANGUP_GRACE)}.get(state, deadline)
        result: str | None = None
        hangup: esl.EslEvent | None = None
        while True:
            try:
                frame = call.sub.get(limit)
            except TimeoutError:
                break
            event = frame.event
            assert event is not None
            if event.name == "BACKGROUND_JOB" and event.get("Job-UUID") == call.job:
                result = (event.body or "").strip()
                if result.startswith("+OK"):
                    return self._answered(call_uuid, call.job, state)
            elif event.name == "CHANNEL_HANGUP_COMPLETE" and event.get("Unique-ID") == call_uuid:
                hangup = event
                if event.get("variable_answer_epoch", "0") not in ("", "0"):
                    return self._answered(call_uuid, call.job, state, ended=True)
            elif event.name == "CHANNEL_ANSWER" and event.get("Unique-ID") == call_uuid:
                return self._answered(call_uuid, call.job, state)
            if result is not None and hangup is not None:
                break
            if result is not None or hangup is not None:  # the other one is close behind, if it comes at all
                limit = min(limit, time.monotonic() + HANGUP_GRACE)
        if hangup is not None or result is not None:
            cause = hangup.get("Hangup-Cause") if hangup is not None else ""
            raise self._rejection(call_uuid, result or f"-ERR {cause}", hangup)
        why = {
            "gone": "is no longer on the server (uuid_dump: No such channel)",
            "hangup": "was hanging up when we looked",
        }.get(state)
        if why is not None:
            raise self.gone_without_record(call_uuid, why)
        raise self.no_outcome_yet(call_uuid, f"Answer-State {show(state, 20)}")

    def _answered(self, call_uuid: str, job: str, looked: str, ended: bool = False) -> Answer:
        """The answer `follow` gives, marked as recovered, with what the look saw (the dump's
        `Answer-State`: ringing, early, answered; `gone`) and saying so when the call has ended since."""
        since = " (it has ended since)" if ended else ""
        return Answer(
            f"Call {call_uuid} answered on {self.name}{since}",
            call_id=call_uuid,
            data={"job_uuid": job, "recovered": True, "state_at_adoption": looked},
        )

    def _release(self, call_uuid: str, call: _Call) -> None:
        """Drop the call's subscription and filters; best effort (a lost session took them already)."""
        call.sub.close()
        session = self._session
        if session is None or session.transport is None or not session.alive():
            return
        for data in (esl.filter_delete("Unique-ID", call_uuid), esl.filter_delete("Job-UUID", call.job)):
            try:
                session.transport.request(data, self._deadline())
            except BusError:
                return

    # ------------------------------------------------------------------ hangup

    def hangup(self, call_id: str, ref: CallRef | None, extras: dict[str, str]) -> Answer:
        return kill(self, self.session(), call_id)


def kill(adapter: Adapter, session: EslSession, call_id: str) -> Answer:
    """`api uuid_kill <uuid>`: `+OK` ended it (FreeSWITCH sends BYE or CANCEL); `-ERR No such channel!`
    means it was already over, which reaches the goal too."""
    data = esl.uuid_kill(call_id)
    reply = session.api(data, time.monotonic() + adapter.option_float("read_timeout"))
    text = reply.reply_text
    if text.startswith("+OK"):
        return Answer(f"Call {call_id} ended on {adapter.name}", call_id=call_id)
    if text.startswith("-ERR No such channel"):
        return adapter.already_ended(call_id, "FreeSWITCH: no such channel")
    raise OutcomeUnknown(f"{adapter.name}: uuid_kill {call_id} answered {show(text, 80)}", server=adapter.name)
