"""`ifbus --help` without importing click: the text click rendered last time, kept in the user's cache.

Importing click alone costs ~4x a bare Python start (bench/startup.py prints that row), more than
issue 16 allows the whole `--help`. The help text is a function of its inputs, so it is rendered by
click once and then read back while none of them changed. The key holds every input:

- producer/cli.py's bytes (CRC-32): every word of the top-level help is written there, and a new
  release of the package changes it when it changes the help at all;
- click's own files (size and mtime of its `__init__.py`: an upgrade rewrites them) and Python's version;
- the program name (`ifbus` or `if bus`, in the usage line);
- what click's width comes from (shutil.get_terminal_size: COLUMNS, LINES, the terminal of stdout)
  and the locale variables gettext would read.

Files live in `$XDG_CACHE_HOME/ifbus` (else `~/.cache/ifbus`), one per key, the key on the first
line; a write drops the files of other builds. A cache that cannot be read or written is no error:
click renders the help as it would without one.
"""

from __future__ import annotations

import os
import sys
import zlib

LOCALE = ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG")
SOURCE = os.path.join(os.path.dirname(__file__), "cli.py")  # where every word of the top-level help is written
_pending: tuple[str, str] | None = None  # (path, key) to write when click renders the help this time


def lookup(prog: str) -> str | None:
    """The cached top-level help for `prog`, or None; on a miss, click's rendering is kept (`remember`)."""
    global _pending
    _pending = None
    try:
        build, key = _key(prog)
    except (OSError, ValueError):  # cli.py unreadable, click not found: nothing to key on, no cache
        return None
    path = os.path.join(folder(), f"help-{build}-{zlib.crc32(key.encode()):08x}.txt")
    try:
        with open(path, encoding="utf-8") as handle:
            stored_key, _, text = handle.read().partition("\n")
    except (OSError, ValueError):  # no cache yet, unreadable, not UTF-8
        stored_key = None
    if stored_key == key:  # not just the CRC in the name
        return text
    _pending = (path, key)
    return None


def remember(text: str) -> None:
    """Keep the help click just rendered, when `lookup` missed in this process; never fails."""
    global _pending
    if _pending is None:
        return
    path, key = _pending
    _pending = None
    try:
        where = os.path.dirname(path)
        os.makedirs(where, mode=0o700, exist_ok=True)
        build = os.path.basename(path).split("-")[1]
        for name in os.listdir(where):  # other builds' help is stale for good
            if name.startswith("help-") and not name.startswith(f"help-{build}-"):
                os.unlink(os.path.join(where, name))
        partial = f"{path}.{os.getpid()}.tmp"
        with open(partial, "w", encoding="utf-8") as handle:
            handle.write(f"{key}\n{text}")
        os.replace(partial, path)
    except OSError:
        pass


def folder() -> str:
    """`$XDG_CACHE_HOME/ifbus`, or `~/.cache/ifbus` (the XDG base directory rule: a relative value is ignored)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ifbus")


def _key(prog: str) -> tuple[str, str]:
    """(build, key): build names the code that renders (this CLI, click, Python), key every input."""
    import importlib.util

    with open(SOURCE, "rb") as handle:
        source = handle.read()
    spec = importlib.util.find_spec("click")
    if spec is None or spec.origin is None:
        raise ValueError("click is not installed")
    click_file = os.stat(spec.origin)
    code = f"{zlib.crc32(source):08x}|{click_file.st_size}|{click_file.st_mtime_ns}|{sys.hexversion:x}"
    try:
        size = os.get_terminal_size(sys.__stdout__.fileno())
        terminal = f"{size.columns}x{size.lines}"
    except (AttributeError, ValueError, OSError):
        terminal = "-"
    env = "|".join(f"{name}={os.environ.get(name, '')}" for name in ("COLUMNS", "LINES", *LOCALE))
    return f"{zlib.crc32(code.encode()):08x}", f"{prog}|{code}|{terminal}|{env}"
