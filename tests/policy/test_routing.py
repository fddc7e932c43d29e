"""RoundRobin over a circuit breaker per backend: rotation, ejection, probes, fallback."""

from __future__ import annotations

import pytest

from inferplane.policy import Health, RoundRobin


def rr(n: int, **kwargs: float) -> RoundRobin:
    return RoundRobin(n, Health(n, **kwargs))  # type: ignore[arg-type]


def test_rotates_over_all_backends() -> None:
    r = rr(3)
    assert [r.choose(now=0.0) for _ in range(6)] == [0, 1, 2, 0, 1, 2]


def test_a_refused_connection_ejects_at_once_then_one_probe_goes_through() -> None:
    r = rr(3, base_ejection_s=5)
    r.health.failed(1, now=10.0, refused=True)
    assert [r.choose(now=12.0) for _ in range(4)] == [0, 2, 0, 2]
    # Ejection over: exactly one probe until its outcome is known.
    assert [r.choose(now=15.0) for _ in range(4)].count(1) == 1
    r.health.succeeded(1)
    assert [r.choose(now=15.0) for _ in range(3)].count(1) == 1  # back in the rotation


def test_errors_in_a_row_eject_and_a_failed_probe_ejects_longer() -> None:
    r = rr(2, consecutive_errors=3, base_ejection_s=10, max_ejection_s=25)
    h = r.health
    for _ in range(2):
        h.failed(0, now=0.0)
    assert h.available(0, now=0.0)  # two errors: still in
    h.succeeded(0)
    for _ in range(3):
        h.failed(0, now=0.0)
    assert not h.available(0, now=9.9) and h.available(0, now=10.0)
    h.sent(0)
    h.failed(0, now=10.0)  # the probe failed: 2 x 10 s
    assert not h.available(0, now=29.9) and h.available(0, now=30.0)
    h.sent(0)
    h.failed(0, now=30.0)  # 3 x 10 s, capped at 25 s
    assert not h.available(0, now=54.9) and h.available(0, now=55.0)


def test_excluded_backends_are_never_chosen() -> None:
    r = rr(3)
    assert {r.choose(0.0, exclude=frozenset({0, 2})) for _ in range(5)} == {1}
    assert r.choose(0.0, exclude=frozenset({0, 1, 2})) is None


def test_when_all_are_ejected_the_one_back_soonest_is_tried() -> None:
    r = rr(3, base_ejection_s=5)
    for i, t in ((0, 3.0), (1, 1.0), (2, 2.0)):
        r.health.failed(i, now=t, refused=True)
    assert r.choose(now=4.0) == 1


def test_needs_a_backend() -> None:
    with pytest.raises(ValueError):
        rr(0)
