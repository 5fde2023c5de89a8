"""`ifbus list sip [--json]`: the registry, credentials masked, breaker states when the bus's Redis is named.

A plain function rather than a click command body, because two callers print it: the click command
(producer/cli.py) and the click-free fast path a shell loop takes (producer/entry.py). One body, so
the two print the same bytes and exit the same way (tests/test_fast_path.py compares them).
"""

from __future__ import annotations

from typing import Any

from bus.errors import BusError
from producer.output import echo, emit


def list_servers(as_json: bool) -> None:
    """Print the registered servers as a table, or as one JSON object with `servers`."""
    from bus.registry import open_registry

    entries = open_registry().entries()
    views = [entry.public_view(name) for name, entry in entries.items()]
    health = _health(entries)
    for view in views:
        if view["name"] in health:
            view["health"] = health[view["name"]]
    if as_json:
        emit(True, {"ok": True, "servers": views}, "")
        return
    if not views:
        echo("No servers registered: add one with `ifbus add sip NAME --type TYPE --auth KEY=VALUE…`")
        return
    rows = [("NAME", "TYPE", "HOST", "HEALTH", "AUTH")] + [
        (v["name"], v["type"], _where(v), v.get("health", {}).get("state", "-"),
         " ".join(f"{k}={x}" for k, x in v["auth"].items()))
        for v in views
    ]  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        echo("  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)) + "  " + row[4])


def _health(entries: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Shared breaker states when IFBUS_REDIS_URL names the bus's Redis (only then is redis imported,
    so a plain `list` stays fast); '-' in the table means unknown."""
    from bus.paths import redis_url

    url = redis_url()
    if not url or not entries:
        return {}
    from bus.health import shared_views

    try:
        return shared_views(url, entries)
    except BusError as exc:
        echo(f"ifbus: health unknown ({exc.message})", err=True)
        return {}


def _where(view: dict[str, Any]) -> str:
    if view["host"] is None:
        return view["options"].get("base_url", "")
    return f"{view['host']}:{view['port']}" if view["port"] else view["host"]
