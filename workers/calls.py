"""`ifbus calls sip NAME`: the calls the bus placed on a server, checked with the server itself.

The ledger says which calls the bus placed (bus.ledger.recent_calls: its CallRefs); only the server
knows which of them are still up, so each adapter answers through `Adapter.active_calls` (Kamailio:
`dlg.list`; a vendor without it answers "cannot tell"). This runs in the CLI's process, like embedded
mode: a read-only question, so it needs no queue and no worker.
"""

from __future__ import annotations

from typing import Any

from bus.calls import CallRef
from bus.errors import BusError
from bus.server import ServerEntry


def carried(name: str, entry: ServerEntry, placed: list[tuple[CallRef, float]]) -> list[dict[str, Any]]:
    """One row per call the bus placed on `name`: the CallRef, when it was placed, and `active`
    (True/False, None = the server cannot tell). Raises the adapter's BusError when the server
    cannot be asked, with the unchecked rows in its details."""
    rows = [{**ref.to_json(), "active": None, "placed_at": at} for ref, at in placed]
    if not rows:
        return rows
    from workers.adapters import adapter_class

    adapter = adapter_class(entry.type)(name, entry)
    try:
        checked = adapter.active_calls([ref for ref, _ in placed])
    except BusError as exc:
        exc.details.setdefault("calls", rows)
        raise
    finally:
        adapter.close()
    return [{**row, "placed_at": at} for row, (_, at) in zip(checked, placed, strict=True)]
