"""The server registry: names to entries, behind one small interface.

Two backends, chosen by `IFBUS_REGISTRY` (open_registry):

- unset or `file`: `~/.if/sip_servers.json` (or `$IFBUS_HOME/…`), the default for one machine;
- `redis` (the bus's own `IFBUS_REDIS_URL`) or a Redis URL of its own: one registry for a fleet
  (bus.registry_redis), so every worker on every host serves the same names, `add`/`remove` on any
  host change it for all, and a worker sees a change at its next job without a restart.

Both hand out entries as their users need them: `env:NAME` credentials resolved in this process
(bus.credentials.at_use) and, in Redis, secrets unsealed (bus.vault). What cannot be resolved here
stays as stored, and is logged once per process (on the `ifbus.registry` logger, silent in the CLI).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from bus.errors import BusError, InvalidInput, NotFound, RegistryError
from bus.server import ServerEntry
from bus.validate import check_name

if TYPE_CHECKING:
    from pathlib import Path

_reported: set[tuple[str, str]] = set()

FILE_NAME = "sip_servers.json"
LOCK_NAME = FILE_NAME + ".lock"
MAX_FILE_BYTES = 16 * 1024 * 1024  # thousands of servers fit; a runaway file is refused, not parsed


class _Object(dict):
    """A JSON object that remembers keys given twice (json keeps the last one silently: a second
    `"token"` or a second entry of the same name would otherwise win without a word)."""

    def __init__(self, pairs: list[tuple[str, object]]) -> None:
        super().__init__(pairs)
        seen: set[str] = set()
        self.duplicates = [k for k, _ in pairs if k in seen or seen.add(k)]


def _no_duplicates(name: str, value: object) -> None:
    """Refuse a key given twice anywhere inside entry `name`, naming it (iterative: any depth)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _Object):
            if item.duplicates:
                raise InvalidInput(f"entry {name!r}: key {item.duplicates[0]!r} appears twice")
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


class Registry(Protocol):
    def get(self, name: str) -> ServerEntry: ...

    def entries(self) -> dict[str, ServerEntry]: ...

    def add(self, name: str, entry: ServerEntry, replace: bool = False) -> None: ...

    def remove(self, name: str) -> ServerEntry: ...


# path → ((inode, size, mtime_ns), parsed entries): FileRegistry._parsed's cache, per process.
_PARSED: dict[str, tuple[tuple[int, int, int], dict[str, ServerEntry]]] = {}


class ByName:
    """`get` through `entries`: one lookup rule (name checked, `Not found: NAME`) for every backend."""

    def entries(self) -> dict[str, ServerEntry]:
        raise NotImplementedError

    def get(self, name: str) -> ServerEntry:
        check_name(name)
        entries = self.entries()
        if name not in entries:
            raise NotFound(f"Not found: {name}")
        return entries[name]


