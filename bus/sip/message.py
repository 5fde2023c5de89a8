"""Parse SIP responses from the wire: one job, no I/O.

Robust against what a hostile or broken peer sends (RFC 3261 §7, §18.3, §20):

- status line `SIP/2.0 <3 digits> <reason>`; header names are case-insensitive and compact forms
  (`v`, `f`, `t`, `i`, `l`, `k`, `c`, `m`, `s`, `e`, …, RFC 3261 §7.3.3 and later RFCs) are expanded;
- folded header lines (a line starting with SP/HTAB continues the previous one, §7.3.1);
- several `Via` header lines and comma-separated values in one line;
- `Content-Length`: a datagram whose body is shorter than declared is refused (truncated), a longer
  body is cut to the declared length (§18.3); on a stream, `take_message` frames by it;
- bounded: the whole message, the header count and the body are capped; bare CR, NUL and other
  control characters inside the header section are refused (header injection), so every value
  handed out is printable text.

Anything malformed raises `SipParseError` (a ValueError) and nothing else; parsing is linear in the
input size, so it never hangs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_MESSAGE = 65_535  # bytes: the largest UDP datagram; a TCP message may not exceed it either
MAX_HEADERS = 128  # header fields (after unfolding); real OPTIONS replies carry about 15
MAX_STARTING_BLANKS = 64  # RFC 5626 keep-alive CRLFs tolerated before a message on a stream

# RFC 3261 §7.3.3 plus the compact forms registered later (IANA "Header Fields" registry).
COMPACT_FORMS: dict[str, str] = {
    "a": "accept-contact",  # RFC 3841
    "b": "referred-by",  # RFC 3892
    "c": "content-type",
    "d": "request-disposition",  # RFC 3841
    "e": "content-encoding",
    "f": "from",
    "i": "call-id",
    "j": "reject-contact",  # RFC 3841
    "k": "supported",
    "l": "content-length",
    "m": "contact",
    "n": "identity-info",  # RFC 4474
    "o": "event",  # RFC 6665
    "r": "refer-to",  # RFC 3515
    "s": "subject",
    "t": "to",
    "u": "allow-events",  # RFC 6665
    "v": "via",
    "x": "session-expires",  # RFC 4028
    "y": "identity",  # RFC 8224
}

_STATUS_LINE = re.compile(r"SIP/2\.0 ([1-6][0-9]{2})(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?", re.IGNORECASE)
# `name HCOLON value` (RFC 3261 §7.3.1, §25.1 token); the value's surrounding whitespace is dropped.
_HEADER_NAME = re.compile(r"([A-Za-z0-9.!%*_+`'~-]+)[ \t]*:")
_HEADER_LINES = re.compile(r"^([A-Za-z0-9.!%*_+`'~-]+)[ \t]*:(.*)$", re.MULTILINE)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # in the LF-split header text: all but HTAB (bare CR too)
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_DIGITS = re.compile(r"[0-9]{1,7}")


class SipParseError(ValueError):
    """The bytes are not a well-formed SIP response within this module's limits."""


@dataclass(frozen=True)
class SipResponse:
    code: int
    reason: str
    headers: tuple[tuple[str, str], ...]  # (lower-case full name, value) in wire order, unfolded
    body: bytes = b""

    def get(self, name: str) -> str | None:
        """The first value of a header (any case, compact or full name), or None."""
        key = canonical_name(name)
        return next((value for field, value in self.headers if field == key), None)

    def get_all(self, name: str) -> list[str]:
        """Every value of a header, comma-separated lists split (quoted strings respected)."""
        key = canonical_name(name)
        values: list[str] = []
        for field, value in self.headers:
            if field == key:
                values.extend(split_list(value))
        return values

    @property
    def vias(self) -> list[str]:
        return self.get_all("via")

    @property
    def top_via_branch(self) -> str | None:
        vias = self.vias
        return header_param(vias[0], "branch") if vias else None

    @property
    def cseq(self) -> tuple[int, str] | None:
        value = self.get("cseq")
        if value is None:
            return None
        parts = value.split()
        if len(parts) != 2 or not re.fullmatch(r"[0-9]{1,10}", parts[0]):
            return None
        return int(parts[0]), parts[1].upper()


def canonical_name(name: str) -> str:
    lowered = name.strip().lower()
    return COMPACT_FORMS.get(lowered, lowered)


def split_list(value: str) -> list[str]:
    """`a, b;x="1,2", c` → ['a', 'b;x="1,2"', 'c'] (RFC 3261 §7.3.1 comma-separated lists)."""
    if '"' not in value and "<" not in value:  # the common case, without a character loop
        return [part.strip() for part in value.split(",") if part.strip()]
    parts: list[str] = []
    current: list[str] = []
    quoted = angle = False
    escaped = False
    for char in value:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif not quoted and char in "<>":
            angle = char == "<"
        elif char == "," and not quoted and not angle:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    parts.append("".join(current).strip())
    return [p for p in parts if p]


