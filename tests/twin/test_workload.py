"""The twin's workload: seeded, lazy, time-ordered arrivals whose rates, burstiness and
lengths are the configured ones, and trace replay (the gateway's usage export included).

Speed, measured by hand (tests never assert on time)::

    .venv/bin/python -m tests.twin.test_workload

prints microseconds per arrival for a plain Poisson stream, three mixed streams and a
diurnal stream.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import math
import random
import statistics
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from inferplane.ledger import Database, SqlLedger
from inferplane.ledger._query import event_rows
from inferplane.twin import _workload
from inferplane.twin._arrivals import Intensity
from inferplane.twin._lengths import PRESETS, length_sampler
from inferplane.twin._workload import (
    DEFAULT_SLO_CLASS,
    Arrival,
    StreamSpec,
    TraceError,
    WorkloadSpec,
    arrivals,
    read_trace,
)

from ..ledger.test_ledger import append, event

HERE = Path(".")


def stream(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "tenant": "acme",
        "slo_class": "interactive",
        "model": "llama-3.1-8b",
        "rate": 20,
        "prompt_tokens": {"fixed": 100},
        "output_tokens": {"fixed": 10},
    }
    return {**base, **changes}


def spec(*streams: dict[str, Any], duration_s: float = 60) -> WorkloadSpec:
    return WorkloadSpec.model_validate({"duration_s": duration_s, "streams": list(streams)})


def first(workload: WorkloadSpec) -> StreamSpec:
    assert workload.streams
    return workload.streams[0]


def take(workload: WorkloadSpec, n: int | None = None, seed: int = 7) -> list[Arrival]:
    return list(itertools.islice(arrivals(workload, seed=seed, base_dir=HERE), n))


# --- generation ------------------------------------------------------------------------


def test_the_documented_example_is_a_valid_spec() -> None:
    assert _workload.__doc__ is not None
    example = _workload.__doc__.split("::", 1)[1].split("# or, instead")[0]
    loaded = WorkloadSpec.model_validate(yaml.safe_load(example)["workload"])
    assert loaded.streams is not None and loaded.model_names() == {"llama-3.1-8b"}
    assert take(loaded, 100)


def test_same_seed_same_arrivals_and_another_seed_others() -> None:
    workload = spec(
        stream(prompt_tokens={"lognormal": {"median": 500, "sigma": 1}}),
        stream(tenant="globex", arrivals={"gamma": {"cv": 2}}, prefix={"groups": 4, "tokens": 8}),
    )
    first = take(workload)
    assert len(first) > 1000
    assert take(workload) == first
    assert take(workload, seed=8) != first


def test_adding_a_stream_leaves_the_others_alone() -> None:
    alone = take(spec(stream(prompt_tokens={"uniform": [1, 1000]})))
    mixed = take(spec(stream(prompt_tokens={"uniform": [1, 1000]}), stream(tenant="globex")))
    assert [a for a in mixed if a.tenant == "acme"] == alone
    assert {a.tenant for a in mixed} == {"acme", "globex"}


def test_streams_merge_in_time_order_and_ties_go_to_the_earlier_stream() -> None:
    def at(t: float, tenant: str) -> Arrival:
        return Arrival(t, tenant, "batch", "m", 1, 1)

    merged = list(
        _workload._merge([iter([at(1, "a"), at(3, "a")]), iter([at(1, "b"), at(2, "b")])])
    )
    assert [(a.time, a.tenant) for a in merged] == [(1, "a"), (1, "b"), (2, "b"), (3, "a")]
    generated = take(spec(stream(), stream(tenant="b"), stream(tenant="c")))
    assert all(x.time <= y.time for x, y in itertools.pairwise(generated))
    assert all(0 <= a.time < 60 for a in generated)


def test_arrivals_are_lazy_and_memory_stays_flat() -> None:
    workload = spec(stream(rate=1000, prefix={"groups": 100, "tokens": 50}), duration_s=10**9)
    it = arrivals(workload, seed=1, base_dir=HERE)
    assert isinstance(it, Iterator) and not isinstance(it, list | tuple)
    tracemalloc.start()
    try:
        count, last = 0, 0.0
        for arrival in itertools.islice(it, 100_000):
            assert arrival.time >= last
            count, last = count + 1, arrival.time
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 100_000
    # 10**5 arrivals kept in a list would take over 10 MB.
    assert peak < 1_000_000, f"peak {peak} bytes"


def test_the_fast_constructor_builds_the_same_frozen_arrival() -> None:
    fields = (1.5, "acme", "batch", "m", 10, 2, "wf", "k/1", 3)
    made = _workload._new_arrival(*fields)
    assert made == Arrival(*fields) and hash(made) == hash(Arrival(*fields))
    with pytest.raises(AttributeError):
        made.time = 2.0  # type: ignore[misc]


# --- rates: shapes are exact in expectation ---------------------------------------------


def shaped_rate(t: float) -> float:
    """The test's own lambda(t) for SHAPES at rate 20, written independently of the code."""
    diurnal = 1 + 0.6 * math.cos(2 * math.pi * (t - 900) / 3600)  # peak/trough = 1.6/0.4 = 4
    step = 3.0 if 1800 <= t < 2400 else 0.0 if 5100 <= t < 5400 else 1.0
    return 20 * diurnal * step


