"""Retry waits: attempt n waits min(cap, base·2ⁿ) with full jitter; a server's Retry-After wins.

Full jitter (a uniform draw in [0, ceiling]) spreads the retries of many workers hitting the same
recovering server; `Retry-After` is the server telling us when, so it replaces the draw, capped.
"""

from __future__ import annotations

import random

BASE_SECONDS = 0.002
CAP_SECONDS = 5.0


def ceiling(attempt: int) -> float:
    """The largest wait before retry number `attempt` (0-based)."""
    return min(CAP_SECONDS, BASE_SECONDS * (2 ** min(attempt, 32)))


def delay(attempt: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
    if retry_after is not None and retry_after >= 0:
        return min(CAP_SECONDS, retry_after)
    return (rng or random).uniform(0.0, ceiling(attempt))
