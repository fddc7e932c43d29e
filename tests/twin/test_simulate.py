"""The twin end to end: known answers on an idle fleet, policies under overload, fallback,
determinism to the byte, constant memory, and the CLI's errors."""

from __future__ import annotations

import csv
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from inferplane.config import ConfigError
from inferplane.perf import PerfModel, StepShape, get_gpu, get_model
from inferplane.twin import Scenario, Simulation, load_scenario, simulate_to

ROOT = Path(__file__).resolve().parents[2]


def scenario(streams: list[dict[str, Any]], duration_s: float = 60, **extra: Any) -> Scenario:
    models = extra.pop("models", None) or {
        "m": {"catalogue": "llama-3.1-8b", "replicas": [{"gpu": "H100", "count": 1}]}
    }
    return Scenario.model_validate(
        {
            "seed": 3,
            "models": models,
            "workload": {"duration_s": duration_s, "streams": streams},
            "output": {"requests": False},
            **extra,
        }
    )


def stream(rate: float, prompt: int = 512, output: int = 64, **extra: Any) -> dict[str, Any]:
    return {
        "tenant": "t",
        "slo_class": "interactive",
        "model": "m",
        "rate": rate,
        "prompt_tokens": {"fixed": prompt},
        "output_tokens": {"fixed": output},
        **extra,
    }


def test_an_idle_replica_serves_each_request_at_the_performance_models_pace() -> None:
    # One request every ~100 s on average: they never meet, so each one's TTFT is one
    # prefill step and its e2e adds one decode step per further token.
    summary = Simulation(scenario([stream(0.01, prompt=1000, output=20)], 3000)).run()
    perf = PerfModel(get_gpu("H100"), get_model("llama-3.1-8b"))
    prefill = perf.step_time(StepShape.from_batch(prefill_chunks=[(1000, 0)]))
    decode = sum(perf.decode_step_time(1, 1000 + i) for i in range(1, 20))
    total = summary["total"]
    assert total["completed"] == total["arrived"] > 10
    assert total["ttft_s"]["p50"] == pytest.approx(prefill, rel=0.02)
    assert total["e2e_s"]["p50"] == pytest.approx(prefill + decode, rel=0.02)
    assert total["queue_s"]["p99"] == 0


def test_overload_is_refused_by_class_and_urgent_traffic_keeps_its_slo() -> None:
    models = {
        "m": {
            "catalogue": "llama-3.1-8b",
            "routing": "least_loaded",
            "replicas": [{"gpu": "H100", "count": 1, "max_num_seqs": 32, "max_concurrency": 32}],
        }
    }
    streams = [
        stream(3, output=200, slo_class="realtime", tenant="rt"),  # ~15% of capacity
        # Varied lengths: equal ones would free all slots at once.
        {**stream(80, slo_class="batch", tenant="bulk"), "output_tokens": {"uniform": [50, 350]}},
    ]
    summary = Simulation(scenario(streams, 60, models=models)).run()
    realtime, batch = summary["by_class"]["realtime"], summary["by_class"]["batch"]
    assert realtime["completed"] >= 0.95 * realtime["arrived"]
    assert realtime["ttft_s"]["p99"] < 0.5
    # Batch waits (up to 600 s) behind realtime, so it is the one that queues.
    assert batch["queue_s"]["p50"] > 10 * (realtime["queue_s"]["p50"] or 0.001)


