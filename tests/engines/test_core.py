"""EngineCore: vLLM-style continuous batching on a told clock."""

from __future__ import annotations

from dataclasses import astuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferplane.engines import (
    Admitted,
    EngineCore,
    EngineLimits,
    EngineRequest,
    Finished,
    Preempted,
    Produced,
)
from inferplane.perf import PerfModel, StepShape, get_gpu, get_model

PERF = PerfModel(get_gpu("H100"), get_model("llama-3.1-8b"))


def core(**limits: object) -> EngineCore:
    return EngineCore(PERF, EngineLimits(**limits))  # type: ignore[arg-type]


def prefill(n: int, cached: int = 0) -> float:
    return PERF.step_time(StepShape.from_batch(prefill_chunks=[(n, cached)]))


def decode(*contexts: int) -> float:
    return PERF.step_time(StepShape.from_batch(decode_context_lengths=contexts))


def drain(engine: EngineCore) -> list[object]:
    events: list[object] = []
    while (t := engine.next_event_time()) is not None:
        events += engine.advance(t)
    return events


def test_one_request_prefills_then_decodes_token_by_token() -> None:
    engine = core()
    engine.add_request(EngineRequest("a", num_prompt_tokens=100, num_output_tokens=3), now=0.0)
    events = drain(engine)
    # Step 1 prefills the 100 prompt tokens and samples token 1; steps 2 and 3 each read
    # the KV of 101 then 102 tokens and sample one more.
    t1 = prefill(100)
    t2 = t1 + decode(101)
    t3 = t2 + decode(102)
    assert events == [
        Admitted("a", 0.0),
        Produced("a", 1, t1),
        Produced("a", 1, t2),
        Produced("a", 1, t3),
        Finished("a", t3, 3),
    ]
    assert engine.num_free_blocks == engine.num_blocks
    assert engine.next_event_time() is None


def test_arrival_waits_for_the_step_in_flight() -> None:
    engine = core()
    engine.add_request(EngineRequest("a", 100, 2), now=0.0)
    t1 = prefill(100)
    engine.add_request(EngineRequest("b", 50, 1), now=t1 / 2)  # mid-step
    # At t1 step 1 ends and step 2 is fixed: it admits b.
    assert engine.advance(t1) == [Admitted("a", 0.0), Produced("a", 1, t1), Admitted("b", t1)]
    # Step 2 starts at t1 and now batches a's decode with b's whole prompt.
    t2 = t1 + PERF.step_time(StepShape.from_batch([(50, 0)], [101]))
    assert engine.next_event_time() == pytest.approx(t2)
    assert drain(engine) == [
        Produced("a", 1, t2),
        Finished("a", t2, 2),
        Produced("b", 1, t2),
        Finished("b", t2, 1),
    ]


def test_long_prompt_is_prefilled_in_chunks_of_the_token_budget() -> None:
    engine = core(max_num_batched_tokens=8192)
    engine.add_request(EngineRequest("a", 10_000, 1), now=0.0)
    events = drain(engine)
    t = prefill(8192) + prefill(10_000 - 8192, cached=8192)
    assert [astuple(e) for e in events[1:]] == [
        ("a", 1, pytest.approx(t)),
        ("a", pytest.approx(t), 1),
    ]
    assert [type(e) for e in events[1:]] == [Produced, Finished]


def test_without_chunked_prefill_a_prompt_goes_in_whole() -> None:
    engine = core(max_num_batched_tokens=8192, enable_chunked_prefill=False)
    engine.add_request(EngineRequest("long", 10_000, 1), now=0.0)  # alone: runs, over budget
    engine.add_request(EngineRequest("short", 100, 1), now=0.0)  # waits: no budget left
    first = prefill(10_000)
    assert engine.next_event_time() == pytest.approx(first)
    events = drain(engine)
    assert [astuple(e) for e in events if isinstance(e, Finished)] == [
        ("long", pytest.approx(first), 1),
        ("short", pytest.approx(first + prefill(100)), 1),
    ]


def test_idle_engine_starts_at_the_arrival_time() -> None:
    engine = core()
    engine.add_request(EngineRequest("a", 10, 1), now=5.0)
    assert engine.next_event_time() == pytest.approx(5.0 + prefill(10))


