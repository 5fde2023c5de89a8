"""Which server a job tries next: round-robin over its pool, skipping open breakers.

The order for a job naming X is X, then the other servers of X's pool in registry order after X,
wrapping around. The choice is made when a worker picks the job up (not when it was enqueued), so
health changes made meanwhile by other workers count.
"""

from __future__ import annotations

from bus.health import OPEN, HealthStore, effective
from bus.server import ServerEntry


def pool_order(entries: dict[str, ServerEntry], named: str) -> list[str]:
    pool = entries[named].pool_name
    members = [name for name, entry in entries.items() if entry.pool_name == pool]
    start = members.index(named)
    return members[start:] + members[:start]


def next_server(entries: dict[str, ServerEntry], named: str, tried: list[str], health: HealthStore) -> str | None:
    """The first untried server of the pool whose breaker lets a job through; None when none is left.

    When nothing has been tried yet and every server is open, the named one is tried anyway: a
    request should fail by trying, not by bookkeeping.
    """
    order = pool_order(entries, named)
    for name in order:
        if name in tried:
            continue
        if health.allow(name, float(entries[name].effective_options["breaker_cooldown"])):
            return name
    return named if not tried else None


def candidates_left(entries: dict[str, ServerEntry], named: str, tried: list[str], health: HealthStore) -> bool:
    """Whether an untried server of the pool may take the job: a peek that, unlike `next_server`,
    never takes a half-open trial (the worker that picks the re-queued job takes it)."""
    for name in pool_order(entries, named):
        if name in tried:
            continue
        cooldown = float(entries[name].effective_options["breaker_cooldown"])
        if effective(health.get(name), cooldown) != OPEN:
            return True
    return False
