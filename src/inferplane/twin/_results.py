"""Run a scenario file and write its result folder.

``summary.json`` (counts, attainment, goodput, latency quantiles per class and
tenant, replicas, cost), ``timeseries.csv`` (one row per sampling interval) and,
when ``output.requests`` is on, ``requests.csv`` (one row per request, written
as requests end). Nothing in them depends on the wall clock: the same scenario
gives the same bytes.
"""

from __future__ import annotations

import contextlib
import csv
import json
from pathlib import Path
from typing import Any

from inferplane.twin._scenario import Scenario, load_scenario
from inferplane.twin._simulate import Progress, Simulation

__all__ = ["run_scenario", "simulate_to"]


def run_scenario(path: Path, out_dir: Path, progress: Progress | None = None) -> dict[str, Any]:
    """Load the scenario at ``path``, simulate it, write the folder; return the summary."""
    scenario = load_scenario(path)
    return simulate_to(scenario, out_dir, base_dir=path.parent, progress=progress)


def simulate_to(
    scenario: Scenario, out_dir: Path, *, base_dir: Path, progress: Progress | None = None
) -> dict[str, Any]:
    # Built first: a workload it cannot run (a bad trace row) fails before any file is
    # written.
    sim = Simulation(scenario, base_dir=base_dir, progress=progress)
    out_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if scenario.output.requests:
            sim.record_requests(
                stack.enter_context((out_dir / "requests.csv").open("w", newline=""))
            )
        summary = sim.run()
    summary = {"seed": scenario.seed, **summary}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    _write_timeseries(out_dir / "timeseries.csv", sim.timeseries)
    return summary


def _write_timeseries(path: Path, rows: list[dict[str, Any]]) -> None:
    columns: dict[str, None] = {}  # insertion-ordered union of every row's keys
    for row in rows:
        columns.update(dict.fromkeys(row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), restval=0, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
