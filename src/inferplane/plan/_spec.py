"""A capacity plan: the model, the workload at its peak, the SLOs, the hardware to choose
from with its prices; one YAML file, every key checked."""

from __future__ import annotations

import math
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationInfo, field_validator, model_validator

from inferplane.config import Strict, load_yaml
from inferplane.perf import get_gpu, get_model
from inferplane.twin._lengths import LengthSpec

__all__ = [
    "MIN_REQUESTS",
    "ClassSlo",
    "GpuOffer",
    "PlanSpec",
    "PlanWorkload",
    "RegionOffer",
    "load_plan",
]

# Requests of each class a twin run at the peak must see to measure its P99: with fewer,
# the 99th percentile is no different from the largest value seen.
MIN_REQUESTS = 100
_MAX_TWIN_SECONDS = 86_400


class ClassSlo(Strict):
    """What one class of traffic must get, at the peak."""

    share: float = Field(gt=0, le=1)  # of the requests
    ttft_p99_s: float | None = Field(None, gt=0)
    e2e_p99_s: float | None = Field(None, gt=0)
    min_attainment: float = Field(0.99, gt=0, le=1)  # requests within ttft_p99_s


class PlanWorkload(Strict):
    """The traffic at its peak. Between the average and the peak the day is taken as a
    sine (for the cost of a fleet that follows it). With ``trace`` (relative to the
    plan's folder), what is not given is measured from it (``_trace``), its rates
    times ``growth``."""

    average_rps: float = Field(gt=0)
    peak_rps: float = Field(gt=0)
    spike_factor: float = Field(1.5, ge=1, le=20)  # a burst on top of the peak
    prompt_tokens: LengthSpec
    output_tokens: LengthSpec
    trace: Path | None = None
    growth: float = Field(1.0, gt=0, le=1000)

    @model_validator(mode="before")
    @classmethod
    def _from_trace(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict) or data.get("trace") is None:
            return data
        from inferplane.plan._trace import profile_trace

        trace = Path(str(data["trace"]))
        base = (info.context or {}).get("base_dir")
        if not trace.is_absolute() and base is not None:
            trace = Path(base) / trace
        try:
            measured = profile_trace(trace, growth=float(data.get("growth", 1.0)))
        except OSError as exc:
            raise ValueError(f"cannot read trace {trace}: {exc.strerror}") from None
        return {
            "average_rps": measured.average_rps,
            "peak_rps": measured.peak_rps,
            "prompt_tokens": measured.prompt_tokens,
            "output_tokens": measured.output_tokens,
            **data,
        }

    @model_validator(mode="after")
    def _peak_above_average(self) -> PlanWorkload:
        if self.peak_rps < self.average_rps:
            raise ValueError(
                f"peak_rps {self.peak_rps:g} is below average_rps {self.average_rps:g}"
            )
        if self.trace is None and self.growth != 1.0:
            raise ValueError("growth scales a trace's rates: give a trace")
        return self


class RegionOffer(Strict):
    """A GPU type's terms in one region: an hour of it (per GPU) and how many can be had."""

    on_demand: float | None = Field(None, ge=0)  # None: the catalogue's price
    reserved: float | None = Field(None, ge=0)
    spot: float | None = Field(None, ge=0)
    max_gpus: int | None = Field(None, ge=1)  # the quota; None: as many as asked for


class GpuOffer(Strict):
    """One GPU type and what an hour of it costs (per GPU): in the cloud and owned.
    ``regions`` gives terms per region, each falling back to the offer's own for what it
    leaves out; without it the offer is one unnamed region on the offer's terms."""

    on_demand: float | None = Field(None, ge=0)  # None: the catalogue's price
    reserved: float | None = Field(None, ge=0)
    spot: float | None = Field(None, ge=0)
    max_gpus: int | None = Field(None, ge=1)  # the quota in each region that sets none
    regions: dict[str, RegionOffer] | None = Field(None, min_length=1)
    # Owned: purchase per GPU (its share of the server), power and its price, and
    # the months over which it is written off.
    capex_usd: float | None = Field(None, ge=0)
    power_kw: float = Field(0.7, ge=0)
    usd_per_kwh: float = Field(0.12, ge=0)
    amortisation_months: int = Field(36, ge=1, le=120)

    def terms(self) -> dict[str | None, RegionOffer]:
        """The terms in each region (None names the single region of an offer without
        ``regions``); what a region leaves out is the offer's."""
        own = RegionOffer(
            on_demand=self.on_demand, reserved=self.reserved, spot=self.spot, max_gpus=self.max_gpus
        )
        if self.regions is None:
            return {None: own}
        return {
            name: own.model_copy(update=region.model_dump(exclude_unset=True))
            for name, region in self.regions.items()
        }


