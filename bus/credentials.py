"""Credentials that come from files: `--auth private_key=@PATH` is read once, at `add` time.

Why at `add`: a worker may run on another machine than the CLI, so the registry must hold the key
itself, not a path that only exists here. Why a compact form: registry values are single printable
lines (bus.validate.check_value), so a PEM's lines are stored as the base64 of its PKCS#8 DER body —
the same bytes, without the armour. `load_private_key` turns that back into a key object.

`cryptography` is imported only when a file key is present: `add` for other vendors stays fast.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import TYPE_CHECKING

from bus.errors import InvalidInput
from bus.validate import show

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

#: (server type, auth key) pairs whose value is a file: `@PATH` at `add`, stored in compact form.
FILE_KEYS: frozenset[tuple[str, str]] = frozenset({("vonage", "private_key")})
#: Longest compact value accepted (an RSA-4096 PKCS#8 key is about 3.2 kB of base64).
MAX_KEY_VALUE = 8192
MAX_PEM_FILE = 64 * 1024


def max_auth_len(type_: str, key: str, default: int) -> int:
    """The length bound for one stored auth value: keys read from files hold a whole key."""
    return MAX_KEY_VALUE if (type_, key) in FILE_KEYS else default


def resolve_auth(type_: str, auth: dict[str, str]) -> dict[str, str]:
    """`auth` with every file key of this type read and checked; other keys untouched.

    A value `@PATH` is read from PATH (a missing, unreadable or non-PEM file → InvalidInput, exit 2);
    a value without `@` must already be the compact form (e.g. copied from another registry).
    """
    resolved = dict(auth)
    for key, value in auth.items():
        if (type_, key) not in FILE_KEYS:
            continue
        if value.startswith("@"):
            resolved[key] = _compact(_read_pem(key, value[1:]), f"{key}={show(value)}")
        else:
            load_private_key(value, key)  # validates; the error never echoes the value
    return resolved


def load_private_key(compact: str, key: str = "private_key") -> RSAPrivateKey:
    """The RSA key object from its stored compact form (base64 PKCS#8 DER)."""
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
    from cryptography.hazmat.primitives.serialization import load_der_private_key

    try:
        der = base64.b64decode(compact, validate=True)
        private = load_der_private_key(der, password=None)
    except (binascii.Error, ValueError, TypeError):
        raise InvalidInput(
            f"--auth {key}: not a private key; give the key file Vonage made for the application as "
            f"{key}=@PATH (e.g. {key}=@private.key)"
        ) from None
    if not isinstance(private, RSAPrivateKey):
        raise InvalidInput(f"--auth {key}: an RSA private key is needed (Vonage signs its JWTs with RS256)")
    return private


def _read_pem(key: str, path_text: str) -> bytes:
    if not path_text:
        raise InvalidInput(f"--auth {key}=@: give the path of the PEM file after @, e.g. {key}=@private.key")
    path = Path(path_text).expanduser()
    try:
        if not path.is_file():
            raise InvalidInput(f"--auth {key}=@{show(path_text)}: no such file")
        if path.stat().st_size > MAX_PEM_FILE:
            raise InvalidInput(f"--auth {key}=@{show(path_text)}: too large for a private key file")
        return path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"--auth {key}=@{show(path_text)}: cannot read it ({exc.strerror})") from None


def _compact(pem: bytes, label: str) -> str:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
        load_pem_private_key,
    )

    if b"-----BEGIN" not in pem:
        raise InvalidInput(f"--auth {label}: not a PEM file (expected -----BEGIN PRIVATE KEY-----)")
    try:
        private = load_pem_private_key(pem, password=None)
    except TypeError:
        raise InvalidInput(f"--auth {label}: the key is encrypted; give an unencrypted PEM key") from None
    except ValueError:
        raise InvalidInput(f"--auth {label}: not a PEM private key") from None
    if not isinstance(private, RSAPrivateKey):
        raise InvalidInput(f"--auth {label}: an RSA private key is needed (Vonage signs its JWTs with RS256)")
    der = private.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())
    return base64.b64encode(der).decode("ascii")
