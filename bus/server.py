"""One registry entry: a server's type, credentials, address and per-server options.

A stdlib dataclass rather than a pydantic model on purpose: `list` and `add` run on every
prompt, and defining a pydantic model costs ~100 ms of start-up (bench/startup.py measures it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bus.errors import InvalidInput
from bus.validate import check_key, check_value
from bus.vendors import is_secret, mask, vendor

FIELDS = ("type", "auth", "host", "port", "pool", "options")


@dataclass(frozen=True)
class ServerEntry:
    type: str
    auth: dict[str, str] = field(default_factory=dict)
    host: str | None = None
    port: int | None = None
    pool: str | None = None
    options: dict[str, str] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        type_: str,
        auth: dict[str, str],
        host: str | None = None,
        port: int | None = None,
        pool: str | None = None,
        options: dict[str, str] | None = None,
    ) -> ServerEntry:
        """A validated entry, with the spec's host default: the domain/realm given, else loopback."""
        info = vendor(type_)
        if host is None and info.server_class != "cloud":
            host = auth.get("domain") or auth.get("realm") or "127.0.0.1"
        entry = cls(type_, dict(auth), host, port, pool, dict(options or {}))
        entry.check()
        return entry

    @classmethod
    def from_dict(cls, name: str, raw: Any) -> ServerEntry:
        """Parse a stored entry; anything off is reported with the entry's name."""
        if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
            raise InvalidInput(f"entry {name!r}: expected an object with a string 'type'")
        auth = raw.get("auth") or {}
        options = raw.get("options") or {}
        if not isinstance(auth, dict) or not isinstance(options, dict):
            raise InvalidInput(f"entry {name!r}: 'auth' and 'options' must be objects")
        port = raw.get("port")
        if port is not None and (not isinstance(port, int) or isinstance(port, bool)):
            raise InvalidInput(f"entry {name!r}: 'port' must be a number")
        entry = cls(raw["type"], auth, raw.get("host"), port, raw.get("pool"), options)
        entry.check()
        return entry

    def check(self) -> None:
        vendor(self.type)
        for key, value in self.auth.items():
            check_key(key, "auth key")
            check_value(f"auth {key}", value)
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
            "options": self.effective_options,
        }
