"""Where the registry lives: `~/.if`, or `$IFBUS_HOME` for tests, containers and fleets."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    return Path(os.environ.get("IFBUS_HOME") or Path.home() / ".if")
