"""The registry in Redis, for a fleet: one hash every worker on every host reads.

`IFBUS_REGISTRY=redis` uses the bus's Redis (`IFBUS_REDIS_URL`); `IFBUS_REGISTRY=<url>` another one
(any URL bus.redis_conn accepts, Sentinel included). Keys (bus.keys):

- `ifbus:registry` (hash): server name → the entry's JSON, in the file's shape, with every secret
  value sealed (`enc:…`, bus.vault) and `env:NAME` references as given;
- `ifbus:registry:version` (string): incremented by every `add`/`remove`, in the same transaction.

Why a version: a worker resolves the registry at every job (workers.jobs), so a change reaches it at
its next job without a restart; a GET of the version is one small round trip, and the hash is read
and parsed again only when the version moved. Neither key expires: the registry is configuration.

`add` without `--replace` is HSETNX, so two hosts adding the same name at once cannot overwrite each
other; an entry that does not parse (someone wrote the hash by hand) is reported by name and never
rewritten, as the file backend does.
"""

from __future__ import annotations

import json
import threading
from typing import Any, ClassVar

from bus import keys
from bus.errors import BusError, InvalidInput, NotFound, RegistryError
from bus.registry import ByName, _no_duplicates, _Object, for_use
from bus.server import ServerEntry
from bus.validate import check_name
from bus.vendors import is_secret

UNOPENED = "sealed-value-no-key-here"
MAX_ENTRY_BYTES = 256 * 1024  # a key-file entry is ~10 kB sealed; a runaway value is refused, not parsed


def registry_url(kind: str) -> str:
    """The Redis URL `IFBUS_REGISTRY` names: `redis` means the bus's own."""
    from bus.paths import redis_url
    from bus.redis_conn import SENTINEL_SCHEMES

    if kind == "redis":
        from bus.settings import DEFAULT_REDIS_URL

        return redis_url() or DEFAULT_REDIS_URL
    scheme = kind.split("://", 1)[0] if "://" in kind else ""
    if kind.startswith("@") or scheme in ("redis", "rediss", "unix", *SENTINEL_SCHEMES):
        return kind
    raise InvalidInput(
        f"IFBUS_REGISTRY={kind[:60]!r}: expected `file` (the default), `redis` (the registry in IFBUS_REDIS_URL) "
        "or a Redis URL (redis://, rediss://, redis+sentinel://)"
    )


