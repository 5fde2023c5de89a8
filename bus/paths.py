"""The few `IFBUS_*` values the light commands need (`list`, `add`, `remove`, `--help`), read without
pydantic-settings (~100 ms of start-up). `bus.settings.Settings` reads every other setting and takes
its defaults for these from here, so each variable is read by one piece of code.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

ENV_PREFIX = "IFBUS_"


def env(name: str) -> str | None:
    """`IFBUS_<NAME>`, with an empty value counting as unset."""
    return os.environ.get(ENV_PREFIX + name.upper()) or None


def home_dir() -> str:
    """Where the registry lives: `~/.if`, or `$IFBUS_HOME` for tests, containers and fleets. A string:
    `list` reads the registry through os.path, since importing pathlib costs it ~6 ms of start-up."""
    return env("home") or os.path.join(os.path.expanduser("~"), ".if")


def home() -> Path:
    """home_dir() as a Path, for the settings model."""
    from pathlib import Path

    return Path(home_dir())


def redis_url() -> str | None:
    """The bus's Redis when one is named (`IFBUS_REDIS_URL`); None means "find out"."""
    return env("redis_url")


def log_level(default: str) -> str:
    return env("log_level") or default