class PlanSpec(Strict):
    name: str = "plan"
    model: str
    workload: PlanWorkload
    slos: dict[str, ClassSlo] = Field(min_length=1)
    gpus: dict[str, GpuOffer] = Field(min_length=1)
    tensor_parallel: list[int] = Field(default_factory=lambda: [1, 2, 4], min_length=1)
    max_replicas: int = Field(64, ge=1, le=4096)
    max_gpus: int | None = Field(None, ge=1)  # of the whole fleet, every region's together
    # Region names or patterns (``eu-*``) the fleet may run in; None: any offer's region.
    regions: list[str] | None = Field(None, min_length=1)
    # Regions the fleet is spread over; from 2, any one of them may be lost at the peak.
    min_regions: int = Field(1, ge=1)
    max_num_seqs: int = Field(256, ge=1)
    horizon_months: int = Field(36, ge=1, le=120)
    seed: int = 0
    # Simulated seconds of each twin run at a load level (checked even when left out: the
    # run must see enough requests of every class to measure its P99).
    twin_seconds: float = Field(120.0, gt=0, le=_MAX_TWIN_SECONDS, validate_default=True)

    @model_validator(mode="after")
    def _consistent(self) -> PlanSpec:
        try:
            get_model(self.model)
            for gpu in self.gpus:
                get_gpu(gpu)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        total = sum(c.share for c in self.slos.values())
        if abs(total - 1) > 1e-6:
            raise ValueError(f"the classes' shares must add up to 1, they add up to {total:g}")
        if all(c.ttft_p99_s is None and c.e2e_p99_s is None for c in self.slos.values()):
            raise ValueError("no class has a ttft_p99_s or e2e_p99_s: there is nothing to meet")
        if any(tp < 1 or tp & (tp - 1) for tp in self.tensor_parallel):
            raise ValueError(
                f"tensor_parallel degrees must be powers of two, got {self.tensor_parallel}"
            )
        return self

    # Field validators (not the model's) so that an error points at the key's line; the
    # fields they read come before theirs and are absent when they failed.

    @field_validator("twin_seconds")
    @classmethod
    def _enough_requests(cls, seconds: float, info: ValidationInfo) -> float:
        """A run at the peak must see at least ``MIN_REQUESTS`` requests of each class with a
        target: fewer have no 99th percentile apart from their maximum, and a run that saw
        none would "meet" any target."""
        workload: PlanWorkload | None = info.data.get("workload")
        slos: dict[str, ClassSlo] | None = info.data.get("slos")
        if workload is None or not slos:
            return seconds
        targeted = {
            name: slo.share
            for name, slo in slos.items()
            if slo.ttft_p99_s is not None or slo.e2e_p99_s is not None
        }
        if not targeted:
            return seconds  # the model validator says there is nothing to meet
        name, share = min(targeted.items(), key=lambda item: item[1])
        expected = workload.peak_rps * share * seconds
        if expected < MIN_REQUESTS * (1 - 1e-9):
            needed = math.ceil(round(MIN_REQUESTS / (workload.peak_rps * share), 6))
            of_class = "" if len(slos) == 1 else f" of class {name}"
            fix = (
                f"set twin_seconds to {needed:,} or more"
                if needed <= _MAX_TWIN_SECONDS
                else f"that takes twin_seconds {needed:,}, above the {_MAX_TWIN_SECONDS:,} allowed"
            )
            raise ValueError(
                f"at peak_rps {workload.peak_rps:g} a twin run of {seconds:g} s sees about "
                f"{expected:.3g} requests{of_class}; measuring a P99 needs at least "
                f"{MIN_REQUESTS}: {fix}"
            )
        return seconds

    @field_validator("regions")
    @classmethod
    def _regions_offered(cls, regions: list[str] | None, info: ValidationInfo) -> list[str] | None:
        gpus: dict[str, GpuOffer] | None = info.data.get("gpus")
        if regions is None or gpus is None:
            return regions
        named = sorted({name for offer in gpus.values() for name in offer.terms() if name})
        unmatched = [p for p in regions if not any(_matches(name, [p]) for name in named)]
        if unmatched:
            verb = "matches" if len(unmatched) == 1 else "match"
            offered = ", ".join(named) or "none, no offer names its regions"
            raise ValueError(f"{', '.join(unmatched)} {verb} no GPU offer's region ({offered})")
        return regions

    @field_validator("min_regions")
    @classmethod
    def _regions_to_spread_over(cls, num: int, info: ValidationInfo) -> int:
        gpus: dict[str, GpuOffer] | None = info.data.get("gpus")
        if gpus is None or "regions" not in info.data:
            return num
        # A fleet is of one GPU type, so one offer must have the regions to spread over.
        regions = info.data["regions"]
        most = max(len(_allowed_terms(offer, regions)) for offer in gpus.values())
        if num > most:
            raise ValueError(
                f"{num} is more than the regions any GPU offer has"
                f"{' allowed' if regions else ''} (at most {most})"
            )
        return num

    def allowed_terms(self, gpu: str) -> dict[str | None, RegionOffer]:
        """The offer's terms in the regions the plan allows; with an allow-list, an offer
        without ``regions`` is in none (where it runs is not known)."""
        return _allowed_terms(self.gpus[gpu], self.regions)


def _allowed_terms(offer: GpuOffer, regions: list[str] | None) -> dict[str | None, RegionOffer]:
    terms = offer.terms()
    if regions is None:
        return terms
    return {name: t for name, t in terms.items() if name and _matches(name, regions)}


def _matches(region: str, patterns: list[str]) -> bool:
    """Whether ``region`` is one of ``patterns``: names, or shell-style (``eu-*``)."""
    return any(fnmatchcase(region, pattern) for pattern in patterns)


def load_plan(path: Path) -> PlanSpec:
    """The plan at ``path``; a workload trace is read relative to the plan's folder."""
    return load_yaml(path, PlanSpec, what="plan", context={"base_dir": path.parent})
