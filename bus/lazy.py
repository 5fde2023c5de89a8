"""Lazy public names for a package (PEP 562): `__getattr__ = lazy_exports(__name__, {name: module})`.

Why: `bus` and `producer` export names whose modules pull in pydantic or redis, while the CLI's light
commands (`--help`, `list`, completion) import those packages and must stay fast
(tests/test_import_weight.py). A name's module is imported the first time the name is asked for. This
module imports nothing but importlib (and re, which click loads anyway), so using it costs the light
commands nothing. `pattern` is the same idea for a module's regular expressions.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from typing import Any, cast


def lazy_exports(package: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package` that loads `homes[name]` (a module path) on first use."""

    def __getattr__(name: str) -> Any:
        if name in homes:
            return getattr(importlib.import_module(homes[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


class _Pattern:
    """Stands for `re.compile(source, flags)` and compiles it the first time it is used."""

    __slots__ = ("_compiled", "_flags", "_source")

    def __init__(self, source: str, flags: int) -> None:
        self._source, self._flags, self._compiled = source, flags, None

    def __getattr__(self, name: str) -> Any:
        if self._compiled is None:
            self._compiled = re.compile(self._source, self._flags)
        return getattr(self._compiled, name)


def pattern(source: str, flags: int = 0) -> re.Pattern[str]:
    """A module-level regular expression compiled on first use: compiling a module's patterns at import
    costs a command that never matches them (`ifbus --help` imports bus.sip.uri for SIP_PORT)."""
    return cast("re.Pattern[str]", _Pattern(source, flags))
