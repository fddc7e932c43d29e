"""The gateway's queue: strict priority between SLO classes with aging, and weighted fair
sharing between tenants inside a class by tokens served (a virtual token counter).

Pure: time is passed in. The scheduling issue wires it into the gateway's
dispatch; the twin will drive the same object.

- **Classes.** The most urgent backlogged priority level goes first. A level
  whose oldest request waited ``(its priority - best priority) * aging_s``
  seconds has aged into contention: the contending levels then take turns
  (the one served longest ago goes next), so batch work cannot starve, and
  yet a backlog that stays old under sustained overload gets a share of the
  dispatches, not precedence over every fresh realtime request (which would
  hand the overload to the classes with the tightest deadlines).
- **Classes of equal priority** share their level by ``weight``, with the same
  virtual token counter as tenants (below): the backlogged class with the
  fewest tokens served per unit of weight goes next, and a class back from
  idle banks no credit.
- **Tenants.** Inside a class, the backlogged tenant with the smallest counter
  of tokens served (divided by its weight) goes next: the virtual token counter
  of Sheng et al., "Fairness in Serving Large Language Models" (OSDI 2024). A
  tenant that returns from idle starts at the smallest counter of the
  backlogged tenants, so idle time is not banked as credit.
- **Inside a tenant:** first come, first served.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["DispatchQueue", "QueueItem", "SloClass"]


@dataclass(frozen=True, slots=True)
class SloClass:
    name: str
    priority: int  # 0 is the most urgent
    weight: float = 1.0  # share of its priority level against classes of equal priority

    def __post_init__(self) -> None:
        if self.weight <= 0:
            raise ValueError(f"SLO class {self.name!r}: weight must be positive")


@dataclass(frozen=True, slots=True)
class QueueItem:
    request_id: str
    tenant: str
    slo_class: str
    tokens: int  # predicted cost (prompt + expected output), charged at dispatch
    enqueued_at: float


@dataclass
class _ClassQueue:
    cls: SloClass
    tenants: dict[str, deque[QueueItem]] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)  # tokens served / weight
    # Of the counters, what dispatched requests reserved and have not settled yet.
    in_flight: dict[str, float] = field(default_factory=dict)
    size: int = 0
    tokens: int = 0  # queued tokens, for waits predicted in tokens
    served: float = 0.0  # tokens served / class weight, against classes of its priority

    def oldest(self) -> float:
        return min(q[0].enqueued_at for q in self.tenants.values() if q)


def _lift(
    counters: dict[str, float],
    backlogged: list[str],
    name: str,
    in_flight: Mapping[str, float] | None = None,
) -> None:
    """VTC's lift: a flow that becomes backlogged starts no lower than the smallest
    counter of those already backlogged (the largest of all when none is), so time
    spent idle is not banked as credit. Counted as served: what was served, not what
    requests in flight reserved (a newcomer would wait out others' unused max_tokens)."""
    held = in_flight or {}
    active = [counters[n] - held.get(n, 0.0) for n in backlogged]
    floor = min(active) if active else max(counters.values(), default=0.0)
    counters[name] = max(counters.get(name, 0.0), floor)


class DispatchQueue:
    """Push requests as they arrive; pop the one to dispatch when capacity frees up."""

    def __init__(
        self,
        classes: Mapping[str, SloClass],
        *,
        aging_s: float,
        tenant_weights: Mapping[str, float] | None = None,
    ) -> None:
        if aging_s <= 0:
            raise ValueError("aging_s must be positive")
        self._classes = {name: _ClassQueue(cls) for name, cls in classes.items()}
        self._levels: dict[int, list[_ClassQueue]] = {}
        for q in self._classes.values():
            self._levels.setdefault(q.cls.priority, []).append(q)
        self._aging_s = aging_s
        # Read at each dispatch (not copied): the caller may change weights live.
        self._weights: Mapping[str, float] = tenant_weights or {}
        self._where: dict[str, QueueItem] = {}
        self._last_served: dict[int, float] = {}  # per priority level

    def __len__(self) -> int:
        return len(self._where)

    def items(self) -> list[QueueItem]:
        """Every queued request, in no particular order."""
        return list(self._where.values())

    def depth(self, slo_class: str) -> int:
        return self._classes[slo_class].size

    def tokens(self, slo_class: str) -> int:
        """Tokens of the requests of ``slo_class`` that wait."""
        return self._classes[slo_class].tokens

    def push(self, item: QueueItem) -> None:
        q = self._classes.get(item.slo_class)
        if q is None:
            raise KeyError(f"unknown SLO class {item.slo_class!r}")
        if item.request_id in self._where:
            raise ValueError(f"request {item.request_id!r} is queued already")
        if q.size == 0:
            level = self._levels[q.cls.priority]
            if len(level) > 1:
                served = {c.cls.name: c.served for c in level}
                _lift(served, [c.cls.name for c in level if c.size], q.cls.name)
                q.served = served[q.cls.name]
        backlog = q.tenants.get(item.tenant)
        if not backlog:
            _lift(q.counters, [t for t, b in q.tenants.items() if b], item.tenant, q.in_flight)
            backlog = q.tenants.setdefault(item.tenant, deque())
        backlog.append(item)
        q.size += 1
        q.tokens += item.tokens
        self._where[item.request_id] = item

    def peek(self, now: float) -> QueueItem | None:
        """The request ``pop(now)`` would return, left in the queue; None when empty."""
        chosen = self._next(now)
        return None if chosen is None else chosen[0].tenants[chosen[1]][0]

    def pop(self, now: float) -> QueueItem | None:
        """The request to dispatch next, removed from the queue; None when empty."""
        chosen = self._next(now)
        if chosen is None:
            return None
        q, tenant = chosen
        item = q.tenants[tenant].popleft()
        q.size -= 1
        q.tokens -= item.tokens
        reserved = item.tokens / self._weights.get(tenant, 1.0)
        q.counters[tenant] += reserved
        q.in_flight[tenant] = q.in_flight.get(tenant, 0.0) + reserved
        q.served += item.tokens / q.cls.weight
        self._last_served[q.cls.priority] = now
        del self._where[item.request_id]
        return item

    def _next(self, now: float) -> tuple[_ClassQueue, str] | None:
        """(class, tenant) whose head goes next: the most urgent backlogged level, or, when
        lower levels have aged into contention, the contender served longest ago. In that
        level its class with the least served per weight, that class's least-served
        tenant."""
        backlogged = {
            priority: [q for q in level if q.size] for priority, level in self._levels.items()
        }
        backlogged = {p: qs for p, qs in backlogged.items() if qs}
        if not backlogged:
            return None
        top = min(backlogged)
        chosen = top
        oldest = {p: min(q.oldest() for q in qs) for p, qs in backlogged.items()}
        contenders = [p for p in backlogged if (now - oldest[p]) / self._aging_s >= p - top]
        if len(contenders) > 1:
            # Turns: served longest ago first; never served, the longest waiting first.
            chosen = min(
                contenders, key=lambda p: (self._last_served.get(p, -math.inf), oldest[p], p)
            )
        q = min(backlogged[chosen], key=lambda c: (c.served, c.cls.name))
        counters = q.counters
        tenant = min((t for t, b in q.tenants.items() if b), key=lambda t: (counters[t], t))
        return q, tenant

    def remove(self, request_id: str) -> QueueItem | None:
        """Take a request out (its client left); None if it is not queued."""
        item = self._where.pop(request_id, None)
        if item is not None:
            q = self._classes[item.slo_class]
            q.tenants[item.tenant].remove(item)
            q.size -= 1
            q.tokens -= item.tokens
        return item

    def settle(self, tenant: str, slo_class: str, reserved: int, used: int) -> None:
        """A request popped with ``reserved`` tokens ended having used ``used``: its tenant
        is counted what it was served, not what it asked for."""
        q = self._classes[slo_class]
        weight = self._weights.get(tenant, 1.0)
        q.counters[tenant] = max(0.0, q.counters.get(tenant, 0.0) + (used - reserved) / weight)
        q.in_flight[tenant] = max(0.0, q.in_flight.get(tenant, 0.0) - reserved / weight)