class RedisRegistry(ByName):
    _shared: ClassVar[dict[str, RedisRegistry]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, url: str, redis: Any = None) -> None:
        self.url = url
        self._redis = redis
        self._cache: tuple[bytes | None, dict[str, ServerEntry]] | None = None
        self._cache_lock = threading.Lock()

    @classmethod
    def shared(cls, url: str) -> RedisRegistry:
        """One registry (one connection pool, one cache) per URL per process: jobs ask at every run."""
        with cls._lock:
            if url not in cls._shared:
                cls._shared[url] = cls(url)
            return cls._shared[url]

    @property
    def redis(self) -> Any:
        if self._redis is None:
            from bus.redis_conn import connect

            self._redis = connect(self.url, "the server registry is there (IFBUS_REGISTRY)")
        return self._redis

    def entries(self) -> dict[str, ServerEntry]:
        version = self._call(lambda r: r.get(keys.REGISTRY_VERSION))
        with self._cache_lock:
            if self._cache is not None and self._cache[0] == version and version is not None:
                return dict(self._cache[1])

        def snapshot(r: Any) -> list[Any]:
            pipe = r.pipeline(transaction=True)  # the version and the hash as of one moment
            pipe.get(keys.REGISTRY_VERSION)
            pipe.hgetall(keys.REGISTRY)
            return pipe.execute()

        version, raw = self._call(snapshot)
        entries = {}
        for name_bytes, value in sorted(raw.items()):
            name = name_bytes.decode("utf-8", "replace")
            entries[name] = self._parse(name, value)
        with self._cache_lock:
            self._cache = (version, entries)
        return dict(entries)

    def add(self, name: str, entry: ServerEntry, replace: bool = False) -> None:
        check_name(name)
        entry.check_new()
        stored = json.dumps(_sealed(entry), ensure_ascii=False)

        def write(r: Any) -> list[Any]:
            pipe = r.pipeline(transaction=True)
            (pipe.hset if replace else pipe.hsetnx)(keys.REGISTRY, name, stored)
            pipe.incr(keys.REGISTRY_VERSION)
            return pipe.execute()

        if not replace and self._call(lambda r: r.hexists(keys.REGISTRY, name)):
            raise InvalidInput(f"Server {name!r} already exists: use --replace to overwrite it")
        written, _ = self._call(write)
        if not replace and not written:  # another host added it between the two round trips
            raise InvalidInput(f"Server {name!r} already exists: use --replace to overwrite it")

    def remove(self, name: str) -> ServerEntry:
        check_name(name)

        def take(r: Any) -> list[Any]:
            pipe = r.pipeline(transaction=True)
            pipe.hget(keys.REGISTRY, name)
            pipe.hdel(keys.REGISTRY, name)
            pipe.incr(keys.REGISTRY_VERSION)
            return pipe.execute()

        value, removed, _ = self._call(take)
        if not removed:
            raise NotFound(f"Not found: {name}")
        try:
            return self._parse(name, value)
        except RegistryError:  # it is gone either way; say what it was if we can
            return ServerEntry(type="?")

    def _parse(self, name: str, value: bytes) -> ServerEntry:
        where = f"Registry {self._shown()}"
        if len(value) > MAX_ENTRY_BYTES:
            raise RegistryError(f"{where}: entry {name!r} is {len(value)} bytes, more than {MAX_ENTRY_BYTES}; "
                                "it was left untouched")  # fmt: skip
        still: list[str] = []
        try:
            check_name(name)
            raw = json.loads(value.decode("utf-8"), object_pairs_hook=_Object)
            _no_duplicates(name, raw)
            if not isinstance(raw, dict):
                raise InvalidInput(f"entry {name!r}: expected an object")
            raw = dict(raw)
            for field in ("auth", "options"):
                if isinstance(raw.get(field), dict):
                    opened, closed = _unsealed(raw[field])
                    # a value no key here opens is checked and handed on as a placeholder: the server
                    # refuses it as a wrong credential, and for_use says why in the worker's log
                    raw[field] = {**raw[field], **opened, **dict.fromkeys(closed, UNOPENED)}
                    still += closed
            entry = ServerEntry.from_dict(name, raw)
        except (RecursionError, UnicodeDecodeError, ValueError) as exc:
            raise RegistryError(f"{where}: entry {name!r} is corrupt ({type(exc).__name__}); "
                                "it was left untouched") from None  # fmt: skip
        except BusError as exc:
            raise RegistryError(f"{where} has an invalid entry ({exc.message}); it was left untouched") from None
        return for_use(name, entry, tuple(still))

    def _call(self, fn: Any) -> Any:
        from redis.exceptions import RedisError

        from bus.errors import Unreachable

        try:
            return fn(self.redis)
        except (RedisError, OSError) as exc:
            raise Unreachable(f"Redis registry at {self._shown()} failed: {exc}") from None

    def _shown(self) -> str:
        from bus.redis_conn import safe_url

        return safe_url(self.url)


def _sealed(entry: ServerEntry) -> dict[str, Any]:
    """The entry as stored: secret auth values and secret-named options sealed (bus.vault)."""
    from bus.credentials import env_name
    from bus.vault import seal

    data = entry.to_dict()
    for field in ("auth", "options"):
        data[field] = {
            k: seal(v, f"--{'auth' if field == 'auth' else 'opt'} {k}") if is_secret(entry.type, k) and not env_name(v)
            else v
            for k, v in data[field].items()
        }  # fmt: skip
    return data


def _unsealed(auth: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """Sealed auth values opened with this host's key, and the keys no key here opens."""
    from bus.vault import sealed, unseal

    opened: dict[str, str] = {}
    still: list[str] = []
    for key, value in auth.items():
        if isinstance(value, str) and sealed(value):
            clear = unseal(value)
            if clear is None:
                still.append(key)
            else:
                opened[key] = clear
    return opened, still
