"""The planner on small cases: answers that follow by hand, impossible SLOs, bad input."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from inferplane.config import ConfigError
from inferplane.perf import PerfModel, get_gpu, get_model
from inferplane.plan import GpuOffer, PlanSpec, load_plan, search
from inferplane.plan._economics import cloud_vs_owned, hourly_prices
from inferplane.plan._estimate import estimate_replica

ROOT = Path(__file__).resolve().parents[2]


def plan(**changes: Any) -> PlanSpec:
    data: dict[str, Any] = {
        "model": "llama-3.1-8b",
        "workload": {
            "average_rps": 10,
            "peak_rps": 30,
            "prompt_tokens": {"fixed": 512},
            "output_tokens": {"fixed": 64},
        },
        "slos": {"chat": {"share": 1.0, "e2e_p99_s": 30}},
        "gpus": {"A100": {"on_demand": 2.0}},
        "tensor_parallel": [1],
        "twin_seconds": 30,
        "seed": 3,
    }
    data.update(changes)
    return PlanSpec.model_validate(data)


def test_with_a_loose_latency_target_the_count_follows_from_the_capacity() -> None:
    # A 30 s end-to-end bound only rules out overload: the fewest replicas whose measured
    # capacity carries the peak.
    result = search(plan(), workers=1)
    best = result["best"]
    assert best is not None and best["gpu"] == "A100" and best["tp"] == 1
    by_hand = math.ceil(30 / best["measured_replica_rps"])
    assert best["replicas"] in (by_hand, by_hand + 1)
    assert best["usd_per_hour"]["on_demand"] == pytest.approx(2.0 * best["replicas"])
    assert 0.5 < best["utilisation"] <= 1.0
    assert result["closest"] == []


def test_a_tighter_ttft_needs_more_replicas_and_impossible_ones_get_the_closest() -> None:
    loose = search(plan(), workers=1)["best"]
    tight = search(plan(slos={"chat": {"share": 1, "ttft_p99_s": 0.15}}), workers=1)
    assert tight["best"] is not None and tight["best"]["replicas"] > loose["replicas"]
    impossible = search(
        plan(slos={"chat": {"share": 1, "ttft_p99_s": 0.001}}, max_replicas=4), workers=1
    )
    assert impossible["best"] is None
    assert impossible["closest"] and not impossible["closest"][0]["meets_slo"]
    assert impossible["spike_test"] is None


def test_same_plan_same_answer() -> None:
    spec = plan(gpus={"A100": {"on_demand": 2.0}, "L40S": {"on_demand": 1.0}})
    first, second = search(spec, workers=2), search(spec, workers=1)
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)


def test_a_model_that_does_not_fit_is_skipped_with_the_reason() -> None:
    result = search(
        plan(model="llama-3.1-70b", gpus={"L40S": {"on_demand": 1.0}}, tensor_parallel=[1, 4]),
        workers=1,
    )
    assert [s["tp"] for s in result["skipped"]] == [1]
    assert "does not fit" in result["skipped"][0]["reason"]
    assert {c["tp"] for c in result["candidates"]} == {4}


def test_the_estimate_names_the_bottleneck() -> None:
    model = get_model("llama-3.1-8b")
    l4 = estimate_replica(PerfModel(get_gpu("L4"), model), 3000, 500, 256)
    assert l4 is not None and l4.bottleneck == "KV capacity" and l4.batch < 256
    short = estimate_replica(PerfModel(get_gpu("H100"), model), 64, 512, 64)
    assert short is not None and short.bottleneck == "memory bandwidth"
    long = estimate_replica(PerfModel(get_gpu("H100"), model), 4000, 16, 256)
    assert long is not None and long.bottleneck == "compute"
    assert "all-reduce" not in long.reason  # one GPU: nothing to all-reduce


def test_the_estimate_says_what_share_of_a_step_the_all_reduces_take() -> None:
    # Qwen2.5-7B decoding on two GPUs: 56 all-reduces a step, 30 us each over
    # PCIe against 10 us over NVLink, so the share is larger on the L40S than on the A100.
    model = get_model("qwen2.5-7b")
    shares = {}
    for gpu, link in (("L40S", "PCIe"), ("A100", "NVLink")):
        perf = PerfModel(get_gpu(gpu), model, tp=2)
        est = estimate_replica(perf, 512, 256, 256)
        assert est is not None
        found = re.search(rf"all-reduces over {link} take (\d+)% of a step", est.reason)
        assert found, est.reason
        shares[gpu] = int(found.group(1))
    assert shares["L40S"] > shares["A100"] > 0


def test_break_even_by_hand() -> None:
    # 8 GPUs, cloud 2 $/h each: 11,680 $/month. Owned: 8 x 20,000 up front plus power
    # 8 x 0.5 kW x (0.3 + 0.7 x 0.5) x 730 h x 0.1 $/kWh = 189.8 $/month.
    offer = GpuOffer(on_demand=2.0, capex_usd=20_000, power_kw=0.5, usd_per_kwh=0.1)
    prices = hourly_prices("A100", offer.terms()[None], 8)
    out = cloud_vs_owned(offer, 8, prices, 0.5, 36)
    assert out is not None
    assert out["cloud_cumulative_usd"][0] == pytest.approx(11_680)
    assert out["owned_cumulative_usd"][0] == pytest.approx(160_000 + 189.8)
    assert out["break_even_month"] == 14  # 160,000 / (11,680 - 189.8) = 13.9
    assert out["owned_monthly_usd"] == pytest.approx(160_000 / 36 + 189.8)  # written off
    assert cloud_vs_owned(GpuOffer(on_demand=2.0), 8, prices, 0.5, 36) is None


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("gpus:\n  H100:", "gpus:\n  H900:"), "unknown GPU 'H900'"),
        (("model: llama-3.1-8b", "model: gpt-9"), "unknown model 'gpt-9'"),
        (("share: 0.2", "share: 0.5"), "shares must add up to 1"),
        (("peak_rps: 80", "peak_rps: 5"), "below average_rps"),
    ],
)
def test_bad_plans_say_which_line_and_why(
    tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    text = (ROOT / "examples" / "plan-chat.yaml").read_text()
    assert edit[0] in text
    path = tmp_path / "bad.yaml"
    path.write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(ConfigError, match=message):
        load_plan(path)


def test_the_cli_writes_the_plan_and_its_reports(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "small.yaml"
    path.write_text(
        "model: llama-3.1-8b\n"
        "workload: {average_rps: 5, peak_rps: 10, prompt_tokens: {fixed: 256},"
        " output_tokens: {fixed: 32}}\n"
        "slos: {chat: {share: 1, ttft_p99_s: 1.0}}\n"
        "gpus: {A100: {on_demand: 2.0, capex_usd: 15000}}\n"
        "tensor_parallel: [1]\ntwin_seconds: 20\n"
    )
    out = tmp_path / "out"
    cli = [sys.executable, "-m", "inferplane", "plan", str(path), "--out", str(out), "-q"]
    done = subprocess.run(cli, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "plan.json").read_text())
    assert result["best"]["gpu"] == "A100" and result["elapsed_s"] > 0
    assert "A100 x TP1" in (out / "report.md").read_text()
    assert (out / "report.html").read_text().startswith("<!DOCTYPE html>")
    bad = subprocess.run(
        [sys.executable, "-m", "inferplane", "plan", str(tmp_path / "missing.yaml")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "cannot read plan" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_a_plan_measures_its_workload_from_a_trace(tmp_path: Path) -> None:
    # Two minutes of traffic: 2 req/s, then a minute at 6 req/s; lengths around 400/100.
    rows = ["time,tenant,slo_class,model,prompt_tokens,output_tokens"]
    t, i = 0.0, 0
    while t < 120:
        rate = 2.0 if t < 60 else 6.0
        prompt, output = (300, 80) if i % 2 else (500, 120)
        rows.append(f"{t:.3f},acme,chat,llama-3.1-8b,{prompt},{output}")
        t, i = t + 1 / rate, i + 1
    (tmp_path / "traffic.csv").write_text("\n".join(rows) + "\n")
    path = tmp_path / "plan.yaml"
    path.write_text(
        "model: llama-3.1-8b\n"
        "workload: {trace: traffic.csv, growth: 2}\n"
        "slos: {chat: {share: 1, ttft_p99_s: 1.0}}\n"
        "gpus: {A100: {on_demand: 2.0}}\n"
    )
    w = load_plan(path).workload
    assert w.peak_rps == pytest.approx(2 * 6.0, rel=0.05)  # the busiest minute, doubled
    assert w.average_rps == pytest.approx(2 * i / 120, rel=0.05)
    prompt = w.prompt_tokens.model_dump()["lognormal"]
    assert prompt["median"] == pytest.approx(math.sqrt(300 * 500), rel=0.01)
    assert prompt["max"] == 500
    (tmp_path / "traffic.csv").write_text("time,tenant\n")
    with pytest.raises(ConfigError, match=r"workload.*spread over time"):
        load_plan(path)


def test_following_the_day_costs_less_than_a_fleet_sized_for_the_peak() -> None:
    from inferplane.plan._economics import follow_the_day

    flat = follow_the_day(10, 30.0, 30.0, 2.0)
    assert flat["follow_the_day_monthly_usd"] == pytest.approx(flat["fixed_fleet_monthly_usd"])
    day = follow_the_day(10, 30.0, 60.0, 2.0)  # a sine from 0 to 60 req/s
    assert max(day["replicas_by_hour"]) == 10 and min(day["replicas_by_hour"]) == 1
    assert day["follow_the_day_monthly_usd"] < 0.65 * day["fixed_fleet_monthly_usd"]
