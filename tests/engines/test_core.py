"""EngineCore: vLLM-style continuous batching on a told clock."""

from __future__ import annotations

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
    assert events[1:] == [Produced("a", 1, pytest.approx(t)), Finished("a", pytest.approx(t), 1)]


def test_without_chunked_prefill_a_prompt_goes_in_whole() -> None:
    engine = core(max_num_batched_tokens=8192, enable_chunked_prefill=False)
    engine.add_request(EngineRequest("long", 10_000, 1), now=0.0)  # alone: runs, over budget
    engine.add_request(EngineRequest("short", 100, 1), now=0.0)  # waits: no budget left
    first = prefill(10_000)
    assert engine.next_event_time() == pytest.approx(first)
    events = drain(engine)
    assert [e for e in events if isinstance(e, Finished)] == [
        Finished("long", pytest.approx(first), 1),
        Finished("short", pytest.approx(first + prefill(100)), 1),
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


def _run(reqs: list[tuple[float, int, int]], tick: float | None) -> list[object]:
    """Replay arrivals; with ``tick`` the clock also moves in small steps (a live driver)."""
    engine = core(kv_capacity_tokens=4096, max_num_batched_tokens=1024)
    events: list[object] = []
    for i, (arrival, prompt, output) in enumerate(sorted(reqs)):
        if tick is not None:
            t = engine.next_event_time()
            while t is not None and t <= arrival:
                events += engine.advance(t)
                t = engine.next_event_time()
        engine.add_request(EngineRequest(str(i), prompt, output), now=arrival)
    events += drain(engine)
    return events


@settings(max_examples=60, deadline=None)
@given(requests)
def test_every_request_gets_exactly_its_tokens_in_time_order(
    reqs: list[tuple[float, int, int]],
) -> None:
    events = _run(reqs, tick=None)
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


@settings(max_examples=40, deadline=None)
@given(requests)
def test_stepping_the_clock_finely_gives_the_same_events(
    reqs: list[tuple[float, int, int]],
) -> None:
    # One engine logic, two drivers: the live one advances every step, the twin jumps.
    assert _run(reqs, tick=0.001) == _run(reqs, tick=None)
