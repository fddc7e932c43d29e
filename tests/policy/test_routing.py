"""RoundRobin: rotation, cooldown after a failure, and the all-down fallback."""

from __future__ import annotations

import pytest

from inferplane.policy import RoundRobin


def test_rotates_over_all_backends() -> None:
    rr = RoundRobin(3, cooldown_s=5)
    assert [rr.choose(now=0.0) for _ in range(6)] == [0, 1, 2, 0, 1, 2]


def test_failed_backend_is_skipped_until_its_cooldown_ends() -> None:
    rr = RoundRobin(3, cooldown_s=5)
    rr.record_failure(1, now=10.0)
    assert [rr.choose(now=12.0) for _ in range(4)] == [0, 2, 0, 2]
    assert not rr.is_up(1, now=14.9)
    assert rr.is_up(1, now=15.0)
    assert 1 in {rr.choose(now=15.0) for _ in range(3)}


def test_success_ends_a_cooldown_early() -> None:
    rr = RoundRobin(2, cooldown_s=5)
    rr.record_failure(0, now=0.0)
    rr.record_success(0)
    assert rr.is_up(0, now=0.1)


def test_excluded_backends_are_never_chosen() -> None:
    rr = RoundRobin(3, cooldown_s=5)
    assert {rr.choose(0.0, exclude=frozenset({0, 2})) for _ in range(5)} == {1}
    assert rr.choose(0.0, exclude=frozenset({0, 1, 2})) is None


def test_when_all_are_cooling_down_the_one_back_soonest_is_tried() -> None:
    rr = RoundRobin(3, cooldown_s=5)
    rr.record_failure(0, now=3.0)
    rr.record_failure(1, now=1.0)
    rr.record_failure(2, now=2.0)
    assert rr.choose(now=4.0) == 1


def test_needs_a_backend() -> None:
    with pytest.raises(ValueError):
        RoundRobin(0, cooldown_s=1)
