"""The twin at its edges: every replica down, scale to zero and back, cold starts cancelled
and restarted, requests too long for a replica, traces naming what the scenario lacks,
busy fractions through failures, and runs too long to sample."""

from __future__ import annotations

import csv
import itertools
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from inferplane.twin import Scenario, Simulation, TraceError, compiled, run_scenario, simulate_to
from inferplane.twin._replica import ReplicaState


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


def stream(rate: float, prompt: Any = 512, output: Any = 64, **extra: Any) -> dict[str, Any]:
    def length(value: Any) -> Any:
        return {"fixed": value} if isinstance(value, int) else value

    return {
        "tenant": "t",
        "slo_class": "interactive",
        "model": "m",
        "rate": rate,
        "prompt_tokens": length(prompt),
        "output_tokens": length(output),
        **extra,
    }


def rows_of(sc: Scenario, tmp_path: Path) -> tuple[dict[str, Any], list[dict[str, str]]]:
    sc = sc.model_copy(update={"output": sc.output.model_copy(update={"requests": True})})
    summary = simulate_to(sc, tmp_path, base_dir=tmp_path)
    with (tmp_path / "requests.csv").open() as f:
        return summary, list(csv.DictReader(f))


# --- no capacity at all -----------------------------------------------------------------


def test_a_queued_model_with_every_replica_down_queues_until_the_class_bound(
    tmp_path: Path,
) -> None:
    # One replica behind the gateway's queue, often down for a minute: while it is, nothing
    # can be predicted, so requests queue; interactive ones run out of their 2 s, batch
    # ones (600 s) wait for the repair and are served.
    group = {"gpu": "H100", "count": 1, "max_concurrency": 8}
    failures = {"mtbf_s": 30, "mean_repair_s": 60}
    models = {"m": {"catalogue": "llama-3.1-8b", "replicas": [group], "failures": failures}}
    streams = [stream(2, 100, 10), stream(1, 100, 10, slo_class="batch", tenant="b")]
    summary, rows = rows_of(scenario(streams, 240, models=models), tmp_path)
    assert summary["failures"]["m"] >= 2
    interactive, batch = summary["by_class"]["interactive"], summary["by_class"]["batch"]
    assert interactive["rejected"].get("queue_expired", 0) > 0
    assert batch["completed"] == batch["arrived"]
    waited = [float(r["queue_s"]) for r in rows if r["outcome"] == "completed"]
    assert max(waited) > 2  # served after waiting out an outage
    assert {r["outcome"] for r in rows} <= {"completed", "queue_expired", "replica_failed"}


def test_a_pool_scaled_to_zero_comes_back_for_the_requests_that_queue() -> None:
    group = {"gpu": "H100", "count": 1, "max_concurrency": 8}
    autoscale = {
        "min_replicas": 0,
        "max_replicas": 2,
        "target_in_flight_per_replica": 8,
        "scale_down_window_s": 10,
        "evaluation_interval_s": 5,
        "cold_start_s": 20,
    }
    models = {"m": {"catalogue": "llama-3.1-8b", "replicas": [group], "autoscale": autoscale}}
    lull = [{"step": {"at_s": 30, "duration_s": 120, "factor": 0}}]
    sc = scenario([stream(2, 100, 10, slo_class="batch", shape=lull)], 240, models=models)
    summary = Simulation(sc).run()
    targets = [(d["time_s"], d["target"]) for d in summary["autoscaling"]["m"]["decisions"]]
    assert [n for t, n in targets if t < 140][-1] == 0  # at zero in the lull
    assert any(n > 0 for t, n in targets if t > 150)  # back when requests queue again
    total = summary["total"]
    assert total["completed"] == total["arrived"] > 200


def test_scale_to_zero_without_a_queue_is_refused_as_a_pool_that_could_not_come_back() -> None:
    autoscale = {"min_replicas": 0, "max_replicas": 2}
    models = {
        "m": {
            "catalogue": "llama-3.1-8b",
            "replicas": [{"gpu": "H100", "count": 1}],
            "autoscale": autoscale,
        }
    }
    with pytest.raises(ValidationError, match="min_replicas 0 needs a queue"):
        scenario([stream(1)], 60, models=models)


# --- autoscaling and cold starts -----------------------------------------------------------


def test_an_idle_pool_keeps_its_size_for_the_scale_down_window() -> None:
    group = {"gpu": "H100", "count": 4, "max_concurrency": 64}
    autoscale = {"min_replicas": 1, "max_replicas": 8, "scale_down_window_s": 120}
    models = {"m": {"catalogue": "llama-3.1-8b", "replicas": [group], "autoscale": autoscale}}
    summary = Simulation(scenario([stream(1, 100, 10)], 300, models=models)).run()
    decisions = summary["autoscaling"]["m"]["decisions"]
    assert (decisions[0]["time_s"], decisions[0]["target"]) == (0.0, 4)
    shrink = [d for d in decisions if d["target"] < 4]
    assert shrink and shrink[0]["time_s"] >= 120
    assert shrink[0]["target"] == 1


