"""The gateway's side of ``policy.Dispatcher``: requests wait here, on futures, until the
dispatcher gives them a replica slot; a timer takes out those that waited too long.

Only models with a backend that sets ``max_concurrency`` queue at all; for the
others a request goes straight to the proxy's router.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Mapping

from inferplane.config import Config, Tenant
from inferplane.policy import (
    ClassPolicy,
    Dispatcher,
    EngineLoad,
    Health,
    QueueItem,
    Unattainable,
    learn_slots,
)
from inferplane.wire import OpenAIError

__all__ = ["CLASS_HEADER", "ModelQueue", "TenantWeights", "unattainable"]

CLASS_HEADER = "x-inferplane-class"
# Slots of a replica whose concurrency is learned, before it reported anything.
_AUTO_START = 16


class TenantWeights(Mapping[str, float]):
    """Tenants' fairness weights, read live: admin changes apply to the next dispatch."""

    def __init__(self, tenants: Mapping[str, Tenant]) -> None:
        self._tenants = tenants

    def __getitem__(self, name: str) -> float:
        return self._tenants[name].weight

    def __iter__(self) -> Iterator[str]:
        return iter(self._tenants)

    def __len__(self) -> int:
        return len(self._tenants)


class ModelQueue:
    """The queue of one logical model and the replica slots it hands out."""

    def __init__(
        self, config: Config, model: str, weights: Mapping[str, float], health: Health
    ) -> None:
        classes = {
            name: ClassPolicy(name, c.priority, c.max_queue_s)
            for name, c in config.slo_classes.items()
        }
        backends = config.models[model].backends
        self.learned = [b.max_concurrency == "auto" for b in backends]
        slots = [_slots(b.max_concurrency) for b in backends]
        self.dispatcher = Dispatcher(
            classes,
            slots,
            aging_s=config.queue_aging_s,
            tenant_weights=weights,
        )
        self._health = health
        self._waiting: dict[str, asyncio.Future[int]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def depth(self, slo_class: str) -> int:
        return self.dispatcher.queue.depth(slo_class)

    async def acquire(self, item: QueueItem) -> int:
        """Wait for a slot; returns the replica's index. 429 when the class's wait bound
        cannot be met, at once or after waiting."""
        refused = self.dispatcher.submit(item, time.monotonic())
        if refused is not None:
            raise unattainable(refused)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting[item.request_id] = future
        self._pump()
        try:
            return await future
        except asyncio.CancelledError:
            # The client left while queued; or, dispatched in the same instant, give it back.
            dispatched = future.done() and not future.cancelled() and not future.exception()
            if not self.dispatcher.cancel(item.request_id) and dispatched:
                self.release(future.result(), 0.0)
            raise
        finally:
            self._waiting.pop(item.request_id, None)

    def learn(self, replica: int, load: EngineLoad) -> None:
        """Adjust a learned replica's slots to what it reports; start what now fits."""
        d = self.dispatcher
        current = d.slots[replica]
        assert current is not None
        d.slots[replica] = learn_slots(current, load, d.in_flight[replica])
        self._pump()

    def release(self, replica: int, service_s: float) -> None:
        """A request let go of its slot: start what waits."""
        self.dispatcher.finished(replica, service_s)
        self._pump()

    def _pump(self) -> None:
        now = time.monotonic()
        health = self._health
        for item, replica in self.dispatcher.dispatch(now, lambda i: health.available(i, now)):
            future = self._waiting.get(item.request_id)
            if future is None or future.done():
                self.dispatcher.finished(replica, 0.0)  # nobody waits for it any more
                continue
            health.sent(replica)
            future.set_result(replica)
        self._arm(now)

    def _expire(self) -> None:
        self._timer = None
        now = time.monotonic()
        for item in self.dispatcher.expire(now):
            future = self._waiting.get(item.request_id)
            if future is not None and not future.done():
                policy = self.dispatcher.classes[item.slo_class]
                future.set_exception(
                    OpenAIError(
                        429,
                        f"Waited {now - item.enqueued_at:.2f} s in the queue; the "
                        f"'{item.slo_class}' class allows {policy.max_queue_s:g} s.",
                        "slo_unattainable",
                        headers={"retry-after": "1"},
                    )
                )
        self._arm(now)

    def _arm(self, now: float) -> None:
        """Wake up when the next queued request runs out of waiting time."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        expiry = self.dispatcher.next_expiry()
        if expiry is not None:
            delay = max(0.0, expiry - now) + 0.001
            self._timer = asyncio.get_running_loop().call_later(delay, self._expire)


def _slots(max_concurrency: int | str | None) -> int | None:
    """The slots a replica starts with: its configured limit, or a start to learn from."""
    if isinstance(max_concurrency, str):  # "auto"
        return _AUTO_START
    return max_concurrency


def unattainable(refused: Unattainable) -> OpenAIError:
    return OpenAIError(
        429,
        f"The '{refused.slo_class}' class waits at most {refused.max_queue_s:g} s for a "
        f"replica; the queue ahead would take about {refused.predicted_wait_s:.2f} s. "
        f"Retry in {refused.retry_after_s} s.",
        "slo_unattainable",
        headers={"retry-after": str(refused.retry_after_s)},
    )
