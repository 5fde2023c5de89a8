"""A protocol-faithful Asterisk Manager Interface peer, built from real Asterisk 22.10.1 captures.

Every byte it sends comes from tests/peers/captures/asterisk-22.10.1/ (copied to captures/ beside
this file so the suite needs nothing outside the repo): the banner, login replies (a wrong secret is
answered after the captured ~1 s and the socket closed; any action before Login gets `Permission
denied`), Ping, CoreSettings, Events, Logoff, unknown actions, and each async Originate's reply and
call events, replayed with the captured ChannelId/ActionID replaced by the client's. It is no kinder
than the captures, and can be made harsher:

- `noise`: unrelated events from other channels of the captures between every message;
- `chunk`: write every message in pieces of that many bytes (1 = byte by byte), flushed one by one;
- `order`: where OriginateResponse falls among its call's events ("captured", "first", "last"),
  since the README shows it moves between runs; `events_before_reply` sends that many call events
  before the `Originate successfully queued` reply (they can race it);
- `faults`: per action name, "silent" (never answer), "drop" (close before answering),
  "mid_reply" (close after half the reply's bytes), "after_reply" (close right after the reply);
- `greet=False`: accept and never send the banner (a silent peer);
- `ring=True`: each originated call stops once it rings (before its OriginateResponse, its Up or its
  hang-up), until the test calls `release()`: a call still ringing when its worker dies.

Call events go to EVERY connection that has call events on, as Asterisk's manager_event does (the
OriginateResponse too: `ast_manager_event_multichan(EVENT_FLAG_CALL, "OriginateResponse", …)` in
main/manager.c; ami_status_transcript.txt shows a second session receiving the whole call), so a
second worker can adopt a call. `Status` `Channel: <ChannelId or name>` answers from the channel's
current state as ami_status_transcript.txt shows it (the listack reply, one `Event: Status` whose
channel fields are those of the channel's latest state event, then StatusComplete), or `No such
channel` once its Hangup was sent.

Which call a target dials is chosen by the Originate's `Channel` (see TARGETS). `actions` records
every action received (per connection) for assertions such as "one Originate, never two".
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

CAPTURES = Path(__file__).resolve().parent / "captures" / "asterisk-22.10.1"
_LINE = re.compile(r"^\s*(?P<t>[\d.]+) \[(?P<conn>[\w-]+)\] (?P<dir><<|>>) ?(?P<text>.*)$")

Fields = list[tuple[str, str]]


@dataclass
class Message:
    """One message the server sent in a capture (`banner` for the greeting line)."""

    t: float
    conn: str
    fields: Fields = field(default_factory=list)
    banner: str | None = None

    def get(self, key: str) -> str | None:
        return next((v for k, v in self.fields if k.lower() == key.lower()), None)


def load(name: str) -> list[Message]:
    """The server side of a capture file, message by message, in wire order."""
    out: list[Message] = []
    current: Message | None = None
    for raw in (CAPTURES / name).read_text().splitlines():
        m = _LINE.match(raw)
        if not m or m["dir"] != "<<":
            continue
        text = m["text"]
        if text == "<blank line>":
            if current is not None:
                out.append(current)
            current = None
            continue
        if current is None and text.startswith("Asterisk Call Manager/"):
            out.append(Message(float(m["t"]), m["conn"], banner=text))
            continue
        if current is None:
            current = Message(float(m["t"]), m["conn"])
        key, _, value = text.partition(":")
        current.fields.append((key, value[1:] if value.startswith(" ") else value))
    return out


def encode(msg: Message | Fields) -> bytes:
    if isinstance(msg, Message) and msg.banner is not None:
        return (msg.banner + "\r\n").encode()
    fields = msg.fields if isinstance(msg, Message) else msg
    return ("".join(f"{k}: {v}\r\n" for k, v in fields) + "\r\n").encode()


@dataclass(frozen=True)
class CallScript:
    """One captured async Originate: its reply and every event of its channel, in captured order."""

    reply: Fields
    events: list[Fields]
    hangup: list[Fields]  # events after an AMI Hangup of the answered channel (answered capture only)


# capture file, captured ChannelId, captured ActionID
SCENARIOS = {
    "answered": ("ami_originate_answered_transcript.txt", "chan-a1", "orig-a1"),
    "busy": ("ami_pjsip_busy_transcript.txt", "chan-b1", "orig-b1"),
    "noanswer": ("ami_originate_noanswer_transcript.txt", "chan-n1", "orig-n1"),
    "unknown": ("ami_originate_unknown_transcript.txt", "chan-u1", "orig-u1"),
    "farend_bye": ("ami_originate_farend_bye_transcript.txt", "chan-f1", "orig-f1"),
    # a Local channel into a busy dialplan: Reason 5, and our channel's Hangup says only Cause 0
    "local_busy": ("ami_transcript.txt", "chan-002", "orig-2"),
}
# the lab's endpoints (../shared/labs/asterisk/pjsip.conf) → what the captures show they do
TARGETS = {
    "PJSIP/sipp": "answered",
    "PJSIP/sippbusy": "busy",
    "PJSIP/sippring": "noanswer",
    "PJSIP/nosuch": "unknown",
    "PJSIP/sippbye": "farend_bye",
    "Local/3000@ctx": "local_busy",
}


def _mine(msg: Message, cid: str, aid: str) -> bool:
    return any(
        (k in ("Uniqueid", "DestUniqueid", "Linkedid") and v == cid) or (k == "ActionID" and v == aid)
        for k, v in msg.fields
    )


def call_script(scenario: str) -> CallScript:
    name, cid, aid = SCENARIOS[scenario]
    msgs = [m for m in load(name) if m.banner is None]
    reply = next(m.fields for m in msgs if m.get("ActionID") == aid and m.get("Event") is None)
    events = [m.fields for m in msgs if m.get("Event") is not None and _mine(m, cid, aid)]
    hangup: list[Fields] = []
    if scenario == "answered":
        # the capture's own AMI Hangup (section "Hangup by ChannelId chan-a1") ends the answered call
        cut = next(i for i, m in enumerate(events) if m[0] == ("Event", "SoftHangupRequest"))
        events, hangup = events[:cut], events[cut:]
    return CallScript(reply, events, hangup)


def noise_events() -> list[Fields]:
    """Events of channels no test ever uses (other calls of the captures), to interleave."""
    own = {cid for _, cid, _ in SCENARIOS.values()}
    pool = []
    for m in load("ami_transcript.txt"):
        if m.get("Event") and not any(v in own for _, v in m.fields):
            pool.append(m.fields)
    return pool


def retag(fields: Fields, old: str, new: str, old_aid: str, new_aid: str) -> Fields:
    """A captured message for another call: ChannelId (and `<id>;2` Local halves) and ActionID swapped."""
    out = []
    for k, v in fields:
        if k == "ActionID" and v == old_aid:
            v = new_aid
        elif v == old or v.startswith(old + ";") or v.startswith(old + "-"):
            v = new + v[len(old) :]
        out.append((k, v))
    return out


STATUS_CAPTURE = "ami_status_transcript.txt"
# the fields of a channel's state in every channel event, Channel … Linkedid (main/manager.c
# ast_manager_build_channel_state_string); Status puts them after its Privilege line
_SNAPSHOT_FIRST, _SNAPSHOT_LAST = "Channel", "Linkedid"


def _snapshot(fields: Fields) -> Fields:
    keys = [k for k, _ in fields]
    return fields[keys.index(_SNAPSHOT_FIRST) : keys.index(_SNAPSHOT_LAST) + 1]


def _status_static() -> dict[str, Fields]:
    """Status replies and events of ami_status_transcript.txt, by what they show."""
    msgs = [m for m in load(STATUS_CAPTURE) if m.banner is None]
    by_aid = {(m.get("ActionID"), m.get("Event")): m.fields for m in msgs}
    return {
        "ack": by_aid[("st-r1", None)],  # Response: Success, EventList: start, "Channel status will follow"
        "ringing": by_aid[("st-r1", "Status")],  # ChannelState 5
        "up": by_aid[("st-s1", "Status")],  # ChannelState 6
        "complete": by_aid[("st-r1", "StatusComplete")],
        "nochannel": by_aid[("st-r2", None)],  # after the Hangup: Response: Error, No such channel
    }


def status_event(template: Fields, state: Fields, action_id: str) -> Fields:
    """A captured Status event with another channel's current state fields and another ActionID."""
    snap = _snapshot(template)
    start = template.index(snap[0])
    head, tail = template[:start], template[start + len(snap) :]
    return head + _snapshot(state) + with_id(tail, None) + [("ActionID", action_id)]


