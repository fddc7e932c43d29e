"""The compiled twin gives the same bytes as the plain-Python one.

mypyc compiles the twin's hot path from the same source, but enforces its type
annotations at run time (an ``int`` kept where ``float`` is declared becomes a float,
and prints as one). So where the twin runs compiled, every scenario below is run
both ways, the plain one in a child process from a copy of the sources without the
extensions, and the result folders must match byte for byte. In the plain-Python
suite there is nothing to compare: ``.ci/run`` runs this again on a compiled build.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from inferplane.twin import compiled, run_plain, run_scenario

pytestmark = pytest.mark.skipif(not compiled(), reason="the twin runs as plain Python here")

EXAMPLES = Path(__file__).parents[2] / "examples"

_H100 = {"gpu": "H100", "count": 3, "max_num_seqs": 64}


def _stream(**extra: Any) -> dict[str, Any]:
    return {
        "tenant": "a",
        "slo_class": "interactive",
        "model": "m",
        "rate": 40,
        "prompt_tokens": {"lognormal": {"median": 700, "sigma": 0.9, "max": 6000}},
        "output_tokens": {"lognormal": {"median": 120, "sigma": 0.8, "max": 900}},
        **extra,
    }


SCENARIOS: dict[str, dict[str, Any]] = {
    # The dispatcher's queue with priorities and tenants, a fallback model, failures.
    "queue-fallback-failures": {
        "seed": 5,
        "models": {
            "m": {
                "catalogue": "llama-3.1-8b",
                "routing": "least_loaded",
                "fallback": ["spare"],
                "replicas": [{**_H100, "max_concurrency": 24, "kv_capacity_tokens": 40_000}],
                "failures": {"mtbf_s": 40, "mean_repair_s": 10},
            },
            "spare": {
                "catalogue": "llama-3.1-8b",
                "replicas": [{"gpu": "A100-80GB", "count": 1, "max_concurrency": 8}],
            },
        },
        "slo_classes": {
            "interactive": {"priority": 1, "max_queue_s": 1, "ttft_s": 1.5},
            "batch": {"priority": 2, "max_queue_s": 30},
        },
        "tenants": {"a": {"weight": 2}, "b": {"weight": 1}},
        "workload": {
            "duration_s": 90,
            "streams": [
                _stream(workflow="chat"),
                _stream(tenant="b", slo_class="batch", rate=15, arrivals={"gamma": {"cv": 3}}),
            ],
        },
        "output": {"timeseries_interval_s": 5},
    },
    # Shared prefixes in the engines' cache, routed by affinity; a pool that autoscales.
    "prefix-affinity-autoscale": {
        "seed": 9,
        "models": {
            "m": {
                "catalogue": "llama-3.1-8b",
                "routing": "prefix_affinity",
                "replicas": [{**_H100, "count": 2}],
                "autoscale": {
                    "min_replicas": 1,
                    "max_replicas": 5,
                    "target_in_flight_per_replica": 16,
                    "evaluation_interval_s": 5,
                    "cold_start_s": 20,
                },
            }
        },
        "workload": {
            "duration_s": 120,
            "streams": [
                _stream(
                    prefix={"groups": 12, "tokens": 1500},
                    shape=[{"step": {"at_s": 40, "duration_s": 30, "factor": 3}}],
                )
            ],
        },
        "output": {"timeseries_interval_s": 10},
    },
    # A trace replayed (written by _trace, next to the scenario), on round robin.
    "trace": {
        "seed": 1,
        "models": {"m": {"catalogue": "llama-3.1-8b", "replicas": [{**_H100, "count": 2}]}},
        "workload": {"trace": "trace.csv"},
        "output": {"timeseries_interval_s": 5},
    },
}


def _plain_run(scenario: Path, out: Path) -> None:
    run_plain(
        "from pathlib import Path\n"
        "from inferplane.twin import run_scenario\n"
        f"run_scenario(Path({str(scenario)!r}), Path({str(out)!r}))\n"
    )


def _trace(path: Path) -> None:
    """Whole-second arrivals (ints, where the twin's clock is declared float)."""
    rows = ["time,tenant,slo_class,model,prompt_tokens,output_tokens"]
    for i in range(400):
        rows.append(
            f"{i // 8},{'ab'[i % 2]},interactive,m,{200 + 37 * i % 3000},{1 + 13 * i % 400}"
        )
    path.write_text("\n".join(rows) + "\n")


def _scenario_files(tmp_path: Path) -> list[Path]:
    files = [EXAMPLES / "twin-chat-fleet.yaml"]
    _trace(tmp_path / "trace.csv")
    for name, body in SCENARIOS.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(body))
        files.append(path)
    return files


def test_compiled_and_plain_runs_write_the_same_bytes(tmp_path: Path) -> None:
    summaries: dict[str, dict[str, Any]] = {}
    for scenario in _scenario_files(tmp_path):
        fast, plain = tmp_path / "fast" / scenario.stem, tmp_path / "plain-out" / scenario.stem
        summaries[scenario.stem] = summary = run_scenario(scenario, fast)
        assert summary["total"]["completed"] > 100  # the scenario did something
        _plain_run(scenario, plain)
        written = sorted(p.name for p in fast.iterdir())
        assert written == sorted(p.name for p in plain.iterdir())
        for name in written:
            assert (fast / name).read_bytes() == (plain / name).read_bytes(), (scenario, name)
    # ... and what each was written for happened.
    queue = summaries["queue-fallback-failures"]
    assert queue["failures"]["m"] > 0 and queue["total"]["rejected"]
    assert (
        b",spare," in (tmp_path / "fast" / "queue-fallback-failures" / "requests.csv").read_bytes()
    )
    assert summaries["prefix-affinity-autoscale"]["autoscaling"]["m"]["decisions"]
