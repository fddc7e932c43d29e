"""Twin vs live: one workload through the real gateway and emulated replicas, and through
the twin; the twin must predict what clients saw (issue 6: p50 and p99 TTFT and e2e
within 10%, admissions and refusals within 2% of the requests)."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest

from inferplane.bench._replay import Replayed, replay
from inferplane.twin import Scenario, Simulation, arrivals
from tests.integration.conftest import KEY, MODEL

pytestmark = pytest.mark.integration

TENANT = "tenant-a"
REPLICAS = 3
SLOTS = 16


def _scenario() -> Scenario:
    """Three A100 replicas of Llama-3.1-8B with a gateway queue; ~1,900 requests in 120 s
    at about 90% busy, with a 2.5x spike that makes the queue refuse some."""
    shared = {"tenant": TENANT, "model": MODEL}
    return Scenario.model_validate(
        {
            "seed": 11,
            "models": {
                MODEL: {
                    "routing": "least_loaded",
                    "replicas": [
                        {
                            "gpu": "A100",
                            "count": REPLICAS,
                            "max_num_seqs": SLOTS,
                            "max_concurrency": SLOTS,
                        }
                    ],
                }
            },
            "tenants": {TENANT: {"weight": 1}},
            "workload": {
                "duration_s": 120,
                "streams": [
                    {
                        **shared,
                        "slo_class": "interactive",
                        "rate": 11,
                        "shape": [{"step": {"at_s": 50, "duration_s": 15, "factor": 2.5}}],
                        "prompt_tokens": {"uniform": [1000, 3000]},
                        "output_tokens": {"uniform": [16, 64]},
                    },
                    {
                        **shared,
                        "slo_class": "realtime",
                        "rate": 3,
                        "prompt_tokens": {"uniform": [100, 300]},
                        "output_tokens": {"fixed": 16},
                    },
                ],
            },
            "output": {"requests": False},
        }
    )


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.floor(q * len(ordered)))]


def _live_figures(results: list[Replayed]) -> dict[str, Any]:
    ok = [r for r in results if r.status == 200]
    assert all(r.ttft_s is not None and r.e2e_s is not None for r in ok)
    refused = [r for r in results if r.status == 429]
    other = [r for r in results if r.status not in (200, 429)]
    assert not other, f"unexpected answers: {[(r.status, r.code) for r in other[:5]]}"
    assert {r.code for r in refused} <= {"slo_unattainable"}
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    e2e = [r.e2e_s for r in ok if r.e2e_s is not None]
    return {
        "completed": len(ok),
        "refused": len(refused),
        "ttft": {q: _quantile(ttft, q) for q in (0.5, 0.99)},
        "e2e": {q: _quantile(e2e, q) for q in (0.5, 0.99)},
    }


def test_the_twin_predicts_what_live_clients_see(start_emulator, start_gateway) -> None:
    scenario = _scenario()
    flags = ("--gpu", "A100", "--model", MODEL, "--max-num-seqs", str(SLOTS))
    engines = [start_emulator(*flags, time_scale=1.0) for _ in range(REPLICAS)]
    gateway = start_gateway(
        [e.url for e in engines],
        backend=f"max_concurrency: {SLOTS}",
        model="routing: least_loaded",
    )
    workload = list(arrivals(scenario.workload, seed=scenario.seed, base_dir=Path(".")))
    live = _live_figures(asyncio.run(replay(gateway.url, workload, {TENANT: KEY})))

    twin = Simulation(scenario).run()["total"]
    n = len(workload)
    assert twin["arrived"] == n
    report = {"live": live, "twin": twin}
    # Admissions: the same decisions within 2% of all requests.
    refused_twin = sum(twin["rejected"].values())
    assert abs(live["refused"] - refused_twin) <= 0.02 * n, report
    assert abs(live["completed"] - twin["completed"]) <= 0.02 * n, report
    off = {}
    for metric in ("ttft", "e2e"):
        for q, name in ((0.5, "p50"), (0.99, "p99")):
            predicted, seen = twin[f"{metric}_s"][name], live[metric][q]
            off[f"{metric} {name}"] = (round(predicted, 4), round(seen, 4))
    print(off)
    wrong = {k: v for k, v in off.items() if v[0] != pytest.approx(v[1], rel=0.10)}
    assert not wrong, (wrong, report)
