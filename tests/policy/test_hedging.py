"""LatencyTracker: nearest-rank quantiles over a bounded window, and the hedge delay."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inferplane.policy import LatencyTracker


def test_no_delay_until_enough_is_observed() -> None:
    t = LatencyTracker(min_samples=5)
    for _ in range(4):
        t.observe(0.1)
    assert t.hedge_delay() is None and t.quantile(0.5) == 0.1
    t.observe(0.1)
    assert t.hedge_delay() == 0.1


def test_the_delay_is_the_p95_by_nearest_rank() -> None:
    t = LatencyTracker(min_samples=1, min_delay_s=0.0)
    for ms in range(1, 101):  # 1..100 ms, in any order
        t.observe(((ms * 37) % 100 + 1) / 1000)
    assert t.hedge_delay() == 0.095
    assert t.quantile(0.5) == 0.05 and t.quantile(1.0) == 0.1 and t.quantile(0.0) == 0.001


def test_the_delay_is_floored_and_capped() -> None:
    fast = LatencyTracker(min_samples=1, min_delay_s=0.02, max_delay_s=1.0)
    fast.observe(0.001)
    assert fast.hedge_delay() == 0.02
    slow = LatencyTracker(min_samples=1, min_delay_s=0.02, max_delay_s=1.0)
    slow.observe(30.0)
    assert slow.hedge_delay() == 1.0


def test_the_window_forgets_the_oldest() -> None:
    t = LatencyTracker(window=10, min_samples=1, min_delay_s=0.0)
    for _ in range(10):
        t.observe(5.0)
    for _ in range(10):
        t.observe(0.2)
    assert len(t) == 10 and t.hedge_delay() == 0.2


def test_nonsense_times_are_ignored_and_bad_settings_refused() -> None:
    t = LatencyTracker(min_samples=1)
    for bad in (-1.0, math.nan, math.inf):
        t.observe(bad)
    assert len(t) == 0 and t.quantile(0.5) is None
    with pytest.raises(ValueError):
        LatencyTracker(window=10, min_samples=11)
    with pytest.raises(ValueError):
        LatencyTracker(min_delay_s=2.0, max_delay_s=1.0)
    with pytest.raises(ValueError):
        LatencyTracker(quantile=0.0)


@given(st.lists(st.floats(0, 100), min_size=1, max_size=300), st.integers(1, 64))
def test_quantiles_match_a_sorted_copy_of_the_window(values: list[float], window: int) -> None:
    t = LatencyTracker(window=window, min_samples=1)
    for v in values:
        t.observe(v)
    recent = sorted(values[-window:])
    for q in (0.05, 0.5, 0.95, 1.0):
        assert t.quantile(q) == recent[max(1, math.ceil(q * len(recent))) - 1]