@pytest.mark.skipif(
    compiled(), reason="watches SimGateway.set_state: a compiled class cannot be patched"
)
def test_a_cancelled_cold_start_does_not_make_a_later_one_ready_early() -> None:
    # Load, a lull (the start asked for at 5 s is cancelled), load again (started anew at
    # 25 s): the first start's timer, due at 45 s, must not make it ready 20 s early.
    group = {"gpu": "H100", "count": 1, "max_concurrency": 64}
    autoscale = {
        "min_replicas": 1,
        "max_replicas": 4,
        "target_in_flight_per_replica": 8,
        "scale_down_window_s": 0,
        "evaluation_interval_s": 5,
        "cold_start_s": 40,
        "max_step_up": 1,
    }
    models = {"m": {"catalogue": "llama-3.1-8b", "replicas": [group], "autoscale": autoscale}}
    lull = [{"step": {"at_s": 6, "duration_s": 14, "factor": 0.001}}]
    sim = Simulation(
        scenario([stream(30, 500, 300, slo_class="batch", shape=lull)], 80, models=models)
    )
    starts: dict[int, list[float]] = {}
    became_ready: list[tuple[int, float]] = []
    set_state = sim.gateway.set_state

    def watch(route: Any, index: int, state: ReplicaState, now: float) -> None:
        previous = route.replicas[index].state
        if state is ReplicaState.STARTING:
            starts.setdefault(index, []).append(now)
        elif state is ReplicaState.READY and previous is ReplicaState.STARTING:
            became_ready.append((index, now))
        set_state(route, index, state, now)

    sim.gateway.set_state = watch  # type: ignore[method-assign]
    sim.run()
    restarted = [i for i, times in starts.items() if len(times) > 1 and times[1] < times[0] + 40]
    assert restarted  # the case under test happened
    assert became_ready
    for index, now in became_ready:
        latest = max(t for t in starts[index] if t <= now)
        assert now - latest >= 40 - 1e-9, (index, now, starts[index])


# --- requests a replica cannot hold -------------------------------------------------------


@pytest.mark.parametrize("queue", [False, True], ids=["router", "queue"])
def test_requests_longer_than_the_kv_cache_are_refused_as_too_long(
    tmp_path: Path, queue: bool
) -> None:
    group: dict[str, Any] = {"gpu": "H100", "count": 2, "kv_capacity_tokens": 4096}
    if queue:
        group["max_concurrency"] = 16
    models = {"m": {"catalogue": "llama-3.1-8b", "replicas": [group]}}
    sc = scenario([stream(5, {"uniform": [100, 8000]}, 100)], 60, models=models)
    summary, rows = rows_of(sc, tmp_path)
    too_long = [r for r in rows if r["outcome"] == "too_long"]
    assert too_long and all(int(r["prompt_tokens"]) + 100 > 4096 for r in too_long)
    assert all(int(r["prompt_tokens"]) + 100 <= 4096 for r in rows if r not in too_long)
    total = summary["total"]
    assert total["rejected"] == {"too_long": len(too_long)}
    assert total["completed"] + len(too_long) == total["arrived"] == len(rows)


def test_requests_longer_than_the_models_context_are_refused_as_too_long() -> None:
    # Four H200s hold far more than Llama-3.1-8B's 131,072-token context.
    models = {"m": {"catalogue": "llama-3.1-8b", "replicas": [{"gpu": "H200", "tp": 4}]}}
    fits = scenario([stream(2, 130_900, 172, slo_class="batch")], 5, models=models)
    total = Simulation(fits).run()["total"]
    assert total["completed"] == total["arrived"] > 0  # 131,072 tokens: just fits
    longer = scenario([stream(2, 130_900, 173, slo_class="batch")], 5, models=models)
    total = Simulation(longer).run()["total"]
    assert total["arrived"] > 0
    assert total["completed"] == 0 and total["rejected"] == {"too_long": total["arrived"]}


def test_a_request_too_long_for_its_model_falls_back_to_one_that_holds_it(
    tmp_path: Path,
) -> None:
    small = {"gpu": "H100", "count": 1, "kv_capacity_tokens": 4096, "max_concurrency": 8}
    models = {
        "m": {"catalogue": "llama-3.1-8b", "fallback": ["big"], "replicas": [small]},
        "big": {"catalogue": "llama-3.1-8b", "replicas": [{"gpu": "H100", "count": 1}]},
    }
    sc = scenario([stream(5, {"uniform": [100, 8000]}, 100)], 30, models=models)
    summary, rows = rows_of(sc, tmp_path)
    assert summary["total"]["completed"] == summary["total"]["arrived"]
    by_size = {r["served_by"] for r in rows if int(r["prompt_tokens"]) + 100 > 4096}
    assert by_size == {"big"}


# --- traces naming what the scenario lacks ------------------------------------------------


