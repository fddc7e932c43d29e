"""Dispatch for one logical model: admit or refuse by predicted wait, queue, start work
only when a replica has room.

Pure: the driver (the gateway, or the twin) passes ``now`` and reports what
happened; this object decides. Replicas have a number of *slots* (requests in
flight at once) and a *token capacity* (tokens in flight at once: each
request's prompt + max output, as reserved in ``QueueItem.tokens``); a replica
without limits takes everything at once, and then nothing queues. A request
starts on a replica only if it fits both, except that an empty replica always
takes one, so a request larger than any capacity runs alone rather than never.
The queue order is ``DispatchQueue``'s: priority between SLO classes with
aging, weight between classes of equal priority, token fairness between
tenants; the head of the queue waits for room rather than let smaller requests
overtake it (which could starve a large one).

Admission predicts a request's wait as the work queued ahead of it (its class
and every more urgent one) divided by the fleet's service rate (slots, or
tokens, over the measured mean time a request holds a slot), and refuses at
once when that exceeds the class's ``max_queue_s``, or when the wait plus the
model's measured time to a first token (passed in by the driver) misses the
class's ``ttft_s``: a client told "no, retry in 3 s" now is better served than
one that times out later. A request that still waits longer than
``max_queue_s`` (the prediction was wrong) leaves the queue refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from inferplane.policy._queueing import DispatchQueue, QueueItem, SloClass

__all__ = ["ClassPolicy", "Dispatcher", "Unattainable"]

# A measured service time forgets old requests with this weight per new one.
_EWMA = 0.1


@dataclass(frozen=True, slots=True)
class ClassPolicy:
    """An SLO class: its place in the queue, how long its requests may wait in it, its
    share against classes of equal priority, and its time-to-first-token target (None:
    best effort)."""

    name: str
    priority: int  # 0 is the most urgent
    max_queue_s: float
    weight: float = 1.0
    ttft_s: float | None = None


@dataclass(frozen=True, slots=True)
class Unattainable:
    """The class's wait bound or TTFT target cannot be met: refuse, and say when to come
    back. ``ttft_s`` is set when the TTFT target is what cannot be met."""

    slo_class: str
    predicted_wait_s: float
    max_queue_s: float
    retry_after_s: int
    ttft_s: float | None = None
    first_token_s: float | None = None  # the measured time to a first token it assumed


class Dispatcher:
    def __init__(
        self,
        classes: Mapping[str, ClassPolicy],
        slots: Sequence[int | None],
        *,
        aging_s: float,
        tenant_weights: Mapping[str, float] | None = None,
        token_capacity: Sequence[int | None] | None = None,
    ) -> None:
        if not slots:
            raise ValueError("a model needs at least one replica")
        if token_capacity is not None and len(token_capacity) != len(slots):
            raise ValueError("one token capacity per replica")
        self.classes = dict(classes)
        self.queue = DispatchQueue(
            {n: SloClass(n, c.priority, c.weight) for n, c in classes.items()},
            aging_s=aging_s,
            tenant_weights=tenant_weights,
        )
        self.slots = list(slots)
        self.token_capacity: list[int | None] = (
            list(token_capacity) if token_capacity is not None else [None] * len(slots)
        )
        self.in_flight = [0] * len(slots)
        self.tokens_in_flight = [0] * len(slots)
        self.mean_service_s: float | None = None

    # -- decisions -------------------------------------------------------------

    def submit(
        self, item: QueueItem, now: float, *, first_token_s: float | None = None
    ) -> Unattainable | None:
        """Queue ``item``, or refuse it (nothing queued) when it would wait too long.

        ``first_token_s``: the model's measured time from dispatch to a first token
        (None while unmeasured). A request that must queue is refused when its wait plus
        that misses its class's ``ttft_s``; one that can start at once never is (the
        measurement may be stale, and starting it refreshes the measurement)."""
        policy = self.classes[item.slo_class]
        wait = self.predicted_wait(item.slo_class, tokens=item.tokens)
        if wait > policy.max_queue_s:
            # By then enough of what is ahead has drained for the wait to fit again.
            retry = max(1, math.ceil(wait - policy.max_queue_s))
            return Unattainable(item.slo_class, wait, policy.max_queue_s, retry)
        if policy.ttft_s is not None and first_token_s is not None and wait > 0:
            late = wait + first_token_s - policy.ttft_s
            if late > 0:
                return Unattainable(
                    item.slo_class,
                    wait,
                    policy.max_queue_s,
                    max(1, math.ceil(late)),
                    ttft_s=policy.ttft_s,
                    first_token_s=first_token_s,
                )
        self.queue.push(item)
        return None

    def dispatch(
        self,
        now: float,
        usable: Callable[[int], bool] | None = None,
        placed: Callable[[int], None] | None = None,
    ) -> list[tuple[QueueItem, int]]:
        """The queued requests to start now, each with the replica that has room for it
        (the one with the fewest in flight). ``usable`` says which replicas may take
        work (their breakers); when none may, any with room does (trying beats waiting
        out every ejection). ``placed(replica)`` is told each placement before the next
        is chosen, so that ``usable`` can change with it (a half-open breaker takes one
        probe, not a burst)."""
        if usable is not None and not any(usable(i) for i in range(len(self.slots))):
            usable = None
        started = []
        while (head := self.queue.peek(now)) is not None:
            replica = self._roomiest(head.tokens, usable)
            if replica is None:
                break  # the head waits for room; nothing overtakes it
            item = self.queue.pop(now)
            assert item is head
            self._start(replica, item.tokens)
            started.append((item, replica))
            if placed is not None:
                placed(replica)
        return started

    def take_spare(
        self, tokens: int, exclude: Collection[int], usable: Callable[[int], bool] | None = None
    ) -> int | None:
        """A replica outside ``exclude`` with room for one more request of ``tokens`` right
        now, taken (release it with ``finished``); None when none has room or anything
        waits in the queue: a second attempt (a hedge) must not overtake queued work."""
        if len(self.queue):
            return None
        replica = self._roomiest(tokens, lambda i: i not in exclude and (usable or _any)(i))
        if replica is not None:
            self._start(replica, tokens)
        return replica

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

    def predicted_wait(self, slo_class: str, *, tokens: int = 0) -> float:
        """Seconds a request of ``slo_class`` (and ``tokens``) submitted now would wait
        for room: the requests (or tokens) queued ahead of it over the rate at which
        slots (or tokens) free up, whichever is slower; 0 when it can start at once, and
        when there is no rate to predict from (nothing measured yet, or no replica has
        any slots or tokens now)."""
        priority = self.classes[slo_class].priority
        ahead = [name for name, c in self.classes.items() if c.priority <= priority]
        num_ahead = sum(self.queue.depth(name) for name in ahead)
        if num_ahead == 0 and self._roomiest(tokens) is not None:
            return 0.0
        if self.mean_service_s is None:
            return 0.0  # nothing measured yet: no grounds to refuse
        service_s = max(self.mean_service_s, 1e-6)
        # No capacity at all right now (every replica down, starting or scaled to zero; a
        # driver gives those no slots) frees nothing up, so it gives no rate to predict
        # from; when one comes back (a repair, a cold start) is not this object's to know.
        # As with no measurement: no grounds to refuse. The request queues and
        # ``max_queue_s`` bounds its wait (``expire``), so it is served if a replica comes
        # back in time. Refusing it at once instead would starve a pool scaled to zero:
        # the queued requests are the demand an autoscaler sees to bring it back.
        waits = []
        if all(s is not None for s in self.slots):
            total_slots = sum(s for s in self.slots if s is not None)
            if total_slots > 0:
                waits.append((num_ahead + 1) * service_s / total_slots)
        if all(c is not None for c in self.token_capacity):
            total_tokens = sum(c for c in self.token_capacity if c is not None)
            if total_tokens > 0:
                tokens_ahead = sum(self.queue.tokens(name) for name in ahead)
                waits.append((tokens_ahead + max(tokens, 1)) * service_s / total_tokens)
        return max(waits, default=0.0)

    # -- outcomes --------------------------------------------------------------

    def finished(
        self, replica: int, service_s: float, *, tokens: int = 0, measured: bool = True
    ) -> None:
        """A dispatched request let go of its slot (and its ``tokens``, which a driver
        using token capacities must pass) after holding it ``service_s``; ``measured``
        False keeps that time out of the mean (a cancelled attempt, say)."""
        self.in_flight[replica] = max(0, self.in_flight[replica] - 1)
        self.tokens_in_flight[replica] = max(0, self.tokens_in_flight[replica] - tokens)
        if not measured:
            return
        if self.mean_service_s is None:
            self.mean_service_s = service_s
        else:
            self.mean_service_s += _EWMA * (service_s - self.mean_service_s)

    def cancel(self, request_id: str) -> bool:
        """Its client left while it was queued."""
        return self.queue.remove(request_id) is not None

    # -- internals -------------------------------------------------------------

    def _start(self, replica: int, tokens: int) -> None:
        self.in_flight[replica] += 1
        self.tokens_in_flight[replica] += tokens

    def _fits(self, i: int, tokens: int) -> bool:
        limit = self.slots[i]
        if limit is not None and self.in_flight[i] >= limit:
            return False
        capacity = self.token_capacity[i]
        # An empty replica takes any one request: a huge one must not wait forever.
        return (
            capacity is None
            or self.in_flight[i] == 0
            or self.tokens_in_flight[i] + tokens <= capacity
        )

    def _roomiest(self, tokens: int, usable: Callable[[int], bool] | None = None) -> int | None:
        best = None
        for i in range(len(self.slots)):
            if not self._fits(i, tokens) or (usable is not None and not usable(i)):
                continue
            if best is None or (self.in_flight[i], self.tokens_in_flight[i]) < (
                self.in_flight[best],
                self.tokens_in_flight[best],
            ):
                best = i
        return best


def _any(i: int) -> bool:
    return True
