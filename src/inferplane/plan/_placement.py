"""Where a fleet runs: its regions, the replicas in each, what they cost an hour, and why
it cannot be had when a quota or ``max_gpus`` stands in the way.

The twin finds R, the fewest replicas that meet every SLO at the peak. The hardware is
the same in every region, so regions change prices, quotas and how many replicas are
bought, never R. Spread over N regions (``min_regions``) so that any one of them may be
lost at the peak, the N - 1 left must hold R between them:

    replicas per region = R                  when N = 1
                        = ceil(R / (N - 1))  when N >= 2

Every region holds as many, so the cheapest set is the N cheapest regions with room for
them (quota >= replicas per region x TP). When fewer than N have room, the fleet is
placed in those and the cheapest others, and each region without room is named.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from inferplane.plan._economics import hourly_prices
from inferplane.plan._spec import PlanSpec, RegionOffer

__all__ = ["Placement", "place", "replicas_per_region", "unplaceable"]


@dataclass(frozen=True, slots=True)
class Placement:
    """A fleet of ``replicas_per_region`` replicas of ``gpu`` at ``tp`` in each region;
    a region named None is the single region of an offer that names none."""

    gpu: str
    tp: int
    replicas_per_region: int
    usd_per_hour_by_region: dict[str | None, dict[str, float | None]]
    shortfall: str | None  # why it cannot be had; None when it can

    @property
    def replicas(self) -> int:
        return self.replicas_per_region * len(self.usd_per_hour_by_region)

    @property
    def gpus(self) -> int:
        return self.replicas * self.tp

    @property
    def key(self) -> str:
        """``H100 x TP1 x 4``, then ``in eu-west, us-east`` where the regions have names."""
        names = ", ".join(name for name in self.usd_per_hour_by_region if name)
        return f"{self.gpu} x TP{self.tp} x {self.replicas}" + (f" in {names}" if names else "")

    @property
    def usd_per_hour(self) -> dict[str, float | None]:
        """The whole fleet's; a kind of price some region lacks is None."""
        by_region = list(self.usd_per_hour_by_region.values())
        return {
            kind: None
            if any(prices[kind] is None for prices in by_region)
            else sum(prices[kind] or 0.0 for prices in by_region)
            for kind in by_region[0]
        }

    def regions(self) -> list[dict[str, Any]]:
        """Each region's share, for the result's JSON."""
        return [
            {
                "region": name,
                "replicas": self.replicas_per_region,
                "gpus": self.replicas_per_region * self.tp,
                "usd_per_hour": prices,
            }
            for name, prices in self.usd_per_hour_by_region.items()
        ]


def replicas_per_region(replicas_at_peak: int, num_regions: int) -> int:
    """What each of ``num_regions`` regions holds so that, from two regions on, the others
    carry ``replicas_at_peak`` when any one is lost."""
    if num_regions == 1:
        return replicas_at_peak
    return math.ceil(replicas_at_peak / (num_regions - 1))


def unplaceable(spec: PlanSpec, gpu: str) -> str | None:
    """Why no fleet of ``gpu`` can be spread as the plan asks; None when one can."""
    allowed = spec.allowed_terms(gpu)
    if not allowed:
        return "not offered in an allowed region"
    if len(allowed) < spec.min_regions:
        where = ", ".join(name or "unnamed" for name in allowed)
        return f"offered in {where} only, fewer regions than min_regions {spec.min_regions}"
    return None


def place(spec: PlanSpec, gpu: str, tp: int, replicas_at_peak: int) -> Placement:
    """The cheapest regions for the fleet whose ``replicas_at_peak`` meet the SLOs at the
    peak, spread over ``min_regions`` (the GPU must have them: ``unplaceable``)."""
    terms = spec.allowed_terms(gpu)
    num = spec.min_regions
    assert len(terms) >= num, unplaceable(spec, gpu)
    each = replicas_per_region(replicas_at_peak, num)
    need = each * tp
    by_price = sorted(terms, key=lambda name: (_gpu_hour(gpu, terms[name]), name or ""))
    with_room = [name for name in by_price if _has_room(terms[name], need)]
    chosen = [*with_room, *(name for name in by_price if name not in with_room)][:num]
    chosen.sort(key=by_price.index)  # named cheapest first
    reasons = [
        f"needs {need} {gpu}{_in(name)}, quota {terms[name].max_gpus}"
        for name in chosen
        if name not in with_room
    ]
    if reasons and len(terms) > num:
        reasons.append(f"no other region has room for {need}")
    if spec.max_gpus is not None and need * num > spec.max_gpus:
        reasons.append(f"needs {need * num} GPUs in all, max_gpus {spec.max_gpus}")
    return Placement(
        gpu=gpu,
        tp=tp,
        replicas_per_region=each,
        usd_per_hour_by_region={name: hourly_prices(gpu, terms[name], need) for name in chosen},
        shortfall="; ".join(reasons) or None,
    )


def _gpu_hour(gpu: str, terms: RegionOffer) -> float:
    on_demand = hourly_prices(gpu, terms, 1)["on_demand"]
    assert on_demand is not None
    return on_demand


def _has_room(terms: RegionOffer, gpus: int) -> bool:
    return terms.max_gpus is None or gpus <= terms.max_gpus


def _in(region: str | None) -> str:
    return f" in {region}" if region else ""