def test_unattainable_requests_fall_back_to_the_next_model(tmp_path: Path) -> None:
    small = {"gpu": "H100", "count": 1, "max_num_seqs": 2, "max_concurrency": 2}
    models = {
        "m": {"catalogue": "llama-3.1-8b", "fallback": ["spare"], "replicas": [small]},
        "spare": {"catalogue": "llama-3.1-8b", "replicas": [{"gpu": "H100", "count": 2}]},
    }
    sc = scenario([stream(30, output=100, slo_class="realtime")], 20, models=models)
    sc = sc.model_copy(update={"output": sc.output.model_copy(update={"requests": True})})
    summary = simulate_to(sc, tmp_path, base_dir=tmp_path)
    with (tmp_path / "requests.csv").open() as f:
        rows = list(csv.DictReader(f))
    served = {r["served_by"] for r in rows if r["outcome"] == "completed"}
    assert served == {"m", "spare"}
    assert summary["total"]["completed"] == len(rows) == summary["requests"]


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    path = ROOT / "examples" / "twin-chat-fleet.yaml"
    sc = load_scenario(path)
    short = sc.model_copy(update={"workload": sc.workload.model_copy(update={"duration_s": 30.0})})
    runs = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        simulate_to(short.model_copy(update={"seed": seed}), tmp_path / name, base_dir=ROOT)
        runs.append({f.name: f.read_bytes() for f in sorted((tmp_path / name).iterdir())})
    assert set(runs[0]) == {"summary.json", "timeseries.csv", "requests.csv"}
    assert runs[0] == runs[1]
    assert runs[0]["requests.csv"] != runs[2]["requests.csv"]


