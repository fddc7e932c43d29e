"""How many replicas one model's pool should have: Kubernetes HPA's algorithm on LLM signals.

Each evaluation turns the signals into one recommendation, the highest of:

* load: requests queued at the gateway plus in flight, at ``target_in_flight_per_replica``
  each: ``ceil(load / target)``; kept at the current count while the load is within
  ``tolerance`` of it (HPA's 10%, so a steady load does not flap by one);
* latency: measured p95 or p99 TTFT above its target asks for one replica more than the
  pool has, unless replicas are already starting (they are the remedy on its way) or
  one became ready less than ``ttft_cooldown_s`` ago (the percentiles still hold the
  requests from before it came);
* busy: the GPUs' busy fraction over ``target_busy_fraction`` (off by default: a
  continuous-batching engine reads busy with a single request, so it only says "more").

The recommendation is then stabilised as HPA's ``behavior`` does it: the pool shrinks
only to the *highest* recommendation of the last ``scale_down_window_s`` (300 s, HPA's
default) and grows to the *lowest* of the last ``scale_up_window_s`` (0 s: at once).
As HPA, the first evaluation seeds that history with the pool's current size, so a pool
does not shrink before a whole window has passed.
Last, each decision moves at most ``max_step_up`` (or doubles, whichever is more, as
HPA's default policy) or ``max_step_down`` replicas, within ``[min_replicas,
max_replicas]``.

Replicas that are starting (a cold start takes a minute or more) count as capacity to
come: the pool's current size is ready + starting, so a spike that already caused a
scale-up does not cause another while those replicas load their weights.

Pure: the driver passes ``now`` and a `ScaleSignals` snapshot at each evaluation; the
outcome of a decision (replicas starting, then ready) arrives in the next snapshot.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["AutoscaleConfig", "Autoscaler", "ScaleDecision", "ScaleSignals"]


@dataclass(frozen=True, slots=True)
class AutoscaleConfig:
    """Autoscaling knobs; defaults follow Kubernetes HPA where it has one."""

    min_replicas: int = 1
    """Never fewer (0 allows scale to zero: the first request then waits a cold start)."""
    max_replicas: int = 8
    """Never more: the GPUs the pool may hold."""
    target_in_flight_per_replica: float = 32.0
    """Requests (queued at the gateway plus running) one replica should carry. Assumption:
    a few times fewer than vLLM's ``max_num_seqs`` (256), where decode steps are still
    short; set it from the engine's measured slots and the TTFT target."""
    tolerance: float = 0.1
    """Load within this fraction of the current capacity changes nothing (HPA's
    ``--horizontal-pod-autoscaler-tolerance``, 0.1)."""
    ttft_p95_target_s: float | None = None
    """Measured p95 TTFT above this asks for one more replica (None: not used)."""
    ttft_p99_target_s: float | None = None
    """Measured p99 TTFT above this asks for one more replica (None: not used)."""
    ttft_cooldown_s: float = 60.0
    """After the ready count grew, TTFT is not acted on for this long. Assumption: the
    driver's percentiles cover about the last minute."""
    target_busy_fraction: float | None = None
    """GPU busy fraction per ready replica to aim at (None: not used)."""
    scale_up_window_s: float = 0.0
    """Grow to the lowest recommendation of this window (HPA default 0: at once)."""
    scale_down_window_s: float = 300.0
    """Shrink to the highest recommendation of this window (HPA default 300 s)."""
    max_step_up: int = 4
    """Replicas one decision may add, or double the pool if that is more (HPA's default
    scale-up policy: 4 pods or 100%, whichever is higher)."""
    max_step_down: int | None = None
    """Replicas one decision may remove (None: any number, as HPA's default 100%)."""
    evaluation_interval_s: float = 15.0
    """Seconds between evaluations (HPA's ``--horizontal-pod-autoscaler-sync-period``)."""

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            raise ValueError("need 0 <= min_replicas <= max_replicas and max_replicas >= 1")
        if not self.target_in_flight_per_replica > 0:
            raise ValueError("target_in_flight_per_replica must be > 0")
        if not 0 <= self.tolerance < 1:
            raise ValueError("tolerance must be in [0, 1)")
        for name in ("ttft_p95_target_s", "ttft_p99_target_s"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 or None")
        if self.target_busy_fraction is not None and not 0 < self.target_busy_fraction <= 1:
            raise ValueError("target_busy_fraction must be in (0, 1] or None")
        if not (self.scale_up_window_s >= 0 and self.scale_down_window_s >= 0):
            raise ValueError("stabilisation windows must be >= 0")
        if not self.ttft_cooldown_s >= 0:
            raise ValueError("ttft_cooldown_s must be >= 0")
        if self.max_step_up < 1 or (self.max_step_down is not None and self.max_step_down < 1):
            raise ValueError("max_step_up and max_step_down must be >= 1")
        if not self.evaluation_interval_s >= 0:
            raise ValueError("evaluation_interval_s must be >= 0")


@dataclass(frozen=True, slots=True)
class ScaleSignals:
    """One snapshot of the pool, taken by the driver at an evaluation."""

    num_ready: int
    """Replicas serving."""
    num_starting: int = 0
    """Replicas asked for and not ready yet (cold starting)."""
    queue_depth: int | Mapping[str, int] = 0
    """Requests waiting at the gateway, in all or per SLO class (summed: pass only the
    classes that should drive scaling)."""
    num_in_flight: int = 0
    """Requests running on the replicas."""
    ttft_p95_s: float | None = None
    """Measured p95 time to first token over the driver's recent window, or None."""
    ttft_p99_s: float | None = None
    """Measured p99 time to first token, or None."""
    busy_fraction: float | None = None
    """Mean fraction of time the ready replicas' GPUs were busy, or None."""

    def __post_init__(self) -> None:
        if min(self.num_ready, self.num_starting, self.num_in_flight, self.num_queued) < 0:
            raise ValueError(f"ScaleSignals counts must be >= 0: {self}")
        if self.busy_fraction is not None and not 0 <= self.busy_fraction <= 1:
            raise ValueError("busy_fraction must be in [0, 1]")

    @property
    def num_queued(self) -> int:
        """Requests waiting at the gateway, all classes together."""
        if isinstance(self.queue_depth, int):
            return self.queue_depth
        return sum(self.queue_depth.values())

    @property
    def num_replicas(self) -> int:
        """The pool's current size: ready plus capacity to come."""
        return self.num_ready + self.num_starting


@dataclass(frozen=True, slots=True)
class ScaleDecision:
    """How many replicas (ready + starting) the pool should have, and the rule that won:
    ``load``, ``ttft``, ``busy`` (a signal asked for it), ``steady`` (no change asked),
    ``stabilising`` (a change waits for its window), ``step_limit``, ``min_replicas``,
    ``max_replicas``."""

    target: int
    reason: str


class Autoscaler:
    """Replica count advice for one model's pool; keeps the recent recommendations."""

    def __init__(self, config: AutoscaleConfig = AutoscaleConfig()) -> None:  # frozen: shareable
        self.config = config
        self._recommendations: deque[tuple[float, int]] = deque()
        self._last: ScaleDecision | None = None
        self._last_at = -math.inf
        self._num_ready: int | None = None
        self._ready_grew_at = -math.inf

    @property
    def next_evaluation_at(self) -> float:
        """When the next evaluation is due (-inf before the first)."""
        return self._last_at + self.config.evaluation_interval_s

    def decide(self, signals: ScaleSignals, now: float) -> ScaleDecision:
        """The pool's target size at ``now``. Called before the next evaluation is due,
        it returns the previous decision unchanged (drivers may call it on any event)."""
        if now < self._last_at:
            raise ValueError(f"time went backwards: {now} < {self._last_at}")
        if self._last is not None and now < self.next_evaluation_at:
            return self._last
        decision = self._evaluate(signals, now)
        self._last, self._last_at = decision, now
        return decision

    # -- internals -------------------------------------------------------------

    def _evaluate(self, signals: ScaleSignals, now: float) -> ScaleDecision:
        cfg = self.config
        current = signals.num_replicas
        if self._num_ready is not None and signals.num_ready > self._num_ready:
            self._ready_grew_at = now
        self._num_ready = signals.num_ready
        recommended, reason = self._recommend(signals, now)
        if self._last is None:
            # The first evaluation: as HPA, seed the history with the pool's current size,
            # so the pool shrinks only once a whole scale_down_window_s has recommended
            # less (a run or a controller that just started has seen no traffic yet).
            self._recommendations.append((now, current))

        # Stabilise (HPA's stabilizeRecommendationWithBehaviors): grow to the lowest
        # recommendation of the up window, shrink to the highest of the down window;
        # a window covers the evaluations strictly after ``now - window``, and this one.
        horizon = now - max(cfg.scale_up_window_s, cfg.scale_down_window_s)
        while self._recommendations and self._recommendations[0][0] <= horizon:
            self._recommendations.popleft()
        up_after, down_after = now - cfg.scale_up_window_s, now - cfg.scale_down_window_s
        up = min([recommended, *(r for t, r in self._recommendations if t > up_after)])
        down = max([recommended, *(r for t, r in self._recommendations if t > down_after)])
        self._recommendations.append((now, recommended))
        target = current
        if target < up:
            target = up
        if target > down:
            target = down
        if target != recommended and recommended != current:
            reason = "stabilising"
        elif target == current:
            reason = "steady"

        # Rate limits, then bounds (bounds win: a pool below its minimum is fixed at once).
        max_up = current + max(cfg.max_step_up, current)
        if target > max_up:
            target, reason = max_up, "step_limit"
        if cfg.max_step_down is not None and target < current - cfg.max_step_down:
            target, reason = current - cfg.max_step_down, "step_limit"
        if target > cfg.max_replicas:
            target, reason = cfg.max_replicas, "max_replicas"
        if target < cfg.min_replicas:
            target, reason = cfg.min_replicas, "min_replicas"

        assert cfg.min_replicas <= target <= cfg.max_replicas
        return ScaleDecision(target, reason)

    def _recommend(self, signals: ScaleSignals, now: float) -> tuple[int, str]:
        """The highest replica count any signal asks for, and which one."""
        cfg = self.config
        current = signals.num_replicas
        best, reason = current, "steady"

        load = signals.num_queued + signals.num_in_flight
        wanted = load / cfg.target_in_flight_per_replica  # replicas, fractional
        if current == 0 or abs(wanted / current - 1) > cfg.tolerance:
            best, reason = math.ceil(wanted), "load"

        settled = now - self._ready_grew_at >= cfg.ttft_cooldown_s
        if (
            signals.num_starting == 0
            and settled
            and self._ttft_breached(signals)
            and current + 1 > best
        ):
            best, reason = current + 1, "ttft"

        if cfg.target_busy_fraction is not None and signals.busy_fraction is not None:
            by_busy = math.ceil(
                signals.num_ready * signals.busy_fraction / cfg.target_busy_fraction
            )
            if by_busy > best:
                best, reason = by_busy, "busy"
        return best, reason

    def _ttft_breached(self, signals: ScaleSignals) -> bool:
        cfg = self.config
        return any(
            target is not None and measured is not None and measured > target
            for target, measured in (
                (cfg.ttft_p95_target_s, signals.ttft_p95_s),
                (cfg.ttft_p99_target_s, signals.ttft_p99_s),
            )
        )
