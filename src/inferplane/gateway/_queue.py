"""The gateway's side of ``policy.Dispatcher``: requests wait here, on futures, until the
dispatcher gives them a replica slot; a timer takes out those that waited too long.

Only models with a backend that sets ``max_concurrency`` or
``max_tokens_in_flight`` queue at all; for the others a request goes straight
to the proxy's router.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Iterator, Mapping

from inferplane.config import Config, Tenant
from inferplane.policy import (
    BreakerState,
    Dispatcher,
    EngineLoad,
    Health,
    QueueItem,
    Unattainable,
    learn_slots,
    learn_token_capacity,
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
        classes = {name: c.policy(name) for name, c in config.slo_classes.items()}
        backends = config.models[model].backends
        self.learned_slots = [b.max_concurrency == "auto" for b in backends]
        self.learned_tokens = [b.max_tokens_in_flight == "auto" for b in backends]
        # Replicas whose /metrics the health checks read.
        self.learned = [
            s or t for s, t in zip(self.learned_slots, self.learned_tokens, strict=True)
        ]
        slots = [_slots(b.max_concurrency) for b in backends]
        tokens = [
            t if isinstance(t, int) else None for t in (b.max_tokens_in_flight for b in backends)
        ]
        self.dispatcher = Dispatcher(
            classes,
            slots,
            aging_s=config.queue_aging_s,
            tenant_weights=weights,
            token_capacity=tokens,
        )
        self._health = health
        self._waiting: dict[str, asyncio.Future[int]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def depth(self, slo_class: str) -> int:
        return self.dispatcher.queue.depth(slo_class)

    def capacity(self, replica: int, unit: str) -> float:
        """A replica's slots (``requests``) or token capacity (``tokens``); inf: none."""
        d = self.dispatcher
        limit = d.slots[replica] if unit == "requests" else d.token_capacity[replica]
        return float("inf") if limit is None else float(limit)

    async def acquire(self, item: QueueItem, first_token_s: float | None = None) -> int:
        """Wait for a slot; returns the replica's index. 429 when the class's wait bound
        or TTFT target (with the model's measured ``first_token_s``) cannot be met, at
        once, or when its wait bound ran out while waiting."""
        refused = self.dispatcher.submit(item, time.monotonic(), first_token_s=first_token_s)
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
                self.served(item.tenant, item.slo_class, item.tokens, 0)
                self.release(future.result(), 0.0, item.tokens, measured=False)
            raise
        finally:
            self._waiting.pop(item.request_id, None)

    def learn(self, replica: int, load: EngineLoad) -> None:
        """Adjust a learned replica's slots and token capacity to what it reports; start
        what now fits."""
        d = self.dispatcher
        if self.learned_slots[replica]:
            current = d.slots[replica]
            assert current is not None
            d.slots[replica] = learn_slots(current, load, d.in_flight[replica])
        if self.learned_tokens[replica]:
            d.token_capacity[replica] = learn_token_capacity(
                d.token_capacity[replica], load, d.tokens_in_flight[replica]
            )
        self._pump()

    def release(
        self, replica: int, service_s: float, tokens: int, *, measured: bool = True
    ) -> None:
        """A request let go of its slot and ``tokens``: start what waits. ``measured``
        False: its time says nothing of the service time (a cancelled attempt)."""
        self.dispatcher.finished(replica, service_s, tokens=tokens, measured=measured)
        self._pump()

    def served(self, tenant: str, slo_class: str, reserved: int, used: int) -> None:
        """A dispatched request ended having used ``used`` of the ``reserved`` tokens its
        tenant was counted at dispatch: fairness is on tokens served, not asked for."""
        self.dispatcher.queue.settle(tenant, slo_class, reserved, used)

    def take_spare(self, tokens: int, exclude: Collection[int]) -> int | None:
        """A slot for a second attempt (a hedge) on a replica outside ``exclude`` whose
        breaker is closed, if one has room now and nothing queues; else None."""
        breakers = self._health.breakers
        return self.dispatcher.take_spare(
            tokens, exclude, lambda i: breakers[i].state is BreakerState.CLOSED
        )

    def _pump(self) -> None:
        now = time.monotonic()
        health = self._health
        started = self.dispatcher.dispatch(
            now, lambda i: health.available(i, now), placed=health.sent
        )
        for item, replica in started:
            future = self._waiting.get(item.request_id)
            if future is None or future.done():
                # Nobody waits for it any more.
                self.dispatcher.queue.settle(item.tenant, item.slo_class, item.tokens, 0)
                self.dispatcher.finished(replica, 0.0, tokens=item.tokens, measured=False)
                health.abandoned(replica)
                continue
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
    if refused.ttft_s is not None:
        message = (
            f"The '{refused.slo_class}' class targets a first token within "
            f"{refused.ttft_s:g} s; the queue ahead would take about "
            f"{refused.predicted_wait_s:.2f} s and the model takes about "
            f"{refused.first_token_s or 0:.2f} s to a first token."
        )
    else:
        message = (
            f"The '{refused.slo_class}' class waits at most {refused.max_queue_s:g} s for a "
            f"replica; the queue ahead would take about {refused.predicted_wait_s:.2f} s."
        )
    return OpenAIError(
        429,
        f"{message} Retry in {refused.retry_after_s} s.",
        "slo_unattainable",
        headers={"retry-after": str(refused.retry_after_s)},
    )
