"""Self-hosted prices: a replica's busy hours, split by weighted tokens."""

from __future__ import annotations

from decimal import Decimal

import pytest

from inferplane.config import Model
from inferplane.gateway._pricing import BusyMeter, HourlyPricing


def model(**backend: object) -> Model:
    return Model.model_validate(
        {
            "pricing": "per_hour",
            "backends": [{"url": "http://h:1", "price_per_hour": 3.6, **backend}],
        }
    )


def test_the_first_request_pays_for_the_replica_while_it_ran() -> None:
    hourly = HourlyPricing(model())
    meter = hourly.meters["h:1"]
    meter.started(100.0)
    meter.finished(102.0, weighted_tokens=1000)  # 500 weighted tokens per busy second
    price = hourly.price("h:1", 2.0, 1000)
    # $3.6/h = $0.001/s; at 500 tokens/s a token costs $2e-6: $2 per 1M, input a quarter.
    assert float(price.output_per_1m) == pytest.approx(2.0, rel=1e-2)
    assert float(price.input_per_1m) == pytest.approx(0.5, rel=1e-2)
    # So the request itself costs its 2 seconds of the replica.
    assert price.cost_micros(0, 1000) == pytest.approx(2000, rel=1e-2)


def test_overlapping_requests_share_the_busy_time_and_idle_time_is_nobodys() -> None:
    meter = BusyMeter(None)
    meter.started(0.0)
    meter.started(1.0)
    meter.finished(2.0, 600)
    meter.finished(3.0, 600)  # busy 0-3 s with 1200 tokens: 400/s
    meter.started(103.0)  # 100 idle seconds later
    meter.finished(104.0, 400)  # busy 1 s more: 1600 tokens in 4 busy seconds
    assert meter.throughput() == pytest.approx(400, rel=2e-2)


def test_a_configured_throughput_prices_before_anything_is_measured() -> None:
    hourly = HourlyPricing(model(throughput_tokens_per_s=1000))
    assert float(hourly.worst().output_per_1m) == pytest.approx(1.0)
    assert HourlyPricing(model()).worst().output_per_1m == Decimal(0)  # nothing known yet


def test_per_hour_pricing_needs_hourly_prices() -> None:
    with pytest.raises(ValueError, match="needs price_per_hour on backends"):
        Model.model_validate({"pricing": "per_hour", "backends": [{"url": "http://h:1"}]})