SHAPES = [
    {"diurnal": {"period_s": 3600, "peak_to_trough": 4, "peak_at_s": 900}},
    {"step": {"at_s": 1800, "duration_s": 600, "factor": 3}},
    {"step": {"at_s": 5100, "duration_s": 300, "factor": 0}},
]


def expected_counts(width: float, end: float) -> list[float]:
    # Midpoint rule, 0.1 s cells: exact to far below the statistical noise.
    cells_per_window = round(width / 0.1)
    return [
        sum(shaped_rate(w * width + (i + 0.5) * 0.1) for i in range(cells_per_window)) * 0.1
        for w in range(round(end / width))
    ]


@pytest.mark.parametrize(
    ("process", "cv"), [("poisson", 1.0), ({"gamma": {"cv": 3}}, 3.0)], ids=["poisson", "gamma"]
)
def test_counts_in_windows_follow_the_integral_of_the_shaped_rate(process: Any, cv: float) -> None:
    end, width = 7200.0, 300.0
    workload = spec(stream(arrivals=process, shape=SHAPES), duration_s=end)
    counts = [0] * round(end / width)
    for a in arrivals(workload, seed=3, base_dir=HERE):
        counts[int(a.time // width)] += 1
    for window, (seen, expected) in enumerate(
        zip(counts, expected_counts(width, end), strict=True)
    ):
        # Counts of a stationary renewal process have variance ~ cv**2 x mean.
        assert abs(seen - expected) <= 4.5 * cv * math.sqrt(expected) + 1, (window, seen, expected)
    assert counts[5100 // 300] == 0  # the outage
    assert sum(counts) == pytest.approx(sum(expected_counts(width, end)), rel=0.05)


def test_the_intensity_integral_matches_numeric_integration() -> None:
    shapes = first(spec(stream(shape=SHAPES))).shape
    intensity = Intensity(20, shapes)
    total = 0.0
    for w, expected in enumerate(expected_counts(300, 7200)):
        total += expected
        assert intensity.cumulative((w + 1) * 300) == pytest.approx(total, rel=1e-6)
        assert intensity.rate_at(w * 300 + 17) == pytest.approx(shaped_rate(w * 300 + 17))
    # Inversion: Lambda(Lambda^-1(tau)) = tau, across steps, troughs and the outage.
    fresh = Intensity(20, shapes)
    for tau in [7.3 * k for k in range(int(total / 7.3))]:
        assert fresh.cumulative(fresh.time_at(tau)) == pytest.approx(tau, abs=1e-6)


def test_two_diurnals_multiply() -> None:
    day = {"diurnal": {"period_s": 86400, "peak_to_trough": 3, "peak_at_s": 50400}}
    week = {"diurnal": {"period_s": 604800, "peak_to_trough": 2, "peak_at_s": 0}}
    shapes = first(spec(stream(shape=[day, week]))).shape
    intensity = Intensity(10, shapes)
    for t in (0.0, 3600.0, 50400.0, 200000.0):
        d = 1 + 0.5 * math.cos(2 * math.pi * (t - 50400) / 86400)
        w = 1 + (1 / 3) * math.cos(2 * math.pi * t / 604800)
        assert intensity.rate_at(t) == pytest.approx(10 * d * w)
    # Whole weeks average to the base rate: both sinusoids have mean 1.
    assert intensity.cumulative(604800) == pytest.approx(10 * 604800, rel=1e-9)
    flat = {"diurnal": {"period_s": 60, "peak_to_trough": 1}}
    assert Intensity(10, first(spec(stream(shape=[flat]))).shape).homogeneous


@pytest.mark.parametrize("factor", [0.0, 3.0])
def test_a_step_from_the_start_for_ever_scales_the_whole_stream(factor: float) -> None:
    # One segment from t = 0 at the step's factor: not the plain rate.
    step = {"step": {"at_s": 0, "factor": factor}}
    workload = spec(stream(rate=20, shape=[step]), duration_s=300)
    assert not Intensity(20, first(workload).shape).homogeneous
    expected = 20 * factor * 300
    count = len(take(workload))
    assert count == pytest.approx(expected, abs=4.5 * math.sqrt(expected)), count
    unit = {"step": {"at_s": 0, "factor": 1}}  # the plain rate: the fast path stays
    assert Intensity(20, first(spec(stream(shape=[unit]))).shape).homogeneous


# --- burstiness -------------------------------------------------------------------------


@pytest.mark.parametrize("cv", [1.0, 3.0])
def test_gamma_gaps_have_the_configured_cv_and_rate(cv: float) -> None:
    workload = spec(stream(rate=50, arrivals={"gamma": {"cv": cv}}), duration_s=4000)
    times = [a.time for a in take(workload)]
    gaps = [y - x for x, y in itertools.pairwise(times)]
    assert statistics.fmean(gaps) == pytest.approx(1 / 50, rel=0.03)
    assert statistics.stdev(gaps) / statistics.fmean(gaps) == pytest.approx(cv, rel=0.05)


def test_bursty_streams_start_in_equilibrium() -> None:
    # A stationary process has exactly Lambda(1) = 1 arrival in [0, 1) on average; started
    # with an ordinary gap instead, a cv-3 gamma process averages about 3.7 there.
    workload = spec(stream(rate=1, arrivals={"gamma": {"cv": 3}}), duration_s=1)
    counts = [len(take(workload, seed=seed)) for seed in range(3000)]
    assert statistics.fmean(counts) == pytest.approx(1.0, abs=0.2)


# --- lengths ----------------------------------------------------------------------------


def draw(length: dict[str, Any], n: int = 20_000, role: Any = "prompt") -> list[int]:
    workload = spec(stream(**{f"{role}_tokens": length}))
    sampler = length_sampler(getattr(first(workload), f"{role}_tokens"), role)
    rng = random.Random(5)
    return [sampler(rng) for _ in range(n)]


def quantile(values: list[int], p: float) -> float:
    return sorted(values)[int(p * len(values))]


def test_lognormal_median_and_clamping() -> None:
    values = draw({"lognormal": {"median": 1020, "sigma": 1.1, "max": 2000}})
    assert quantile(values, 0.5) == pytest.approx(1020, rel=0.03)
    assert max(values) == 2000 and min(values) >= 1
    # P(X > 2000) for this lognormal: 1 - Phi(ln(2000/1020) / 1.1) = 0.270.
    assert values.count(2000) / len(values) == pytest.approx(0.270, abs=0.015)
    tiny = draw({"lognormal": {"median": 2, "sigma": 3}})
    assert min(tiny) == 1 and tiny.count(1) / len(tiny) > 0.3


def test_uniform_and_fixed_lengths() -> None:
    values = draw({"uniform": [3, 7]})
    assert set(values) == {3, 4, 5, 6, 7}
    assert set(draw({"fixed": 512}, n=10)) == {512}


def test_presets_are_cited_and_reproduce_their_published_quantiles() -> None:
    assert PRESETS
    for name, preset in PRESETS.items():
        assert "http" in preset.source and ("P50" in preset.source), name
        assert preset.prompt is not None or preset.output is not None
    published = {  # name, role: (P50, (p, value)) as cited in _lengths.PRESETS
        ("azure-conversation-2023", "output"): (129, (0.95, 451)),
        ("tracelab-claude-code", "prompt"): (857, (0.90, 5342)),
        ("tracelab-claude-code", "output"): (252, (0.90, 1671)),
        ("tracelab-codex", "prompt"): (886, (0.90, 8310)),
        ("tracelab-codex", "output"): (184, (0.90, 939)),
    }
    assert {(n, r) for n, p in PRESETS.items() for r in ("prompt", "output") if getattr(p, r)} == (
        set(published)
    )
    for (name, role), (median, (p, value)) in published.items():
        values = draw({"preset": name}, n=40_000, role=role)
        assert quantile(values, 0.5) == pytest.approx(median, rel=0.04), (name, role)
        assert quantile(values, p) == pytest.approx(value, rel=0.06), (name, role)
    capped = draw({"preset": "tracelab-codex", "max": 1000}, role="output")
    assert max(capped) == 1000


# --- spec validation --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("workload", "message"),
    [
        (
            {"duration_s": 60, "streams": [stream(rate=-1)]},
            "rate\n  Input should be greater than 0",
        ),
        ({"duration_s": 60, "streams": []}, "List should have at least 1 item"),
        (
            {
                "duration_s": 60,
                "streams": [
                    stream(prompt_tokens={"lognormal": {"median": 900, "sigma": 1, "max": 500}})
                ],
            },
            r"max \(500\) must not be below the median \(900",
        ),
        (
            {"duration_s": 60, "streams": [stream(output_tokens={"preset": "sharegpt"})]},
            "unknown preset 'sharegpt'; known presets: azure-conversation-2023, "
            "tracelab-claude-code, tracelab-codex",
        ),
        (
            {
                "duration_s": 60,
                "streams": [stream(prompt_tokens={"preset": "azure-conversation-2023"})],
            },
            "prompt_tokens: preset 'azure-conversation-2023' has no prompt length fit; presets "
            "with one: tracelab-claude-code, tracelab-codex",
        ),
        ({"duration_s": 60, "streams": [stream(colour="red")]}, "colour\n  Extra inputs"),
        ({"streams": [stream()]}, "'duration_s' is required with streams"),
        ({"duration_s": 60}, "give 'streams' to generate requests or a 'trace' to replay"),
        ({"duration_s": 60, "streams": [stream()], "trace": "t.csv"}, "not both"),
        (
            {"duration_s": 60, "streams": [stream(prompt_tokens={"normal": 5})]},
            r"expected one of \{fixed: N\}",
        ),
        (
            {"duration_s": 60, "streams": [stream(prompt_tokens={"uniform": [9, 2]})]},
            r"uniform needs 1 <= lo <= hi, got \[9, 2\]",
        ),
        (
            {"duration_s": 60, "streams": [stream(arrivals={"gamma": {"cv": 0}})]},
            "cv\n  Input should be greater than 0",
        ),
        (
            {"duration_s": 60, "streams": [stream(shape=[{"spike": {}}])]},
            r"expected \{diurnal: \{...\}\} or \{step: \{...\}\}",
        ),
        (
            {"duration_s": 60, "streams": [stream(shape=[{"step": {"at_s": 5, "factor": -2}}])]},
            "factor\n  Input should be greater than or equal to 0",
        ),
        (
            {"duration_s": 60, "streams": [stream(prefix={"groups": 0, "tokens": 5})]},
            "groups\n  Input should be greater than or equal to 1",
        ),
    ],
)
def test_invalid_specs_are_refused_with_clear_messages(
    workload: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        WorkloadSpec.model_validate(workload)


# --- trace replay -----------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_csv_trace_replays_rows_in_order(tmp_path: Path) -> None:
    trace = write(
        tmp_path / "trace.csv",
        "time,tenant,slo_class,model,prompt_tokens,output_tokens,workflow,prefix_key,"
        "prefix_tokens,note\n"
        "0.5,acme,interactive,m,100,20,chat,sys/1,64,hello\n"
        "0.5,globex,batch,m,7.0,1,,,,\n"
        "2.25,acme,interactive,m,30,5,,,,\n",
    )
    workload = WorkloadSpec.model_validate({"trace": "trace.csv"})
    assert list(arrivals(workload, seed=0, base_dir=tmp_path)) == [
        Arrival(0.5, "acme", "interactive", "m", 100, 20, "chat", "sys/1", 64),
        Arrival(0.5, "globex", "batch", "m", 7, 1),
        Arrival(2.25, "acme", "interactive", "m", 30, 5),
    ]
    cut = WorkloadSpec.model_validate({"trace": str(trace), "duration_s": 1})
    assert len(list(arrivals(cut, seed=0, base_dir=Path("/elsewhere")))) == 2
    with pytest.raises(FileNotFoundError, match=r"missing\.csv"):
        arrivals(WorkloadSpec.model_validate({"trace": "missing.csv"}), seed=0, base_dir=tmp_path)


def test_jsonl_trace_with_iso_timestamps_is_relative_to_the_first(tmp_path: Path) -> None:
    rows = [
        {"time": "2024-05-10T12:00:00Z", "tenant": "a", "slo_class": "batch", "model": "m",
         "prompt_tokens": 10, "output_tokens": 2},
        {"time": "2024-05-10T14:00:01.5+02:00", "tenant": "a", "slo_class": "batch",
         "model": "m", "prompt_tokens": 11, "output_tokens": 3, "workflow": "w"},
        {"time": "2024-05-10T12:00:03", "tenant": "b", "slo_class": "batch", "model": "m",
         "prompt_tokens": 12, "output_tokens": 4},
    ]  # fmt: skip
    trace = write(tmp_path / "t.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    replayed = list(read_trace(trace))
    assert [a.time for a in replayed] == [0.0, 1.5, 3.0]
    assert replayed[1] == Arrival(1.5, "a", "batch", "m", 11, 3, "w")


HEADER = "time,tenant,slo_class,model,prompt_tokens,output_tokens,prefix_key,prefix_tokens\n"


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("trace.csv", HEADER + "0,a,b,m,10,1,,\n1,a,b,m,-5,1,,\n", "trace.csv:3: prompt_tokens: must be a positive integer, got '-5'"),  # noqa: E501
        ("trace.csv", HEADER + "0,a,b,m,10,x,,\n", "trace.csv:2: output_tokens: must be a positive integer, got 'x'"),  # noqa: E501
        ("trace.csv", "time,tenant,model,output_tokens\n0,a,m,1\n", "trace.csv:2: missing slo_class, prompt_tokens"),  # noqa: E501
        ("trace.csv", HEADER + "5,a,b,m,10,1,,\n4,a,b,m,10,1,,\n", "trace.csv:3: time: 4 s comes before the previous row's 5 s"),  # noqa: E501
        ("trace.csv", HEADER + "0,,b,m,10,1,,\n", "trace.csv:2: tenant: required"),
        ("trace.csv", HEADER + "0,a,b,m,10,1,k,11\n", r"trace.csv:2: prefix_tokens: 11 exceeds prompt_tokens \(10\)"),  # noqa: E501
        ("trace.csv", HEADER + "0,a,b,m,10,1,,4\n", "trace.csv:2: prefix_tokens: needs a prefix_key"),  # noqa: E501
        ("trace.csv", HEADER + "-1,a,b,m,10,1,,\n", "trace.csv:2: time: must be a non-negative number"),  # noqa: E501
        ("trace.csv", HEADER + "0,a,b,m,10,1,,\n2024-01-01T00:00:00Z,a,b,m,10,1,,\n", "trace.csv:3: time: .* is not a number of seconds"),  # noqa: E501
        ("trace.csv", HEADER + "yesterday,a,b,m,10,1,,\n", "trace.csv:2: time: not seconds nor an ISO-8601 timestamp"),  # noqa: E501
        ("trace.csv", HEADER + "0,a,b,m,10\n", "trace.csv:2: 5 fields, the header has 8"),
        ("trace.jsonl", '{"time": 0}\n{"time": \n', "trace.jsonl:1: missing tenant"),
        ("trace.jsonl", "[1, 2]\n", "trace.jsonl:1: expected a JSON object"),
        ("trace.jsonl", '{"time": 0, "tenant": "a", "slo_class": "b", "model": "m", "prompt_tokens": 1, "output_tokens": 1}\n{"time": \n', "trace.jsonl:2: not valid JSON"),  # noqa: E501
        ("trace.jsonl", '{"time": 0, "tenant": 7, "slo_class": "b", "model": "m", "prompt_tokens": 1, "output_tokens": 1}\n', "trace.jsonl:1: tenant: must be a string, got 7"),  # noqa: E501
        ("trace.parquet", "", "trace.parquet: unknown trace format '.parquet'"),
    ],
)  # fmt: skip
def test_trace_errors_name_file_line_and_column(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    trace = write(tmp_path / name, text)
    with pytest.raises(TraceError, match=message):
        list(read_trace(trace))


def test_a_trace_naming_a_model_or_class_the_scenario_lacks_is_refused_at_its_line(
    tmp_path: Path,
) -> None:
    trace = write(tmp_path / "t.csv", HEADER + "0,a,batch,m,10,1,,\n1,a,batch,gpt-9,10,1,,\n")
    known = {"models": ["m", "n"], "slo_classes": ["batch", "interactive"]}
    message = r"t\.csv:3: model: 'gpt-9' is not among the models \['m', 'n'\]"
    with pytest.raises(TraceError, match=message):
        list(read_trace(trace, **known))
    trace = write(tmp_path / "t.csv", HEADER + "0,a,platinum,m,10,1,,\n")
    message = r"t\.csv:2: slo_class: 'platinum' is not among the slo_classes \['batch', 'int"
    with pytest.raises(TraceError, match=message):
        list(read_trace(trace, **known))
    assert len(list(read_trace(trace))) == 1  # no names given: any


def test_a_usage_export_row_without_a_class_takes_the_given_default(tmp_path: Path) -> None:
    trace = write(
        tmp_path / "events.csv",
        "request_id,time,tenant,model,slo_class,status,input_tokens,output_tokens\n"
        "r1,2024-01-01T00:00:00Z,acme,m,,200,100,10\n"
        "r2,2024-01-01T00:00:01Z,acme,m,batch,200,100,10\n",
    )
    replayed = list(read_trace(trace, slo_classes=["gold", "batch"], default_slo_class="gold"))
    assert [a.slo_class for a in replayed] == ["gold", "batch"]
    assert [a.slo_class for a in read_trace(trace)] == [DEFAULT_SLO_CLASS, "batch"]


def test_a_csv_trace_may_start_with_a_byte_order_mark(tmp_path: Path) -> None:
    text = "time,tenant,slo_class,model,prompt_tokens,output_tokens\n0,a,b,m,10,1\n"
    trace = tmp_path / "excel.csv"
    trace.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert list(read_trace(trace)) == [Arrival(0.0, "a", "b", "m", 10, 1)]
    jsonl = tmp_path / "bom.jsonl"
    row = {"time": 0, "tenant": "a", "slo_class": "b", "model": "m"}
    row |= {"prompt_tokens": 10, "output_tokens": 1}
    jsonl.write_bytes(b"\xef\xbb\xbf" + json.dumps(row).encode() + b"\n")
    assert list(read_trace(jsonl)) == [Arrival(0.0, "a", "b", "m", 10, 1)]


def test_a_trace_that_is_not_utf8_is_refused_naming_its_file(tmp_path: Path) -> None:
    trace = tmp_path / "utf16.csv"
    trace.write_bytes("time,tenant\n".encode("utf-16"))
    with pytest.raises(TraceError, match=r"utf16\.csv: not UTF-8 text \(byte 0xff"):
        list(read_trace(trace))
    later = tmp_path / "latin1.csv"
    good = "".join(f"{i},a,b,m,10,1,,\n" for i in range(2000))  # decoded in blocks
    later.write_bytes((HEADER + good + "2000,caf\xe9,b,m,10,1,,\n").encode("latin-1"))
    message = r"latin1\.csv: not UTF-8 text \(byte 0xe9 after line \d+"
    with pytest.raises(TraceError, match=message):
        list(read_trace(later))


def test_generated_arrivals_survive_a_trip_through_a_trace(tmp_path: Path) -> None:
    workload = spec(
        stream(workflow="chat", prefix={"groups": 3, "tokens": 40, "fraction": 0.5}),
        stream(tenant="globex", prompt_tokens={"preset": "tracelab-codex"}),
    )
    generated = take(workload, 2000)
    path = tmp_path / "roundtrip.csv"
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(Arrival.__slots__)
        for a in generated:
            cells = [repr(a.time), a.tenant, a.slo_class, a.model, a.prompt_tokens]
            cells += [a.output_tokens, a.workflow, a.prefix_key, a.prefix_tokens or None]
            writer.writerow(cells)
    assert list(read_trace(path)) == generated
    assert any(a.prefix_key for a in generated) and any(not a.prefix_key for a in generated)


async def test_the_gateway_usage_export_replays_as_the_same_arrivals(tmp_path: Path) -> None:
    database = Database.sqlite(tmp_path / "ledger.sqlite3")
    ledger = SqlLedger(database)
    start = 1_700_000_000.0
    events = [
        event(0, time=start, slo_class="interactive", input_tokens=900, output_tokens=120),
        event(1, time=start + 0.25, tenant="globex", workflow=None, slo_class="batch"),
        event(2, time=start + 0.5, status=502, error_type="upstream", output_tokens=None),
        event(3, time=start + 1.75, output_tokens=None, input_tokens=None),  # no usage known
        event(4, time=start + 2.0, slo_class=None, input_tokens=33, output_tokens=7),
        event(5, time=start + 3.5, status=429, input_tokens=10, output_tokens=0),
        event(6, time=start + 4.125, model="qwen-2.5-7b", slo_class="realtime"),
    ]
    for e in events:
        await append(ledger, e)
    ledger.close()

    with contextlib.closing(database.connect(read_only=True)) as db:
        rows = list(event_rows(db, database))
        assert [r["request_id"] for r in rows] == [f"r{i}" for i in range(7)]
        assert list(rows[0]) == [
            "request_id", "time", "tenant", "key", "workflow", "run", "model", "backend",
            "slo_class", "status", "input_tokens", "output_tokens", "cached_tokens",
            "cost_usd", "ttft_s", "duration_s", "retries", "finish_reason", "client_request_id",
        ]  # fmt: skip
        assert rows[1]["time"] == "2023-11-14T22:13:20.250000Z"
        assert rows[0]["cost_usd"] == "0.0001" and rows[2]["status"] == 502
        assert [r["request_id"] for r in event_rows(db, database, start=start + 1)] == [
            "r3", "r4", "r5", "r6",
        ]  # fmt: skip

    export = tmp_path / "events.csv"
    with export.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    replayed = list(arrivals(WorkloadSpec(trace=Path("events.csv")), seed=0, base_dir=tmp_path))

    kept = [e for e in events if e.status < 400 and e.input_tokens and e.output_tokens]
    assert [e.request_id for e in kept] == ["r0", "r1", "r4", "r6"]
    assert replayed == [
        Arrival(
            e.time - start,
            e.tenant,
            e.slo_class or DEFAULT_SLO_CLASS,
            e.model,
            e.input_tokens or 0,
            e.output_tokens or 0,
            e.workflow,
        )
        for e in kept
    ]


# --- speed (by hand) --------------------------------------------------------------------


def _bench() -> None:
    lognormal = {"lognormal": {"median": 1020, "sigma": 1.1, "max": 8000}}
    cases = {
        "poisson, lognormal lengths": spec(stream(rate=1000, prompt_tokens=lognormal)),
        "3 streams: poisson+prefix, gamma, diurnal+step": spec(
            stream(rate=300, prompt_tokens=lognormal, prefix={"groups": 8, "tokens": 512}),
            stream(tenant="b", rate=300, arrivals={"gamma": {"cv": 3}}),
            stream(
                tenant="c", rate=300, shape=SHAPES[:2], output_tokens={"preset": "tracelab-codex"}
            ),
        ),
        "diurnal, fixed lengths": spec(stream(rate=300, shape=SHAPES[:1])),
    }
    n = 200_000
    for name, workload in cases.items():
        workload = workload.model_copy(update={"duration_s": 10**9})
        it = arrivals(workload, seed=1, base_dir=HERE)
        began = time.perf_counter()
        for _ in itertools.islice(it, n):
            pass
        print(f"{(time.perf_counter() - began) / n * 1e6:6.2f} us/arrival  {name}")


if __name__ == "__main__":
    _bench()
