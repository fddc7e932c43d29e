"""``bench budgets`` end to end, briefly: real gateways (bare, SQLite, PostgreSQL) in
front of an emulated replica, every gateway measured in every round."""

from __future__ import annotations

import json
from pathlib import Path

from inferplane.bench.budgets import run_budgets
from tests.postgres import PostgresServer


def test_every_gateway_answers_every_round_and_ratios_are_per_round(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    lines: list[str] = []
    out = tmp_path / "budgets.json"
    report = run_budgets(
        concurrency=4,
        duration_s=0.5,
        rounds=3,
        postgres_url=postgres.create_database(),
        out=out,
        echo=lines.append,
    )
    assert json.loads(out.read_text())["ratios_to_bare"] == report["ratios_to_bare"]
    gateways = report["gateways"]
    assert set(gateways) == {"bare", "sqlite", "postgres"}
    for name, g in gateways.items():
        assert g["errors"] == 0, name
        assert g["requests_per_s"] > 0 and g["cpu_us_per_request"] > 0, name
    for name in ("sqlite", "postgres"):
        ratios = report["ratios_to_bare"][name]
        assert len(ratios["throughput_per_round"]) == 3
        per_round = sorted(ratios["throughput_per_round"])
        assert ratios["throughput"] == per_round[1]  # the median of three
    # Each round starts with another gateway.
    firsts = [line.split()[1] for line in lines if line.split()[0].isdigit()]
    assert [firsts[0], firsts[3], firsts[6]] == ["bare", "sqlite", "postgres"]
