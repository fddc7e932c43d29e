"""``inferplane bench twin``: how fast the twin simulates, and how that scales.

Fleets of H100 replicas serving Llama-3.1-8B (vLLM's default limits) under a
Poisson chat load at ``load`` x their capacity, for several fleet sizes and
request counts, in one process, one after the other. The figure of merit is
simulated requests per wall-clock second (the issue's target: 50,000 on one
core for 64 replicas near saturation). Memory: the peak traced allocation of a
run and a four times longer one of the smallest fleet, with per-request output
off, must stay flat. Where the twin runs compiled (``setup.py``), the largest
fleet's run is timed again as plain Python, in a child process, for the ratio.

Capacity is measured, not assumed: one replica is driven far past saturation in
the twin and its completion rate is taken as the per-replica capacity.
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from inferplane.bench._report import save_report
from inferplane.twin import Scenario, Simulation, compiled, run_plain

__all__ = ["MAX_LOAD", "MAX_REPLICAS", "MAX_REQUESTS", "run_twin_bench"]

# The ranges the command takes: beyond them a run says nothing more about the twin's speed
# (10x overload only fills queues) or would outlast any sitting; within them the stream's
# rate (load x ~37 req/s x replicas) stays inside the twin's 10**7 req/s.
MAX_LOAD = 10.0
MAX_REPLICAS = 10_000
MAX_REQUESTS = 10_000_000

_PROMPT = {"lognormal": {"median": 512, "sigma": 0.8, "max": 4096}}
_OUTPUT = {"lognormal": {"median": 128, "sigma": 0.8, "max": 1024}}


def _scenario(replicas: int, rate: float, requests: int, seed: int) -> Scenario:
    return Scenario.model_validate(
        {
            "seed": seed,
            "models": {
                "llama-3.1-8b": {
                    "routing": "least_loaded",
                    "replicas": [{"gpu": "H100", "count": replicas}],
                }
            },
            "workload": {
                "duration_s": requests / rate,
                "streams": [
                    {
                        "tenant": "t",
                        "slo_class": "interactive",
                        "model": "llama-3.1-8b",
                        "rate": rate,
                        "prompt_tokens": _PROMPT,
                        "output_tokens": _OUTPUT,
                    }
                ],
            },
            "output": {"requests": False, "timeseries_interval_s": 60},
        }
    )


def capacity_per_replica(seed: int) -> float:
    """Requests per second one replica completes when driven at ~4x what it can take."""
    summary = Simulation(_scenario(1, 200.0, 6000, seed)).run()
    return float(summary["total"]["completed"]) / float(summary["makespan_s"])


def _timed(scenario: Scenario) -> tuple[dict[str, Any], float]:
    start = time.perf_counter()
    summary = Simulation(scenario).run()
    return summary, time.perf_counter() - start


def _plain_rate(replicas: int, rate: float, count: int, seed: int) -> float:
    """Simulated requests per wall second of the same run with the twin as plain Python."""
    printed = run_plain(
        "from inferplane.bench.twin import _scenario, _timed\n"
        f"summary, wall = _timed(_scenario({replicas}, {rate!r}, {count}, {seed}))\n"
        "print(repr(summary['requests'] / wall))\n"
    )
    return float(printed)


def _peak_bytes(scenario: Scenario) -> int:
    tracemalloc.start()
    try:
        Simulation(scenario).run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def run_twin_bench(
    *,
    fleets: tuple[int, ...],
    requests: int,
    load: float,
    seed: int,
    out: Path | None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    per_replica = capacity_per_replica(seed)
    fast = compiled()
    echo(
        "twin: compiled (mypyc)"
        if fast
        else "twin: plain Python (an editable install; `pip install .` compiles it)"
    )
    echo(f"capacity: {per_replica:.1f} req/s per replica (twin, driven at overload)")
    runs = []
    cases = [(n, requests) for n in fleets] + [(max(fleets), 4 * requests)]
    echo(
        f"{'replicas':>8} {'requests':>9} {'sim s':>8} {'wall s':>7} {'sim req/s':>10} {'busy':>5}"
    )
    for replicas, count in cases:
        rate = load * per_replica * replicas
        summary, wall = _timed(_scenario(replicas, rate, count, seed))
        busy = sum(r["busy_fraction"] for r in summary["replicas"]) / replicas
        run = {
            "replicas": replicas,
            "requests": summary["requests"],
            "offered_rps": rate,
            "simulated_s": summary["makespan_s"],
            "wall_s": wall,
            "sim_requests_per_wall_s": summary["requests"] / wall,
            "sim_seconds_per_wall_s": summary["makespan_s"] / wall,
            "mean_busy_fraction": busy,
        }
        runs.append(run)
        echo(
            f"{replicas:>8} {run['requests']:>9,} {run['simulated_s']:>8,.0f} {wall:>7.2f} "
            f"{run['sim_requests_per_wall_s']:>10,.0f} {busy:>5.0%}"
        )
    plain = None
    if fast:
        largest = max(fleets)
        plain_rps = _plain_rate(largest, load * per_replica * largest, requests, seed)
        same = next(r for r in runs if r["replicas"] == largest)
        ratio = same["sim_requests_per_wall_s"] / plain_rps
        plain = {"replicas": largest, "requests": requests, "sim_requests_per_wall_s": plain_rps}
        plain["compiled_over_plain"] = ratio
        echo(
            f"plain Python, {largest} replicas, {requests:,} requests: {plain_rps:,.0f} "
            f"sim req/s (compiled: {ratio:.2f}x)"
        )
    # Memory on the smallest fleet, which fills up soonest: once its requests in flight
    # have settled, more requests must not mean more memory.
    smallest = min(fleets)
    rate = load * per_replica * smallest
    short = _peak_bytes(_scenario(smallest, rate, requests // 4, seed))
    long = _peak_bytes(_scenario(smallest, rate, requests, seed))
    echo(
        f"peak traced memory, {smallest} replicas: {short / 2**20:.1f} MiB for "
        f"{requests // 4:,} requests, {long / 2**20:.1f} MiB for {requests:,} "
        f"(ratio {long / short:.2f})"
    )
    results = {
        "capacity_per_replica_rps": per_replica,
        "runs": runs,
        "memory": {
            "replicas": smallest,
            "requests": [requests // 4, requests],
            "peak_bytes": [short, long],
            "ratio": long / short,
        },
        "compiled": fast,
        "plain_python": plain,
        "target_sim_requests_per_wall_s": 50_000,
    }
    params = {"fleets": list(fleets), "requests": requests, "load": load, "seed": seed}
    return save_report("twin", params, results, out)