def _peak_bytes(duration_s: float) -> int:
    sc = scenario([stream(200, prompt=128, output=8)], duration_s)
    tracemalloc.start()
    try:
        Simulation(sc).run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_stays_flat_in_the_number_of_requests() -> None:
    short, long = _peak_bytes(10), _peak_bytes(40)  # ~2,000 and ~8,000 requests
    assert long < 1.3 * short


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("gpu: H100", "gpu: H900"), "unknown GPU 'H900'"),
        (
            (
                "model: llama-3.1-8b\n      workflow: support",
                "model: other\n      workflow: support",
            ),
            "sends requests to model 'other'",
        ),
        (("slo_class: batch", "slo_class: bulk"), "SLO class 'bulk'"),
        (("rate: 20", "rate: -1"), "workload.streams.0.rate"),
    ],
)
def test_bad_scenarios_get_one_readable_line(
    tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    text = (ROOT / "examples" / "twin-chat-fleet.yaml").read_text()
    assert edit[0] in text
    path = tmp_path / "bad.yaml"
    path.write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(ConfigError, match=message):
        load_scenario(path)
    cli = subprocess.run(
        [sys.executable, "-m", "inferplane", "simulate", str(path), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 2
    assert "Traceback" not in cli.stderr
    assert message in cli.stderr.replace("\n", " ")


def test_autoscaling_follows_a_spike_after_the_cold_start_and_shrinks_after() -> None:
    group = {"gpu": "H100", "count": 1, "max_num_seqs": 64, "max_concurrency": 32}
    autoscale = {
        "min_replicas": 1,
        "max_replicas": 6,
        "target_in_flight_per_replica": 24,
        "cold_start_s": 60,
        "scale_down_window_s": 120,
    }
    models = {"m": {"catalogue": "llama-3.1-8b", "replicas": [group], "autoscale": autoscale}}
    spike = [{"step": {"at_s": 300, "duration_s": 300, "factor": 4}}]
    sc = scenario([stream(6, output=200, slo_class="batch", shape=spike)], 1200, models=models)
    sim = Simulation(sc)
    summary = sim.run()
    decisions = summary["autoscaling"]["m"]["decisions"]
    assert summary["autoscaling"]["m"]["cold_start_s"] == 60
    ups = [d for d in decisions if d["target"] > 1]
    assert ups and 300 <= ups[0]["time_s"] < 400
    assert ups[0]["reason"] in ("load", "step_limit")  # 1 -> 5: four at a time at most
    assert decisions[-1]["target"] == 1  # back down once the spike is over
    # Replicas are ready a cold start after they were asked for, not before.
    ready = [(row["time_s"], row["m.ready"]) for row in sim.timeseries]
    first_more = min(t for t, n in ready if n > 1)
    assert first_more >= ups[0]["time_s"] + 60
    billed = sum(r["billed_s"] for r in summary["replicas"])
    assert summary["makespan_s"] < billed < 6 * summary["makespan_s"]
    assert summary["total"]["completed"] == summary["total"]["arrived"]


def test_a_failing_replica_loses_only_requests_that_had_started_streaming(tmp_path: Path) -> None:
    group = {"gpu": "H100", "count": 3}
    failures = {"mtbf_s": 60, "mean_repair_s": 20}
    models = {"m": {"catalogue": "llama-3.1-8b", "replicas": [group], "failures": failures}}
    sc = scenario([stream(20, output=300)], 300, models=models)
    sc = sc.model_copy(update={"output": sc.output.model_copy(update={"requests": True})})
    summary = simulate_to(sc, tmp_path, base_dir=tmp_path)
    with (tmp_path / "requests.csv").open() as f:
        rows = list(csv.DictReader(f))
    outcomes = {r["outcome"] for r in rows}
    assert summary["failures"]["m"] > 5
    assert outcomes <= {"completed", "replica_failed", "no_replica"}
    assert any(int(r["retries"]) > 0 and r["outcome"] == "completed" for r in rows)
    failed = [r for r in rows if r["outcome"] == "replica_failed"]
    assert failed and all(r["ttft_s"] == "" for r in failed)  # a stream cut, no answer
    total = summary["total"]
    assert total["failed"] == len(failed)
    assert total["completed"] + total["failed"] + sum(total["rejected"].values()) == len(rows)
    assert len(rows) == summary["requests"]


def test_prefix_affinity_finds_cached_prefixes_that_least_loaded_spreads_thin() -> None:
    def mean_ttft(routing: str) -> float:
        group = {"gpu": "H100", "count": 3, "kv_capacity_tokens": 24_576}
        models = {"m": {"catalogue": "llama-3.1-8b", "routing": routing, "replicas": [group]}}
        shared = {"prefix": {"groups": 16, "tokens": 2000, "zipf": 0}}
        summary = Simulation(
            scenario([stream(30, prompt=24, output=16, **shared)], 60, models=models)
        ).run()
        return float(summary["total"]["ttft_s"]["mean"])

    least, affinity = mean_ttft("least_loaded"), mean_ttft("prefix_affinity")
    assert affinity < 0.8 * least


def test_a_scenario_takes_its_policies_from_the_gateways_config(tmp_path: Path) -> None:
    (tmp_path / "gateway.yaml").write_text(
        "slo_classes:\n"
        "  gold: {priority: 0, max_queue_s: 1, ttft_s: 0.4}\n"
        "  bulk: {priority: 3, max_queue_s: 900}\n"
        "default_slo_class: gold\n"
        "queue_aging_s: 42\n"
        "models:\n"
        "  m:\n"
        "    routing: least_loaded\n"
        "    backends:\n"
        "      - {url: 'http://10.0.0.1:8000', max_concurrency: 12}\n"
        "      - {url: 'http://10.0.0.2:8000', max_concurrency: 12}\n"
        "tenants:\n"
        "  acme: {weight: 3}\n"
    )
    (tmp_path / "what-if.yaml").write_text(
        "policies_from: gateway.yaml\n"
        "models:\n"
        "  m: {catalogue: llama-3.1-8b, replicas: [{gpu: H100, count: 2}]}\n"
        "workload:\n"
        "  duration_s: 20\n"
        "  streams:\n"
        "    - {tenant: acme, slo_class: gold, model: m, rate: 5,"
        " prompt_tokens: {fixed: 200}, output_tokens: {fixed: 20}}\n"
    )
    sc = load_scenario(tmp_path / "what-if.yaml")
    assert set(sc.slo_classes) == {"gold", "bulk"} and sc.queue_aging_s == 42
    assert sc.tenants["acme"].weight == 3
    assert sc.models["m"].routing == "least_loaded"
    assert sc.models["m"].replicas[0].max_concurrency == 12
    sim = Simulation(sc)
    summary = sim.run()
    assert sim.gateway.routes["m"].dispatcher is not None  # the gateway's queue, mirrored
    assert summary["by_class"]["gold"]["completed"] == summary["by_class"]["gold"]["arrived"]
    (tmp_path / "what-if.yaml").write_text(
        (tmp_path / "what-if.yaml").read_text().replace("gateway.yaml", "missing.yaml")
    )
    with pytest.raises(ConfigError, match=r"policies_from: .*missing\.yaml"):
        load_scenario(tmp_path / "what-if.yaml")