def test_max_num_seqs_holds_the_rest_in_the_waiting_queue() -> None:
    engine = core(max_num_seqs=2)
    for rid in "abc":
        engine.add_request(EngineRequest(rid, 10, 5), now=0.0)
    engine.advance(engine.next_event_time() or 0.0)
    assert (engine.num_running, engine.num_waiting) == (2, 1)
    finished = [e.request_id for e in drain(engine) if isinstance(e, Finished)]
    assert finished == ["a", "b", "c"]


def test_kv_exhaustion_preempts_the_newest_request_and_everyone_still_finishes() -> None:
    # 6 blocks of 16 tokens: two requests of 16 + 40 tokens need 4 blocks each eventually.
    engine = core(kv_capacity_tokens=96, block_size=16)
    engine.add_request(EngineRequest("old", 16, 40), now=0.0)
    engine.add_request(EngineRequest("new", 16, 40), now=0.0)
    events = drain(engine)
    preempted = [e.request_id for e in events if isinstance(e, Preempted)]
    assert preempted and set(preempted) == {"new"}
    # Each preemption is followed, later, by a re-admission.
    admitted = [e.request_id for e in events if isinstance(e, Admitted)]
    assert admitted.count("new") == 1 + len(preempted)
    produced = {
        rid: sum(e.num_tokens for e in events if isinstance(e, Produced) and e.request_id == rid)
        for rid in ("old", "new")
    }
    assert produced == {"old": 40, "new": 40}
    assert engine.num_free_blocks == engine.num_blocks


def test_abort_frees_the_kv_cache() -> None:
    engine = core()
    engine.add_request(EngineRequest("a", 1000, 100), now=0.0)
    engine.advance(prefill(1000))
    assert engine.kv_usage > 0
    engine.abort("a", now=prefill(1000))
    assert engine.kv_usage == 0
    assert "a" not in engine
    assert drain(engine) == []


def test_refuses_duplicates_and_requests_larger_than_the_cache() -> None:
    engine = core(kv_capacity_tokens=160)
    engine.add_request(EngineRequest("a", 10, 10), now=0.0)
    with pytest.raises(ValueError, match="duplicate"):
        engine.add_request(EngineRequest("a", 10, 10), now=0.0)
    with pytest.raises(ValueError, match="KV blocks"):
        engine.add_request(EngineRequest("b", 150, 20), now=0.0)


requests = st.lists(
    st.tuples(st.floats(0, 0.5), st.integers(1, 3000), st.integers(1, 60)),
    min_size=1,
    max_size=25,
)


def _run(reqs: list[tuple[float, int, int]], *, live: bool) -> list[object]:
    """Replay arrivals the way a driver does: ``live`` advances step by step (the
    emulator); otherwise the clock jumps from arrival to arrival (the twin)."""
    engine = core(kv_capacity_tokens=4096, max_num_batched_tokens=1024)
    events: list[object] = []
    for i, (arrival, prompt, output) in enumerate(sorted(reqs)):
        if live:
            t = engine.next_event_time()
            while t is not None and t <= arrival:
                events += engine.advance(t)
                t = engine.next_event_time()
        else:
            events += engine.advance(arrival)
        engine.add_request(EngineRequest(str(i), prompt, output), now=arrival)
    events += drain(engine) if live else engine.advance(float("inf"))
    return events


def summary(events: list[object]) -> dict[str, tuple[int, float, float, int]]:
    """Per request: tokens, first token time, finish time, preemptions."""
    out: dict[str, list[float]] = {}
    for e in events:
        if isinstance(e, Produced):
            entry = out.setdefault(e.request_id, [0, e.time, 0.0, 0])
            entry[0] += e.num_tokens
        elif isinstance(e, Finished):
            out[e.request_id][2] = e.time
        elif isinstance(e, Preempted):
            out.setdefault(e.request_id, [0, 0.0, 0.0, 0])[3] += 1
    return {rid: (int(v[0]), v[1], v[2], int(v[3])) for rid, v in out.items()}