class FileRegistry(ByName):
    """A JSON file in the spec's shape, `name → {"type", "auth", …}`.

    Writes go to a temp file in the same folder, are fsynced, then renamed over the old file, all
    under an exclusive flock on a side lock file: readers never see half a file, and two concurrent
    `add`s never lose an entry. A file that does not parse is reported and never rewritten.

    Paths are plain strings inside (os.path): pathlib costs `ifbus list sip` ~6 ms of start-up.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self._folder = os.fspath(folder)
        self._file = os.path.join(self._folder, FILE_NAME)

    @property
    def path(self) -> Path:
        """The registry file, as a Path for callers (built on demand)."""
        from pathlib import Path

        return Path(self._file)

    def entries(self) -> dict[str, ServerEntry]:
        return {name: for_use(name, entry) for name, entry in self._parsed().items()}

    def _parsed(self) -> dict[str, ServerEntry]:
        """The file's entries, parsed again only when the file changed. A worker reads the registry
        for every job; writes replace the file (a new inode), so (inode, size, mtime) tells a change."""
        try:
            stat = os.stat(self._file)
        except FileNotFoundError:
            return {}
        except OSError:
            return self._parse(self._read())  # _read reports why
        stamp = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        cached = _PARSED.get(self._file)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        parsed = self._parse(self._read())
        _PARSED[self._file] = (stamp, parsed)
        return parsed

    def add(self, name: str, entry: ServerEntry, replace: bool = False) -> None:
        check_name(name)
        entry.check_new()
        with self._locked():
            raw = self._read()
            self._parse(raw)  # an invalid entry anywhere means a corrupt file: never rewrite it
            if name in raw and not replace:
                raise InvalidInput(f"Server {name!r} already exists: use --replace to overwrite it")
            raw[name] = entry.to_dict()
            self._write(raw)

    def remove(self, name: str) -> ServerEntry:
        check_name(name)
        with self._locked():
            raw = self._read()
            entry = self._parse(raw).get(name)
            if entry is None:
                raise NotFound(f"Not found: {name}")
            del raw[name]
            self._write(raw)
            return entry

    def _parse(self, raw: dict) -> dict[str, ServerEntry]:
        parsed: dict[str, ServerEntry] = {}
        for name, value in raw.items():
            try:
                check_name(name)
                _no_duplicates(name, value)
                parsed[name] = ServerEntry.from_dict(name, value)
            except BusError as exc:
                raise RegistryError(
                    f"Registry {self._file} has an invalid entry ({exc.message}); it was left untouched"
                ) from None
        return parsed

    def _read(self) -> dict:
        try:
            with open(self._file, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise RegistryError(f"Cannot read registry {self._file}: {exc.strerror or exc}") from None
        if len(data) > MAX_FILE_BYTES:
            raise RegistryError(
                f"Registry {self._file} is {len(data)} bytes, more than {MAX_FILE_BYTES}: it was left untouched"
            )
        try:
            raw = json.loads(data.decode("utf-8"), object_pairs_hook=_Object) if data.strip() else {}
        except RecursionError:
            raise RegistryError(
                f"Registry {self._file} is corrupt (nested too deeply); it was left untouched: fix it or move it away"
            ) from None
        except (UnicodeDecodeError, ValueError) as exc:
            raise RegistryError(
                f"Registry {self._file} is corrupt ({exc}); it was left untouched: fix it or move it away"
            ) from None
        if not isinstance(raw, dict):
            raise RegistryError(f"Registry {self._file} is corrupt (expected a JSON object); it was left untouched")
        if isinstance(raw, _Object) and raw.duplicates:
            raise RegistryError(
                f"Registry {self._file} has an invalid entry (entry {raw.duplicates[0]!r} appears twice); "
                "it was left untouched"
            )
        return raw

    def _write(self, raw: dict) -> None:
        import tempfile  # here: `list` and the workers only read (tempfile pulls shutil, random, bz2, lzma)

        fd, tmp = tempfile.mkstemp(prefix=".sip_servers.", suffix=".tmp", dir=self._folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(raw, handle, indent=2, ensure_ascii=False)
                handle.write("\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self._file)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(exc, OSError):
                raise RegistryError(f"Cannot write registry {self._file}: {exc.strerror or exc}") from None
            raise
        dir_fd = os.open(self._folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock = os.path.join(self._folder, LOCK_NAME)
        try:
            os.makedirs(self._folder, mode=0o700, exist_ok=True)
            os.chmod(self._folder, 0o700)
            # O_NOFOLLOW: a symlink planted as the lock file would make us create or lock a file elsewhere.
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise RegistryError(f"Registry lock {lock} is a symbolic link: refused; remove it") from None
            raise RegistryError(f"Cannot write registry in {self._folder}: {exc.strerror or exc}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise RegistryError(f"Registry lock {lock} is not a regular file: refused; remove it")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _log() -> Any:
    """The `ifbus.registry` logger, set up on first use: logging costs `list` ~5 ms of start-up."""
    import logging

    log = logging.getLogger("ifbus.registry")
    if not log.handlers:
        log.addHandler(logging.NullHandler())  # the CLI stays quiet; a worker's configured root handler logs it
    return log


def for_use(name: str, entry: ServerEntry, sealed_keys: tuple[str, ...] = ()) -> ServerEntry:
    """`entry` as a worker uses it: `env:NAME` values from this process's environment; what stays
    unresolved (and, from Redis, what no key here unseals) is reported once per process and key."""
    from bus.credentials import ENV_PREFIX, at_use

    if not sealed_keys and not any(v.startswith(ENV_PREFIX) for v in entry.auth.values()):
        return entry
    auth, missing = at_use(entry.type, entry.auth)
    for key in [*missing, *sealed_keys]:
        if (name, key) not in _reported:
            _reported.add((name, key))
            why = "sealed, and no IFBUS_REGISTRY_KEY here opens it" if key in sealed_keys else (
                f"its variable ({entry.auth.get(key)}) is unset or not a valid value in this process")
            _log().warning("registry: server %s auth %s is unresolved: %s", name, key, why)
    return entry._replace(auth=auth)


def open_registry(folder: str | os.PathLike[str] | None = None) -> Registry:
    """The registry `IFBUS_REGISTRY` names: the file (default), `redis` (IFBUS_REDIS_URL) or a Redis URL."""
    from bus.paths import env, home_dir

    kind = env("registry")
    if kind is None or kind == "file":
        return FileRegistry(folder or home_dir())
    from bus.registry_redis import RedisRegistry, registry_url

    return RedisRegistry.shared(registry_url(kind))