def _static() -> dict[str, Fields]:
    """Replies to the non-call actions, from the captures."""
    allm = (
        load("ami_transcript.txt") + load("ami_core_show_version_transcript.txt") + load("ami_auth_fail_transcript.txt")
    )
    by = {}
    for m in allm:
        aid, msgtext = m.get("ActionID"), m.get("Message")
        if m.get("Event"):
            continue
        if aid == "login-1":
            by["login_ok"] = m.fields
        elif msgtext == "Authentication failed":
            by["login_bad"] = m.fields
        elif msgtext == "Permission denied":
            by["denied"] = m.fields
        elif aid == "ping-1":
            by["ping"] = m.fields
        elif aid == "cs-1" and m.get("AsteriskVersion"):
            by["coresettings"] = m.fields
        elif aid == "ev-1":
            by["events"] = m.fields
        elif aid == "bye-1":
            by["goodbye"] = m.fields
        elif aid == "hup-a1" or msgtext == "Channel Hungup":
            by.setdefault("hungup", m.fields)
        elif msgtext == "No such channel":
            by["nochannel"] = m.fields
        elif msgtext and msgtext.startswith("Invalid/unknown command"):
            by["unknown"] = m.fields
        elif msgtext == "Originate failed":
            by["originate_failed"] = m.fields
    by["banner"] = [("", next(m.banner for m in allm if m.banner))]
    return by


