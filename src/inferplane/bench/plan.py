"""``inferplane bench plan``: time to a plan over 4 GPU types x 3 TP degrees x 1-64 replicas.

The plan is fixed (a chat service on Llama-3.1-8B at 80 req/s peak, P99 TTFT
1 s): the figure is the wall time of the whole answer (search, curves, spike
test, economics) with every core, against the issue's 2 minutes on 2 cores,
and how many twin runs it took.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from inferplane.bench._report import save_report
from inferplane.plan import PlanSpec, search

__all__ = ["BENCH_PLAN", "run_plan_bench"]

BENCH_PLAN: dict[str, Any] = {
    "name": "bench-plan",
    "model": "llama-3.1-8b",
    "workload": {
        "average_rps": 30,
        "peak_rps": 80,
        "spike_factor": 1.5,
        "prompt_tokens": {"lognormal": {"median": 1020, "sigma": 0.9, "max": 8000}},
        "output_tokens": {"preset": "azure-conversation-2023"},
    },
    "slos": {
        "interactive": {"share": 0.8, "ttft_p99_s": 1.0},
        "batch": {"share": 0.2, "e2e_p99_s": 60},
    },
    "gpus": {
        "H100": {"on_demand": 3.0, "capex_usd": 30_000},
        "A100": {"on_demand": 1.8, "capex_usd": 15_000},
        "L40S": {"on_demand": 1.1, "capex_usd": 9_000},
        "L4": {"on_demand": 0.7, "capex_usd": 3_000},
    },
    "tensor_parallel": [1, 2, 4],
    "max_replicas": 64,
    "twin_seconds": 60,
    "seed": 1,
}


def run_plan_bench(
    *, workers: int | None, out: Path | None, echo: Callable[[str], None] = print
) -> dict[str, Any]:
    spec = PlanSpec.model_validate(BENCH_PLAN)
    workers = workers or os.cpu_count() or 1
    start = time.perf_counter()
    result = search(spec, workers=workers)
    elapsed = time.perf_counter() - start
    twin_runs = result["twin_runs"]
    best = result["best"]
    echo(
        f"plan over {len(spec.gpus)} GPU types x {len(spec.tensor_parallel)} TP degrees x "
        f"1-{spec.max_replicas} replicas, {workers} workers: {elapsed:.1f} s wall, "
        f"{twin_runs} twin runs; best {best['key'] if best else 'none'}"
    )
    return save_report(
        "plan",
        {"plan": BENCH_PLAN, "workers": workers},
        {
            "elapsed_s": elapsed,
            "twin_runs": twin_runs,
            "best": best["key"] if best else None,
            "target_s": 120,
        },
        out,
    )
