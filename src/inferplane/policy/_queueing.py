"""The gateway's queue: strict priority between SLO classes with aging, and weighted fair
sharing between tenants inside a class by tokens served (a virtual token counter).

Pure: time is passed in. The scheduling issue wires it into the gateway's
dispatch; the twin will drive the same object.

- **Classes.** The class with the best *effective* priority goes first:
  ``priority - age_of_its_oldest_request / aging_s``. A request that waited
  ``aging_s`` seconds is worth one priority level more, so a batch request
  cannot starve: after ``(its priority - best priority) * aging_s`` it
  outranks every new arrival.
- **Tenants.** Inside a class, the backlogged tenant with the smallest counter
  of tokens served (divided by its weight) goes next: the virtual token counter
  of Sheng et al., "Fairness in Serving Large Language Models" (OSDI 2024). A
  tenant that returns from idle starts at the smallest counter of the
  backlogged tenants, so idle time is not banked as credit.
- **Inside a tenant:** first come, first served.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["DispatchQueue", "QueueItem", "SloClass"]


@dataclass(frozen=True, slots=True)
class SloClass:
    name: str
    priority: int  # 0 is the most urgent


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
    size: int = 0

    def oldest(self) -> float:
        return min(q[0].enqueued_at for q in self.tenants.values() if q)


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
        self._aging_s = aging_s
        # Read at each dispatch (not copied): the caller may change weights live.
        self._weights: Mapping[str, float] = tenant_weights or {}
        self._where: dict[str, QueueItem] = {}

    def __len__(self) -> int:
        return len(self._where)

    def items(self) -> list[QueueItem]:
        """Every queued request, in no particular order."""
        return list(self._where.values())

    def depth(self, slo_class: str) -> int:
        return self._classes[slo_class].size

    def push(self, item: QueueItem) -> None:
        q = self._classes.get(item.slo_class)
        if q is None:
            raise KeyError(f"unknown SLO class {item.slo_class!r}")
        if item.request_id in self._where:
            raise ValueError(f"request {item.request_id!r} is queued already")
        backlog = q.tenants.get(item.tenant)
        if not backlog:
            # Back from idle: no credit for the time away (VTC's lift).
            active = [q.counters[t] for t, b in q.tenants.items() if b]
            floor = min(active) if active else max(q.counters.values(), default=0.0)
            q.counters[item.tenant] = max(q.counters.get(item.tenant, 0.0), floor)
            backlog = q.tenants.setdefault(item.tenant, deque())
        backlog.append(item)
        q.size += 1
        self._where[item.request_id] = item

    def pop(self, now: float) -> QueueItem | None:
        """The request to dispatch next, removed from the queue; None when empty."""
        best: _ClassQueue | None = None
        best_key = (0.0, 0)
        for q in self._classes.values():
            if q.size == 0:
                continue
            key = (q.cls.priority - (now - q.oldest()) / self._aging_s, q.cls.priority)
            if best is None or key < best_key:
                best, best_key = q, key
        if best is None:
            return None
        counters = best.counters
        tenant = min((t for t, b in best.tenants.items() if b), key=lambda t: (counters[t], t))
        item = best.tenants[tenant].popleft()
        best.size -= 1
        best.counters[tenant] += item.tokens / self._weights.get(tenant, 1.0)
        del self._where[item.request_id]
        return item

    def remove(self, request_id: str) -> QueueItem | None:
        """Take a request out (its client left); None if it is not queued."""
        item = self._where.pop(request_id, None)
        if item is not None:
            q = self._classes[item.slo_class]
            q.tenants[item.tenant].remove(item)
            q.size -= 1
        return item

    def correct(self, tenant: str, slo_class: str, tokens_delta: int) -> None:
        """Adjust a tenant's counter once a request's actual tokens are known."""
        q = self._classes[slo_class]
        q.counters[tenant] = max(
            0.0, q.counters.get(tenant, 0.0) + tokens_delta / self._weights.get(tenant, 1.0)
        )
