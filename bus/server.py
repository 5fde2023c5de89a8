"""One registry entry: a server's type, credentials, address and per-server options.

A NamedTuple rather than a pydantic model or a dataclass on purpose: `list` and `add` run on every
prompt; defining a pydantic model costs ~100 ms of start-up, and `dataclasses` imports `inspect`,
~10 ms of every `ifbus list sip` (bench/startup.py measures both). No `from __future__ import
annotations` either: typing.NamedTuple would turn each string annotation into a ForwardRef.
"""

import math
from typing import Any, NamedTuple

from bus.credentials import max_auth_len
from bus.errors import InvalidInput
from bus.secrets import mask, mask_userinfo
from bus.validate import MAX_VALUE, check_key, check_value, show
from bus.vendors import is_secret, missing_auth, vendor

FIELDS = ("type", "auth", "host", "port", "pool", "options")
# Numeric options: a value read with float() would take `nan`, `inf` and `-1` and turn them into a
# socket timeout that never fires or an attempt budget of zero. Counts are whole numbers.
COUNT_OPTIONS = frozenset({"attempts", "breaker_threshold"})
MAX_SECONDS = 86400.0
MAX_COUNT = 1000
# Calls per second and calls at once per server (bus.ratelimit); large carriers sell thousands.
LIMIT_OPTIONS = frozenset({"cps", "max_concurrent"})
MAX_LIMIT = 100_000


class ServerEntry(NamedTuple):
    type: str
    auth: dict[str, str] = {}  # noqa: RUF012 - a shared default never mutated (build/from_dict pass their own)
    host: str | None = None
    port: int | None = None
    pool: str | None = None
    options: dict[str, str] = {}  # noqa: RUF012

    @classmethod
    def build(
        cls,
        type_: str,
        auth: dict[str, str],
        host: str | None = None,
        port: int | None = None,
        pool: str | None = None,
        options: dict[str, str] | None = None,
    ) -> "ServerEntry":
        """A validated entry, with the spec's host default: the domain/realm given, else loopback."""
        info = vendor(type_)
        if host is None and info.server_class != "cloud":
            host = auth.get("domain") or auth.get("realm") or "127.0.0.1"
        entry = cls(type_, dict(auth), host, port, pool, dict(options or {}))
        entry.check()
        return entry

    @classmethod
    def from_dict(cls, name: str, raw: Any) -> "ServerEntry":
        """Parse a stored entry; anything off (a wrong type, an unknown field) is reported with the
        entry's name, never silently coerced: the registry is what decides where calls go."""
        if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
            raise InvalidInput(f"entry {name!r}: expected an object with a string 'type'")
        unknown = sorted(str(k) for k in raw if k not in FIELDS)
        if unknown:
            raise InvalidInput(f"entry {name!r}: unknown field {show(unknown[0])} (fields: {', '.join(FIELDS)})")
        auth = _string_map(name, "auth", raw.get("auth", {}))
        options = _string_map(name, "options", raw.get("options", {}))
        port = raw.get("port")
        if port is not None and (not isinstance(port, int) or isinstance(port, bool)):
            raise InvalidInput(f"entry {name!r}: 'port' must be a number")
        for key in ("host", "pool"):
            if raw.get(key) is not None and not isinstance(raw[key], str):
                raise InvalidInput(f"entry {name!r}: {key!r} must be a string")
        entry = cls(raw["type"], auth, raw.get("host"), port, raw.get("pool"), options)
        try:
            entry.check()
        except InvalidInput as exc:
            raise InvalidInput(f"entry {name!r}: {exc.message}") from None
        return entry

    def check(self) -> None:
        vendor(self.type)
        for key, value in self.auth.items():
            check_key(key, "auth key")
            check_value(f"auth {key}", value, max_auth_len(self.type, key, MAX_VALUE))  # a key file is longer
        for key, value in self.options.items():
            check_key(key, "option")
            check_value(f"option {key}", value)
        if self.host is not None:
            check_value("host", self.host, 253)
            if any(c.isspace() or c in "/@?#" for c in self.host):
                raise InvalidInput(f"host {self.host!r}: expected a hostname or IP address")
        if self.port is not None and not 0 < self.port < 65536:
            raise InvalidInput(f"port {self.port}: expected 1-65535")
        if self.pool is not None:
            check_value("pool", self.pool, 64)
        defaults = vendor(self.type).defaults
        for key, value in self.options.items():
            check_option_number(key, value, defaults.get(key))

    def check_new(self) -> None:
        """What `add` requires beyond a readable entry: the type's credentials (an entry that cannot
        log in would join its failover pool and fail every call sent there), and no credentials in
        an option's URL (they belong in --auth, which is masked and never leaves the registry)."""
        missing = missing_auth(self.type, self.auth)
        if missing:
            raise InvalidInput(f"{self.type} needs credentials: --auth {missing}")
        for key, value in self.options.items():
            if mask_userinfo(value) != value:
                raise InvalidInput(
                    f"option {key}: credentials in a URL ('user:password@') are not accepted; give them with --auth"
                )

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "auth": dict(self.auth),
            "host": self.host,
            "port": self.port,
            "pool": self.pool,
            "options": dict(self.options),
        }

    @property
    def effective_options(self) -> dict[str, str]:
        """Class defaults with this server's overrides on top."""
        return {**vendor(self.type).defaults, **self.options}

    @property
    def effective_port(self) -> int | None:
        return self.port if self.port is not None else vendor(self.type).port

    @property
    def pool_name(self) -> str:
        return self.pool or self.type

    def masked_auth(self) -> dict[str, str]:
        return {k: mask(v) if is_secret(self.type, k) else v for k, v in self.auth.items()}

    def public_view(self, name: str) -> dict[str, Any]:
        """What `list` may show: everything but secrets in clear."""
        return {
            "name": name,
            "type": self.type,
            "host": self.host,
            "port": self.effective_port,
            "pool": self.pool_name,
            "auth": self.masked_auth(),
            "options": self.masked_options(),
        }

    def masked_options(self) -> dict[str, str]:
        """Effective options with secret-named values masked and any URL userinfo hidden."""
        return {k: mask(v) if is_secret(self.type, k) else mask_userinfo(v) for k, v in self.effective_options.items()}


