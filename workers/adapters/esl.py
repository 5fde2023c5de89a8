"""FreeSWITCH event socket (ESL, inbound mode): framing, event parsing and command builders.

Why one module: the wire grammar is shared by the FreeSWITCH adapter and FusionPBX's hangup path,
and every byte we send to a FreeSWITCH passes through the builders here, so the injection checks
live in one place. Sockets, threads and deadlines are workers.transports.stream's job.

Wire facts (tests/peers/captures/freeswitch-1.10.12/, docs/reference/vendors.md §2.2; FreeSWITCH
src/mod/event_handlers/mod_event_socket/mod_event_socket.c):

- a frame is `Name: value\\n` header lines and a blank line, then `Content-Length` bytes of body if
  that header is present; LF only, never CRLF. `command/reply` has no body (the result is in
  `Reply-Text`); `api/response` carries the command output as its body; `text/event-plain` bodies
  are themselves a header block whose values are URL-encoded, and a BACKGROUND_JOB nests its result
  as a second `Content-Length` and body inside; `text/disconnect-notice` precedes a close.
- a command is one line and a blank line (`api status\\n\\n`); `bgapi` may carry a `Job-UUID:` header
  line, which makes the job id ours to choose (mod_event_socket.c, `job-uuid` in parse_command).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote

from bus.errors import InvalidInput
from bus.validate import check_value, show
from workers.transports.stream import ProtocolError

__all__ = [
    "EslEvent",
    "EslFrame",
    "EslFraming",
    "api",
    "auth",
    "bgapi",
    "check_dial_string",
    "check_extension",
    "event_plain",
    "filter_add",
    "filter_delete",
    "originate_args",
    "route",
]

MAX_HEADER_BLOCK = 64 * 1024  # the biggest header block in the captures is ~100 bytes; events go in bodies
_HEADER_LINE = re.compile(rb"([A-Za-z0-9][A-Za-z0-9_.-]*): ?(.*)")

AUTH_REQUEST = "auth/request"
COMMAND_REPLY = "command/reply"
API_RESPONSE = "api/response"
EVENT_PLAIN = "text/event-plain"
DISCONNECT_NOTICE = "text/disconnect-notice"
RUDE_REJECTION = "text/rude-rejection"  # the ACL refused us (mod_event_socket.c, "Access Denied, go away.")


@dataclass(frozen=True)
class EslEvent:
    """A `text/event-plain` body: URL-decoded headers, and the nested body (BACKGROUND_JOB's result)."""

    headers: dict[str, str]
    body: str | None = None

    @property
    def name(self) -> str:
        return self.headers.get("Event-Name", "")

    def get(self, key: str, default: str = "") -> str:
        return self.headers.get(key, default)


@dataclass(frozen=True)
class EslFrame:
    """One frame as the server sent it. Outer headers are not URL-encoded (mod_event_socket writes
    them raw); `event` is parsed once, by the reader thread, for `text/event-plain` frames."""

    headers: dict[str, str]
    body: bytes = b""
    event: EslEvent | None = field(default=None, compare=False)

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")

    @property
    def reply_text(self) -> str:
        """`Reply-Text` of a command/reply, else the api/response body, trimmed."""
        if self.content_type == COMMAND_REPLY:
            return self.headers.get("Reply-Text", "").strip()
        return self.text.strip()

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    @property
    def ok(self) -> bool:
        return self.reply_text.startswith("+OK")


def _parse_headers(block: bytes, *, decode: bool) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.split(b"\n"):
        if not line:
            continue
        match = _HEADER_LINE.fullmatch(line)
        if match is None:
            raise ProtocolError(f"not an ESL header line: {show(line.decode('utf-8', 'replace'))}")
        name = match[1].decode("ascii")
        value = match[2].decode("utf-8", "replace")
        headers.setdefault(name, unquote(value) if decode else value)  # a repeated header keeps its first value
    return headers


def _content_length(headers: dict[str, str], limit: int) -> int:
    raw = headers.get("Content-Length")
    if raw is None:
        return 0
    if not raw.isdigit():
        raise ProtocolError(f"bad Content-Length {show(raw)}")
    length = int(raw)
    if length > limit:
        raise ProtocolError(f"frame body of {length} bytes is over the {limit}-byte cap")
    return length


def parse_event(body: bytes) -> EslEvent:
    """An event-plain body: header block (values URL-encoded), blank line, optional nested body."""
    head, sep, rest = body.partition(b"\n\n")
    headers = _parse_headers(head, decode=True)
    if not sep:
        return EslEvent(headers)
    length = _content_length(headers, len(rest))
    return EslEvent(headers, rest[:length].decode("utf-8", "replace") if "Content-Length" in headers else None)


class EslFraming:
    """Incremental ESL parser (the stream transport's Framing): bytes in, complete frames out."""

    def __init__(self, max_frame: int = 1 << 20) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._headers: dict[str, str] | None = None
        self._need = 0

    def feed(self, data: bytes) -> list[EslFrame]:
        self._buffer += data
        frames: list[EslFrame] = []
        while True:
            if self._headers is None:
                # Stray blank lines between frames are tolerated (mod_event_socket never sends them, but
                # they carry no meaning and would otherwise read as an empty header block).
                while self._buffer[:1] == b"\n":
                    del self._buffer[:1]
                end = self._buffer.find(b"\n\n")
                if end < 0:
                    if b"\r" in self._buffer:
                        raise ProtocolError("CR in an ESL header block (FreeSWITCH uses LF only)")
                    if len(self._buffer) > min(MAX_HEADER_BLOCK, self.max_frame):
                        raise ProtocolError("header block without an end (no blank line) over the size cap")
                    return frames
                block = bytes(self._buffer[:end])
                del self._buffer[: end + 2]
                if b"\r" in block:
                    raise ProtocolError("CR in an ESL header block (FreeSWITCH uses LF only)")
                self._headers = _parse_headers(block, decode=False)
                if "Content-Type" not in self._headers and "Content-Length" not in self._headers:
                    raise ProtocolError(f"ESL frame without Content-Type: {show(block.decode('utf-8', 'replace'))}")
                self._need = _content_length(self._headers, self.max_frame)
            if len(self._buffer) < self._need:
                return frames
            body = bytes(self._buffer[: self._need])
            del self._buffer[: self._need]
            headers, self._headers = self._headers, None
            event = parse_event(body) if headers.get("Content-Type") == EVENT_PLAIN else None
            frames.append(EslFrame(headers, body, event))


def route(frame: EslFrame) -> tuple[Literal["reply", "event", "ignore"], str | None]:
    """ESL answers commands in order (no request ids): replies go FIFO; events to subscriptions;
    a disconnect notice is followed by the close, which the transport reports as the session lost."""
    kind = frame.content_type
    if kind in (COMMAND_REPLY, API_RESPONSE):
        return ("reply", None)
    if kind == EVENT_PLAIN:
        return ("event", None)
    return ("ignore", None)


# ---------------------------------------------------------------- commands and their injection checks
#
# A command line ends at LF, and a header line may follow it (bgapi's Job-UUID), so no user value may
# carry CR or LF. Inside an originate, the dial-string grammar (switch_ivr_originate.c) gives meaning
# to `{ } [ ] < >` (variable blocks), `,` and `|` (simultaneous / sequential legs), `:_:` (enterprise
# legs), spaces (argument separator), `&` and `( )` (applications), `$` (variable expansion), `^^`
# (custom delimiters) and quotes: none of those may come from a user value.

UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_DIAL_STRING = re.compile(r"[A-Za-z0-9_.+*#/@:;=%!~-]{1,256}")
_EXTENSION = re.compile(r"[A-Za-z0-9_.+*#@-]{1,128}")
_CONTEXT = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_VAR_VALUE = re.compile(r"[A-Za-z0-9_.+*#/@:%=~-]{1,256}")
_EVENT_NAME = re.compile(r"[A-Z_]{1,64}")
_HEADER_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")


def _line(text: str, what: str) -> str:
    if "\n" in text or "\r" in text:
        raise InvalidInput(f"{what}: CR/LF would end the ESL command line; refused")
    return text


def command(text: str) -> bytes:
    """One ESL command: the line and the blank line that ends it."""
    return (_line(text, "command") + "\n\n").encode("utf-8")


def auth(password: str) -> bytes:
    """`auth <password>`: mod_event_socket compares everything after `auth ` with strcmp, so the only
    characters that cannot be part of a password are the ones that end the line."""
    check_value("ESL password", password)
    return command(f"auth {password}")


def api(cmd: str) -> bytes:
    return command(f"api {cmd}")


def bgapi(cmd: str, job_uuid: str) -> bytes:
    """`bgapi` with our own Job-UUID header, so the BACKGROUND_JOB can be matched (and filtered) before
    the reply arrives."""
    if not UUID_RE.fullmatch(job_uuid):
        raise InvalidInput(f"Job-UUID {show(job_uuid)} is not a UUID")
    return f"bgapi {_line(cmd, 'bgapi')}\nJob-UUID: {job_uuid}\n\n".encode()


def event_plain(names: Iterable[str]) -> bytes:
    names = list(names)
    for name in names:
        if not _EVENT_NAME.fullmatch(name):
            raise InvalidInput(f"event name {show(name)}")
    return command("event plain " + " ".join(names))


def _filter_words(header: str, value: str) -> str:
    if not _HEADER_NAME.fullmatch(header) or not (UUID_RE.fullmatch(value) or _CONTEXT.fullmatch(value)):
        raise InvalidInput(f"ESL filter {show(header)} {show(value)}")
    return f"{header} {value}"


def filter_add(header: str, value: str) -> bytes:
    """`filter <header> <value>`: once any filter exists, only events whose header equals one of the
    filtered values are sent (mod_event_socket.c, the filter loop in event_handler)."""
    return command("filter " + _filter_words(header, value))


def filter_delete(header: str, value: str) -> bytes:
    return command("filter delete " + _filter_words(header, value))


def _channel_uuid(call_uuid: str) -> str:
    if not UUID_RE.fullmatch(call_uuid):
        raise InvalidInput(f"call_id={show(call_uuid)}: a FreeSWITCH call id is a channel UUID (8-4-4-4-12 hex)")
    return call_uuid


def uuid_kill(call_uuid: str) -> bytes:
    return api(f"uuid_kill {_channel_uuid(call_uuid)}")


def uuid_dump(call_uuid: str) -> bytes:
    """`api uuid_dump <uuid>`: the channel's state as the header block of an event (`Answer-State`,
    `Channel-State`, …; URL-encoded, mod_commands.c uuid_dump_function, format txt), or
    `-ERR No such channel!`. Read-only: the look an adopted call starts with."""
    return api(f"uuid_dump {_channel_uuid(call_uuid)}")


def check_dial_string(value: str, role: str) -> str:
    """A single endpoint dial string (`sofia/internal/1001@host:5060`, `user/1001@dom`, `loopback/…`)."""
    check_value(role, value)
    if not _DIAL_STRING.fullmatch(value) or "/" not in value or ":_:" in value:
        raise InvalidInput(
            f"{role}={show(value)}: expected a dial string like sofia/internal/1001@host or user/1001@domain "
            "(letters, digits and _ . + * # / @ : ; = % ! ~ -); spaces, commas, braces, brackets, & | ( ) $ ^ "
            "and quotes would change the originate command"
        )
    return value


def check_extension(value: str, role: str) -> str:
    check_value(role, value)
    if not _EXTENSION.fullmatch(value):
        raise InvalidInput(f"{role}={show(value)}: expected an extension or number (letters, digits, _ . + * # @ -)")
    return value


def check_context(value: str, role: str = "context") -> str:
    if not _CONTEXT.fullmatch(value):
        raise InvalidInput(f"{role}={show(value)}: expected a dialplan name (letters, digits, _ . -)")
    return value


def originate_args(variables: dict[str, str], a_leg: str, b_part: str) -> str:
    """`{k=v,…}<A> <B-part>` for `originate`; every piece is checked here, whoever built it."""
    pieces = []
    for name, value in variables.items():
        if not _VAR_NAME.fullmatch(name) or not _VAR_VALUE.fullmatch(value):
            raise InvalidInput(f"channel variable {show(name)}={show(value)}: not allowed in an originate")
        pieces.append(f"{name}={value}")
    check_dial_string(a_leg, "from")
    _line(b_part, "to")
    prefix = "{" + ",".join(pieces) + "}" if pieces else ""
    return f"{prefix}{a_leg} {b_part}"


def bridge_part(dial: str) -> str:
    """B as a dial string: the A-leg runs `&bridge(<B>)`."""
    return f"&bridge({check_dial_string(dial, 'to')})"


def dialplan_part(extension: str, context: str) -> str:
    """B as an extension: the A-leg is sent into the XML dialplan at `<B> XML <context>`."""
    return f"{check_extension(extension, 'to')} XML {check_context(context)}"


def new_uuid() -> str:
    return str(uuid.uuid4())