@settings(max_examples=60, deadline=None)
@given(requests)
def test_every_request_gets_exactly_its_tokens_in_time_order(
    reqs: list[tuple[float, int, int]],
) -> None:
    events = _run(reqs, live=True)
    arrivals = {str(i): r for i, r in enumerate(sorted(reqs))}
    last: dict[str, float] = {}
    counts: dict[str, int] = {}
    for e in events:
        if isinstance(e, Produced):
            assert e.time > last.get(e.request_id, arrivals[e.request_id][0])
            last[e.request_id] = e.time
            counts[e.request_id] = counts.get(e.request_id, 0) + e.num_tokens
    assert counts == {rid: r[2] for rid, r in arrivals.items()}
    assert {e.request_id for e in events if isinstance(e, Finished)} == set(arrivals)


@settings(max_examples=60, deadline=None)
@given(requests)
def test_jumping_between_arrivals_gives_the_timings_of_stepping(
    reqs: list[tuple[float, int, int]],
) -> None:
    # One engine logic, two drivers: the emulator advances every step, the twin jumps
    # (decode runs summed in closed form). Same tokens, same times up to float rounding.
    live, twin = summary(_run(reqs, live=True)), summary(_run(reqs, live=False))
    assert live.keys() == twin.keys()
    for rid, (tokens, first, finish, preemptions) in live.items():
        assert twin[rid][0] == tokens
        assert twin[rid][1] == pytest.approx(first, rel=1e-9)
        assert twin[rid][2] == pytest.approx(finish, rel=1e-9)
        assert twin[rid][3] == preemptions


def test_a_long_decode_is_crossed_in_one_call() -> None:
    stepped, jumped = core(), core()
    for engine in (stepped, jumped):
        engine.add_request(EngineRequest("a", 100, 2000), now=0.0)
        engine.add_request(EngineRequest("b", 100, 1500), now=0.0)
    by_step = drain(stepped)
    by_jump = jumped.advance(float("inf"))
    assert len(by_step) > 3000
    # 2 admissions, a's first token, a step with b's prefill and a's decode (2 events),
    # one run to b's finish (3 events), one run to a's (2 events).
    assert len(by_jump) == 10
    jumped_summary, stepped_summary = summary(by_jump), summary(by_step)
    for rid in ("a", "b"):
        assert jumped_summary[rid] == pytest.approx(stepped_summary[rid], rel=1e-9)


def test_a_jump_across_the_compute_memory_crossover_keeps_the_timings() -> None:
    # 256 sequences decoding on an H100: compute-bound at first (256 x 2 x 8B FLOPs per
    # step), memory-bound later as the KV read grows: the closed form must switch sides.
    stepped, jumped = core(), core()
    for engine in (stepped, jumped):
        for i in range(256):
            engine.add_request(EngineRequest(str(i), 10, 400), now=0.0)
    series = [
        PERF.step_cost(StepShape.from_batch(decode_context_lengths=[c] * 256)) for c in (20, 3000)
    ]
    assert series[0].bound == "compute" and series[1].bound == "memory"
    by_step, by_jump = summary(drain(stepped)), summary(jumped.advance(float("inf")))
    for rid in ("0", "255"):
        assert by_jump[rid] == pytest.approx(by_step[rid], rel=1e-9)


@settings(max_examples=30, deadline=None)
@given(requests)
def test_quiet_mode_keeps_first_tokens_and_finishes(reqs: list[tuple[float, int, int]]) -> None:
    every = [e for e in _run(reqs, live=False) if not isinstance(e, Admitted)]
    quiet_engine = EngineCore(
        PERF, EngineLimits(kv_capacity_tokens=4096, max_num_batched_tokens=1024), every_token=False
    )
    quiet: list[object] = []
    for i, (arrival, prompt, output) in enumerate(sorted(reqs)):
        quiet += quiet_engine.advance(arrival)
        quiet_engine.add_request(EngineRequest(str(i), prompt, output), now=arrival)
    quiet += quiet_engine.advance(float("inf"))
    firsts = {}
    for e in every:
        if isinstance(e, Produced):
            firsts.setdefault(e.request_id, e.time)
    quiet_firsts = {e.request_id: e.time for e in quiet if isinstance(e, Produced)}
    assert quiet_firsts == firsts
    finished = {
        e.request_id: (e.time, e.num_output_tokens) for e in every if isinstance(e, Finished)
    }
    assert {
        e.request_id: (e.time, e.num_output_tokens) for e in quiet if isinstance(e, Finished)
    } == finished
