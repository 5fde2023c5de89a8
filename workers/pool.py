"""One adapter (and so one session) per server per worker process, reused by every job.

A session is what costs: an AMI or ESL login, a TLS handshake, an SSL context (~25 ms). The pool
keeps one per server, replaces it when the server's registry entry changes, and closes them all when
the worker stops (SIGTERM included), so servers see a clean logoff rather than a dropped socket.
The prober borrows from the same pool instead of logging in again for every probe.
"""

from __future__ import annotations

import threading

from bus.logging import get_logger
from bus.server import ServerEntry
from workers.adapters import adapter_class
from workers.adapters.base import Adapter

log = get_logger("ifbus.pool")


class AdapterPool:
    def __init__(self) -> None:
        self._adapters: dict[str, tuple[ServerEntry, Adapter]] = {}
        self._lock = threading.Lock()  # the prober thread and the job share it

    def get(self, name: str, entry: ServerEntry) -> Adapter:
        with self._lock:
            cached = self._adapters.get(name)
            if cached is not None and cached[0] == entry:
                return cached[1]
            adapter = adapter_class(entry.type)(name, entry)
            self._adapters[name] = (entry, adapter)
        if cached is not None:
            _close(name, cached[1])  # the entry changed (new credentials, host…): log in afresh
        return adapter

    def install(self, name: str, entry: ServerEntry, adapter: Adapter) -> None:
        """Serve `name` with a given adapter (workers.testing's ScriptedAdapter, in users' tests)."""
        with self._lock:
            cached = self._adapters.get(name)
            self._adapters[name] = (entry, adapter)
        if cached is not None and cached[1] is not adapter:
            _close(name, cached[1])

    def discard(self, name: str) -> None:
        """Drop a server's adapter, e.g. after its session proved unusable."""
        with self._lock:
            cached = self._adapters.pop(name, None)
        if cached is not None:
            _close(name, cached[1])

    def close_all(self) -> None:
        with self._lock:
            adapters, self._adapters = self._adapters, {}
        for name, (_, adapter) in adapters.items():
            _close(name, adapter)

    def __len__(self) -> int:
        return len(self._adapters)


def _close(name: str, adapter: Adapter) -> None:
    try:
        adapter.close()
    except Exception as exc:  # closing is best effort: the socket goes away with the process anyway
        log.warning("pool.close_failed", server=name, error=str(exc))


POOL = AdapterPool()
