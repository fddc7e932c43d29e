"""Prices of a fleet: cloud by the hour, or owned (bought, powered, written off).

Hours per month: 730 (8,760 / 12). Owned GPUs draw ``power_kw`` when busy and an
assumed 30% of it when idle; their purchase is paid up front, so the cumulative
cost starts at the capex (the monthly figure in the books writes it off over
``amortisation_months`` instead). The cloud fleet is billed whole every hour. Break-even
utilisation: the busy fraction at which a perfectly autoscaled cloud fleet (paying
only for busy GPU-hours) costs what owning does over the horizon.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from inferplane.perf import get_gpu
from inferplane.plan._spec import GpuOffer, RegionOffer

__all__ = ["HOURS_PER_MONTH", "cloud_vs_owned", "follow_the_day", "hourly_prices"]

HOURS_PER_MONTH = 730.0
_IDLE_POWER = 0.3  # assumption: share of full power an idle GPU draws


def hourly_prices(gpu: str, terms: RegionOffer, gpus: int) -> dict[str, float | None]:
    """USD per hour for ``gpus`` GPUs on these terms: on demand, reserved, spot."""
    on_demand = terms.on_demand if terms.on_demand is not None else get_gpu(gpu).price_per_hour
    return {
        "on_demand": gpus * on_demand,
        "reserved": None if terms.reserved is None else gpus * terms.reserved,
        "spot": None if terms.spot is None else gpus * terms.spot,
    }


def cloud_vs_owned(
    offer: GpuOffer,
    gpus: int,
    prices: Mapping[str, float | None],
    utilisation: float,
    months: int,
) -> dict[str, Any] | None:
    """Cumulative monthly costs over ``months`` of ``gpus`` owned against renting them at
    ``prices`` (the fleet's ``hourly_prices``); None when the offer has no capex."""
    if offer.capex_usd is None:
        return None
    hourly = prices["reserved"] if prices["reserved"] is not None else prices["on_demand"]
    assert hourly is not None
    power_kw = gpus * offer.power_kw * (_IDLE_POWER + (1 - _IDLE_POWER) * utilisation)
    power_month = power_kw * HOURS_PER_MONTH * offer.usd_per_kwh
    capex = gpus * offer.capex_usd
    cloud = [hourly * HOURS_PER_MONTH * m for m in range(1, months + 1)]
    owned = [capex + power_month * m for m in range(1, months + 1)]
    break_even = next(
        (m for m, (c, o) in enumerate(zip(cloud, owned, strict=True), 1) if o <= c), None
    )
    # Owning over the whole horizon against paying the cloud only for busy GPU-hours.
    owned_total = capex + power_month * months
    busy_hour_cost = hourly * HOURS_PER_MONTH * months
    return {
        # What owning costs a month in the books: the purchase written off, and power.
        "owned_monthly_usd": capex / offer.amortisation_months + power_month,
        "cloud_monthly_usd": hourly * HOURS_PER_MONTH,
        "months": list(range(1, months + 1)),
        "cloud_cumulative_usd": cloud,
        "owned_cumulative_usd": owned,
        "cloud_price": "reserved" if prices["reserved"] is not None else "on_demand",
        "break_even_month": break_even,
        "break_even_utilisation": owned_total / busy_hour_cost if busy_hour_cost else None,
    }


def follow_the_day(
    replicas_at_peak: int, average_rps: float, peak_rps: float, usd_per_replica_hour: float
) -> dict[str, Any]:
    """The month of a fleet sized for the peak against one that follows the day (a sine
    with the plan's average as its mean and its peak as its top), each hour sized in
    proportion to the load, never below one replica."""
    hourly_load = [
        max(0.0, average_rps + (peak_rps - average_rps) * math.sin(2 * math.pi * (h - 6) / 24))
        for h in range(24)
    ]
    replicas = [
        max(1, math.ceil(replicas_at_peak * load / peak_rps - 1e-9)) for load in hourly_load
    ]
    days = HOURS_PER_MONTH / 24
    return {
        "fixed_fleet_monthly_usd": replicas_at_peak * usd_per_replica_hour * HOURS_PER_MONTH,
        "follow_the_day_monthly_usd": sum(replicas) * usd_per_replica_hour * days,
        "replicas_by_hour": replicas,
    }
