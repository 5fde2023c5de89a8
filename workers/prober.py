"""Brings open servers back without waiting for traffic, as Kamailio's dispatcher pings its
inactive destinations: each worker process probes the open servers of the types it serves with the
`test` operation every `interval` seconds. A Redis lock per server and period means one probe per
server per period, however many workers run.
"""

from __future__ import annotations

import threading
from typing import Any

from bus import keys
from bus.errors import BusError
from bus.health import OPEN, RedisHealth
from bus.logging import get_logger
from bus.registry import open_registry
from workers.pool import POOL

log = get_logger("ifbus.prober")


class Prober(threading.Thread):
    def __init__(self, redis: Any, types: list[str], interval: float) -> None:
        super().__init__(name="ifbus-prober", daemon=True)
        self.redis = redis
        self.types = set(types)
        self.interval = interval
        self.health = RedisHealth(redis)
        self._stopped = threading.Event()

    def stop(self) -> None:
        self._stopped.set()

    def run(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                self.probe_once()
            except Exception as exc:  # the prober must outlive a registry or Redis hiccup
                log.warning("probe.error", error=str(exc))

    def probe_once(self) -> dict[str, str]:
        """Probe each open server this process may claim; returns server → new state."""
        outcome: dict[str, str] = {}
        entries = {n: e for n, e in open_registry().entries().items() if e.type in self.types}
        states = self.health.get_many(list(entries))
        for name, entry in entries.items():
            if states[name].state != OPEN:
                continue
            if not self.redis.set(keys.probe(name), "1", nx=True, px=max(1, int(self.interval * 1000))):
                continue
            adapter = POOL.get(name, entry)  # the worker's own session: a probe pays no extra login
            try:
                adapter.test()
            except BusError as exc:
                options = entry.effective_options
                self.health.failure(name, "probe: " + exc.message, int(options["breaker_threshold"]),
                                    float(options["breaker_cooldown"]), force_open=True)  # fmt: skip
                outcome[name] = OPEN
                log.info("probe.failed", server=name, error=exc.message)
            else:
                self.health.success(name)
                outcome[name] = "closed"
                log.info("probe.recovered", server=name)
        return outcome
