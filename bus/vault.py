"""Secrets at rest in the Redis registry: sealed with Fernet, the key held by the hosts, not by Redis.

The Redis registry is read by every worker, so its secrets would otherwise sit in clear in Redis
(in RDB/AOF files, replicas, `MONITOR`, anyone's `HGETALL`), and docs/security.md promises that
whoever can write Redis cannot read a credential. Each secret value (a key bus.vendors.is_secret
names) is stored as `enc:<Fernet token>`: AES-128-CBC with an HMAC-SHA256, from `cryptography`
(already installed for Vonage's JWTs), with a key every host gets from its environment:

- `IFBUS_REGISTRY_KEY`: one or more Fernet keys, comma-separated; the first seals, all open, so a key
  can be rotated by prepending the new one, re-adding the entries, then dropping the old one;
- `IFBUS_REGISTRY_KEY_FILE`: the same in a file (a systemd credential, a Kubernetes secret volume).

Make a key with `python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"`.
`env:NAME` references (bus.credentials) are not secrets and are stored as they are.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from bus.errors import InvalidInput
from bus.paths import env

PREFIX = "enc:"
MAX_KEY_FILE = 16 * 1024
HOW = (
    "set IFBUS_REGISTRY_KEY (or IFBUS_REGISTRY_KEY_FILE) to a Fernet key on every host that adds or uses "
    "servers, or give each secret as env:NAME so that only the workers' environment holds it"
)


def keys_text() -> str | None:
    """The configured key(s), from the variable or the file it names; None when neither is set."""
    text = env("registry_key")
    if text is None and (path := env("registry_key_file")):
        try:
            text = Path(path).read_bytes()[:MAX_KEY_FILE].decode("ascii", "replace")
        except OSError as exc:
            raise InvalidInput(f"IFBUS_REGISTRY_KEY_FILE {path!r}: cannot read it ({exc.strerror or exc})") from None
    return text.strip() if text and text.strip() else None


def _fernet() -> Any:
    text = keys_text()
    return None if text is None else _fernet_for(text)


@functools.lru_cache(maxsize=4)
def _fernet_for(text: str) -> Any:
    from cryptography.fernet import Fernet, MultiFernet

    try:
        return MultiFernet([Fernet(part.strip().encode()) for part in text.split(",") if part.strip()])
    except (ValueError, TypeError):
        raise InvalidInput("IFBUS_REGISTRY_KEY: not a Fernet key (32 url-safe base64-encoded bytes); " + HOW) from None


def sealed(value: str) -> bool:
    return value.startswith(PREFIX)


def seal(value: str, what: str) -> str:
    """`enc:<token>` for a secret; without a key, refused (exit 2) rather than stored in clear."""
    fernet = _fernet()
    if fernet is None:
        raise InvalidInput(f"{what}: the Redis registry keeps no secret in clear: {HOW}")
    return PREFIX + fernet.encrypt(value.encode("utf-8")).decode("ascii")


def unseal(value: str) -> str | None:
    """The clear value, or None when this host has no key that opens it."""
    fernet = _fernet()
    if fernet is None:
        return None
    from cryptography.fernet import InvalidToken

    try:
        return fernet.decrypt(value[len(PREFIX) :].encode("ascii")).decode("utf-8")
    except (InvalidToken, UnicodeError, ValueError):
        return None
