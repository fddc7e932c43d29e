"""What a plan cannot measure or hold: too few requests for a P99, requests longer than a
GPU's KV cache, traces with long silences, and a bad result folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter
from typer.testing import CliRunner

from inferplane.cli import app
from inferplane.config import ConfigError
from inferplane.plan import load_plan, search
from inferplane.plan._estimate import longest_length
from inferplane.plan._evaluate import Fleet, evaluate
from inferplane.plan._trace import profile_trace
from inferplane.twin._lengths import LengthSpec, Role

from .test_search import plan

LENGTHS: TypeAdapter[Any] = TypeAdapter(LengthSpec)

TINY = """\
model: llama-3.1-8b
workload:
  average_rps: 0.001
  peak_rps: 0.01
  prompt_tokens: {fixed: 500}
  output_tokens: {fixed: 50}
slos:
  interactive: {share: 1.0, ttft_p99_s: 1.0}
gpus:
  H100: {on_demand: 3.0}
tensor_parallel: [1]
twin_seconds: 5
"""


def test_a_plan_too_small_to_measure_its_p99_is_refused_when_read(tmp_path: Path) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    with pytest.raises(ConfigError) as caught:
        load_plan(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:12: twin_seconds: ")  # the line of twin_seconds
    assert "about 0.05 requests" in message and "at least 100" in message
    assert "set twin_seconds to 10,000 or more" in message
    # The class that sees the fewest decides; the default twin_seconds is checked too.
    two = {
        "chat": {"share": 0.95, "ttft_p99_s": 1.0},
        "rare": {"share": 0.05, "e2e_p99_s": 30},
    }
    with pytest.raises(ValueError, match=r"about 45 requests of class rare.* 67 or more"):
        plan(slos=two)  # 30 req/s x 0.05 x 30 s
    left_out = plan().model_dump(exclude={"twin_seconds"})
    left_out["workload"] = {**left_out["workload"], "average_rps": 0.5, "peak_rps": 0.5}
    with pytest.raises(ValueError, match=r"run of 120 s sees about 60 requests"):
        type(plan()).model_validate(left_out)
    assert plan(twin_seconds=100 / 30).twin_seconds == pytest.approx(100 / 30)  # just enough


def test_a_run_that_sees_no_request_measures_and_meets_nothing() -> None:
    # Built past the check: a load so low that one second of it brings no request.
    spec = plan().model_copy(update={"twin_seconds": 1.0})
    outcome = evaluate(spec, Fleet("A100", 1, 1), 0.001)
    assert not outcome.meets_slo
    assert outcome.ttft_p99_s == {"chat": None} and outcome.attainment == {"chat": None}
    assert outcome.completed_rps == outcome.drained_rps == outcome.tokens_per_s == 0


@pytest.mark.parametrize(
    ("spec", "role", "longest"),
    [
        ({"fixed": 512}, "prompt", (512, True)),
        ({"uniform": [100, 60000]}, "prompt", (60000, True)),
        ({"lognormal": {"median": 1020, "sigma": 0.9, "max": 8000}}, "prompt", (8000, True)),
        ({"lognormal": {"median": 100.000001, "sigma": 0}}, "prompt", (100, True)),
        ({"preset": "tracelab-codex"}, "prompt", (121009, True)),  # its published P99
        ({"preset": "tracelab-codex", "max": 2000}, "output", (2000, True)),
        # No max: 7.03 sigma above the median (exceeded once in 10**12 draws).
        ({"lognormal": {"median": 100, "sigma": 1.0}}, "prompt", (113_500, False)),
        ({"preset": "azure-conversation-2023"}, "output", (27_250, False)),
    ],
)
def test_the_longest_length_a_spec_draws(
    spec: dict[str, Any], role: Role, longest: tuple[int, bool]
) -> None:
    found = longest_length(LENGTHS.validate_python(spec), role)
    assert found[1] == longest[1]
    assert found[0] == pytest.approx(longest[0], rel=1e-3)


def test_a_gpu_whose_kv_cache_cannot_hold_the_longest_request_is_skipped() -> None:
    # An L4 holds 38,705 tokens of Llama-3.1-8B's KV cache: the mean request (20k) fits,
    # the longest (40,016) does not, and the twin would be handed it. The H100 plans.
    spec = plan(
        workload={
            "average_rps": 1,
            "peak_rps": 2,
            "prompt_tokens": {"uniform": [100, 40000]},
            "output_tokens": {"fixed": 16},
        },
        gpus={"L4": {"on_demand": 0.8}, "H100": {"on_demand": 3.0}},
        twin_seconds=60,
    )
    result = search(spec, workers=1)
    assert result["skipped"] == [
        {
            "gpu": "L4",
            "tp": 1,
            "reason": "the longest request, 40,000 prompt + 16 output tokens, does not fit "
            "a replica's KV cache of 38,705 tokens",
        }
    ]
    assert {c["gpu"] for c in result["candidates"]} == {"H100"}
    assert result["best"] is not None and result["best"]["gpu"] == "H100"


def test_lengths_without_a_max_are_bounded_by_their_tail_and_say_so() -> None:
    spec = plan(
        workload={
            "average_rps": 10,
            "peak_rps": 30,
            "prompt_tokens": {"lognormal": {"median": 500, "sigma": 2}},
            "output_tokens": {"fixed": 64},
        },
        gpus={"L4": {"on_demand": 0.8}},
    )
    result = search(spec, workers=1)
    assert result["candidates"] == [] and result["twin_runs"] == 0
    assert "prompt lengths without a max" in result["skipped"][0]["reason"]


def test_a_trace_with_a_long_silence_is_read_in_one_step_per_arrival(tmp_path: Path) -> None:
    # Before: one loop pass per empty minute, 1.7e16 of them for this gap (it never ended).
    trace = tmp_path / "gap.csv"
    trace.write_text(
        "time,tenant,slo_class,model,prompt_tokens,output_tokens\n"
        "0,a,chat,llama-3.1-8b,100,10\n"
        "1,a,chat,llama-3.1-8b,100,10\n"
        "30,a,chat,llama-3.1-8b,100,10\n"
        "1e18,a,chat,llama-3.1-8b,100,10\n"
        "1e18,a,chat,llama-3.1-8b,100,10\n"
    )
    measured = profile_trace(trace)
    assert measured.peak_rps == pytest.approx(3 / 60)  # the first minute, the busiest
    assert measured.average_rps == pytest.approx(5 / 1e18)
    # Equal lengths: the fitted median is the length itself, not a hair above its max.
    for lengths in (measured.prompt_tokens, measured.output_tokens):
        fit = LENGTHS.validate_python(lengths).lognormal
        assert fit.median == fit.max


def test_the_result_folder_is_checked_before_the_search(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_search(*_: Any, **__: Any) -> Any:
        raise AssertionError("searched before checking --out")

    monkeypatch.setattr("inferplane.plan.search", no_search)
    path = tmp_path / "small.yaml"
    path.write_text(TINY.replace("twin_seconds: 5", "twin_seconds: 10000"))
    taken = tmp_path / "taken"
    taken.write_text("")
    runner = CliRunner()
    for out in (taken, taken / "below"):
        done = runner.invoke(app, ["plan", str(path), "--out", str(out), "-q"])
        assert done.exit_code == 2, done.output
        assert f"error: --out {out}: {taken} is a file, not a folder" in done.output
        assert done.exception is None or isinstance(done.exception, SystemExit)