def _string_map(name: str, field_name: str, value: Any) -> dict[str, str]:
    """`auth`/`options` as stored: an object of strings (`"auth": []` or a number is an error)."""
    if not isinstance(value, dict):
        raise InvalidInput(f"entry {name!r}: {field_name!r} must be an object of strings, not {type(value).__name__}")
    for key, item in value.items():
        if not isinstance(item, str):
            raise InvalidInput(f"entry {name!r}: {field_name}.{key} must be a string, not {type(item).__name__}")
    return dict(value)


def check_option_number(key: str, value: str, default: str | None) -> None:
    """Options that are numbers (the class default is one, or the name says port/timeout/count) must be
    finite and in range: `abc`, `nan`, `inf`, `-1`, `0` for a timeout are refused with the accepted form."""
    if not _numeric_option(key, default):
        return
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if key.endswith("_port"):
        if not (math.isfinite(number) and number.is_integer() and 0 < number < 65536):
            raise InvalidInput(f"option {key}={show(value)}: expected a port number 1-65535")
        return
    if key in COUNT_OPTIONS:
        if not math.isfinite(number) or not number.is_integer() or not 1 <= number <= MAX_COUNT:
            raise InvalidInput(f"option {key}={show(value)}: expected a whole number 1-{MAX_COUNT}")
        return
    if key in LIMIT_OPTIONS:  # bus.ratelimit: 0 means "no limit"
        whole = key == "max_concurrent"
        if not math.isfinite(number) or number < 0 or number > MAX_LIMIT or (whole and not number.is_integer()):
            kind = "a whole number" if whole else "a number"
            raise InvalidInput(f"option {key}={show(value)}: expected {kind} 0-{MAX_LIMIT} (0: no limit)")
        return
    if not math.isfinite(number) or not 0 < number <= MAX_SECONDS:
        raise InvalidInput(f"option {key}={show(value)}: expected a number of seconds > 0 and ≤ {MAX_SECONDS:.0f}")


def _numeric_option(key: str, default: str | None) -> bool:
    if key.endswith(("_port", "_timeout", "_timer", "_interval", "_lifetime", "_cooldown")) or key in COUNT_OPTIONS:
        return True
    if default is None:
        return False
    try:
        return math.isfinite(float(default))
    except ValueError:
        return False
