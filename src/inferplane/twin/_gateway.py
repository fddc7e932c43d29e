"""The gateway on the twin's clock: the same policy objects the live gateway drives.

Per logical model: ``policy.Dispatcher`` (admission by predicted wait and TTFT
target, the priority and fairness queue, replica slots and token capacities)
when a replica group sets ``max_concurrency`` or ``max_tokens_in_flight``,
``policy.Router`` (round robin, least loaded, affinity) otherwise,
``policy.Health`` breakers under both, and the model's fallback chain when it
cannot take a request. What the live gateway does with sockets and futures,
this does with callbacks on the simulated clock. Not simulated: budgets,
hedging, learned (``auto``) limits, the network hop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from inferplane.engines import EngineRequest, Finished, Produced
from inferplane.engines._core import Event
from inferplane.perf import PerfModel, get_gpu, get_model
from inferplane.policy import (
    Dispatcher,
    Health,
    LatencyTracker,
    QueueItem,
    Router,
    RoutingMode,
    stable_hash,
)
from inferplane.twin._loop import EventLoop
from inferplane.twin._replica import ReplicaState, SimReplica
from inferplane.twin._scenario import Scenario, SimModel
from inferplane.twin._workload import Arrival

__all__ = ["SimGateway", "SimRequest"]

_PAST_DUE = 1e-6
_AFFINITY = (RoutingMode.PREFIX_AFFINITY, RoutingMode.SESSION_AFFINITY)


@dataclass(slots=True, eq=False)
class SimRequest:
    id: str
    arrival: Arrival
    model: str  # the model serving it: the one asked for, or a fallback
    slo_class: str
    tokens: int  # worst case (prompt + output), as the gateway reserves
    replica: SimReplica | None = None
    route_index: int = -1  # the replica's index within its model
    dispatched_at: float = 0.0
    first_token_at: float | None = None
    retries: int = 0  # attempts again after a replica failed under it


# Told how each request ended: (request, time, outcome). Outcomes: "completed"; refused
# with "slo_unattainable", "queue_expired", "no_replica" or "too_long" (longer than the
# model's context or the replica's KV cache: the engine's 400 context_length_exceeded);
# "replica_failed" mid-stream.
Outcome = Callable[[SimRequest, float, str], None]


class SimRoute:
    """One logical model: its replicas and the policies choosing between them."""

    def __init__(self, name: str, spec: SimModel, replicas: list[SimReplica], sc: Scenario):
        self.name = name
        self.spec = spec
        self.replicas = replicas
        g = sc.gateway
        self.health = Health(
            len(replicas),
            consecutive_errors=g.outlier_consecutive_errors,
            base_ejection_s=g.backend_cooldown_s,
            max_ejection_s=g.max_ejection_s,
        )
        groups = [group for group, _ in spec.pool()]
        self.router = Router(self.health, spec.routing, [group.weight for group in groups])
        self.slot_limits = [group.max_concurrency for group in groups]
        self.token_limits = [group.max_tokens_in_flight for group in groups]
        self.dispatcher: Dispatcher | None = None
        if any(s is not None for s in self.slot_limits + self.token_limits):
            self.dispatcher = Dispatcher(
                {name: c.policy(name) for name, c in sc.slo_classes.items()},
                list(self.slot_limits),
                aging_s=sc.queue_aging_s,
                tenant_weights={name: t.weight for name, t in sc.tenants.items()},
                token_capacity=list(self.token_limits),
            )
        # Time from dispatch to first token, as the live gateway measures it to admit by
        # TTFT target (streams: the twin's clients all stream).
        self.first_token = LatencyTracker(
            min_samples=g.hedge_min_samples,
            min_delay_s=g.hedge_min_delay_s,
            max_delay_s=g.hedge_max_delay_s,
        )
        self.waiting: dict[str, SimRequest] = {}  # queued in the dispatcher
        self.expiry_at: float | None = None
        self.unusable: frozenset[int] = frozenset()
        self.on_first_token: Callable[[float], None] | None = None  # told each TTFT
        self.refresh()

    def refresh(self) -> None:
        """Only ready replicas take work: the router skips the others, the queue gives
        them no slots and no token capacity (so its predicted wait counts only the
        capacity that can serve)."""
        self.unusable = frozenset(
            i for i, r in enumerate(self.replicas) if r.state is not ReplicaState.READY
        )
        d = self.dispatcher
        if d is not None:
            for i, (slots, tokens) in enumerate(
                zip(self.slot_limits, self.token_limits, strict=True)
            ):
                down = i in self.unusable
                d.slots[i] = 0 if down else slots
                d.token_capacity[i] = 0 if down and tokens is not None else tokens

    def count(self, state: ReplicaState) -> int:
        return sum(r.state is state for r in self.replicas)


class SimGateway:
    def __init__(self, scenario: Scenario, loop: EventLoop, outcome: Outcome) -> None:
        self.scenario = scenario
        self.loop = loop
        self._outcome = outcome
        self.replicas: list[SimReplica] = []
        self.routes: dict[str, SimRoute] = {}
        self.in_engine: dict[str, SimRequest] = {}
        self._chains: dict[str, tuple[int, ...]] = {}  # prefix key -> its block hashes
        for name, spec in scenario.models.items():
            model = get_model(spec.catalogue or name)
            members: list[SimReplica] = []
            for group, up in spec.pool():
                replica = SimReplica(
                    len(self.replicas),
                    f"{name}/{len(members)}",
                    PerfModel(get_gpu(group.gpu), model, group.tp),
                    group.limits(),
                    group.hourly_price(),
                    loop,
                    self._engine_event,
                )
                if not up:
                    replica.set_state(ReplicaState.OFF, 0.0)
                self.replicas.append(replica)
                members.append(replica)
            self.routes[name] = SimRoute(name, spec, members, scenario)

    # -- requests ------------------------------------------------------------

    def submit(self, request: SimRequest, now: float) -> None:
        """A request reaches the gateway (or falls back to ``request.model``)."""
        route = self.routes[request.model]
        d = route.dispatcher
        if d is None:
            index = self._choose(route, request, now)
            if index is None:
                self._refuse(request, now, "no_replica")
            elif self._too_long(route, request, index):
                self._refuse(request, now, "too_long")
            else:
                self._start(route, request, index, now)
            return
        item = QueueItem(request.id, request.arrival.tenant, request.slo_class, request.tokens, now)
        if d.submit(item, now, first_token_s=route.first_token.typical()) is not None:
            self._refuse(request, now, "slo_unattainable")
            return
        route.waiting[request.id] = request
        expiry = now + d.classes[request.slo_class].max_queue_s
        if route.expiry_at is None or expiry + _PAST_DUE < route.expiry_at:
            self._arm_expiry(route, expiry)
        self._pump(route, now)

    def _choose(self, route: SimRoute, request: SimRequest, now: float) -> int | None:
        # As the live gateway keys it: the shared prompt prefix in prefix_affinity mode
        # (the twin's sessions are its prefixes), else the request's own id.
        key = request.id
        if route.router.mode in _AFFINITY and request.arrival.prefix_key:
            key = request.arrival.prefix_key
        return route.router.choose(now, route.unusable, key, request.tokens)

    @staticmethod
    def _too_long(route: SimRoute, request: SimRequest, index: int) -> bool:
        """The replica chosen cannot hold the request at all: the live gateway forwards
        it and the engine answers 400 context_length_exceeded; here it is refused before
        the engine sees it (which would raise)."""
        a = request.arrival
        return not route.replicas[index].fits(a.prompt_tokens, a.output_tokens)

    def _start(self, route: SimRoute, request: SimRequest, index: int, now: float) -> None:
        replica = route.replicas[index]
        request.replica, request.route_index, request.dispatched_at = replica, index, now
        route.router.sent(index, request.tokens)
        self.in_engine[request.id] = request
        a = request.arrival
        hashes = self._prefix_hashes(a, replica.limits.block_size) if a.prefix_key else ()
        replica.add(EngineRequest(request.id, a.prompt_tokens, a.output_tokens, hashes), now)

    def _prefix_hashes(self, a: Arrival, block_size: int) -> tuple[int, ...]:
        """The hash chain of the shared prefix's full blocks, the same for every request
        with its key (what the engine's prefix cache matches on); the rest of a prompt
        is its own and gets none (it could never be found in the cache)."""
        assert a.prefix_key is not None
        shared = min(a.prefix_tokens, a.prompt_tokens - 1) // block_size
        chain = self._chains.get(a.prefix_key, ())
        if len(chain) < shared:
            chain = tuple(stable_hash(f"{a.prefix_key}/{i}") for i in range(shared))
            self._chains[a.prefix_key] = chain
        return chain[:shared]

    def _refuse(self, request: SimRequest, now: float, reason: str) -> None:
        """Fall back along the model's chain, or give up with ``reason``."""
        chain = [request.arrival.model, *self.routes[request.arrival.model].spec.fallback]
        position = chain.index(request.model)
        if position + 1 < len(chain):
            request.model = chain[position + 1]
            self.submit(request, now)
            return
        self._outcome(request, now, reason)

    # -- the queue -------------------------------------------------------------

    def _pump(self, route: SimRoute, now: float) -> None:
        d = route.dispatcher
        assert d is not None
        health = route.health
        while started := d.dispatch(now, lambda i: health.available(i, now), health.sent):
            refused = False
            for item, index in started:
                request = route.waiting.pop(item.request_id)
                if self._too_long(route, request, index):
                    # Answered at once, so its slot is free again: dispatch once more.
                    d.queue.settle(item.tenant, item.slo_class, item.tokens, 0)
                    d.finished(index, 0.0, tokens=item.tokens, measured=False)
                    health.abandoned(index)
                    self._refuse(request, now, "too_long")
                    refused = True
                    continue
                self._start(route, request, index, now)
            if not refused:
                break

    def _arm_expiry(self, route: SimRoute, at: float | None) -> None:
        """Wake at ``at`` to take out requests that waited too long. Dispatching only
        makes that later, so it is re-armed when it fires rather than on every change."""
        if at is not None:
            at += _PAST_DUE  # the bound is strict: expire() keeps a request due exactly now
            self.loop.at(at, self._expire, route)
        route.expiry_at = at

    def _expire(self, now: float, route: SimRoute) -> None:
        if route.expiry_at != now:
            return  # an earlier expiry was armed after this one
        assert route.dispatcher is not None
        for item in route.dispatcher.expire(now):
            self._refuse(route.waiting.pop(item.request_id), now, "queue_expired")
        self._arm_expiry(route, route.dispatcher.next_expiry())

    # -- replicas coming and going ---------------------------------------------

    def set_state(self, route: SimRoute, index: int, state: ReplicaState, now: float) -> None:
        replica = route.replicas[index]
        if state is ReplicaState.DRAINING and replica.in_engine == 0:
            state = ReplicaState.OFF
        replica.set_state(state, now)
        route.refresh()
        if state is ReplicaState.READY:
            route.health.checked(index, True, now)
            if route.dispatcher is not None:
                self._pump(route, now)

    def fail(self, route: SimRoute, index: int, now: float) -> None:
        """A replica dies: what it had not started answering is retried elsewhere (the
        live gateway's rule: before the first byte); streams already flowing are lost."""
        replica = route.replicas[index]
        lost = [r for r in self.in_engine.values() if r.replica is replica]
        replica.crash(now)
        replica.set_state(ReplicaState.FAILED, now)
        route.refresh()
        route.health.failed(index, now)
        for request in lost:
            del self.in_engine[request.id]
            route.router.done(index, request.tokens)
            if route.dispatcher is not None:
                route.dispatcher.queue.settle(
                    request.arrival.tenant, request.slo_class, request.tokens, 0
                )
                route.dispatcher.finished(index, 0.0, tokens=request.tokens, measured=False)
            request.replica, request.route_index = None, -1
            if request.first_token_at is None:
                request.retries += 1
                self.submit(request, now)
            else:
                self._outcome(request, now, "replica_failed")
        if route.dispatcher is not None:
            self._pump(route, now)

    # -- what the engines report ---------------------------------------------

    def _engine_event(self, replica: SimReplica, event: Event) -> None:
        if isinstance(event, Produced):
            request = self.in_engine[event.request_id]
            if request.first_token_at is None:
                request.first_token_at = event.time
                route = self.routes[request.model]
                route.first_token.observe(event.time - request.dispatched_at)
                observe = route.on_first_token
                if observe is not None:
                    observe(event.time - request.arrival.time)
        elif isinstance(event, Finished):
            request = self.in_engine.pop(event.request_id)
            route = self.routes[request.model]
            index = request.route_index
            route.router.done(index, request.tokens)
            route.health.succeeded(index)
            self._outcome(request, event.time, "completed")
            if replica.state is ReplicaState.DRAINING and replica.in_engine == 0:
                replica.set_state(ReplicaState.OFF, event.time)
            if route.dispatcher is not None:
                service_s = event.time - request.dispatched_at
                # The twin's requests use all they ask for: served as reserved.
                route.dispatcher.queue.settle(
                    request.arrival.tenant, request.slo_class, request.tokens, request.tokens
                )
                route.dispatcher.finished(index, service_s, tokens=request.tokens)
                self._pump(route, event.time)
