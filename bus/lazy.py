"""Lazy public names for a package (PEP 562): `__getattr__ = lazy_exports(__name__, {name: module})`.

Why: `bus` and `producer` export names whose modules pull in pydantic or redis, while the CLI's light
commands (`--help`, `list`, completion) import those packages and must stay fast
(tests/test_import_weight.py). A name's module is imported the first time the name is asked for. This
module imports nothing but importlib, so using it costs the light commands nothing.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package` that loads `homes[name]` (a module path) on first use."""

    def __getattr__(name: str) -> Any:
        if name in homes:
            return getattr(importlib.import_module(homes[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
