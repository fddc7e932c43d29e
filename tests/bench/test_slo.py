"""The SLO benchmark's arithmetic: attainment per class and Jain's index over fair shares."""

from __future__ import annotations

import pytest

from inferplane.bench.slo import _fairness, _Outcome, _summarise, run_prefix_affinity


def served(tenant: str, tokens: int, n: int, *, end: float = 1.0) -> list[_Outcome]:
    return [
        _Outcome(tenant, "batch", 200, 0.1, end, tokens, asked_tokens=tokens, arrival_s=0.0)
        for _ in range(n)
    ]


def test_a_small_tenant_served_in_full_is_fair_whatever_the_big_one_gets() -> None:
    # Demand 10:1; b fully served, a gets the rest: both at their max-min fair share.
    outcomes = served("a", 64, 50) + served("b", 64, 10)
    assert _fairness(outcomes, duration_s=10)["jain"] == pytest.approx(1.0)


def test_serving_in_proportion_to_demand_starves_the_small_tenant() -> None:
    # Both asked for lots; a got 10x what b got although b's fair share was half.
    outcomes = served("a", 64, 100) + served("b", 64, 10) + served("b", 64, 90, end=99.0)
    result = _fairness(outcomes, duration_s=10)
    assert result["served_tokens"] == {"a": 6400, "b": 640}
    assert result["jain"] < 0.7


def test_attainment_counts_refusals_and_late_first_tokens_as_misses() -> None:
    outcomes = [
        _Outcome("c", "realtime", 200, 0.2, 1.0, 16),
        _Outcome("c", "realtime", 200, 0.7, 1.0, 16),  # first token too late
        _Outcome("c", "realtime", 429, None, 0.0, 0),
        _Outcome("c", "realtime", 200, 0.4, 1.0, 16),
    ]
    realtime = _summarise(outcomes, duration_s=2.0, ts=1.0)["classes"]["realtime"]
    assert (realtime["attainment"], realtime["refused"], realtime["goodput_rps"]) == (0.5, 1, 1.0)


@pytest.mark.integration
def test_prefix_affinity_finds_more_of_the_prompts_cached_than_least_loaded() -> None:
    # A few requests per team: least_loaded pays a cold miss per team and replica it
    # spreads the team over, affinity one per team.
    report = run_prefix_affinity(replicas=2, duration_s=3.0, echo=lambda _: None)
    assert report["setup"]["requests"] > 20
    for routing in ("least_loaded", "prefix_affinity"):
        run = report[routing]
        assert run["requests"] == report["setup"]["requests"]
        assert run["failed"] == 0
        assert 0 < run["ttft_p50_s"] <= run["ttft_p99_s"]
        assert 0 < run["prefix_cache_hits_tokens"] < run["prefix_cache_queries_tokens"]
    assert (
        report["prefix_affinity"]["prefix_cache_hit_rate"]
        > report["least_loaded"]["prefix_cache_hit_rate"]
    )
    assert isinstance(report["mean_ttft_reduction_pct"], float)
