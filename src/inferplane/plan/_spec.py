"""A capacity plan: the model, the workload at its peak, the SLOs, the hardware to choose
from with its prices; one YAML file, every key checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, ValidationInfo, model_validator

from inferplane.config import Strict, load_yaml
from inferplane.perf import get_gpu, get_model
from inferplane.twin._lengths import LengthSpec

__all__ = ["ClassSlo", "GpuOffer", "PlanSpec", "PlanWorkload", "load_plan"]


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


class GpuOffer(Strict):
    """One GPU type and what an hour of it costs (per GPU): in the cloud and owned."""

    on_demand: float | None = Field(None, ge=0)  # None: the catalogue's price
    reserved: float | None = Field(None, ge=0)
    spot: float | None = Field(None, ge=0)
    # Owned: purchase per GPU (its share of the server), power and its price, and
    # the months over which it is written off.
    capex_usd: float | None = Field(None, ge=0)
    power_kw: float = Field(0.7, ge=0)
    usd_per_kwh: float = Field(0.12, ge=0)
    amortisation_months: int = Field(36, ge=1, le=120)


class PlanSpec(Strict):
    name: str = "plan"
    model: str
    workload: PlanWorkload
    slos: dict[str, ClassSlo] = Field(min_length=1)
    gpus: dict[str, GpuOffer] = Field(min_length=1)
    tensor_parallel: list[int] = Field(default_factory=lambda: [1, 2, 4], min_length=1)
    max_replicas: int = Field(64, ge=1, le=4096)
    max_gpus: int | None = Field(None, ge=1)
    max_num_seqs: int = Field(256, ge=1)
    horizon_months: int = Field(36, ge=1, le=120)
    seed: int = 0
    # Simulated seconds of each twin run at a load level.
    twin_seconds: float = Field(120.0, gt=0, le=86_400)

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


def load_plan(path: Path) -> PlanSpec:
    """The plan at ``path``; a workload trace is read relative to the plan's folder."""
    return load_yaml(path, PlanSpec, what="plan", context={"base_dir": path.parent})
