"""Asterisk Manager Interface (AMI) on the wire: framing, routing and building actions.

Pure protocol, no sockets (workers.transports.stream carries it). Shapes are those of the real
captures in tests/peers/captures/asterisk-22.10.1/ (and docs/asterisk.md):

- on connect the server sends ONE banner line, `Asterisk Call Manager/11.0.0\\r\\n` (the AMI version);
- after that every message is a block of `Key: Value\\r\\n` lines ended by an empty line;
- a reply carries `Response:` and the `ActionID:` we sent; an event carries `Event:` — and some events
  (OriginateResponse) also carry our ActionID and even a `Response:` field, so `Event:` decides first.

Why `check_field` is strict: Asterisk ends a line at CR LF *or* a bare LF, and an empty line ends an
action, so a CR or LF inside a value starts a new header (the classic `Variable:` / `Application:
System` injection). Keys are matched by prefix up to `: `, so a key with `:` or spaces is ambiguous.
A line of 1024 bytes or more is silently discarded by Asterisk (main/manager.c `get_input`, `inbuf[1025]`),
and an action holds at most 128 headers (`AST_MAX_MANHEADERS`). We refuse, never escape: AMI has
no escaping.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from bus.errors import InvalidInput
from bus.validate import show
from workers.transports.stream import ProtocolError, Route

__all__ = ["AmiFraming", "AmiMessage", "action", "check_field", "route"]

BANNER_PREFIX = "Asterisk Call Manager/"
_MAX_BANNER = 256
_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_LINE = 1022  # bytes of `Key: Value` Asterisk keeps (see the module docstring)
MAX_HEADERS = 128


@dataclass(frozen=True)
class AmiMessage:
    """One AMI message (or the banner, with `banner` set and no fields). Keys keep their case and
    order, repeated keys (`Output:`) are kept; lookups are case-insensitive like Asterisk's own."""

    fields: tuple[tuple[str, str], ...] = ()
    banner: str | None = None

    def get(self, key: str, default: str | None = None) -> str | None:
        lowered = key.lower()
        for k, v in self.fields:
            if k.lower() == lowered:
                return v
        return default

    def getall(self, key: str) -> list[str]:
        lowered = key.lower()
        return [v for k, v in self.fields if k.lower() == lowered]

    @property
    def event(self) -> str | None:
        return self.get("Event")

    @property
    def response(self) -> str | None:
        return self.get("Response")

    @property
    def action_id(self) -> str | None:
        return self.get("ActionID")

    def __str__(self) -> str:  # for debugging and test failures; never holds a secret (server output)
        return self.banner if self.banner is not None else " | ".join(f"{k}: {v}" for k, v in self.fields)


class AmiFraming:
    """Incremental AMI parser: the banner line first, then `\\r\\n\\r\\n`-terminated blocks."""

    def __init__(self, max_frame: int = 1 << 20) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._greeted = False

    def feed(self, data: bytes) -> list[AmiMessage]:
        self._buf += data
        out: list[AmiMessage] = []
        if not self._greeted:
            end = self._buf.find(b"\r\n")
            if end < 0:
                if len(self._buf) > _MAX_BANNER:
                    raise ProtocolError(f"no AMI banner line in the first {_MAX_BANNER} bytes")
                return out
            line = self._buf[:end].decode("utf-8", "replace")
            if not line.startswith(BANNER_PREFIX):
                raise ProtocolError(f"not an AMI banner: {show(line)}")
            del self._buf[: end + 2]
            self._greeted = True
            out.append(AmiMessage(banner=line))
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > self.max_frame:
                    raise ProtocolError(f"an AMI message exceeds {self.max_frame} bytes")
                return out
            if end > self.max_frame:
                raise ProtocolError(f"an AMI message exceeds {self.max_frame} bytes")
            block = self._buf[:end].decode("utf-8", "replace")
            del self._buf[: end + 4]
            out.append(_parse(block))


def _parse(block: str) -> AmiMessage:
    fields = []
    for line in block.split("\r\n"):
        key, sep, value = line.partition(":")
        # Asterisk writes `Key: Value`; a value may itself hold ': ' (Output lines), so split once.
        fields.append((key, value[1:] if value.startswith(" ") else value) if sep else ("", line))
    return AmiMessage(tuple(fields))


def route(msg: AmiMessage) -> Route:
    """Events (even those carrying our ActionID) go to subscriptions; replies to their ActionID."""
    if msg.banner is not None:
        return ("ignore", None)
    if msg.get("Event") is not None:
        return ("event", None)
    if msg.get("Response") is not None and msg.action_id:
        return ("reply", msg.action_id)
    return ("ignore", None)


def check_field(key: str, value: str) -> str:
    """The one gate every header we send passes: a `Key: Value` line Asterisk reads back exactly.
    Returns the line; raises InvalidInput naming the key (never echoing a secret's value)."""
    if not _KEY.fullmatch(key):
        raise InvalidInput(f"AMI header name {show(key)} is not allowed (letters, digits, '_' or '-')")
    if not isinstance(value, str):
        raise InvalidInput(f"AMI header {key}: expected text, got {type(value).__name__}")
    if _CONTROL.search(value):
        raise InvalidInput(f"AMI header {key}: control characters (CR, LF, …) are not allowed in the value")
    line = f"{key}: {value}"
    if len(line.encode()) > MAX_LINE:
        raise InvalidInput(f"AMI header {key}: value too long ({len(line.encode())} bytes; Asterisk keeps {MAX_LINE})")
    return line


def action(name: str, action_id: str, fields: Iterable[tuple[str, str]] = ()) -> bytes:
    """An AMI action as bytes: `Action`, `ActionID`, then `fields` in order, each through check_field."""
    lines = [check_field("Action", name), check_field("ActionID", action_id)]
    lines += [check_field(k, v) for k, v in fields]
    if len(lines) > MAX_HEADERS:
        raise InvalidInput(f"AMI action {name}: {len(lines)} headers (Asterisk reads at most {MAX_HEADERS})")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()
