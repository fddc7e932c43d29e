"""bench twin at toy size: the report has its figures and they are consistent."""

from __future__ import annotations

import json
from pathlib import Path

from inferplane.bench.twin import run_twin_bench
from inferplane.twin import compiled


def test_twin_bench_reports_speed_per_fleet_and_flat_memory(tmp_path: Path) -> None:
    out = tmp_path / "twin.json"
    lines: list[str] = []
    report = run_twin_bench(
        fleets=(1, 2), requests=400, load=0.8, seed=1, out=out, echo=lines.append
    )
    assert json.loads(out.read_text()) == report
    runs = report["runs"]
    assert [(r["replicas"], r["requests"] > 300) for r in runs] == [
        (1, True),
        (2, True),
        (2, True),
    ]
    assert runs[2]["requests"] > 3 * runs[1]["requests"]  # the four times longer run
    for run in runs:
        assert run["sim_requests_per_wall_s"] > 0
        assert 0.3 < run["mean_busy_fraction"] <= 1.0  # near saturation, not idle
    assert report["capacity_per_replica_rps"] > 1
    assert report["memory"]["peak_bytes"][0] > 0  # flatness: tests/twin, at a settled size
    assert any("sim req/s" in line for line in lines)
    # Compiled, the largest fleet is timed as plain Python too (in a child process).
    assert report["compiled"] == compiled()
    plain = report["plain_python"]
    assert (plain is not None) == report["compiled"]
    if plain is not None:
        assert plain["replicas"] == 2 and plain["compiled_over_plain"] > 0
