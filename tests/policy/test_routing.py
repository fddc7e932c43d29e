"""Router: rotation, load, affinity and canary weights over a breaker per backend."""

from __future__ import annotations

from collections import Counter

import pytest

from inferplane.policy import Health, Router, RoutingMode


def router(n: int, mode: RoutingMode = RoutingMode.ROUND_ROBIN, **kwargs: float) -> Router:
    weights = kwargs.pop("weights", None)
    return Router(Health(n, **kwargs), mode, weights)  # type: ignore[arg-type]


def test_rotates_over_all_backends() -> None:
    r = router(3)
    assert [r.choose(now=0.0) for _ in range(6)] == [0, 1, 2, 0, 1, 2]


def test_a_refused_connection_ejects_at_once_then_one_probe_goes_through() -> None:
    r = router(3, base_ejection_s=5)
    r.health.failed(1, now=10.0, refused=True)
    assert 1 not in [r.choose(now=12.0) for _ in range(4)]
    # Ejection over: exactly one probe until its outcome is known.
    assert [r.choose(now=15.0) for _ in range(4)].count(1) == 1
    r.health.succeeded(1)
    assert [r.choose(now=15.0) for _ in range(3)].count(1) == 1  # back in the rotation


def test_errors_in_a_row_eject_and_a_failed_probe_ejects_longer() -> None:
    h = Health(2, consecutive_errors=3, base_ejection_s=10, max_ejection_s=25)
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
    for mode in RoutingMode:
        r = router(3, mode)
        assert {r.choose(0.0, frozenset({0, 2}), key=f"k{i}") for i in range(5)} == {1}
        assert r.choose(0.0, exclude=frozenset({0, 1, 2})) is None


def test_when_all_are_ejected_the_one_back_soonest_is_tried() -> None:
    r = router(3, base_ejection_s=5)
    for i, t in ((0, 3.0), (1, 1.0), (2, 2.0)):
        r.health.failed(i, now=t, refused=True)
    assert r.choose(now=4.0) == 1


def test_canary_weights_share_traffic_in_proportion() -> None:
    r = router(3, weights=[1.0, 1.0, 0.5])  # type: ignore[arg-type]
    shares = Counter(r.choose(now=0.0) for _ in range(500))
    assert shares == {0: 200, 1: 200, 2: 100}
    off = router(2, weights=[1.0, 0.0])  # type: ignore[arg-type]
    assert {off.choose(now=0.0) for _ in range(10)} == {0}


def test_least_loaded_avoids_the_busiest_replica() -> None:
    r = router(3, RoutingMode.LEAST_LOADED)
    r.sent(0, 10_000)
    r.sent(1, 100)
    picks = Counter(r.choose(0.0, key=f"req-{i}") for i in range(300))
    assert picks[0] < picks[1] and picks[0] < picks[2]


def test_prefix_affinity_keeps_a_prefix_on_one_replica_until_it_is_overloaded() -> None:
    r = router(4, RoutingMode.PREFIX_AFFINITY)
    home = r.choose(0.0, key="You are a support agent.", tokens=100)
    assert home is not None
    r.sent(home, 100)
    assert r.choose(0.0, key="You are a support agent.", tokens=100) == home
    r.sent(home, 50_000)  # a hot prefix: it spills to another replica
    assert r.choose(0.0, key="You are a support agent.", tokens=100) != home


def test_needs_a_backend_and_sane_weights() -> None:
    with pytest.raises(ValueError):
        router(0)
    with pytest.raises(ValueError):
        router(2, weights=[1.0, -1.0])  # type: ignore[arg-type]


def test_health_checks_eject_at_once_and_a_passing_one_brings_the_probe_forward() -> None:
    h = Health(2, base_ejection_s=30)
    h.checked(0, ok=False, now=0.0)
    assert not h.available(0, now=1.0)
    h.checked(0, ok=False, now=1.0)  # still down: the ejection is not prolonged per check
    h.checked(0, ok=True, now=2.0)
    assert h.available(0, now=2.0)  # its probe may go now, not at 30 s
    h.sent(0)
    assert not h.available(0, now=2.0)  # one probe at a time
