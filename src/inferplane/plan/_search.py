"""The search: GPU type x tensor parallelism x replicas, pruned by the performance model,
confirmed on the twin, in parallel over processes.

For each (GPU, TP) the performance model says whether the model fits and
roughly what a replica serves; one twin run of a single replica far past that
measures its capacity under the plan's length mix. The fewest replicas that
could carry the peak at all (capacity x replicas >= peak) is where the twin
starts: it grows the count by a quarter until the SLOs hold at the peak, then
bisects down to the fewest that pass. Utilisation is load over that measured
capacity (a continuous-batching engine is "busy" with one request, so its busy
time says little). Each fleet the twin tried is then placed in regions
(``_placement``: prices, quotas, spare replicas for a lost region); the cheapest
passing fleet that can be had wins; the curves, the spike test and the economics
are then worked out for the winners, the twin's runs on the replicas that carry
the peak.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from typing import Any

from inferplane.engines import EngineLimits
from inferplane.perf import PerfModel, get_gpu, get_model
from inferplane.plan._economics import cloud_vs_owned, follow_the_day
from inferplane.plan._estimate import (
    ReplicaEstimate,
    estimate_replica,
    longest_length,
    mean_length,
)
from inferplane.plan._evaluate import Fleet, Outcome, evaluate
from inferplane.plan._placement import place, unplaceable
from inferplane.plan._spec import PlanSpec

__all__ = ["search"]

# Load levels of the utilisation vs P99 curves, as fractions of the peak.
_CURVE = (0.4, 0.6, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5)
# A fleet that meets its SLOs only below this utilisation is held back by queueing.
_QUEUEING = 0.6

# Told (what was just done, steps done, steps in all): one step per (GPU, TP) searched,
# then the curves, then the spike test.
Progress = Callable[[str, int, int], None]


def _fewest_passing(spec: PlanSpec, gpu: str, tp: int, start: int) -> list[Outcome]:
    """Every fleet tried for (gpu, tp), the last passing one being the fewest replicas
    that meet the SLOs at the peak (none passes when the limits come first); ``start``
    is the fewest whose capacity carries the peak."""
    peak = spec.workload.peak_rps
    limit = spec.max_replicas
    if spec.max_gpus is not None:
        limit = min(limit, spec.max_gpus // tp)
    tried: dict[int, Outcome] = {}

    def run(n: int) -> Outcome:
        if n not in tried:
            tried[n] = evaluate(spec, Fleet(gpu, tp, n), peak)
        return tried[n]

    if start > limit:  # it cannot carry the peak within the limits: the nearest miss
        return [replace(run(limit), meets_slo=False)]
    # Fewer than ``start`` cannot sustain the peak (a short run might still drain in time).
    lo, n = start - 1, start  # lo: most replicas known to fail
    while n >= 1 and not run(n).meets_slo:
        if n >= limit:
            return list(tried.values())
        lo, n = n, min(limit, max(n + 1, math.ceil(n * 1.25)))
    hi = n
    while hi - lo > 1:  # the fewest that pass, between a failing and a passing count
        mid = (lo + hi) // 2
        if run(mid).meets_slo:
            hi = mid
        else:
            lo = mid
    best = tried.pop(hi)
    return [*tried.values(), best]


def _search_one(args: tuple[PlanSpec, str, int, float]) -> tuple[float, list[Outcome]]:
    """(measured capacity of one replica in requests/s, the fleets tried)."""
    spec, gpu, tp, estimated_rps = args
    overload = evaluate(spec, Fleet(gpu, tp, 1), 3 * estimated_rps)
    capacity = max(overload.drained_rps, 1e-9)
    start = max(1, math.ceil(spec.workload.peak_rps / capacity))
    return capacity, _fewest_passing(spec, gpu, tp, start)


def _curve(args: tuple[PlanSpec, Fleet]) -> list[Outcome]:
    spec, fleet = args
    return [evaluate(spec, fleet, spec.workload.peak_rps * f) for f in _CURVE]


def _spike(args: tuple[PlanSpec, Fleet, bool]) -> Outcome:
    spec, fleet, autoscale = args
    seconds = max(3 * spec.twin_seconds, 600.0)  # room for a cold start inside the spike
    grow = math.ceil(fleet.replicas * spec.workload.spike_factor) if autoscale else None
    return evaluate(
        spec,
        fleet,
        spec.workload.peak_rps,
        seconds=seconds,
        spike=(seconds / 3, seconds / 3),
        autoscale_to=grow,
    )


def _parallel(fn: Callable[[Any], Any], tasks: list[Any], workers: int) -> Iterator[Any]:
    if workers <= 1 or len(tasks) <= 1:
        yield from map(fn, tasks)
        return
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks))) as pool:
        yield from pool.map(fn, tasks)


def search(
    spec: PlanSpec, *, workers: int | None = None, progress: Progress | None = None
) -> dict[str, Any]:
    """The plan's answer, as the report's JSON contract."""
    say = progress or (lambda *_: None)
    workers = workers or os.cpu_count() or 1
    model = get_model(spec.model)
    prompt = mean_length(spec.workload.prompt_tokens, "prompt", spec.seed)
    output = mean_length(spec.workload.output_tokens, "output", spec.seed)
    longest = (
        longest_length(spec.workload.prompt_tokens, "prompt"),
        longest_length(spec.workload.output_tokens, "output"),
    )
    estimates: dict[tuple[str, int], ReplicaEstimate] = {}
    skipped: list[dict[str, Any]] = []
    for gpu in spec.gpus:
        for tp in spec.tensor_parallel:
            if (reason := unplaceable(spec, gpu)) is not None:
                skipped.append({"gpu": gpu, "tp": tp, "reason": reason})
                continue
            try:
                perf = PerfModel(get_gpu(gpu), model, tp)
            except ValueError as exc:
                skipped.append({"gpu": gpu, "tp": tp, "reason": str(exc)})
                continue
            if (reason := _too_long(perf, longest)) is not None:
                skipped.append({"gpu": gpu, "tp": tp, "reason": reason})
                continue
            est = estimate_replica(perf, prompt, output, spec.max_num_seqs)
            if est is None:
                skipped.append(
                    {"gpu": gpu, "tp": tp, "reason": "one request's KV cache does not fit"}
                )
                continue
            estimates[(gpu, tp)] = est
    tasks = [(spec, gpu, tp, est.rps) for (gpu, tp), est in estimates.items()]
    steps = len(tasks) + 2
    say(f"searching {len(tasks)} GPU x TP combinations on the twin", 0, steps)
    outcomes: list[Outcome] = []
    capacity: dict[tuple[str, int], float] = {}
    for (_, gpu, tp, _), (measured, found) in zip(
        tasks, _parallel(_search_one, tasks, workers), strict=True
    ):
        capacity[(gpu, tp)] = measured
        outcomes.extend(found)
        say(
            f"{gpu} TP{tp}: {measured:.1f} req/s per replica, {len(found)} fleets tried",
            len(capacity),
            steps,
        )
    candidates = _one_per_fleet([_candidate(spec, o, estimates, capacity) for o in outcomes])
    passing = sorted(
        (
            c
            for c in candidates
            if c["meets_slo"]
            and c["infeasible_reason"] is None
            and c["load_rps"] == spec.workload.peak_rps
        ),
        key=lambda c: (c["usd_per_hour"]["on_demand"], c["gpus"], c["key"]),
    )
    best = passing[0] if passing else None
    runner_up: dict[str, dict[str, Any]] = {}
    for c in passing:
        runner_up.setdefault(c["gpu"], c)
    closest = [] if passing else sorted(candidates, key=_miss)[:3]

    curves: dict[str, list[dict[str, Any]]] = {}
    finalists = list(runner_up.values()) or closest[:1]
    say(f"utilisation curves of {len(finalists)} fleets", len(tasks), steps)
    fleets = [_twin_fleet(c) for c in finalists]
    for c, points in zip(
        finalists, _parallel(_curve, [(spec, f) for f in fleets], workers), strict=True
    ):
        curves[c["key"]] = [
            {
                "utilisation": _utilisation(o, capacity),
                "load_rps": o.load_rps,
                "ttft_p99_s": _worst(o.ttft_p99_s),
                "meets_slo": o.meets_slo,
            }
            for o in points
        ]
    utilisation_target = None
    spike_test = None
    economics = None
    monthly = None
    if best is not None:
        ok = [p["utilisation"] for p in curves.get(best["key"], []) if p["meets_slo"]]
        if ok:
            # A spike multiplies the load, and about so the busy fraction.
            utilisation_target = max(ok) / spec.workload.spike_factor
        say("spike test, with and without autoscaling", len(tasks) + 1, steps)
        fleet = _twin_fleet(best)
        fixed, scaled = _parallel(_spike, [(spec, fleet, False), (spec, fleet, True)], workers)
        spike_test = {
            "without_autoscaling": _spike_view(fixed),
            "with_autoscaling": _spike_view(scaled),
        }
        average_busy = best["utilisation"] * spec.workload.average_rps / spec.workload.peak_rps
        economics = cloud_vs_owned(
            spec.gpus[best["gpu"]],
            best["gpus"],
            best["usd_per_hour"],
            average_busy,
            spec.horizon_months,
        )
        monthly = follow_the_day(
            best["replicas"],
            spec.workload.average_rps,
            spec.workload.peak_rps,
            best["usd_per_hour"]["on_demand"] / best["replicas"],
        )
    say("done", steps, steps)
    return {
        "plan": {
            "name": spec.name,
            "model": spec.model,
            "workload": {
                "peak_rps": spec.workload.peak_rps,
                "average_rps": spec.workload.average_rps,
                "spike_factor": spec.workload.spike_factor,
                "mean_prompt_tokens": prompt,
                "mean_output_tokens": output,
            },
            "slos": {n: s.model_dump(exclude={"share"}) for n, s in spec.slos.items()},
            "regions": spec.regions,
            "min_regions": spec.min_regions,
        },
        "skipped": skipped,
        "candidates": candidates,
        "best": best,
        "runner_up_by_gpu": runner_up,
        "closest": closest,
        "curves": curves,
        "utilisation_target": utilisation_target,
        "spike_test": spike_test,
        "cloud_vs_owned": economics,
        "monthly_cost": monthly,
        "seed": spec.seed,
        # One capacity run per (GPU, TP), the fleets tried, the curves, the spike test.
        "twin_runs": len(tasks)
        + len(outcomes)
        + sum(len(points) for points in curves.values())
        + (2 if spike_test is not None else 0),
    }


def _too_long(perf: PerfModel, longest: tuple[tuple[int, bool], tuple[int, bool]]) -> str | None:
    """Why a replica cannot serve the workload's longest request (its prompt and output
    held in KV blocks at once, as the engine admits it), or None when it can."""
    (prompt, prompt_bounded), (output, output_bounded) = longest
    block = EngineLimits().block_size  # the twin's replicas keep the engine's default
    if -(-(prompt + output) // block) <= perf.kv_capacity_tokens // block:
        return None
    unbounded = [
        role
        for role, bounded in (("prompt", prompt_bounded), ("output", output_bounded))
        if not bounded
    ]
    note = (
        f" ({' and '.join(unbounded)} lengths without a max: the length exceeded once in "
        "10^12 draws; give them a max)"
        if unbounded
        else ""
    )
    return (
        f"the longest request, {prompt:,} prompt + {output:,} output tokens, does not fit "
        f"a replica's KV cache of {perf.kv_capacity_tokens:,} tokens{note}"
    )


def _utilisation(o: Outcome, capacity: dict[tuple[str, int], float]) -> float:
    """Load over what the fleet completes at most (its measured capacity)."""
    return o.load_rps / (o.fleet.replicas * capacity[(o.fleet.gpu, o.fleet.tp)])


def _candidate(
    spec: PlanSpec,
    o: Outcome,
    estimates: dict[tuple[str, int], ReplicaEstimate],
    capacity: dict[tuple[str, int], float],
) -> dict[str, Any]:
    """The twin's fleet ``o`` as bought: placed in regions, priced, its SLOs judged."""
    f = o.fleet
    est = estimates[(f.gpu, f.tp)]
    placed = place(spec, f.gpu, f.tp, f.replicas)
    prices = placed.usd_per_hour
    hourly = prices["on_demand"]
    assert hourly is not None
    at_peak = _utilisation(o, capacity)  # of the replicas the twin ran
    bottleneck, reason = est.bottleneck, est.reason
    if o.meets_slo and at_peak < _QUEUEING:
        bottleneck = "queueing"
        reason = (
            f"the latency targets hold only at {at_peak:.0%} of capacity: requests "
            "would wait for a batch slot or a prefill"
        )
    return {
        "key": placed.key,
        "gpu": f.gpu,
        "tp": f.tp,
        "replicas": placed.replicas,
        "gpus": placed.gpus,
        # What carries the peak (the twin's fleet); the rest stands in for a lost region.
        "replicas_at_peak": f.replicas,
        "regions": placed.regions(),
        "infeasible_reason": placed.shortfall,
        "load_rps": o.load_rps,
        "meets_slo": o.meets_slo,
        "source": "twin",
        "ttft_p99_s": o.ttft_p99_s,
        "e2e_p99_s": o.e2e_p99_s,
        "attainment": o.attainment,
        # Of the fleet as bought, every region up.
        "utilisation": o.load_rps / (placed.replicas * capacity[(f.gpu, f.tp)]),
        "busy_fraction": o.utilisation,
        "estimated_replica_rps": est.rps,
        "measured_replica_rps": capacity[(f.gpu, f.tp)],
        "usd_per_hour": prices,
        "usd_per_1m_tokens": hourly / (o.tokens_per_s * 3600) * 1e6 if o.tokens_per_s else None,
        "usd_per_request": hourly / (o.completed_rps * 3600) if o.completed_rps else None,
        "bottleneck": bottleneck,
        "bottleneck_reason": reason,
    }


