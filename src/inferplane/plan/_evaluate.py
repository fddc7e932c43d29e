"""One candidate fleet under one load, run on the twin, judged against the plan's SLOs.

Each evaluation is a plain function of picklable arguments so the search can
spread them over processes; the seed is the plan's, so every run of a plan
gives the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from inferplane.plan._spec import PlanSpec
from inferplane.twin import Scenario, Simulation

__all__ = ["Fleet", "Outcome", "evaluate", "scenario_for"]


@dataclass(frozen=True, slots=True)
class Fleet:
    gpu: str
    tp: int
    replicas: int

    @property
    def key(self) -> str:
        return f"{self.gpu} x TP{self.tp} x {self.replicas}"

    @property
    def gpus(self) -> int:
        return self.tp * self.replicas


@dataclass(frozen=True, slots=True)
class Outcome:
    fleet: Fleet
    load_rps: float
    meets_slo: bool
    ttft_p99_s: dict[str, float | None]
    e2e_p99_s: dict[str, float | None]
    attainment: dict[str, float | None]
    utilisation: float  # mean busy fraction of the replicas
    completed_rps: float  # over the arrivals' window
    drained_rps: float  # over the whole run, queue drained: the rate it can sustain
    tokens_per_s: float
    replicas_over_time: list[tuple[float, int]]


def scenario_for(
    spec: PlanSpec,
    fleet: Fleet,
    load_rps: float,
    *,
    seconds: float | None = None,
    spike: tuple[float, float] | None = None,
    autoscale_to: int | None = None,
) -> Scenario:
    """The twin scenario of ``fleet`` under Poisson load at ``load_rps`` split by class;
    ``spike``: (start, length) of the spike factor; ``autoscale_to``: scale up to this."""
    duration = seconds or spec.twin_seconds
    shape = []
    if spike is not None:
        start, length = spike
        shape = [
            {"step": {"at_s": start, "duration_s": length, "factor": spec.workload.spike_factor}}
        ]
    streams = [
        {
            "tenant": "plan",
            "slo_class": name,
            "model": spec.model,
            "rate": load_rps * slo.share,
            "shape": shape,
            "prompt_tokens": spec.workload.prompt_tokens.model_dump(),
            "output_tokens": spec.workload.output_tokens.model_dump(),
        }
        for name, slo in spec.slos.items()
    ]
    group: dict[str, Any] = {
        "gpu": fleet.gpu,
        "tp": fleet.tp,
        "count": fleet.replicas,
        "max_num_seqs": spec.max_num_seqs,
    }
    model: dict[str, Any] = {"routing": "least_loaded", "replicas": [group]}
    if autoscale_to is not None:
        model["autoscale"] = {
            "min_replicas": fleet.replicas,
            "max_replicas": max(fleet.replicas, autoscale_to),
            "target_in_flight_per_replica": spec.max_num_seqs / 2,
        }
    classes = {
        name: {"priority": i, "max_queue_s": 86_400, "ttft_s": slo.ttft_p99_s}
        for i, (name, slo) in enumerate(spec.slos.items())
    }
    return Scenario.model_validate(
        {
            "seed": spec.seed,
            "models": {spec.model: model},
            "slo_classes": classes,
            "default_slo_class": next(iter(spec.slos)),
            "workload": {"duration_s": duration, "streams": streams},
            "output": {"requests": False, "timeseries_interval_s": max(1.0, duration / 60)},
        }
    )


def evaluate(
    spec: PlanSpec,
    fleet: Fleet,
    load_rps: float,
    *,
    seconds: float | None = None,
    spike: tuple[float, float] | None = None,
    autoscale_to: int | None = None,
) -> Outcome:
    scenario = scenario_for(
        spec, fleet, load_rps, seconds=seconds, spike=spike, autoscale_to=autoscale_to
    )
    sim = Simulation(scenario)
    summary = sim.run()
    ttft: dict[str, float | None] = {}
    e2e: dict[str, float | None] = {}
    attained: dict[str, float | None] = {}
    meets = True
    for name, slo in spec.slos.items():
        view = summary["by_class"].get(name)
        if view is None or not view["completed"]:
            ttft[name] = e2e[name] = attained[name] = None
            if slo.ttft_p99_s is not None or slo.e2e_p99_s is not None:
                meets = False  # a target nothing measured is not met
            else:
                meets &= view is None or not view["arrived"]  # arrived, none served: a miss
            continue
        ttft[name] = t = float(view["ttft_s"]["p99"])
        e2e[name] = e = float(view["e2e_s"]["p99"])
        attained[name] = a = float(view["slo_attainment"])
        if slo.ttft_p99_s is not None:
            meets &= t <= slo.ttft_p99_s and a >= slo.min_attainment
        if slo.e2e_p99_s is not None:
            meets &= e <= slo.e2e_p99_s
    # None when no request arrived at all (a load too low for the run's length).
    total = summary["total"] or {"completed": 0, "input_tokens": 0, "output_tokens": 0}
    window = summary["arrival_window_s"] or 1.0
    replicas = summary["replicas"]
    busy = sum(r["busy_fraction"] for r in replicas) / max(1, len(replicas))
    ready = [(row["time_s"], row[f"{spec.model}.ready"]) for row in sim.timeseries]
    return Outcome(
        fleet=fleet,
        load_rps=load_rps,
        meets_slo=meets,
        ttft_p99_s=ttft,
        e2e_p99_s=e2e,
        attainment=attained,
        utilisation=busy,
        completed_rps=total["completed"] / window,
        drained_rps=total["completed"] / (summary["makespan_s"] or 1.0),
        tokens_per_s=(total["input_tokens"] + total["output_tokens"]) / window,
        replicas_over_time=ready,
    )
