"""Where an `--auth` value comes from, so secrets need not sit in argv (shell history, `ps`):

| written                          | read when            | what the registry stores          |
|----------------------------------|----------------------|-----------------------------------|
| `token=xyz`                      | —                    | the value                         |
| `token=@/run/secrets/kam`        | once, by `add`       | the file's one line (the value)   |
| `token=env:KAM_TOKEN`            | at use, by whoever uses the entry (each worker) | `env:KAM_TOKEN` |
| `private_key=@PATH` (Vonage)     | once, by `add`       | the key in compact form           |

Why `@file` is read at `add`: a worker may run on another machine than the CLI, so the registry holds
the value itself, not a path that exists only here. Why `env:` is resolved at use: it is how
systemd (`Environment=`), containers and Kubernetes (`secretKeyRef`) hand a process its secrets, so
the secret never reaches the registry at all. A file is `@` and a path with a `/` in it (`@./tok`,
`@~/tok`, `@/run/…`): a password that merely starts with `@` stays a password. Vonage's key file is
`@` and any path, as before.

Why a compact form for key files: registry values are single printable lines (bus.validate.check_value),
so a PEM's lines are stored as the base64 of its PKCS#8 DER body — the same bytes, without the armour.
`load_private_key` turns that back into a key object.

`cryptography` is imported only when a file key is present: `add` for other vendors stays fast; base64
and the `env:` pattern also wait for their first use, since `list` imports this module for every entry.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from bus.errors import InvalidInput
from bus.lazy import pattern
from bus.validate import MAX_VALUE, check_value, show

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

#: (server type, auth key) pairs whose value is a file: `@PATH` at `add`, stored in compact form.
FILE_KEYS: frozenset[tuple[str, str]] = frozenset({("vonage", "private_key")})
#: Longest compact value accepted (an RSA-4096 PKCS#8 key is about 3.2 kB of base64).
MAX_KEY_VALUE = 8192
MAX_PEM_FILE = 64 * 1024
ENV_PREFIX = "env:"
ENV_NAME_RE = pattern(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def max_auth_len(type_: str, key: str, default: int) -> int:
    """The length bound for one stored auth value: keys read from files hold a whole key."""
    return MAX_KEY_VALUE if (type_, key) in FILE_KEYS else default


def env_name(value: str) -> str | None:
    """The variable an `env:NAME` value names, else None."""
    if value.startswith(ENV_PREFIX) and ENV_NAME_RE.fullmatch(value[len(ENV_PREFIX) :]):
        return value[len(ENV_PREFIX) :]
    return None


def resolve_auth(type_: str, auth: dict[str, str]) -> dict[str, str]:
    """`auth` as `add` stores it: files read and checked, `env:NAME` kept as the reference.

    A key file's `@PATH` is read from PATH (a missing, unreadable or non-PEM file → InvalidInput, exit 2);
    a key file's value without `@` must already be the compact form (e.g. copied from another registry).
    Any other key's `@path/with/slash` is read as one line (InvalidInput when missing, empty, or not one
    printable line). `env:` followed by anything but a variable name is refused rather than stored.
    """
    resolved = dict(auth)
    for key, value in auth.items():
        if value.startswith(ENV_PREFIX):
            if env_name(value) is None:
                raise InvalidInput(f"--auth {key}={show(value)}: expected env:NAME with a variable name "
                                   "(letters, digits, _), e.g. env:KAM_TOKEN")  # fmt: skip
            continue
        if (type_, key) in FILE_KEYS:
            if value.startswith("@"):
                resolved[key] = _compact(_read_pem(key, value[1:]), f"{key}={show(value)}")
            else:
                load_private_key(value, key)  # validates; the error never echoes the value
        elif value.startswith("@") and "/" in value:
            resolved[key] = _read_line(key, value[1:])
    return resolved


def at_use(type_: str, auth: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """`auth` with each `env:NAME` replaced by this process's variable, and the keys left unresolved.

    A variable that is unset, empty or not a valid value (a newline would reach a line protocol) leaves
    the reference in place and its key in the second list: the caller says so (the registry logs it)
    and the server refuses the login, which the breaker and `ifbus test` report as an auth failure.
    A key file's variable may hold the PEM itself; it is turned into the compact form here.
    """
    resolved, missing = dict(auth), []
    for key, value in auth.items():
        name = env_name(value)
        if name is None:
            continue
        found = os.environ.get(name, "")
        try:
            if (type_, key) in FILE_KEYS and found.lstrip().startswith("-----BEGIN"):
                found = _compact(found.encode(), f"{key}=env:{name}")
            check_value(f"auth {key}", found, max_auth_len(type_, key, MAX_VALUE))
        except InvalidInput:
            missing.append(key)
            continue
        resolved[key] = found
    return resolved, missing


def _read_line(key: str, path_text: str) -> str:
    """A secret file's one line (a trailing newline, as `echo … > file` writes, is not part of it)."""
    label = f"--auth {key}=@{show(path_text)}"
    try:
        with open(os.path.expanduser(path_text), "rb") as handle:
            data = handle.read(MAX_VALUE + 2)
    except OSError as exc:
        raise InvalidInput(f"{label}: cannot read it ({exc.strerror or exc})") from None
    text = data.decode("utf-8", "replace").removesuffix("\n").removesuffix("\r")
    if len(data) > MAX_VALUE + 1:
        raise InvalidInput(f"{label}: longer than {MAX_VALUE} characters")
    try:
        return check_value(label, text)
    except InvalidInput as exc:
        raise InvalidInput(f"{exc.message} (the file must hold the value on one line)") from None


def load_private_key(compact: str, key: str = "private_key") -> RSAPrivateKey:
    """The RSA key object from its stored compact form (base64 PKCS#8 DER)."""
    import base64
    import binascii

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
    from pathlib import Path  # here: only `add` reads key files, and pathlib costs `list` ~6 ms

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
    import base64

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
