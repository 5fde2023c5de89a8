"""What counts as a secret, and how one is hidden: one list for masking (`list`, `add`, results) and
for log redaction (bus.logging), so the two can never disagree.

Plain `re` only, compiled on first use (bus.lazy.pattern): `list` and `add` import this on every
prompt, and `list` masks without ever matching the free-text patterns.

- A key is secret when a vendor's catalogue entry says so (bus.vendors.is_secret) or when its name
  contains one of SECRET_WORDS (`passphrase`, `mypass`, `pin`, `esl_password`, …), unless it is one of
  PUBLIC_KEYS (identifiers the spec shows in clear: Vonage's `api_key`, Twilio's `account_sid`).
- In free text (an error message, a URL in an option, a log line) the userinfo of any URL, Bearer and
  Basic credentials, and `word=value` / `word: value` pairs whose word is secret are masked; the hints
  messages give (`token=…`, `id=<uuid>`, `private_key=@FILE`) are not values and stay readable.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from bus.lazy import pattern

SECRET_WORDS: tuple[str, ...] = (
    "secret",
    "token",
    "pass",
    "pwd",
    "(?<![a-z])pin(?![a-z])",
    "key",
    "private",
    "cookie",
    "signature",
    "authorization",
    "bearer",
    "sessid",
)  # regular expressions: `pin` only as a word of its own, not inside `ping` or `skipping`
PUBLIC_KEYS = frozenset({"api_key", "account_sid", "application_id", "user", "username", "realm", "domain"})
MASK = "****"

_WORDS = "|".join(SECRET_WORDS)
_SECRET_KEY = pattern(_WORDS, re.I)
# scheme://userinfo@: the password of `user:password@` (the user name stays, as `--auth user=` does), or
# the whole userinfo when there is no password (a key used as the user name: `https://TOKEN@host`,
# `https://sk_live_…:@host` as HTTP Basic with an empty password).
_USERINFO = pattern(r"(?i)\b([a-z][a-z0-9+.-]*://)(?:([^/?#@\s:]*:)[^/?#@\s]+|[^/?#@\s]+)@")
_INLINE = pattern(rf"(?i)\b([\w-]*(?:{_WORDS})[\w-]*)([=:]\s*)(?!…|\*\*\*\*|@|(?:bearer|basic)\s)[^\s&,;\"'<>]+")
_SCHEME_AUTH = pattern(r"(?i)\b(bearer|basic)\s+(?!\*\*\*\*)[A-Za-z0-9._~+/=-]+")


@lru_cache(maxsize=4096)  # the same few names again and again: `list` asks for each option of each server
def is_secret_key(key: str) -> bool:
    """A key whose value must never be shown, by its name alone."""
    return key.lower() not in PUBLIC_KEYS and bool(_SECRET_KEY.search(key))


def mask(value: str) -> str:
    """Enough to tell two long secrets apart, never enough to guess one."""
    return MASK + value[-2:] if len(value) >= 12 else MASK


def mask_userinfo(text: str) -> str:
    """`https://admin:pw@host/x` → `https://admin:****@host/x`, `https://TOKEN@h` → `https://****@h`."""
    if "@" not in text:  # every userinfo ends in one; most option values have none (`list` masks each)
        return text
    return _USERINFO.sub(lambda m: f"{m[1]}{m[2] or ''}{MASK}@", text)


# Every pattern below needs an `@` or one of these words: text with neither (most of it) is returned as is,
# which keeps masking off the per-job hot path (each JobResult passes through here).
_TRIGGER = pattern(rf"{_WORDS}|basic", re.I)


def redact_text(text: str) -> str:
    """Free text with every credential form we know masked (URL userinfo, Bearer/Basic, key=value)."""
    if "@" not in text and not _TRIGGER.search(text):
        return text
    text = mask_userinfo(text)
    text = _SCHEME_AUTH.sub(rf"\1 {MASK}", text)
    return _INLINE.sub(rf"\1\2{MASK}", text)


def redact(value: Any, key: str = "") -> Any:
    """A structure with secret-named keys masked and every string passed through `redact_text`."""
    if key and is_secret_key(key):
        return MASK
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [redact(v) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)  # a NamedTuple: ServerEntry
    if isinstance(value, str):
        return redact_text(value)
    return value
