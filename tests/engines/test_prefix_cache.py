"""Automatic prefix caching in EngineCore (vLLM v1's scheme) and the emulator's block hashes."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferplane.engines import (
    Admitted,
    EmulatorSettings,
    EngineCore,
    EngineLimits,
    EngineRequest,
    Produced,
    create_emulator_app,
    prompt_block_hashes,
)
from inferplane.perf import PerfModel, StepShape, count_chat_tokens, get_gpu, get_model

PERF = PerfModel(get_gpu("H100"), get_model("llama-3.1-8b"))
BS = 16


def core(**limits: object) -> EngineCore:
    return EngineCore(PERF, EngineLimits(**limits))  # type: ignore[arg-type]


def chain(family: int, num_blocks: int) -> tuple[int, ...]:
    """Block hashes of a prompt from prefix family ``family`` (same family, same blocks)."""
    return tuple(family * 1_000_003 + i for i in range(num_blocks))


def request(rid: str, prompt: int, output: int, family: int = 0) -> EngineRequest:
    return EngineRequest(rid, prompt, output, chain(family, prompt // BS))


def prefill(n: int, cached: int = 0) -> float:
    return PERF.step_time(StepShape.from_batch(prefill_chunks=[(n, cached)]))


def drain(engine: EngineCore) -> list[object]:
    events: list[object] = []
    while (t := engine.next_event_time()) is not None:
        events += engine.advance(t)
    return events


def first_token(events: list[object], rid: str) -> float:
    return next(e.time for e in events if isinstance(e, Produced) and e.request_id == rid)


def check_blocks(engine: EngineCore) -> None:
    """Every block is private to one request, shared through the cache, or free; a
    referenced block is never on the free list; references match their holders."""
    live = list(engine._seqs.values())
    for seq in live:
        if seq.decoding:
            engine._decode.sync(seq)  # decode-set members keep their counts lazily
    holders: dict[int, int] = {}
    for seq in live:
        for h in seq.shared:
            holders[h] = holders.get(h, 0) + 1
    referenced = {h: n for h, n in engine._refs.items() if n > 0}
    assert referenced == holders
    assert set(engine._idle) == {h for h, n in engine._refs.items() if n == 0}
    private = sum(seq.num_blocks - len(seq.shared) for seq in live)
    assert private >= 0
    assert private + len(referenced) + engine.num_free_blocks == engine.num_blocks
    assert len(engine._idle) <= engine.num_free_blocks
    assert engine.kv_usage == pytest.approx(1 - engine.num_free_blocks / engine.num_blocks)


def test_the_same_prompt_again_prefills_only_its_last_block() -> None:
    engine = core()
    engine.add_request(request("a", 1000, 1), now=0.0)
    first = drain(engine)
    start = first_token(first, "a")
    engine.add_request(request("b", 1000, 1), now=start)
    second = drain(engine)
    # 62 full blocks of 1000 tokens are cached; 992 tokens reused, 8 recomputed.
    assert Admitted("a", 0.0, 0) in first
    assert Admitted("b", start, 992) in second
    assert first_token(first, "a") == pytest.approx(prefill(1000))
    assert first_token(second, "b") - start == pytest.approx(prefill(8, cached=992))
    # One step that reads the weights (and the cached KV) instead of a compute-bound one.
    assert first_token(second, "b") - start < first_token(first, "a") / 4
    assert (engine.num_prefix_queries, engine.num_prefix_hits) == (2000, 992)


def test_a_fully_cached_prompt_still_recomputes_its_last_block() -> None:
    engine = core()
    engine.add_request(request("a", 64, 1), now=0.0)  # exactly 4 blocks
    drain(engine)
    engine.add_request(request("b", 64, 1), now=1.0)
    # The last token must be computed to sample from, so the hit stops a block short.
    assert Admitted("b", 1.0, 48) in drain(engine)


def test_finished_prompts_stay_cached_but_count_as_free() -> None:
    engine = core(kv_capacity_tokens=16 * 100)
    engine.add_request(request("a", 800, 1), now=0.0)
    drain(engine)
    assert engine.num_cached_blocks == 50
    assert engine.kv_usage == 0.0  # like vLLM: only referenced blocks are in use
    assert engine.num_free_blocks == engine.num_blocks
    check_blocks(engine)


def test_eviction_takes_the_least_recently_freed_prefix_first() -> None:
    engine = core(kv_capacity_tokens=16 * 100)
    for i, family in enumerate((1, 2)):
        engine.add_request(request(f"warm{family}", 640, 1, family), now=float(i))
        drain(engine)
    # 80 cached blocks, 20 empty: a 480-token stranger needs 30 blocks, so 10 cached ones
    # go: family 1's (freed first), from the tail of its prompt.
    engine.add_request(request("stranger", 480, 1, family=3), now=2.0)
    drain(engine)
    check_blocks(engine)

    def hit(family: int, now: float) -> int:
        engine.add_request(request(f"again{family}", 640, 1, family), now=now)
        events = drain(engine)
        check_blocks(engine)
        return next(e.num_cached_tokens for e in events if isinstance(e, Admitted))

    # Family 2 is whole (39 blocks: the last is recomputed, into a block that evicts one
    # more of family 1's); family 1 kept its first 29.
    assert hit(2, now=3.0) == 39 * BS
    assert hit(1, now=4.0) == 29 * BS


def test_requests_in_flight_share_blocks_instead_of_copying_them() -> None:
    engine = core()
    engine.add_request(request("a", 3200, 50), now=0.0)
    engine.advance(engine.next_event_time() or 0.0)
    engine.add_request(request("b", 3200, 50), now=engine.next_event_time() or 0.0)
    engine.advance(engine.next_event_time() or 0.0)
    check_blocks(engine)
    # a: 200 prompt blocks and 1 for its output; b: the first 199 of a's by reference
    # (the last prompt token is recomputed) and its own copy of the last.
    assert engine.num_blocks - engine.num_free_blocks == 200 + 1 + 1
    assert "b" in engine and engine.num_running == 2


def test_caching_disabled_or_no_hashes_behave_as_before() -> None:
    def run(limits: EngineLimits, hashed: bool) -> list[object]:
        engine = EngineCore(PERF, limits)
        for i in range(6):
            req = (
                request(str(i), 500 + 10 * i, 20)
                if hashed
                else EngineRequest(str(i), 500 + 10 * i, 20)
            )
            engine.add_request(req, now=0.01 * i)
        return drain(engine)

    plain = run(EngineLimits(enable_prefix_caching=False), hashed=False)
    assert run(EngineLimits(enable_prefix_caching=False), hashed=True) == plain
    assert run(EngineLimits(), hashed=False) == plain
    # With the cache, the same family's later prompts start from its blocks.
    assert run(EngineLimits(), hashed=True) != plain


def test_refuses_more_hashes_than_full_blocks() -> None:
    with pytest.raises(ValueError, match="block hashes"):
        core().add_request(EngineRequest("a", 31, 1, chain(0, 2)), now=0.0)


# Requests drawn from three prefix families, small KV cache: hits, evictions and
# preemptions all happen.
hashed_requests = st.lists(
    st.tuples(st.floats(0, 0.3), st.integers(1, 900), st.integers(1, 40), st.integers(0, 2)),
    min_size=1,
    max_size=20,
)


def _replay(reqs: list[tuple[float, int, int, int]], *, live: bool) -> list[object]:
    engine = core(kv_capacity_tokens=2048, max_num_batched_tokens=512)
    events: list[object] = []
    for i, (arrival, prompt, output, family) in enumerate(sorted(reqs)):
        if live:
            while (t := engine.next_event_time()) is not None and t <= arrival:
                events += engine.advance(t)
                check_blocks(engine)
        else:
            events += engine.advance(arrival)
        engine.add_request(request(str(i), prompt, output, family), now=arrival)
    if live:
        while (t := engine.next_event_time()) is not None:
            events += engine.advance(t)
            check_blocks(engine)
    else:
        events += engine.advance(float("inf"))
    check_blocks(engine)
    assert engine.num_running == engine.num_waiting == 0
    return events


def _timeline(events: list[object]) -> dict[str, tuple[int, float, float]]:
    out: dict[str, list[float]] = {}
    for e in events:
        if isinstance(e, Produced):
            entry = out.setdefault(e.request_id, [0, e.time, 0.0])
            entry[0] += e.num_tokens
            entry[2] = e.time
    return {rid: (int(v[0]), v[1], v[2]) for rid, v in out.items()}


@settings(max_examples=60, deadline=None)
@given(hashed_requests)
def test_block_accounting_holds_and_every_request_finishes(
    reqs: list[tuple[float, int, int, int]],
) -> None:
    tokens = {rid: n for rid, (n, _, _) in _timeline(_replay(reqs, live=True)).items()}
    assert tokens == {str(i): r[2] for i, r in enumerate(sorted(reqs))}


@settings(max_examples=60, deadline=None)
@given(hashed_requests)
def test_jumping_with_a_prefix_cache_gives_the_timings_of_stepping(
    reqs: list[tuple[float, int, int, int]],
) -> None:
    stepped, jumped = _timeline(_replay(reqs, live=True)), _timeline(_replay(reqs, live=False))
    assert stepped.keys() == jumped.keys()
    for rid, (tokens, first, last) in stepped.items():
        assert jumped[rid][0] == tokens
        assert jumped[rid][1] == pytest.approx(first, rel=1e-9)
        assert jumped[rid][2] == pytest.approx(last, rel=1e-9)


# -- the emulator's block hashes ------------------------------------------------

SYSTEM = "You answer questions about the billing manual, citing its sections. " * 40


def chat(system: str, question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


def hashes_of(messages: list[dict[str, str]]) -> tuple[int, ...]:
    return prompt_block_hashes(messages, BS, count_chat_tokens(messages))


def test_a_shared_system_prompt_is_a_shared_prefix_of_blocks() -> None:
    a, b = hashes_of(chat(SYSTEM, "How do refunds work?")), hashes_of(chat(SYSTEM, "Why?"))
    shared = sum(1 for x, y in zip(a, b, strict=False) if x == y)
    # Everything up to the user's words is shared (the system message, and the user
    # message's opening and role); nothing after them is.
    before_question = count_chat_tokens([chat(SYSTEM, "")[0], {"role": "user"}]) - 3
    assert shared == before_question // BS
    assert a[shared:] != b[shared:] or len(a) == len(b) == shared
    other = hashes_of(chat("Another system prompt. " + SYSTEM, "Why?"))
    assert other[0] != b[0]


def test_one_hash_per_full_block_of_the_counted_prompt() -> None:
    messages = chat(SYSTEM, "héllo wörld, 東京 " * 20)
    assert len(hashes_of(messages)) == count_chat_tokens(messages) // BS
    assert len(prompt_block_hashes(list(range(100)), BS, 100)) == 6
    assert len(prompt_block_hashes("tiny", BS, 1)) == 0


def test_block_hashes_are_the_same_in_every_process() -> None:
    code = (
        "from inferplane.engines import prompt_block_hashes as h;"
        f"print(h({SYSTEM[:400]!r}, 16, 100))"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    }
    assert outputs == {f"{prompt_block_hashes(SYSTEM[:400], 16, 100)}\n"}


async def test_the_emulator_reports_cached_tokens_and_counts_them_like_vllm() -> None:
    app = create_emulator_app(EmulatorSettings(time_scale=1000.0))
    engine = app.state["emulator"].engine
    await engine.start()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://emulator") as client:
            usages = []
            for question in ("How do refunds work?", "Why?"):
                body = {
                    "model": "llama-3.1-8b",
                    "messages": chat(SYSTEM, question),
                    "max_tokens": 2,
                }
                reply = await client.post("/v1/chat/completions", json=body)
                usages.append(reply.json()["usage"])
            metrics = (await client.get("/metrics")).text
    finally:
        await engine.stop()
    shared = (count_chat_tokens([chat(SYSTEM, "")[0], {"role": "user"}]) - 3) // BS * BS
    assert [u["prompt_tokens_details"]["cached_tokens"] for u in usages] == [0, shared]
    queries = sum(u["prompt_tokens"] for u in usages)
    assert f'vllm:prefix_cache_queries_total{{model_name="llama-3.1-8b"}} {queries}.0' in metrics
    assert f'vllm:prefix_cache_hits_total{{model_name="llama-3.1-8b"}} {shared}.0' in metrics
