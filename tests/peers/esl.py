"""A FreeSWITCH 1.10.12 event socket (inbound ESL) peer for tests, replaying real captures.

Every frame it sends is taken byte for byte from tests/peers/captures/freeswitch-1.10.12/ (the `<<`
lines of each capture, joined with LF; the parser below checks each Content-Length against the bytes
it rebuilt, so a transcript misread fails loudly). Only three things are substituted, all with
values of the same kind the real server would put there:

- the channel UUID and Job-UUID of a replayed originate become the ones the client chose
  (`origination_uuid`, the `Job-UUID:` header of bgapi: mod_event_socket.c honours both), and
  `Job-Command-Arg` becomes the client's own argument, URL-encoded as FreeSWITCH encodes it;
  Content-Length is recomputed for those frames;
- `filter` replies are built in the shape the real server answered when the adapter's own filter
  commands were sent to the lab FreeSWITCH (tests/peers/captures/freeswitch-1.10.12/
  esl_filters_transcript.txt: `+OK filter added. [H]=[V]`, `+OK filter deleted. [H][V]` even for a filter
  never added, `-ERR invalid syntax` without a value; the builder is checked against those frames at
  import), and filters are applied as that capture shows and mod_event_socket.c's event_handler does (an
  event passes if one of its headers equals a filtered value; nothing of another call crosses).

It is no kinder than the real server: every write may be split into small pieces, an unrelated
call's events (another uuid, also from the captures) can be interleaved, a session can be dropped without
a word (`drop`), or closed the way a stopping FreeSWITCH closes it (`shutdown`: the real
`text/disconnect-notice` "The system is being shut down." of esl_filters_transcript.txt, then the close).
Which capture an originate replays is chosen by the port in its dial string (the lab's SIPp ports:
5070 answers, 5071 busy 486, 5072 rings until originate_timeout, 5073 silent until timer B), or by
`scenario_for`, a hook a test sets.

A call's events go to every session whose subscriptions and filters let them through, not only to the
one that sent the bgapi (esl_adopt_transcript.txt: a second connection with the call's filters gets
its BACKGROUND_JOB and CHANNEL_HANGUP_COMPLETE), so another worker can adopt the call. `api uuid_dump
<uuid>` answers the dump that capture recorded for the channel's state — `Answer-State: ringing` from
the originate until its CHANNEL_ANSWER, `answered` after it — with only the uuid substituted (same
length, so the captured Content-Length holds), and the captured `-ERR No such channel!` once its
CHANNEL_HANGUP_COMPLETE was sent (or for a uuid never seen). Clearing `hold` keeps a call ringing.
"""

from __future__ import annotations

import contextlib
import random
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

# The real captures (the team's shared transcripts, copied here so the suite needs nothing outside the repo),
# plus the filter exchange recorded on the lab for this peer.
CAPTURES = Path(__file__).resolve().parent / "captures" / "freeswitch-1.10.12"
TRANSCRIPTS = CAPTURES
_LINE = re.compile(r"\s*\d+\.\d+ \[[a-z]+\] (<<|>>) (.*)")


def _server_frames(lines: list[str]) -> list[bytes]:
    """Group `<<` lines into frames: header lines up to a blank line, then Content-Length body bytes."""
    out: list[bytes] = []
    i = 0
    while i < len(lines):
        head: list[str] = []
        while lines[i] != "":
            head.append(lines[i])
            i += 1
        i += 1
        frame = "".join(h + "\n" for h in head) + "\n"
        length = next((int(h.split(": ", 1)[1]) for h in head if h.startswith("Content-Length: ")), 0)
        body = b""
        while len(body) < length:
            piece = (lines[i] + "\n").encode()
            if len(body) + len(piece) == length + 1:  # a body without a final newline (global_getvar)
                piece = piece[:-1]
            body += piece
            i += 1
        if len(body) != length:
            raise ValueError(f"transcript body is {len(body)} bytes, Content-Length says {length}")
        out.append(frame.encode() + body)
    return out


