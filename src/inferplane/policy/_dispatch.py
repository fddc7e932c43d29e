"""Dispatch for one logical model: admit or refuse by predicted wait, queue, start work
only when a replica has room.

Pure: the driver (the gateway, or the twin) passes ``now`` and reports what
happened; this object decides. Replicas have a number of *slots* (requests in
flight at once); a replica without a limit takes everything at once, and then
nothing queues. The queue order is ``DispatchQueue``'s: priority between SLO
classes with aging, token fairness between tenants.

Admission predicts a request's wait as the work queued ahead of it (its class
and every more urgent one) divided by the fleet's service rate (slots over the
measured mean time a request holds a slot), and refuses at once when that
exceeds the class's ``max_queue_s``: a client told "no, retry in 3 s" now is
better served than one that times out later. A request that still waits longer
than ``max_queue_s`` (the prediction was wrong) leaves the queue refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from inferplane.policy._queueing import DispatchQueue, QueueItem, SloClass

__all__ = ["ClassPolicy", "Dispatcher", "Unattainable"]

# A measured service time forgets old requests with this weight per new one.
_EWMA = 0.1


@dataclass(frozen=True, slots=True)
class ClassPolicy:
    """An SLO class: its place in the queue and how long its requests may wait in it."""

    name: str
    priority: int  # 0 is the most urgent
    max_queue_s: float


@dataclass(frozen=True, slots=True)
class Unattainable:
    """The class's wait bound cannot be met: refuse, and say when to come back."""

    slo_class: str
    predicted_wait_s: float
    max_queue_s: float
    retry_after_s: int


class Dispatcher:
    def __init__(
        self,
        classes: Mapping[str, ClassPolicy],
        slots: Sequence[int | None],
        *,
        aging_s: float,
        tenant_weights: Mapping[str, float] | None = None,
    ) -> None:
        if not slots:
            raise ValueError("a model needs at least one replica")
        self.classes = dict(classes)
        self.queue = DispatchQueue(
            {n: SloClass(n, c.priority) for n, c in classes.items()},
            aging_s=aging_s,
            tenant_weights=tenant_weights,
        )
        self.slots = list(slots)
        self.in_flight = [0] * len(slots)
        self.mean_service_s: float | None = None

    # -- decisions -------------------------------------------------------------

    def submit(self, item: QueueItem, now: float) -> Unattainable | None:
        """Queue ``item``, or refuse it (nothing queued) when it would wait too long."""
        policy = self.classes[item.slo_class]
        wait = self.predicted_wait(item.slo_class)
        if wait > policy.max_queue_s:
            # By then enough of what is ahead has drained for the wait to fit again.
            retry = max(1, math.ceil(wait - policy.max_queue_s))
            return Unattainable(item.slo_class, wait, policy.max_queue_s, retry)
        self.queue.push(item)
        return None

    def dispatch(
        self, now: float, usable: Callable[[int], bool] | None = None
    ) -> list[tuple[QueueItem, int]]:
        """The queued requests to start now, each with the replica that has room for it
        (the one with the fewest in flight). ``usable`` says which replicas may take
        work (their breakers); when none may, any with room does (trying beats waiting
        out every ejection)."""
        if usable is not None and not any(usable(i) for i in range(len(self.slots))):
            usable = None
        started = []
        while len(self.queue):
            replica = self._roomiest(usable)
            if replica is None:
                break
            item = self.queue.pop(now)
            assert item is not None
            self.in_flight[replica] += 1
            started.append((item, replica))
        return started

    def expire(self, now: float) -> list[QueueItem]:
        """Take out the queued requests that waited longer than their class allows."""
        late = [
            item
            for item in self.queue.items()
            if now - item.enqueued_at > self.classes[item.slo_class].max_queue_s
        ]
        for item in late:
            self.queue.remove(item.request_id)
        return late

    def next_expiry(self) -> float | None:
        """When the next queued request runs out of waiting time; None if none waits."""
        return min(
            (i.enqueued_at + self.classes[i.slo_class].max_queue_s for i in self.queue.items()),
            default=None,
        )

    def predicted_wait(self, slo_class: str) -> float:
        """Seconds a request of ``slo_class`` submitted now would wait for a slot."""
        if self._roomiest() is not None:
            return 0.0
        rate = self._service_rate()
        if rate is None:
            return 0.0  # nothing measured yet: no grounds to refuse
        priority = self.classes[slo_class].priority
        ahead = sum(
            self.queue.depth(name) for name, c in self.classes.items() if c.priority <= priority
        )
        return (ahead + 1) / rate

    # -- outcomes --------------------------------------------------------------

    def finished(self, replica: int, service_s: float) -> None:
        """A dispatched request let go of its slot after holding it ``service_s``."""
        self.in_flight[replica] = max(0, self.in_flight[replica] - 1)
        if self.mean_service_s is None:
            self.mean_service_s = service_s
        else:
            self.mean_service_s += _EWMA * (service_s - self.mean_service_s)

    def cancel(self, request_id: str) -> bool:
        """Its client left while it was queued."""
        return self.queue.remove(request_id) is not None

    # -- internals -------------------------------------------------------------

    def _roomiest(self, usable: Callable[[int], bool] | None = None) -> int | None:
        best = None
        for i, limit in enumerate(self.slots):
            if limit is not None and self.in_flight[i] >= limit:
                continue
            if usable is not None and not usable(i):
                continue
            if best is None or self.in_flight[i] < self.in_flight[best]:
                best = i
        return best

    def _service_rate(self) -> float | None:
        """Requests per second the replicas finish when full; None while unknown or
        unbounded (a replica without a slot limit)."""
        if self.mean_service_s is None or any(s is None for s in self.slots):
            return None
        total = sum(s for s in self.slots if s is not None)
        return total / max(self.mean_service_s, 1e-6)
