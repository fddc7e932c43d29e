"""Fleet dynamics on the twin's clock: autoscaling with cold starts, and replica failures.

Both drive pure policies (``policy.Autoscaler``, ``policy.FailureModel``) and carry
out their decisions on the simulated gateway's replicas. Randomness comes from
generators seeded by the scenario's seed and the model's name, so adding a model
does not change another model's failures.
"""

from __future__ import annotations

import random
from collections import deque

from ddsketch import DDSketch

from inferplane.perf import cold_start_s, get_gpu, get_model, get_storage
from inferplane.policy._autoscale import Autoscaler, ScaleSignals
from inferplane.policy._failures import FailureModel
from inferplane.twin._gateway import SimGateway, SimRoute
from inferplane.twin._loop import EventLoop
from inferplane.twin._replica import ReplicaState

__all__ = ["Failures", "PoolScaler"]

# Autoscaling reads TTFT percentiles over this many evaluation intervals.
_TTFT_INTERVALS = 4


class PoolScaler:
    """Evaluates one model's autoscaler every interval and starts or drains replicas."""

    def __init__(self, gateway: SimGateway, route: SimRoute, loop: EventLoop) -> None:
        spec = route.spec.autoscale
        assert spec is not None
        self.gateway, self.route, self.loop = gateway, route, loop
        self.autoscaler = Autoscaler(spec.config())
        self.interval = spec.evaluation_interval_s
        group = route.spec.replicas[0]
        if spec.cold_start_s is not None:
            self.cold_start_s = spec.cold_start_s
        else:
            model = get_model(route.spec.catalogue or route.name)
            storage = get_storage(spec.storage)
            self.cold_start_s = cold_start_s(model, get_gpu(group.gpu), group.tp, storage)
        self._ttft: deque[DDSketch] = deque([DDSketch(0.01)], maxlen=_TTFT_INTERVALS)
        route.on_first_token = self._observe
        self._busy = {r.index: 0.0 for r in route.replicas}
        # Per replica, its latest cold start: a timer of an earlier one (cancelled, then
        # started again before that timer fired) must not make it ready early.
        self._starts = [0] * len(route.replicas)
        self.decisions: list[tuple[float, int, str]] = []
        loop.at(0.0, self._evaluate)

    def _observe(self, ttft_s: float) -> None:
        self._ttft[-1].add(ttft_s)

    def _evaluate(self, now: float, _: object = None) -> None:
        route = self.route
        ready = [r for r in route.replicas if r.state is ReplicaState.READY]
        busy = 0.0
        for r in route.replicas:
            b = r.busy_until(now)
            if r.state is ReplicaState.READY:
                # Busy time only grows; rounding in busy_until can make a spell with no
                # work since the last look read a few ulps below it.
                busy += max(0.0, b - self._busy[r.index])
            self._busy[r.index] = b
        window = DDSketch(0.01)
        for sketch in self._ttft:
            if sketch.count:
                window.merge(sketch)
        signals = ScaleSignals(
            num_ready=len(ready),
            num_starting=route.count(ReplicaState.STARTING),
            queue_depth=len(route.waiting),
            num_in_flight=sum(r.in_engine for r in ready),
            ttft_p95_s=window.get_quantile_value(0.95) if window.count else None,
            ttft_p99_s=window.get_quantile_value(0.99) if window.count else None,
            busy_fraction=min(1.0, busy / (len(ready) * self.interval))
            if ready and now > 0
            else None,
        )
        decision = self.autoscaler.decide(signals, now)
        self._apply(decision.target - signals.num_replicas, now)
        if not self.decisions or self.decisions[-1][1] != decision.target:
            self.decisions.append((now, decision.target, decision.reason))
        self._ttft.append(DDSketch(0.01))
        self.loop.at(now + self.interval, self._evaluate)

    def _apply(self, change: int, now: float) -> None:
        route, gateway = self.route, self.gateway
        if change > 0:
            for i, r in enumerate(route.replicas):
                if change == 0:
                    break
                if r.state is ReplicaState.OFF:
                    gateway.set_state(route, i, ReplicaState.STARTING, now)
                    self._starts[i] += 1
                    self.loop.at(now + self.cold_start_s, self._ready, (i, self._starts[i]))
                    change -= 1
        elif change < 0:
            # Cancel cold starts first (newest first), then drain the idlest ready ones.
            starting = [i for i, r in enumerate(route.replicas) if r.state is ReplicaState.STARTING]
            ready = [i for i, r in enumerate(route.replicas) if r.state is ReplicaState.READY]
            ready.sort(key=lambda i: (route.replicas[i].in_engine, -i))
            for i in [*reversed(starting), *ready][:-change]:
                gateway.set_state(route, i, ReplicaState.DRAINING, now)

    def _ready(self, now: float, start: tuple[int, int]) -> None:
        index, generation = start
        if generation != self._starts[index]:
            return  # the timer of a start that was cancelled; a later one is on its way
        if self.route.replicas[index].state is ReplicaState.STARTING:  # not cancelled
            self.gateway.set_state(self.route, index, ReplicaState.READY, now)


class Failures:
    """Fails and repairs one model's replicas as its failure model draws."""

    def __init__(self, gateway: SimGateway, route: SimRoute, loop: EventLoop, seed: int) -> None:
        spec = route.spec.failures
        assert spec is not None
        self.gateway, self.route, self.loop = gateway, route, loop
        self.models: list[FailureModel] = [spec.model(group.tp) for group, _ in route.spec.pool()]
        self.rng = random.Random(f"{seed}/failures/{route.name}")
        self.outages = 0
        for i, model in enumerate(self.models):
            loop.at(model.next_failure_at(0.0, self.rng), self._fail, i)

    def _fail(self, now: float, index: int) -> None:
        replica = self.route.replicas[index]
        if replica.state in (ReplicaState.OFF, ReplicaState.STARTING):
            # Not running (scaled away): nothing fails; draw its next failure.
            self.loop.at(self.models[index].next_failure_at(now, self.rng), self._fail, index)
            return
        self.outages += 1
        self.gateway.fail(self.route, index, now)
        self.loop.at(self.models[index].repaired_at(now, self.rng), self._repair, index)

    def _repair(self, now: float, index: int) -> None:
        self.gateway.set_state(self.route, index, ReplicaState.READY, now)
        self.loop.at(self.models[index].next_failure_at(now, self.rng), self._fail, index)