def load(name: str, folder: Path = TRANSCRIPTS) -> dict[str, list[bytes]]:
    """The server frames of a capture, per `==== section ====`."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw in (folder / name).read_text().split("\n"):
        if raw.startswith("==== "):
            current = sections.setdefault(raw.strip("= "), [])
            continue
        match = _LINE.fullmatch(raw)
        if match and current is not None and match[1] == "<<":
            current.append("" if match[2] == "<blank line>" else match[2])
    return {title: _server_frames(lines) for title, lines in sections.items()}


_AUTH = load("esl_auth_transcript.txt")
_API = load("esl_api_transcript.txt")
GREETING = _AUTH["1. banner, wrong password"][0]
AUTH_BAD, DISCONNECT = _AUTH["1. banner, wrong password"][1:3]
AUTH_OK = _AUTH["2. banner, right password, exit"][1]
BYE = _AUTH["2. banner, right password, exit"][2]
NOT_FOUND = _AUTH["3. command before auth"][1]
EVENTS_OK = _API["bgapi status (reply, then BACKGROUND_JOB is only delivered if subscribed)"][0]
API = {
    "status": _API["api status"][0],
    "version": _API["api version"][0],
    "sofia status": _API["api sofia status"][0],
    "show channels": _API["api show channels"][0],
    "global_getvar domain": _API["api global_getvar domain"][0],
}
NO_SUCH_CHANNEL = _API["api uuid_kill 00000000-0000-0000-0000-000000000000"][0]
UNKNOWN_COMMAND = _API["api no_such_command"][0]

_KILL = load("esl_originate_answer_kill_transcript.txt")
_ANSWER = _KILL["bgapi originate sofia/internal/sipp@127.0.0.1:5070"]
KILL_OK = _KILL["api uuid_kill eaa3ea18-2b2b-4133-9ebf-d5e5c1c80aa9"][0]
KILL_HANGUP = _KILL["api uuid_kill eaa3ea18-2b2b-4133-9ebf-d5e5c1c80aa9"][1]


_ADOPT = load("esl_adopt_transcript.txt")
DUMP_RINGING = _ADOPT["adopter: filters for the call, then uuid_dump while it rings"][2]
DUMP_ANSWERED = _ADOPT["adopter: filters, then uuid_dump of the answered call"][2]
DUMP_NO_SUCH_CHANNEL = _ADOPT["adopter: uuid_dump after the end, filters deleted"][0]


def _dumped_uuid(frame: bytes) -> str:
    return re.search(rb"\nUnique-ID: ([0-9a-f-]{36})\n", frame)[1].decode()  # type: ignore[index]


_FILTERS = load("esl_filters_transcript.txt", CAPTURES)
_SETUP = _FILTERS["auth + the adapter's session set-up"]
_DELETES = _FILTERS["filter delete of our two filters, then of one that does not exist"]
_NO_VALUE = _FILTERS["filter with no value, then the zero-uuid filter deleted: every event again?"][0]
SHUTDOWN = _FILTERS["FreeSWITCH stopped (SIGTERM) under a subscribed session (a separate connection)"][-1]
FILTER_ZERO_ADDED = _SETUP[-1]  # `filter Unique-ID 00000000-…` as the real server answered it
FILTER_NEVER_ADDED_DELETED = _DELETES[-1]  # `filter delete Unique-ID 11111111-…`: +OK all the same
FILTER_NO_VALUE = _NO_VALUE


@dataclass(frozen=True)
class Scenario:
    """One replayed originate: the bgapi reply, then events (channel uuid and job uuid to replace)."""

    name: str
    reply: bytes
    events: list[bytes]
    channel: str
    job: str
    answered: bool


def _scenario(name: str, file: str, section: str, answered: bool) -> Scenario:
    frames = load(file)[section]
    job = re.search(rb"Job-UUID: ([0-9a-f-]{36})", frames[0])[1].decode()  # type: ignore[index]
    channel = re.search(rb"\nUnique-ID: ([0-9a-f-]{36})", b"".join(frames))[1].decode()  # type: ignore[index]
    events = [f for f in frames[1:] if b"Content-Type: text/event-plain\n" in f.split(b"\n\n", 1)[0] + b"\n"]
    return Scenario(name, frames[0], events, channel, job, answered)


SCENARIOS = {
    "5070": _scenario("answer", "esl_originate_answer_kill_transcript.txt",
                      "bgapi originate sofia/internal/sipp@127.0.0.1:5070", True),
    "5071": _scenario("busy", "esl_originate_busy_transcript.txt",
                      "bgapi originate sofia/internal/sipp@127.0.0.1:5071", False),
    "5072": _scenario("noanswer", "esl_originate_noanswer_transcript.txt",
                      "bgapi originate {originate_timeout=5}sofia/internal/sipp@127.0.0.1:5072", False),
    "5073": _scenario("timerb", "esl_originate_silent_timerb_transcript.txt",
                      "bgapi originate sofia/internal/sipp@127.0.0.1:5073", False),
}  # fmt: skip


def _relength(frame: bytes) -> bytes:
    """Recompute the Content-Length headers of an event frame after a substitution."""
    head, _, body = frame.partition(b"\n\n")
    inner_head, sep, inner_body = body.partition(b"\n\n")
    if sep and b"\nContent-Length: " in b"\n" + inner_head:
        inner_head = re.sub(rb"(?m)^Content-Length: \d+$", b"Content-Length: %d" % len(inner_body), inner_head)
        body = inner_head + sep + inner_body
    head = re.sub(rb"(?m)^Content-Length: \d+$", b"Content-Length: %d" % len(body), head)
    return head + b"\n\n" + body


def _substitute(frame: bytes, scenario: Scenario, channel: str, job: str, arg: str | None) -> bytes:
    out = frame.replace(scenario.channel.encode(), channel.encode()).replace(scenario.job.encode(), job.encode())
    if arg is not None and b"Job-Command-Arg: " in out:
        # switch_event_serialize URL-encodes values with switch_url_encode: unreserved and "/()" stay.
        encoded = quote(arg, safe="-_.~/()!*'")
        out = re.sub(rb"(?m)^Job-Command-Arg: .*$", b"Job-Command-Arg: " + encoded.encode(), out)
        out = _relength(out)
    return out


@dataclass
class Session:
    """Server-side state of one ESL connection."""

    conn: socket.socket
    authed: bool = False
    events: set[str] = field(default_factory=set)
    filters: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class EslPeer:
    """`with EslPeer(password=…) as peer:` listens on 127.0.0.1:<peer.port>."""

    def __init__(self, password: str = "labpass", *, chunk: int | None = 7, seed: int = 1) -> None:
        self.password = password
        self.chunk = chunk  # split writes into pieces of at most this many bytes (None: whole frames)
        self.random = random.Random(seed)
        self.interleave = True  # send an unrelated call's event before each scenario's own events
        self.scenario_for: Callable[[str], Scenario | None] | None = None
        self.received: list[str] = []  # every command line the peer read (bgapi headers included)
        self.live: dict[str, Scenario] = {}  # answered channels, killable with uuid_kill
        self.channels: dict[str, str] = {}  # every channel not yet hung up: its Answer-State (ringing, answered)
        self.drop_after: str | None = None  # close the session right after the command starting with this
        self.sessions: list[Session] = []
        self.hold = threading.Event()  # when cleared, scenarios wait before their events (set by default)
        self.hold.set()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._closed = False

    def __enter__(self) -> EslPeer:
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked in the other thread
        self._sock.close()
        for session in self.sessions:
            with contextlib.suppress(OSError):
                session.conn.shutdown(socket.SHUT_RDWR)
            session.conn.close()

    def drop(self) -> None:
        """Drop every session from the server side without a word (a crash, a firewall reset)."""
        for session in self.sessions:
            with contextlib.suppress(OSError):
                session.conn.shutdown(socket.SHUT_RDWR)

    def shutdown(self) -> None:
        """What a stopping FreeSWITCH does to each session: the disconnect notice, then the close
        (esl_filters_transcript.txt, last section)."""
        for session in self.sessions:
            with contextlib.suppress(OSError):
                self._send(session, SHUTDOWN)
        self.drop()

    # ------------------------------------------------------------------ connection handling

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            session = Session(conn)
            self.sessions.append(session)
            threading.Thread(target=self._serve, args=(session,), daemon=True).start()

    def _send(self, session: Session, data: bytes) -> None:
        with session.lock:
            if self.chunk is None:
                session.conn.sendall(data)
                return
            i = 0
            while i < len(data):
                n = self.random.randint(1, self.chunk) if self.random.random() < 0.5 else 4096
                session.conn.sendall(data[i : i + n])
                i += n

    def _serve(self, session: Session) -> None:
        buffer = b""
        try:
            self._send(session, GREETING)
            while True:
                data = session.conn.recv(65536)
                if not data:
                    return
                buffer += data
                while b"\n\n" in buffer:
                    block, buffer = buffer.split(b"\n\n", 1)
                    lines = block.decode().split("\n")
                    self.received.append(block.decode())
                    if not self._command(session, lines[0], lines[1:]):
                        session.conn.shutdown(socket.SHUT_RDWR)
                        session.conn.close()
                        return
        except OSError:
            return

    def _command(self, session: Session, cmd: str, headers: list[str]) -> bool:
        """Answer one command as mod_event_socket does; False closes the connection."""
        if self.drop_after is not None and cmd.startswith(self.drop_after):
            return False
        if cmd == "exit":
            self._send(session, BYE + DISCONNECT)
            return False
        if not session.authed:
            if cmd.startswith("auth "):
                if cmd[5:] == self.password:
                    session.authed = True
                    self._send(session, AUTH_OK)
                    return True
                self._send(session, AUTH_BAD + DISCONNECT)
                return False
            self._send(session, NOT_FOUND)
            return True
        if cmd.startswith("event plain "):
            session.events.update(cmd.split()[2:])
            self._send(session, EVENTS_OK)
        elif cmd.startswith("filter "):
            self._filter(session, cmd[7:])
        elif cmd.startswith("api "):
            self._api(session, cmd[4:])
        elif cmd.startswith("bgapi originate "):
            job = next((h.split(": ", 1)[1] for h in headers if h.lower().startswith("job-uuid: ")), None)
            self._originate(session, cmd[len("bgapi originate ") :], job)
        else:
            self._send(session, _reply("-ERR command not found"))
        return True

    def _filter(self, session: Session, words: str) -> None:
        name, _, value = words.partition(" ")
        if name == "delete":
            name, _, value = value.partition(" ")
            if (name, value) in session.filters:
                session.filters.remove((name, value))
            self._send(session, _reply(f"+OK filter deleted. [{name}][{value}]"))
        elif value:
            session.filters.append((name, value))
            self._send(session, _reply(f"+OK filter added. [{name}]=[{value}]"))
        else:
            self._send(session, _reply("-ERR invalid syntax"))

    def _api(self, session: Session, cmd: str) -> None:
        if cmd in API:
            self._send(session, API[cmd])
        elif cmd.startswith("uuid_dump "):
            target = cmd.split()[1]
            state = self.channels.get(target)
            if state is None:
                self._send(session, DUMP_NO_SUCH_CHANNEL)
                return
            dump = DUMP_ANSWERED if state == "answered" else DUMP_RINGING
            self._send(session, dump.replace(_dumped_uuid(dump).encode(), target.encode()))
        elif cmd.startswith("uuid_kill "):
            target = cmd.split()[1]
            scenario = self.live.pop(target, None)
            if scenario is None:
                self._send(session, NO_SUCH_CHANNEL)
                return
            self._send(session, KILL_OK)
            self._broadcast(_substitute(KILL_HANGUP, scenario, target, "", None))
        else:
            self._send(session, UNKNOWN_COMMAND)

    def _originate(self, session: Session, arg: str, job: str | None) -> None:
        uuid_match = re.search(r"origination_uuid=([0-9a-f-]{36})", arg)
        scenario = self.scenario_for(arg) if self.scenario_for else None
        if scenario is None:
            port = re.search(r":(\d+)[ ;]", arg + " ")
            scenario = SCENARIOS.get(port[1] if port else "", SCENARIOS["5070"])
        channel = uuid_match[1] if uuid_match else scenario.channel
        job = job or scenario.job
        if scenario.answered:
            self.live[channel] = scenario
        self.channels[channel] = "ringing"  # before the reply: an adopter may look as soon as it is out
        self._send(session, _substitute(scenario.reply, scenario, channel, job, None))

        def later() -> None:
            self.hold.wait(30)
            if self.interleave:
                other = SCENARIOS["5071"].events[0]  # someone else's call: another uuid, same shape
                self._broadcast(other)
            for frame in scenario.events:
                self._broadcast(_substitute(frame, scenario, channel, job, arg))

        threading.Thread(target=later, daemon=True).start()

    def _broadcast(self, frame: bytes) -> None:
        """An event to every session (each one's subscriptions and filters decide), after noting the
        channel's state for uuid_dump."""
        name = re.search(rb"\nEvent-Name: ([A-Z_]+)", frame)
        uuid = re.search(rb"\nUnique-ID: ([0-9a-f-]{36})\n", frame)
        if name is not None and uuid is not None and uuid[1].decode() in self.channels:
            if name[1] == b"CHANNEL_ANSWER":
                self.channels[uuid[1].decode()] = "answered"
            elif name[1] == b"CHANNEL_HANGUP_COMPLETE":
                del self.channels[uuid[1].decode()]
        for session in list(self.sessions):
            self._emit(session, frame)

    def _emit(self, session: Session, frame: bytes) -> None:
        """Send an event if the session subscribed to it and its filters let it through."""
        name = re.search(rb"\nEvent-Name: ([A-Z_]+)", frame)
        if name is None or name[1].decode() not in session.events:
            return
        if session.filters and not any(
            re.search(rb"(?m)^" + re.escape(h.encode()) + rb": " + re.escape(v.encode()) + rb"$", frame)
            for h, v in session.filters
        ):
            return
        with contextlib.suppress(OSError):
            self._send(session, frame)


def _reply(text: str) -> bytes:
    """A command/reply frame, shaped as every command/reply in the captures."""
    return f"Content-Type: command/reply\nReply-Text: {text}\n\n".encode()


def _check_against_the_real_server() -> None:
    """The filter replies built above are the real server's bytes (esl_filters_transcript.txt)."""
    zero, never = "00000000-0000-0000-0000-000000000000", "11111111-1111-1111-1111-111111111111"
    for built, real in (
        (_reply(f"+OK filter added. [Unique-ID]=[{zero}]"), FILTER_ZERO_ADDED),
        (_reply(f"+OK filter deleted. [Unique-ID][{never}]"), FILTER_NEVER_ADDED_DELETED),
        (_reply("-ERR invalid syntax"), FILTER_NO_VALUE),
    ):
        if built != real:
            raise ValueError(f"peer builds {built!r}, the real server sent {real!r}")
    if not SHUTDOWN.startswith(b"Content-Type: text/disconnect-notice\n"):
        raise ValueError(f"not the shutdown notice: {SHUTDOWN!r}")


_check_against_the_real_server()
