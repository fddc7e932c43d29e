"""What a request on a self-hosted replica costs: its share of the replica's busy time.

For a model with ``pricing: per_hour``, a request answered by replica *b* costs

    cost = price_per_hour(b) / 3600 * (output_tokens + w * input_tokens) / T(b)

where ``w`` is the model's ``input_token_weight`` (a prompt token is cheaper to
serve than a generated one) and ``T(b)`` is the replica's throughput in those
weighted tokens per second of *busy* time, time when at least one request of
this gateway was in flight at it. The gateway measures ``T`` itself,
exponentially weighted over about ten minutes, starting from the backend's
``throughput_tokens_per_s`` when configured. Summed over requests, the cost is
the replica's busy hours at its hourly price; idle hours are in no request's
cost (they are headroom, which utilisation shows). Several gateways in front
of the same replicas each see only their own traffic, and so measure a lower
``T``: configure ``throughput_tokens_per_s`` there and the measurement only
refines it.
"""

from __future__ import annotations

import math
from decimal import Decimal

from inferplane.config import Model, Pricing

__all__ = ["BusyMeter", "HourlyPricing"]

_TAU_S = 600.0  # memory of the throughput measurement
_PRIOR_WEIGHT_S = 60.0  # a configured throughput counts as this much busy time
_MICRO = Decimal("1e-6")


class BusyMeter:
    """Weighted tokens per busy second of one replica, exponentially weighted."""

    def __init__(self, prior_tokens_per_s: float | None) -> None:
        self._busy_s = _PRIOR_WEIGHT_S if prior_tokens_per_s else 0.0
        self._tokens = (prior_tokens_per_s or 0.0) * self._busy_s
        self._in_flight = 0
        self._t: float | None = None

    def started(self, now: float) -> None:
        self._advance(now)
        self._in_flight += 1

    def finished(self, now: float, weighted_tokens: float) -> None:
        self._advance(now)
        self._in_flight = max(0, self._in_flight - 1)
        self._tokens += weighted_tokens

    def throughput(self) -> float | None:
        """Weighted tokens per busy second; None before anything was measured."""
        if self._busy_s <= 1e-3 or self._tokens <= 0:
            return None
        return self._tokens / self._busy_s

    def _advance(self, now: float) -> None:
        if self._t is not None and now > self._t:
            dt = now - self._t
            decay = math.exp(-dt / _TAU_S)
            # Busy time accrues while something is in flight; both sides forget alike.
            busy = _TAU_S * (1 - decay) if self._in_flight else 0.0
            self._busy_s = self._busy_s * decay + busy
            self._tokens *= decay
        self._t = now if self._t is None else max(self._t, now)


class HourlyPricing:
    """Per-token prices of a ``per_hour`` model's replicas, from their meters."""

    def __init__(self, model: Model) -> None:
        self.weight = model.input_token_weight
        self.meters = {b.label: BusyMeter(b.throughput_tokens_per_s) for b in model.backends}
        self._hourly = {b.label: b.price_per_hour or 0.0 for b in model.backends}

    def weighted(self, input_tokens: int, output_tokens: int) -> float:
        return output_tokens + float(self.weight) * input_tokens

    def price(self, backend: str, duration_s: float, weighted_tokens: float) -> Pricing:
        """The per-token price on ``backend`` now; before any measurement, the request's
        own pace (``weighted_tokens`` in ``duration_s``: as if it had the replica alone)."""
        throughput = self.meters[backend].throughput()
        if throughput is None:
            throughput = weighted_tokens / duration_s if duration_s > 0 else 0.0
        return self._pricing(self._hourly[backend], throughput)

    def worst(self) -> Pricing:
        """The highest price among the replicas, for holding a request's worst case."""
        prices = [
            self._pricing(self._hourly[label], t)
            for label, meter in self.meters.items()
            if (t := meter.throughput()) is not None
        ]
        return max(prices, key=lambda p: p.output_per_1m, default=Pricing())

    def _pricing(self, hourly: float, throughput: float) -> Pricing:
        if throughput <= 0:
            return Pricing()
        per_1m = Decimal(repr(hourly / 3600 / throughput * 1e6)).quantize(_MICRO)
        return Pricing(output_per_1m=per_1m, input_per_1m=(per_1m * self.weight).quantize(_MICRO))
