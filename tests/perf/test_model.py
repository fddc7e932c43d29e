"""Roofline step model: hand-computed sanity numbers, invariants, validation."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferplane.perf import (
    GPUS,
    MODELS,
    Efficiency,
    PerfModel,
    StepCost,
    StepShape,
    causal_attention_pairs,
)

H100 = GPUS["H100"]
LLAMA_8B = MODELS["llama-3.1-8b"]
LLAMA_70B = MODELS["llama-3.1-70b"]
MIXTRAL = MODELS["mixtral-8x7b"]

# Default efficiencies, written out so the arithmetic below can be checked by hand.
COMPUTE_RATE_H100 = 989e12 * 0.6  # 5.934e14 FLOP/s per GPU
MEMORY_RATE_H100 = 3.35e12 * 0.8  # 2.68e12 B/s per GPU
LINK_RATE_H100 = 450e9 * 0.7  # 3.15e11 B/s per direction
OVERHEAD = 5e-4
SAMPLE_S_LLAMA_H100 = 128256 * 60.0 / MEMORY_RATE_H100  # 2.87 us per decoding sequence
H100_USABLE = 81559 * 2**20 * (0.9 - 0.025)  # 74,830,708,736 B per GPU


def test_llama_8b_h100_decode_batch_1_is_memory_bound_at_about_6_5_ms() -> None:
    model = PerfModel(H100, LLAMA_8B)
    cost = model.step_cost(StepShape(num_decode_seqs=1))
    # Bytes: all weights 8,030,261,248 * 2 = 16,060,522,496 plus the new token's KV
    # 131,072 = 16,060,653,568 B; / 2.68e12 B/s = 5.9928 ms.
    assert cost.memory_s == pytest.approx(16_060_653_568 / MEMORY_RATE_H100, rel=1e-12)
    # FLOPs: 2 * 8,030,261,248 = 1.606e10; / 5.934e14 = 27 us, far below memory time.
    assert cost.compute_s == pytest.approx(2 * 8_030_261_248 / COMPUTE_RATE_H100, rel=1e-12)
    assert cost.bound == "memory"
    assert cost.comm_s == 0.0
    # The sampler: 60 B over each of the 128,256 logits, / 2.68e12 B/s = 2.87 us.
    assert cost.overhead_s == pytest.approx(OVERHEAD + SAMPLE_S_LLAMA_H100, rel=1e-12)
    # 5.9928 ms + 0.5029 ms = 6.4957 ms: the typical vLLM ITL of 6-7 ms.
    assert model.decode_step_time(1, 0) == pytest.approx(0.0064957, rel=1e-4)


def test_the_sampler_costs_each_decoding_sequence_a_pass_over_the_vocabulary() -> None:
    model = PerfModel(H100, LLAMA_8B)
    one = model.step_cost(StepShape(num_decode_seqs=1)).overhead_s
    many = model.step_cost(StepShape(num_decode_seqs=256)).overhead_s
    assert many - one == pytest.approx(255 * SAMPLE_S_LLAMA_H100, rel=1e-12)
    # A prompt chunk alone samples nothing the shape can see: the fixed cost only.
    assert model.step_cost(StepShape.from_batch([(1000, 0)])).overhead_s == OVERHEAD
    greedy = PerfModel(H100, LLAMA_8B, efficiency=Efficiency(sampler_bytes_per_logit=12.0))
    assert greedy.step_cost(StepShape(num_decode_seqs=256)).overhead_s < many


def test_llama_8b_h100_prefill_1000_tokens_is_compute_bound_at_about_28_ms() -> None:
    model = PerfModel(H100, LLAMA_8B)
    # Linear FLOPs: 2 * 8,030,261,248 * 1000 = 16,060,522,496,000.
    # Attention: 4 * 32 layers * 32 heads * 128 = 524,288 FLOPs per query-key pair,
    # 1000 * 1001 / 2 = 500,500 causal pairs -> 262,406,144,000.
    # Total 16,322,928,640,000 / 5.934e14 = 27.5075 ms; + 0.5 ms = 28.0075 ms.
    flops = 16_060_522_496_000 + 262_406_144_000
    cost = model.step_cost(StepShape.from_batch([(1000, 0)]))
    assert cost.compute_s == pytest.approx(flops / COMPUTE_RATE_H100, rel=1e-12)
    # Memory: weights 16,060,522,496 + 1000 new tokens of KV 131,072,000 B -> 6.04 ms.
    assert cost.memory_s == pytest.approx(16_191_594_496 / MEMORY_RATE_H100, rel=1e-12)
    assert cost.bound == "compute"
    assert model.prefill_time(1000) == pytest.approx(0.0280075, rel=1e-4)


def test_kv_capacity_llama_8b_on_one_h100() -> None:
    # (74,830,708,736 - 16,060,522,496) / 131,072 = 448,380.02 -> 448,380 tokens
    # (vLLM logs 447,088 for this setup, 0.3% less).
    assert PerfModel(H100, LLAMA_8B).kv_capacity_tokens == 448_380


def test_llama_70b_needs_two_h100s() -> None:
    # 141,107,412,992 B of weights > 74,830,708,736 usable on one GPU.
    with pytest.raises(ValueError, match=r"does not fit on 1 x H100.*tp >= 2"):
        PerfModel(H100, LLAMA_70B)
    # tp=2: (2 * 74,830,708,736 - 141,107,412,992) / 327,680 = 26,104.5 -> 26,104
    # (the check of the brief: 141 GB < 2 * 80 GB * 0.9 = 144 GB).
    assert PerfModel(H100, LLAMA_70B, tp=2).kv_capacity_tokens == 26_104


def test_the_tp_a_model_that_does_not_fit_is_told_to_use_is_one_it_can_use() -> None:
    # 141 GB over 21.1 GB usable per L4 needs 7 GPUs' memory, but 7 does not divide
    # the 64 attention heads: the advice is the next degree that does, 8.
    with pytest.raises(ValueError, match=r"does not fit on 1 x L4.*needs tp >= 8$"):
        PerfModel(GPUS["L4"], LLAMA_70B)
    # tp=4: (4 * 74,830,708,736 - 141,107,412,992) / 327,680 = 482,835.1 -> 482,835
    assert PerfModel(H100, LLAMA_70B, tp=4).kv_capacity_tokens == 482_835


def test_kv_capacity_matches_brief_formula_without_kv_replication() -> None:
    for gpu, model, tp in [
        (H100, LLAMA_8B, 1),
        (H100, LLAMA_8B, 8),
        (GPUS["A100"], LLAMA_70B, 4),
        (GPUS["L40S"], MODELS["qwen2.5-7b"], 2),
        (GPUS["H200"], MIXTRAL, 1),
    ]:
        usable = gpu.memory_bytes * (0.9 - 0.025)
        expected = int((tp * usable - model.weight_bytes) // model.kv_bytes_per_token)
        assert PerfModel(gpu, model, tp=tp).kv_capacity_tokens == expected


def test_kv_heads_are_replicated_beyond_their_count() -> None:
    # Llama-3.1-8B has 8 KV heads: with tp=16 each GPU holds one head, so a token costs
    # 131,072 / 8 = 16,384 B per GPU, not 131,072 / 16.
    model = PerfModel(H100, LLAMA_8B, tp=16)
    expected = int((H100_USABLE - LLAMA_8B.weight_bytes / 16) // 16_384)
    assert model.kv_capacity_tokens == expected


def test_tensor_parallel_communication_llama_70b_tp4_decode() -> None:
    model = PerfModel(H100, LLAMA_70B, tp=4)
    cost = model.step_cost(StepShape(num_decode_seqs=1))
    # 2 all-reduces per layer * 80 layers = 160 launches * 10 us = 1.6 ms, plus ring
    # bytes 2 * 3/4 * (8192 hidden * 2 B) * 160 = 3,932,160 B / 3.15e11 B/s = 12.5 us.
    assert cost.comm_s == pytest.approx(160 * 1e-5 + 3_932_160 / LINK_RATE_H100, rel=1e-12)
    # Each GPU reads a quarter of the weights and of the new token's KV:
    # (141,107,412,992 + 327,680) / 4 = 35,276,935,168 B / 2.68e12 = 13.163 ms.
    assert cost.memory_s == pytest.approx(35_276_935_168 / MEMORY_RATE_H100, rel=1e-12)


def test_pcie_gpus_pay_the_pcie_all_reduce_latency() -> None:
    # L40S has no NVLink: each of the 2 x 28 all-reduces of Qwen2.5-7B costs 30 us of
    # latency, plus the ring bytes 2 * 1/2 * (3584 hidden * 2 B) * 56 = 401,408 B at 0.7
    # of PCIe Gen4's 32 GB/s per direction.
    model = PerfModel(GPUS["L40S"], MODELS["qwen2.5-7b"], tp=2)
    cost = model.step_cost(StepShape(num_decode_seqs=1))
    assert cost.comm_s == pytest.approx(56 * 3e-5 + 401_408 / (32e9 * 0.7), rel=1e-12)
    # The same model on NVLink-joined GPUs pays the NVLink latency instead.
    nvlink = dataclasses.replace(GPUS["L40S"], link="nvlink")
    cost = PerfModel(nvlink, MODELS["qwen2.5-7b"], tp=2).step_cost(StepShape(num_decode_seqs=1))
    assert cost.comm_s == pytest.approx(56 * 1e-5 + 401_408 / (32e9 * 0.7), rel=1e-12)


def test_doubling_tp_halves_prefill_compute() -> None:
    one = PerfModel(H100, LLAMA_8B, tp=1)
    two = PerfModel(H100, LLAMA_8B, tp=2)
    shape = StepShape.from_batch([(1000, 0)])
    assert two.step_cost(shape).compute_s == pytest.approx(one.step_cost(shape).compute_s / 2)
    # With all-reduces (2.3 ms) and the fixed overhead the whole step shrinks to ~0.59x.
    ratio = two.prefill_time(1000) / one.prefill_time(1000)
    assert 0.5 < ratio < 0.65


def test_mixtral_weights_read_grow_with_experts_touched() -> None:
    model = PerfModel(H100, MIXTRAL, tp=2)
    shared = 1_605_636_096  # non-expert params: 46,702,792,704 - 45,097,156,608
    experts = 45_097_156_608
    # One token touches exactly 2 of 8 experts per layer: 1 - (1 - 2/8)^1 = 1/4 of the
    # experts, i.e. the active weights. Per GPU (tp=2): (shared + experts / 4) * 2 B / 2
    # = 12,879,925,248 B, plus KV 131,072 / 2 = 65,536 B; / 2.68e12 = 4.806 ms.
    one = model.step_cost(StepShape(num_decode_seqs=1))
    assert one.memory_s == pytest.approx((12_879_925_248 + 65_536) / MEMORY_RATE_H100)
    # 64 tokens leave an expert untouched with probability 0.75^64 = 1.0e-8.
    touched = 1 - 0.75**64
    many = model.step_cost(StepShape(num_decode_seqs=64))
    expected = shared + experts * touched + 64 * 65_536
    assert many.memory_s == pytest.approx(expected / MEMORY_RATE_H100)
    assert many.memory_s < MIXTRAL.weight_bytes / 2 / MEMORY_RATE_H100 * 1.001


def test_empty_step_costs_nothing_and_any_work_costs_the_overhead() -> None:
    model = PerfModel(H100, LLAMA_8B)
    assert model.step_cost(StepShape()) == StepCost(0.0, 0.0, 0.0, 0.0)
    assert model.step_time(StepShape()) == 0.0
    assert model.prefill_time(0) == 0.0
    assert model.decode_step_time(0, 4096) == 0.0
    assert model.step_time(StepShape(num_decode_seqs=1)) >= OVERHEAD


def test_decode_turns_compute_bound_at_large_batches() -> None:
    model = PerfModel(H100, LLAMA_8B)
    # 512 tokens * 1.606e10 FLOPs = 8.22e12 / 5.934e14 = 13.9 ms of compute against
    # 16.06e9 + 512 * 131,072 B = 16.13e9 B / 2.68e12 = 6.0 ms of memory.
    assert model.step_cost(StepShape(num_decode_seqs=512)).bound == "compute"


def test_causal_attention_pairs() -> None:
    assert causal_attention_pairs(4) == 10  # 1 + 2 + 3 + 4
    assert causal_attention_pairs(2, 3) == 9  # (3 + 1) + (3 + 2)
    assert causal_attention_pairs(0, 100) == 0
    with pytest.raises(ValueError):
        causal_attention_pairs(-1)


def test_step_shape_from_batch() -> None:
    shape = StepShape.from_batch([(2, 3), (4, 0), (0, 50)], [10, 20, 30])
    assert shape == StepShape(
        num_prefill_tokens=6,
        prefill_attention_pairs=19.0,  # 9 + 10
        num_decode_seqs=3,
        num_decode_context_tokens=60,
        num_prefill_context_tokens=3,  # the empty chunk reads nothing
    )
    assert shape.num_tokens == 9 and not shape.is_empty
    assert StepShape.from_batch().is_empty


def test_prefill_reads_cached_prefix_kv() -> None:
    model = PerfModel(H100, LLAMA_8B)
    fresh = model.step_cost(StepShape.from_batch([(16, 0)]))
    cached = model.step_cost(StepShape.from_batch([(16, 100_000)]))
    # 100,000 cached tokens * 131,072 B = 13.1 GB more to read: 4.89 ms more.
    extra = 100_000 * 131_072 / MEMORY_RATE_H100
    assert cached.memory_s - fresh.memory_s == pytest.approx(extra)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_prefill_tokens": -1},
        {"num_decode_seqs": -1},
        {"prefill_attention_pairs": 5.0},
        {"num_prefill_context_tokens": 5},
        {"num_decode_context_tokens": 5},
    ],
)
def test_step_shape_rejects_invalid_fields(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        StepShape(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("model_name", "tp"),
    [
        ("llama-3.1-8b", 0),
        ("llama-3.1-8b", 3),  # 32 heads do not split 3 ways
        ("qwen2.5-7b", 8),  # 28 heads do not split 8 ways
        ("qwen2.5-7b", 7),  # 7 and the 4 KV heads do not divide one another
    ],
)
def test_invalid_tensor_parallel_degrees_are_rejected(model_name: str, tp: int) -> None:
    with pytest.raises(ValueError, match="tp"):
        PerfModel(GPUS["H200"], MODELS[model_name], tp=tp)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"compute": 0.0},
        {"memory": 1.5},
        {"step_overhead_s": -1.0},
        {"activation_reserve_fraction": 0.95},
    ],
)
def test_efficiency_rejects_impossible_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Efficiency(**kwargs)


def test_efficiency_is_a_parameter() -> None:
    slow = PerfModel(H100, LLAMA_8B, efficiency=Efficiency(memory=0.4))
    fast = PerfModel(H100, LLAMA_8B)
    shape = StepShape(num_decode_seqs=1)
    assert slow.step_cost(shape).memory_s == pytest.approx(2 * fast.step_cost(shape).memory_s)


# -- properties -------------------------------------------------------------------------

MODELS_UNDER_TEST = [
    PerfModel(H100, LLAMA_8B),
    PerfModel(H100, MIXTRAL, tp=2),
    PerfModel(GPUS["A100"], LLAMA_70B, tp=4),
    PerfModel(GPUS["L4"], MODELS["qwen2.5-7b"]),
]

counts = st.integers(min_value=0, max_value=20_000)


@st.composite
def step_shapes(draw: st.DrawFn) -> StepShape:
    prefill = draw(counts)
    decode = draw(st.integers(min_value=0, max_value=512))
    return StepShape(
        num_prefill_tokens=prefill,
        prefill_attention_pairs=draw(st.floats(0, 1e9)) if prefill else 0.0,
        num_decode_seqs=decode,
        num_decode_context_tokens=draw(st.integers(0, 10_000_000)) if decode else 0,
        num_prefill_context_tokens=draw(st.integers(0, 1_000_000)) if prefill else 0,
    )


@settings(max_examples=300, deadline=None)
@given(
    index=st.integers(0, len(MODELS_UNDER_TEST) - 1),
    shape=step_shapes(),
    field=st.sampled_from([f.name for f in dataclasses.fields(StepShape)]),
    delta=st.integers(min_value=1, max_value=100_000),
)
def test_step_time_is_monotone_in_every_field(
    index: int, shape: StepShape, field: str, delta: int
) -> None:
    model = MODELS_UNDER_TEST[index]
    changes: dict[str, float] = {field: getattr(shape, field) + delta}
    # Pairs and context need tokens that carry them: grow those too when missing, so the
    # grown shape stays valid and is still no smaller in any field.
    if field in ("prefill_attention_pairs", "num_prefill_context_tokens"):
        changes["num_prefill_tokens"] = max(1, shape.num_prefill_tokens)
    if field == "num_decode_context_tokens":
        changes["num_decode_seqs"] = max(1, shape.num_decode_seqs)
    grown = dataclasses.replace(shape, **changes)  # type: ignore[arg-type]
    assert model.step_time(grown) >= model.step_time(shape)


@settings(max_examples=300, deadline=None)
@given(
    index=st.integers(0, len(MODELS_UNDER_TEST) - 1),
    shape=step_shapes(),
    steps=st.tuples(st.integers(1_000, 1_000_000), st.integers(1_000, 1_000_000)),
)
def test_compute_and_memory_are_affine_in_decode_context(
    index: int, shape: StepShape, steps: tuple[int, int]
) -> None:
    model = MODELS_UNDER_TEST[index]
    if shape.num_decode_seqs == 0:
        shape = dataclasses.replace(shape, num_decode_seqs=1)
    x0 = shape.num_decode_context_tokens
    x1, x2 = x0 + steps[0], x0 + steps[0] + steps[1]
    costs = [
        model.step_cost(dataclasses.replace(shape, num_decode_context_tokens=x))
        for x in (x0, x1, x2)
    ]
    for part in ("compute_s", "memory_s"):
        f0, f1, f2 = (getattr(cost, part) for cost in costs)
        # Equal slopes on both intervals: f is a + b * x.
        assert (f2 - f1) / (x2 - x1) == pytest.approx((f1 - f0) / (x1 - x0), rel=1e-6)
    assert costs[0].comm_s == costs[2].comm_s
    assert costs[0].overhead_s == costs[2].overhead_s