SCENARIO = """\
seed: 1
models:
  m: {catalogue: llama-3.1-8b, replicas: [{gpu: H100, count: 1, max_concurrency: 4}]}
slo_classes:
  gold: {priority: 0, max_queue_s: 1, ttft_s: 1}
  bronze: {priority: 1, max_queue_s: 60}
default_slo_class: gold
workload: {trace: trace.csv}
"""
HEADER = "time,tenant,slo_class,model,prompt_tokens,output_tokens\n"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("1,acme,gold,gpt-9,100,10", "trace.csv:3: model: 'gpt-9' is not among the models ['m']"),
        (
            "1,acme,platinum,m,100,10",
            "trace.csv:3: slo_class: 'platinum' is not among the slo_classes ['bronze', 'gold']",
        ),
    ],
)
def test_a_trace_naming_what_the_scenario_lacks_fails_before_the_run(
    tmp_path: Path, row: str, message: str
) -> None:
    (tmp_path / "s.yaml").write_text(SCENARIO)
    (tmp_path / "trace.csv").write_text(HEADER + "0,acme,gold,m,100,10\n" + row + "\n")
    out = tmp_path / "out"
    with pytest.raises(TraceError) as refused:
        run_scenario(tmp_path / "s.yaml", out)
    assert message in str(refused.value)
    assert not out.exists()  # nothing written: it failed before the run
    command = [sys.executable, "-m", "inferplane", "simulate", str(tmp_path / "s.yaml")]
    cli = subprocess.run(
        [*command, "--out", str(out), "-q"],
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 2
    assert "Traceback" not in cli.stderr
    assert message in cli.stderr.replace("\n", "")


def test_a_usage_export_without_a_class_replays_in_the_scenarios_default(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(SCENARIO)
    (tmp_path / "trace.csv").write_text(
        "request_id,time,tenant,model,slo_class,status,input_tokens,output_tokens\n"
        "r1,2024-01-01T00:00:00Z,acme,m,,200,100,10\n"
        "r2,2024-01-01T00:00:01Z,acme,m,bronze,200,100,10\n"
    )
    summary = run_scenario(tmp_path / "s.yaml", tmp_path / "out")
    assert {c: v["completed"] for c, v in summary["by_class"].items()} == {"bronze": 1, "gold": 1}


# --- measurements -----------------------------------------------------------------------


def test_busy_fraction_stays_within_0_and_1_when_replicas_fail() -> None:
    group = {"gpu": "H100", "count": 3, "max_concurrency": 16}
    failures = {"mtbf_s": 40, "mean_repair_s": 10}
    models = {
        "m": {
            "catalogue": "llama-3.1-8b",
            "routing": "least_loaded",
            "replicas": [group],
            "failures": failures,
        }
    }
    sc = scenario(
        [stream(15, 800, 300), stream(5, 2000, 300, slo_class="batch", tenant="b")],
        90,
        models=models,
        output={"requests": False, "timeseries_interval_s": 5},
    )
    sim = Simulation(sc)
    summary = sim.run()
    assert summary["failures"]["m"] >= 3
    fractions = [row["m.busy_fraction"] for row in sim.timeseries]
    assert all(0 <= f <= 1 for f in fractions)
    assert max(fractions) > 0.9  # loaded: the bound is met, not dodged


def test_a_fleet_that_never_changes_reports_busy_time_over_its_replicas_time() -> None:
    # Two replicas up the whole run: the fraction is busy seconds over 2 x the interval.
    models = {"m": {"catalogue": "llama-3.1-8b", "replicas": [{"gpu": "H100", "count": 2}]}}
    sc = scenario([stream(4, 500, 100)], 30, models=models)
    sim = Simulation(sc)
    end = sim.run()["makespan_s"]
    rows = sim.timeseries
    busy = sum(r.busy_until(end) for r in sim.gateway.replicas)
    spans = [b["time_s"] - a["time_s"] for a, b in itertools.pairwise(rows)]
    measured = sum(row["m.busy_fraction"] * 2 * s for row, s in zip(rows[1:], spans, strict=True))
    assert measured == pytest.approx(busy, rel=1e-9)


def test_a_run_sampled_absurdly_often_is_refused_before_it_starts(tmp_path: Path) -> None:
    with pytest.raises(
        ValidationError, match=r"100,000,000,000 time-series rows.* at least 1e\+06"
    ):
        scenario([stream(1e-9)], 1e12)
    # A trace without duration_s: measured when it is read, before the run.
    (tmp_path / "trace.csv").write_text(HEADER + "0,t,batch,m,100,10\n1e9,t,batch,m,100,10\n")
    sc = Scenario.model_validate(
        {
            "models": {"m": {"catalogue": "llama-3.1-8b", "replicas": [{"gpu": "H100"}]}},
            "workload": {"trace": "trace.csv"},
        }
    )
    with pytest.raises(ValueError, match=r"trace trace\.csv sampled every .* 10 s gives"):
        Simulation(sc, base_dir=tmp_path)


def test_a_fallback_listed_twice_is_refused() -> None:
    models = {
        "m": {"catalogue": "llama-3.1-8b", "fallback": ["n", "n"], "replicas": [{"gpu": "H100"}]},
        "n": {"catalogue": "llama-3.1-8b", "replicas": [{"gpu": "H100"}]},
    }
    with pytest.raises(ValidationError, match="lists a fallback twice"):
        scenario([stream(1)], 10, models=models)
