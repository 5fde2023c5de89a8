"""Retry waits: min(5 s, 2 ms·2ⁿ) with full jitter; a server's Retry-After wins, capped."""

from __future__ import annotations

import random

import pytest

from bus.backoff import CAP_SECONDS, ceiling, delay


@pytest.mark.parametrize(("attempt", "expected"), [(0, 0.002), (1, 0.004), (5, 0.064), (11, 4.096), (12, 5.0)])
def test_ceiling_doubles_from_2_ms_and_caps_at_5_s(attempt: int, expected: float) -> None:
    assert ceiling(attempt) == pytest.approx(expected)


def test_full_jitter_stays_within_the_ceiling_and_spreads() -> None:
    rng = random.Random(7)
    draws = [delay(6, rng=rng) for _ in range(2000)]
    assert all(0 <= d <= ceiling(6) for d in draws)
    assert min(draws) < ceiling(6) * 0.1 and max(draws) > ceiling(6) * 0.9  # spread over the range


def test_retry_after_wins_and_is_capped() -> None:
    assert delay(0, retry_after=1.5) == 1.5
    assert delay(0, retry_after=120) == CAP_SECONDS
    assert ceiling(10_000) == CAP_SECONDS  # huge attempt numbers do not overflow