def _one_per_fleet(candidates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One candidate per fleet as bought. Rounding up per region can place two of the
    twin's fleets alike (R = 3 and R = 4 over three regions: 2 in each); the bought fleet
    meets the SLOs when either did."""
    kept: dict[str, dict[str, Any]] = {}
    for c in candidates:
        if c["key"] not in kept or (c["meets_slo"] and not kept[c["key"]]["meets_slo"]):
            kept[c["key"]] = c
    return list(kept.values())


def _twin_fleet(c: dict[str, Any]) -> Fleet:
    """The replicas the twin ran for a candidate: those that carry the peak."""
    return Fleet(c["gpu"], c["tp"], c["replicas_at_peak"])


def _worst(values: dict[str, float | None]) -> float | None:
    known = [v for v in values.values() if v is not None]
    return max(known) if known else None


def _miss(c: dict[str, Any]) -> tuple[bool, float, float]:
    """How far a fleet is from passing: one that meets the SLOs (and only a quota stops)
    first, then its worst TTFT, then its cost."""
    worst = 0.0 if c["meets_slo"] else _worst(c["ttft_p99_s"]) or math.inf
    return (not c["meets_slo"], worst, c["usd_per_hour"]["on_demand"])


def _spike_view(o: Outcome) -> dict[str, Any]:
    attained = [a for a in o.attainment.values() if a is not None]
    return {
        "ttft_p99_s": _worst(o.ttft_p99_s),
        "attainment": min(attained) if attained else None,
        "meets_slo": o.meets_slo,
        "replicas_over_time": o.replicas_over_time,
    }
