"""Autoscaler: HPA-style recommendations and stabilisation, on a fake clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferplane.policy._autoscale import (
    AutoscaleConfig,
    Autoscaler,
    ScaleDecision,
    ScaleSignals,
)

# 32 requests per replica, HPA defaults otherwise: 15 s evaluations, 300 s down window.
CONFIG = AutoscaleConfig(min_replicas=1, max_replicas=16, target_in_flight_per_replica=32)


def signals(
    ready: int,
    load: int = 0,
    starting: int = 0,
    *,
    ttft_p95_s: float | None = None,
    ttft_p99_s: float | None = None,
    busy_fraction: float | None = None,
) -> ScaleSignals:
    """A snapshot with ``load`` requests, half queued and half in flight."""
    return ScaleSignals(
        num_ready=ready,
        num_starting=starting,
        queue_depth=load - load // 2,
        num_in_flight=load // 2,
        ttft_p95_s=ttft_p95_s,
        ttft_p99_s=ttft_p99_s,
        busy_fraction=busy_fraction,
    )


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def tick(self, seconds: float = 15.0) -> float:
        self.now += seconds
        return self.now


def test_queue_growth_scales_up_at_once() -> None:
    scaler = Autoscaler(CONFIG)
    assert scaler.decide(signals(2, load=64), 0.0) == ScaleDecision(2, "steady")
    # 164 requests at 32 each: 6 replicas, without waiting for any window.
    assert scaler.decide(signals(2, load=164), 15.0) == ScaleDecision(6, "load")


def test_starting_replicas_count_as_capacity_so_a_spike_scales_up_once() -> None:
    scaler, clock = Autoscaler(CONFIG), Clock()
    assert scaler.decide(signals(2, load=164), clock.now).target == 6
    # The four new replicas take a minute to start; the backlog even grows meanwhile.
    for load in (170, 180, 185, 190):
        decision = scaler.decide(signals(2, load=load, starting=4), clock.tick())
        assert decision == ScaleDecision(6, "steady")
    # Counting only ready replicas would have asked again: 190 / 32 -> 6 over 2 ready.


def test_one_decision_adds_at_most_four_or_doubles() -> None:
    scaler = Autoscaler(CONFIG)
    assert scaler.decide(signals(1, load=1000), 0.0) == ScaleDecision(5, "step_limit")
    assert scaler.decide(signals(1, load=1000, starting=4), 15.0) == ScaleDecision(10, "step_limit")
    assert scaler.decide(signals(1, load=1000, starting=9), 30.0) == ScaleDecision(
        16, "max_replicas"
    )


def test_respects_min_and_max_replicas() -> None:
    scaler = Autoscaler(AutoscaleConfig(min_replicas=2, max_replicas=3))
    assert scaler.decide(signals(0), 0.0) == ScaleDecision(2, "min_replicas")
    assert scaler.decide(signals(3, load=10_000), 15.0) == ScaleDecision(3, "max_replicas")


def test_scale_from_zero_on_the_first_request() -> None:
    scaler = Autoscaler(AutoscaleConfig(min_replicas=0))
    assert scaler.decide(signals(0), 0.0) == ScaleDecision(0, "steady")
    assert scaler.decide(signals(0, load=1), 15.0) == ScaleDecision(1, "load")


def test_load_within_tolerance_changes_nothing() -> None:
    scaler = Autoscaler(CONFIG)
    # 4 replicas x 32 = 128; 135 is 5.5% over, 120 is 6.3% under: inside HPA's 10%.
    for i, load in enumerate([135, 120, 140, 116]):
        assert scaler.decide(signals(4, load=load), 15.0 * i) == ScaleDecision(4, "steady")
    assert scaler.decide(signals(4, load=150), 60.0) == ScaleDecision(5, "load")


def test_a_dip_shorter_than_the_window_does_not_scale_down() -> None:
    scaler, clock = Autoscaler(CONFIG), Clock()
    scaler.decide(signals(8, load=256), clock.now)
    for _ in range(4):  # a minute of low load
        assert scaler.decide(signals(8, load=40), clock.tick()) == ScaleDecision(8, "stabilising")
    for _ in range(4):  # the load comes back: nothing to undo
        assert scaler.decide(signals(8, load=256), clock.tick()).target == 8


def test_scale_down_waits_for_the_window_then_follows_the_highest_recommendation() -> None:
    scaler, clock = Autoscaler(CONFIG), Clock()
    scaler.decide(signals(8, load=256), clock.now)  # t=0: 8 wanted
    clock.tick()
    scaler.decide(signals(8, load=150), clock.now)  # t=15: 5 wanted
    targets = []
    while clock.now < 330:
        targets.append((clock.tick(), scaler.decide(signals(8, load=40), clock.now).target))
    # 2 wanted from t=30; the 8 of t=0 holds until t=300, the 5 of t=15 until t=315.
    assert [t for t, n in targets if n == 8][-1] == 285.0
    assert dict(targets)[300.0] == 5
    assert dict(targets)[315.0] == 2


def test_the_first_evaluation_holds_the_current_size_for_a_whole_down_window() -> None:
    # As HPA, the history starts with the pool's size: an idle pool that just started
    # shrinks once scale_down_window_s (300 s) has passed, not at its first evaluation.
    scaler, clock = Autoscaler(CONFIG), Clock()
    assert scaler.decide(signals(4), clock.now) == ScaleDecision(4, "stabilising")
    targets = {clock.tick(): scaler.decide(signals(4), clock.now).target for _ in range(21)}
    assert {n for t, n in targets.items() if t < 300} == {4}
    assert targets[300.0] == 1
    # Growing is not held back: the up window is 0 s.
    assert Autoscaler(CONFIG).decide(signals(2, load=128), 0.0) == ScaleDecision(4, "load")
    # No window: as before, the first evaluation may shrink at once.
    at_once = AutoscaleConfig(max_replicas=16, scale_down_window_s=0)
    assert Autoscaler(at_once).decide(signals(4), 0.0) == ScaleDecision(1, "min_replicas")


def test_max_step_down_limits_each_decision() -> None:
    config = AutoscaleConfig(max_replicas=16, max_step_down=2, scale_down_window_s=0)
    scaler = Autoscaler(config)
    assert scaler.decide(signals(8), 0.0) == ScaleDecision(6, "step_limit")
    assert scaler.decide(signals(6), 15.0) == ScaleDecision(4, "step_limit")


def test_scale_up_window_ignores_a_single_spike() -> None:
    scaler = Autoscaler(AutoscaleConfig(scale_up_window_s=60, max_replicas=16))
    scaler.decide(signals(2, load=64), 0.0)
    assert scaler.decide(signals(2, load=300), 15.0) == ScaleDecision(2, "stabilising")
    assert scaler.decide(signals(2, load=300), 45.0).target == 2
    # The ask of t=0 leaves the window (it covers the 60 s after, not at, now - 60):
    # the whole window asks for more, and the lowest ask of it wins.
    assert scaler.decide(signals(2, load=300), 60.0) == ScaleDecision(6, "step_limit")


def test_ttft_over_target_adds_one_replica_but_not_while_one_starts() -> None:
    config = AutoscaleConfig(max_replicas=16, ttft_p95_target_s=1.0)
    scaler, clock = Autoscaler(config), Clock()
    slow = 2.5
    # Load alone is fine (4 x 32 = 128), but TTFT is not: long prompts, say.
    assert scaler.decide(signals(4, load=128, ttft_p95_s=slow), clock.now) == ScaleDecision(
        5, "ttft"
    )
    assert (
        scaler.decide(signals(4, load=128, starting=1, ttft_p95_s=slow), clock.tick()).target == 5
    )
    # The new replica is ready; the percentiles still hold the slow minute.
    for _ in range(3):
        assert scaler.decide(signals(5, load=128, ttft_p95_s=slow), clock.tick()).target == 5
    clock.tick(60)
    assert scaler.decide(signals(5, load=128, ttft_p95_s=slow), clock.now) == ScaleDecision(
        6, "ttft"
    )


def test_p99_target_and_missing_measurements() -> None:
    config = AutoscaleConfig(ttft_p95_target_s=1.0, ttft_p99_target_s=3.0)
    scaler = Autoscaler(config)
    assert scaler.decide(signals(4, load=128), 0.0).target == 4  # nothing measured
    assert scaler.decide(signals(4, load=128, ttft_p99_s=4.0), 15.0) == ScaleDecision(5, "ttft")


def test_busy_fraction_asks_for_more() -> None:
    scaler = Autoscaler(AutoscaleConfig(target_busy_fraction=0.8))
    assert scaler.decide(signals(4, load=128, busy_fraction=1.0), 0.0) == ScaleDecision(5, "busy")
    # Ignored when the driver has no measurement.
    assert scaler.decide(signals(4, load=128), 15.0).target == 4


def test_queue_depth_per_class_is_summed() -> None:
    per_class = ScaleSignals(
        num_ready=1, queue_depth={"interactive": 50, "batch": 46}, num_in_flight=32
    )
    assert per_class.num_queued == 96
    assert Autoscaler(CONFIG).decide(per_class, 0.0) == ScaleDecision(4, "load")


def test_calls_between_evaluations_return_the_last_decision() -> None:
    scaler = Autoscaler(CONFIG)
    first = scaler.decide(signals(2, load=64), 0.0)
    assert scaler.next_evaluation_at == 15.0
    assert scaler.decide(signals(2, load=1000), 14.9) is first
    assert scaler.decide(signals(2, load=1000), 15.0).target == 6


def test_time_must_not_go_backwards() -> None:
    scaler = Autoscaler(CONFIG)
    scaler.decide(signals(2), 10.0)
    with pytest.raises(ValueError, match="backwards"):
        scaler.decide(signals(2), 5.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_replicas": 3, "max_replicas": 2},
        {"min_replicas": 0, "max_replicas": 0},
        {"target_in_flight_per_replica": 0},
        {"tolerance": 1.0},
        {"ttft_p95_target_s": 0},
        {"target_busy_fraction": 1.5},
        {"scale_down_window_s": -1},
        {"max_step_up": 0},
        {"max_step_down": 0},
        {"evaluation_interval_s": -1},
        {"ttft_cooldown_s": -1},
    ],
)
def test_config_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        AutoscaleConfig(**kwargs)  # type: ignore[arg-type]


def test_signals_validation() -> None:
    with pytest.raises(ValueError, match="counts"):
        ScaleSignals(num_ready=-1)
    with pytest.raises(ValueError, match="counts"):
        ScaleSignals(num_ready=1, queue_depth={"a": -2})
    with pytest.raises(ValueError, match="busy_fraction"):
        ScaleSignals(num_ready=1, busy_fraction=1.2)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 20),  # ready
            st.integers(0, 8),  # starting
            st.integers(0, 2000),  # load
            st.one_of(st.none(), st.floats(0, 10)),  # p95 TTFT
        ),
        min_size=1,
        max_size=40,
    )
)
def test_targets_stay_in_bounds_and_steps(
    snapshots: list[tuple[int, int, int, float | None]],
) -> None:
    config = AutoscaleConfig(
        min_replicas=1, max_replicas=12, max_step_down=3, ttft_p95_target_s=1.0
    )
    scaler = Autoscaler(config)
    for i, (ready, starting, load, p95) in enumerate(snapshots):
        snapshot = signals(ready, load=load, starting=starting, ttft_p95_s=p95)
        decision = scaler.decide(snapshot, 15.0 * i)
        current = ready + starting
        assert 1 <= decision.target <= 12
        if 1 <= current <= 12:
            assert current - 3 <= decision.target <= current + max(4, current)