def with_id(fields: Fields, action_id: str | None) -> Fields:
    """A captured reply answering another ActionID (dropped when the action had none, as Asterisk does)."""
    out = [(k, v) for k, v in fields if k != "ActionID"]
    if action_id is not None:
        out.insert(1, ("ActionID", action_id))
    return out


class AmiPeer:
    """A threaded TCP server on 127.0.0.1 speaking AMI like the captured Asterisk 22.10.1."""

    def __init__(
        self,
        user: str = "admin",
        secret: str = "pass123",
        *,
        noise: bool = False,
        chunk: int | None = None,
        order: str = "captured",
        events_before_reply: int = 0,
        faults: dict[str, str] | None = None,
        greet: bool = True,
        auth_delay: float = 1.0,
        targets: dict[str, str] | None = None,
        default_target: str | None = None,
        deny: set[str] | None = None,
        ring: bool = False,
    ) -> None:
        self.user, self.secret = user, secret
        self.noise, self.chunk, self.order = noise, chunk, order
        self.events_before_reply = events_before_reply
        self.faults = dict(faults or {})
        self.greet = greet
        self.auth_delay = auth_delay
        self.targets = {**TARGETS, **(targets or {})}
        self.default_target = default_target
        self.deny = {a.lower() for a in deny or ()}  # actions this AMI user lacks the write= class for
        self.static = _static()
        self.status = _status_static()
        self.ring = ring
        self.held: dict[str, list[Fields]] = {}  # ringing calls' remaining events, by ChannelId
        self.channels: dict[str, Fields] = {}  # live channels by Uniqueid: their latest state event
        self._sessions: dict[socket.socket, dict[str, object]] = {}
        self._write_locks: dict[socket.socket, threading.Lock] = {}
        self._noise = noise_events()
        self._noise_i = 0
        self.actions: list[list[dict[str, str]]] = []  # per connection, each action's headers
        self.logins = 0
        self.live: set[str] = set()  # answered channels (by ChannelId) a Hangup can end
        self.connections = threading.Semaphore(0)
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._srv = socket.create_server(("127.0.0.1", 0))
        self.port = self._srv.getsockname()[1]
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True, name="ami-peer")
        self._thread.start()

    # -- lifecycle

    def close(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            self._srv.shutdown(socket.SHUT_RDWR)  # wakes accept(); close() alone leaves it listening
        self._srv.close()
        self._thread.join(timeout=5)
        with self._lock:
            for c in self._conns:
                with contextlib.suppress(OSError):
                    c.shutdown(socket.SHUT_RDWR)
                c.close()

    def __enter__(self) -> AmiPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def drop_all(self) -> None:
        """Close every client connection now (an Asterisk restart, a NAT timeout)."""
        with self._lock:
            for c in self._conns:
                with contextlib.suppress(OSError):
                    c.shutdown(socket.SHUT_RDWR)

    def count(self, action: str) -> int:
        return sum(1 for conn in self.actions for a in conn if a.get("Action", "").lower() == action.lower())

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self._srv.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._conns.append(conn)
                self._write_locks[conn] = threading.Lock()
                self.actions.append([])
                log = self.actions[-1]
            threading.Thread(target=self._serve, args=(conn, log), daemon=True).start()
            self.connections.release()

    # -- wire

    def _send(self, conn: socket.socket, data: bytes) -> None:
        with self._write_locks[conn]:  # events of other connections' calls are written from their threads
            if not self.chunk:
                conn.sendall(data)
                return
            for i in range(0, len(data), self.chunk):
                conn.sendall(data[i : i + self.chunk])
                time.sleep(0.0005)  # pacing so the pieces reach the client as separate reads

    def _broadcast(self, fields: Fields) -> None:
        """A call event: to every logged-in connection with call events on (manager_event), and the
        channel's state kept for Status."""
        uid = next((v for k, v in fields if k == "Uniqueid"), None)
        if ("Event", "Hangup") in fields:
            self.channels.pop(uid or "", None)
        elif uid and any(k == "ChannelState" for k, _ in fields):
            self.channels[uid] = fields
        with self._lock:
            sessions = [(c, s) for c, s in self._sessions.items() if s.get("auth") and self._events_on(s)]
        for conn, _ in sessions:
            with contextlib.suppress(OSError):
                self._msg(conn, fields)

    def release(self, channel_id: str | None = None) -> None:
        """Let held (ringing) calls go on: their remaining captured events, to every connection."""
        for cid in [channel_id] if channel_id else list(self.held):
            for fields in self.held.pop(cid, []):
                self._broadcast(fields)

    def _msg(self, conn: socket.socket, fields: Fields) -> None:
        if self.noise and self._noise:
            self._noise_i = (self._noise_i + 1) % len(self._noise)
            self._send(conn, encode(self._noise[self._noise_i]))
        self._send(conn, encode(fields))

    def _events_on(self, session: dict[str, object]) -> bool:
        return bool(session.get("events"))

    def _read_actions(self, conn: socket.socket) -> Iterator[dict[str, str]]:
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                data = conn.recv(4096)
                if not data:
                    return
                buf += data
            block, buf = buf.split(b"\r\n\r\n", 1)
            headers: dict[str, str] = {}
            for line in block.decode().split("\r\n"):
                k, _, v = line.partition(":")
                headers.setdefault(k.strip(), v.strip())
            yield headers

    def _serve(self, conn: socket.socket, log: list[dict[str, str]]) -> None:
        session: dict[str, object] = {"auth": False, "events": False}
        with self._lock:
            self._sessions[conn] = session
        try:
            if not self.greet:
                while conn.recv(4096):
                    pass
                return
            self._send(conn, encode(Message(0, "", banner=self.static["banner"][0][1])))
            for act in self._read_actions(conn):
                log.append(act)
                if not self._handle(conn, act, session):
                    return
        except OSError:
            return
        finally:
            with self._lock:
                self._sessions.pop(conn, None)
            with contextlib.suppress(OSError):
                conn.close()

    def _fault(self, conn: socket.socket, name: str, reply: bytes) -> bool | None:
        """Apply a configured fault to this action's reply; None = no fault, else the serve-loop verdict."""
        fault = self.faults.get(name.lower())
        if fault is None:
            return None
        if fault == "silent":
            return True
        if fault == "drop":
            return False
        if fault == "mid_reply":
            self._send(conn, reply[: len(reply) // 2])
            return False
        if fault == "after_reply":
            self._send(conn, reply)
            return False
        raise ValueError(fault)

    def _handle(self, conn: socket.socket, act: dict[str, str], session: dict[str, object]) -> bool:
        name = act.get("Action", "")
        aid = act.get("ActionID")
        lname = name.lower()
        if lname == "login":
            if act.get("Username") == self.user and act.get("Secret") == self.secret:
                reply = with_id(self.static["login_ok"], aid)
                verdict = self._fault(conn, name, encode(reply))
                if verdict is not None:
                    return verdict
                self.logins += 1
                session["auth"] = True
                session["events"] = act.get("Events", "on").lower() not in ("off", "no", "false", "0")
                self._send(conn, encode(reply))
                return True
            time.sleep(self.auth_delay)  # manager.c: a failed login sleeps 1 s, then the session ends
            self._send(conn, encode(with_id(self.static["login_bad"], aid)))
            return False
        if not session["auth"]:
            self._send(conn, encode(with_id(self.static["denied"], aid)))
            return True
        if lname in self.deny:
            self._msg(conn, with_id(self.static["denied"], aid))
            return True
        if lname == "originate":
            return self._originate(conn, act, session)
        if lname == "ping":
            fields = [(k, f"{time.time():.6f}" if k == "Timestamp" else v) for k, v in self.static["ping"]]
            reply = with_id(fields, aid)
        elif lname == "coresettings":
            reply = with_id(self.static["coresettings"], aid)
        elif lname == "events":
            session["events"] = act.get("EventMask", "on").lower() not in ("off", "no", "false", "0")
            reply = with_id(self.static["events"], aid)
        elif lname == "hangup":
            return self._hangup(conn, act, session)
        elif lname == "status":
            return self._status(conn, act)
        elif lname == "logoff":
            self._send(conn, encode(with_id(self.static["goodbye"], aid)))
            return False
        else:
            fields = [(k, v.replace("NoSuchAction", name) if k == "Message" else v) for k, v in self.static["unknown"]]
            reply = with_id(fields, aid)
        verdict = self._fault(conn, name, encode(reply))
        if verdict is not None:
            return verdict
        self._msg(conn, reply)
        return True

    def _originate(self, conn: socket.socket, act: dict[str, str], session: dict[str, object]) -> bool:
        aid = act.get("ActionID") or ""
        target = act.get("Channel", "")
        scenario = self.targets.get(target) or self.default_target or "unknown"
        script = call_script(scenario)
        _, old_cid, old_aid = SCENARIOS[scenario]
        cid = act.get("ChannelId") or f"peer-{time.monotonic_ns()}"
        if act.get("Async", "").lower() not in ("true", "yes", "1"):
            # synchronous originates fail in every capture but the answered one; the adapter never sends them
            self._msg(conn, with_id(self.static["originate_failed"], aid))
            return True
        reply = retag(script.reply, old_cid, cid, old_aid, aid)
        events = [retag(e, old_cid, cid, old_aid, aid) for e in script.events]
        resp = next(i for i, e in enumerate(events) if ("Event", "OriginateResponse") in e)
        if self.order in ("first", "last"):
            ev = events.pop(resp)
            events.insert(0 if self.order == "first" else len(events), ev)
        early, late = events[: self.events_before_reply], events[self.events_before_reply :]
        for e in early:
            self._broadcast(e)
        verdict = self._fault(conn, "originate", encode(reply))
        if verdict is not None:
            return verdict
        self._msg(conn, reply)
        if scenario == "answered":
            self.live.add(cid)
        if self.ring:
            cut = next((i for i, e in enumerate(late) if _past_ringing(e)), len(late))
            late, self.held[cid] = late[:cut], late[cut:]
        for e in late:
            self._broadcast(e)
        return True

    def _status(self, conn: socket.socket, act: dict[str, str]) -> bool:
        """`Status` `Channel: <name or uniqueid>` (ast_channel_get_by_name matches both)."""
        aid = act.get("ActionID")
        target = act.get("Channel", "")
        state = next((f for uid, f in self.channels.items() if target in (uid, dict(f).get("Channel"))), None)
        reply = with_id(self.status["nochannel" if state is None else "ack"], aid)
        verdict = self._fault(conn, "status", encode(reply))
        if verdict is not None:
            return verdict
        self._msg(conn, reply)
        if state is not None:
            template = self.status["up"] if dict(state).get("ChannelState") == "6" else self.status["ringing"]
            self._msg(conn, status_event(template, state, aid or ""))
            self._msg(conn, with_id(self.status["complete"], aid))
        return True

    def _hangup(self, conn: socket.socket, act: dict[str, str], session: dict[str, object]) -> bool:
        aid = act.get("ActionID")
        chan = act.get("Channel", "")
        if chan not in self.live:
            reply = with_id(self.static["nochannel"], aid)
            verdict = self._fault(conn, "hangup", encode(reply))
            if verdict is not None:
                return verdict
            self._msg(conn, reply)
            return True
        self.live.discard(chan)
        reply = with_id(self.static["hungup"], aid)
        verdict = self._fault(conn, "hangup", encode(reply))
        if verdict is not None:
            return verdict
        self._msg(conn, reply)
        _, old_cid, old_aid = SCENARIOS["answered"]
        for e in call_script("answered").hangup:
            self._broadcast(retag(e, old_cid, chan, old_aid, aid or ""))
        return True


def _past_ringing(fields: Fields) -> bool:
    """The first event of a call that is no longer only ringing: its outcome, its Up, its hang-up."""
    event = dict(fields).get("Event", "")
    return event in ("OriginateResponse", "HangupRequest", "SoftHangupRequest", "Hangup", "DialEnd") or (
        dict(fields).get("ChannelState") == "6"
    )
