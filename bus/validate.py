"""Checks on every word a user or another service hands us.

One place, because a CR or LF in `from`/`to`/`call_id` can inject commands into line protocols
(AMI, ESL) and a slash in a name can escape the registry: every entry point runs these.
"""

from __future__ import annotations

import re

from bus.errors import InvalidInput

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
KEY_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
MAX_VALUE = 1024
# Request facts, here rather than in bus.models so the CLI's light submit (producer.light) has them
# without pydantic; bus.models takes them from here. The message schema version, then a request's
# wait in seconds by default (neither --timeout nor IFBUS_TIMEOUT) and at most. The default is longer
# than every vendor's default ring time (Twilio 60 s + its 5 s grace, FreeSWITCH originate_timeout
# 60 s, Kamailio 2 × fr_inv_timer 30 s), so an unanswered call ends as the vendor's "no answer"
# (exit 5), not as "outcome unknown" because the caller stopped waiting first.
SCHEMA_VERSION = 1
DEFAULT_TIMEOUT = 90.0
MAX_TIMEOUT = 3600  # an int, as the JSON Schema and pydantic's message show it ("≤ 3600")


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidInput(
            f"Invalid server name {show(name)}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_key(key: str, what: str = "key") -> str:
    if not isinstance(key, str) or not KEY_RE.fullmatch(key):
        raise InvalidInput(f"Invalid {what} {show(key)}: use letters, digits and '_', starting with a letter")
    return key


def check_value(label: str, value: object, max_len: int = MAX_VALUE) -> str:
    """A printable, single-line, non-empty string of bounded size."""
    if not isinstance(value, str):
        raise InvalidInput(f"{label}: expected a string, got {type(value).__name__}")
    if value == "":
        raise InvalidInput(f"{label}: empty value")
    if len(value) > max_len:
        raise InvalidInput(f"{label}: too long ({len(value)} characters, at most {max_len})")
    if value.isascii() and value.isprintable():  # the usual value, checked at C speed: ' '..'~' only
        return value
    if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise InvalidInput(f"{label}: not valid UTF-8")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise InvalidInput(f"{label}: control characters (CR, LF, NUL, …) are not allowed")
    return value


def parse_pairs(words: tuple[str, ...] | list[str], what: str) -> dict[str, str]:
    """`key=value` words into a dict; a malformed pair or a repeated key is refused."""
    pairs: dict[str, str] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep:
            raise InvalidInput(f"Malformed {what} {show(word)}: expected key=value")
        check_key(key, f"{what} key")
        if key in pairs:
            raise InvalidInput(f"Repeated {what} key {key!r}")
        pairs[key] = check_value(f"{what} {key}", value)
    return pairs


def show(value: object, limit: int = 40) -> str:
    """A safe rendering of bad input for an error message: bounded, escaped."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…'"