def header_param(value: str, name: str) -> str | None:
    """The value of `;name=value` in a header value such as a Via (case-insensitive name)."""
    for part in value.split(";")[1:]:
        key, _, param = part.partition("=")
        if key.strip().lower() == name:
            return param.strip().strip('"')
    return None


def parse_response(data: bytes, *, max_size: int = MAX_MESSAGE) -> SipResponse:
    """One complete response (a datagram, or a message `take_message` framed)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise SipParseError("expected bytes")
    data = bytes(data)
    if len(data) > max_size:
        raise SipParseError(f"message of {len(data)} bytes exceeds the {max_size}-byte limit")
    data = data.lstrip(b"\r\n")
    cut = data.find(b"\r\n\r\n")  # the usual end of headers, found without the regex
    if cut >= 0 and b"\n\n" not in data[:cut] and b"\n\r\n" not in data[:cut]:
        head, body = data[:cut], data[cut + 4 :]
    else:
        end = _HEADER_END.search(data)
        if end is None:
            raise SipParseError("truncated: no blank line after the headers")
        head, body = data[: end.start()], data[end.end() :]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise SipParseError("header section is not UTF-8") from None
    text = text.replace("\r\n", "\n")
    if _CONTROL.search(text):  # NUL, ESC, a bare CR (header injection) …: refused, never passed on
        raise SipParseError("control character in the header section")
    first, _, rest = text.partition("\n")
    status = _STATUS_LINE.fullmatch(first)
    if status is None:
        raise SipParseError(f"not a SIP/2.0 status line: {first[:60]!r}")
    headers = _parse_headers(rest)
    body = _body(headers, body)
    return SipResponse(int(status.group(1)), (status.group(2) or "").strip(), tuple(headers), body)


def take_message(buffer: bytearray, *, max_size: int = MAX_MESSAGE) -> bytes | None:
    """Cut one complete message off the front of a stream buffer (TCP/TLS), framed by Content-Length.

    Returns None when more bytes are needed; raises SipParseError when the stream cannot be a
    SIP message within the limits (then the connection should be dropped).
    """
    start = 0
    while start < len(buffer) and buffer[start] in (0x0D, 0x0A):
        start += 1
    if start > 2 * MAX_STARTING_BLANKS:
        raise SipParseError("too many blank lines")
    end = _HEADER_END.search(buffer, start)
    if end is None:
        if len(buffer) - start > max_size:
            raise SipParseError(f"no end of headers within {max_size} bytes")
        return None
    head = bytes(buffer[start : end.start()])
    length = 0
    for raw in re.split(rb"\r?\n", head)[1:]:
        name, sep, value = raw.partition(b":")
        if sep and name.strip().lower() in (b"content-length", b"l"):
            digits = value.strip()
            if not digits.isdigit() or len(digits) > 7:
                raise SipParseError("bad Content-Length")
            length = int(digits)
    total = end.end() + length
    if total - start > max_size:
        raise SipParseError(f"message of {total - start} bytes exceeds the {max_size}-byte limit")
    if len(buffer) < total:
        return None
    message = bytes(buffer[start:total])
    del buffer[:total]
    return message


def _parse_headers(text: str) -> list[tuple[str, str]]:
    if not text:
        return []
    # Fast path, one regex pass in C: every line is `name: value` (no folding, nothing malformed).
    found = _HEADER_LINES.findall(text)
    if len(found) == text.count("\n") + 1:
        if len(found) > MAX_HEADERS:
            raise SipParseError(f"more than {MAX_HEADERS} headers")
        return [(COMPACT_FORMS.get(key := name.lower(), key), value.strip(" \t")) for name, value in found]
    fields: list[tuple[str, str]] = []
    for line in text.split("\n"):
        if line[:1] in (" ", "\t"):
            if not fields:
                raise SipParseError("continuation line before any header")
            name, value = fields[-1]
            fields[-1] = (name, f"{value} {line.strip()}".strip())
            continue
        match = _HEADER_NAME.match(line)
        if match is None:
            raise SipParseError(f"malformed header line: {line[:60]!r}")
        name = match.group(1).lower()
        fields.append((COMPACT_FORMS.get(name, name), line[match.end() :].strip(" \t")))
        if len(fields) > MAX_HEADERS:
            raise SipParseError(f"more than {MAX_HEADERS} headers")
    return fields


def _body(headers: list[tuple[str, str]], body: bytes) -> bytes:
    values = {value for name, value in headers if name == "content-length"}
    if not values:
        return body
    if len(values) > 1:
        raise SipParseError("conflicting Content-Length headers")
    value = values.pop()
    if not _DIGITS.fullmatch(value):
        raise SipParseError(f"bad Content-Length {value[:20]!r}")
    length = int(value)
    if length > len(body):
        raise SipParseError(f"truncated: Content-Length {length}, {len(body)} body bytes")
    return body[:length]
