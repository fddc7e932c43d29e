"""Roofline model of one step of a continuous-batching engine (vLLM-style).

One step is one forward pass that may mix prompt chunks (prefill) and one new token for
each running sequence (decode). Its time is the slower of doing the arithmetic and
moving the bytes, plus tensor-parallel communication, then the sampler and a fixed
per-step overhead:

    total = max(compute_s, memory_s) + comm_s + overhead_s

Pure: no clock, no I/O; the same inputs give the same floats.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from inferplane.perf._catalogue import GPU, ModelSpec

__all__ = [
    "Efficiency",
    "PerfModel",
    "StepCost",
    "StepShape",
    "causal_attention_pairs",
]


@dataclass(frozen=True)
class Efficiency:
    """Achieved fractions of datasheet rates, and fixed costs; every default is overridable.

    ``memory`` and ``step_overhead_s`` were set together: single-stream Llama-3.1-8B
    decode on an A100 40GB (1.555 TB/s) then takes 16.06 GB / (1.555 TB/s * 0.8) + 0.5 ms
    (+ 6 us of sampling) = 13.4 ms, i.e. 74.6 tok/s, against 75 tok/s measured with vLLM
    0.23 ("vLLM throughput-latency sweep on NVIDIA A100", johnmusgrave.com, 1024-token
    prompts). ``sampler_bytes_per_logit`` is counted, not fitted; the inter-token latency
    of a 0.5B model on an L4 across concurrency 1-32 (ai.wmx.dev, vLLM 0.23) grows by the
    slope it gives (the model's step is 0.90-0.92 of the measured ITL p50 throughout).
    """

    compute: float = 0.6
    """Achieved fraction of dense BF16 peak in prefill. Prefill is mostly large GEMMs,
    which reach well above the 46.2% model-FLOPs utilisation PaLM reports for training
    (Chowdhery et al. 2022, which also pays for backward and communication), but below
    peak once attention, norms and launch gaps are counted: 0.6 is an assumption."""
    memory: float = 0.8
    """Achieved fraction of memory bandwidth in decode (calibrated, see class docstring);
    STREAM-like copies reach about 0.9 of datasheet on HBM GPUs, decode kernels less."""
    interconnect: float = 0.7
    """Achieved fraction of per-direction link bandwidth by ring all-reduce (assumption:
    NCCL bus bandwidth for large messages sits at roughly 70-80% of link rate)."""
    step_overhead_s: float = 5e-4
    """Fixed cost of every non-empty step: scheduling, launches with CUDA graphs
    (calibrated together with ``memory``, see class docstring)."""
    sampler_bytes_per_logit: float = 60.0
    """Device-memory traffic of sampling one token, per vocabulary entry. The sampler runs
    after the forward pass, on every rank, over the whole vocabulary of every decoding
    sequence, so it adds ``decode seqs x vocab x this / achieved bandwidth`` to a step.
    60 B counts vLLM v1's default top-k/top-p path (what a model's generation_config
    asks for, e.g. Qwen2.5's top_k 20 and top_p 0.8): bf16 logits written (2), cast to
    fp32 (6), divided by the temperature (8), FlashInfer's top-k mask (about 20), softmax
    (12) and rejection sampling over the probabilities (about 12). Greedy decoding moves
    less (about 12 B: logits, cast, argmax)."""
    nvlink_allreduce_latency_s: float = 1e-5
    """Fixed cost of one all-reduce between NVLink-joined GPUs, where vLLM runs its own
    one-kernel all-reduce; decode all-reduces are a few hundred KB, where latency rather
    than bandwidth dominates (assumption: ~10 us)."""
    pcie_allreduce_latency_s: float = 3e-5
    """Fixed cost of one all-reduce between GPUs joined only by PCIe. vLLM's own
    all-reduce needs peer-to-peer access there (and refuses more than two such GPUs), so
    NCCL runs it, through host memory when GPUs sit on different CPU sockets. Published
    small all-reduces on PCIe-only nodes take 16 to 43 us (nccl-tests 8-byte rows: 15.9 us
    on 4x RTX A5000, NVIDIA/nccl#757; 42.6 us on 8x RTX 4090, NVIDIA/nccl#1530); about
    20 us inside CUDA graphs on four V100s behind one PCIe switch (haohervchb/sglang-V100
    PR #2); one GPU-to-GPU copy without peer access takes 15 us (2x RTX 3090,
    noonghunna/club-3090 docs/PCIE_P2P.md), and a two-GPU ring makes two in a row.
    30 us is an assumption inside that range."""
    gpu_memory_utilization: float = 0.9
    """Fraction of device memory the engine may use: vLLM's default."""
    activation_reserve_fraction: float = 0.025
    """Fraction of device memory kept for activations and non-torch allocations. vLLM
    serving Llama-3.1-8B on one H100 logs 0.9 * 79.11 GiB = 71.20 GiB usable, 14.99 GiB
    weights, 0.35 GiB non-torch, 1.24 GiB activation peak and 54.62 GiB of KV cache
    (447,088 tokens); against nvidia-smi's 79.65 GiB that leaves 2.07 GiB = 2.6% outside
    weights and KV cache. With 0.025 this model gives 448,380 tokens for that case."""

    def __post_init__(self) -> None:
        for name in ("compute", "memory", "interconnect", "gpu_memory_utilization"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"Efficiency.{name} must be in (0, 1], got {value}")
        for name in (
            "step_overhead_s",
            "nvlink_allreduce_latency_s",
            "pcie_allreduce_latency_s",
            "sampler_bytes_per_logit",
        ):
            if getattr(self, name) < 0.0:
                raise ValueError(f"Efficiency.{name} must be >= 0")
        if not 0.0 <= self.activation_reserve_fraction < self.gpu_memory_utilization:
            raise ValueError(
                "Efficiency.activation_reserve_fraction must be in [0, gpu_memory_utilization)"
            )


def causal_attention_pairs(num_new_tokens: int, num_cached_tokens: int = 0) -> float:
    """Query-key pairs of causal attention for a chunk of new tokens after cached ones.

    Token j (1-based) of the chunk attends to the ``num_cached_tokens`` before the chunk
    and to the j tokens up to itself: ``n * (cached + (n + 1) / 2)`` in all.
    """
    if num_new_tokens < 0 or num_cached_tokens < 0:
        raise ValueError("token counts must be >= 0")
    return num_new_tokens * (num_cached_tokens + (num_new_tokens + 1) / 2)


@dataclass(frozen=True)
class StepShape:
    """The work in one engine step. All fields are >= 0; the all-zero shape is empty.

    Prefill fields must be 0 when there are no prefill tokens, and decode context must be
    0 when no sequence decodes. `from_batch` builds a consistent shape from a batch.
    """

    num_prefill_tokens: int = 0
    """Tokens of prompt chunks in this step."""
    prefill_attention_pairs: float = 0.0
    """Sum over chunks of `causal_attention_pairs` (attention FLOPs of prefill)."""
    num_decode_seqs: int = 0
    """Sequences decoding one token in this step."""
    num_decode_context_tokens: int = 0
    """Sum of the KV lengths those decode tokens attend to."""
    num_prefill_context_tokens: int = 0
    """Sum over chunks of the cached tokens before each chunk: the earlier chunks' (or
    prefix cache's) KV the chunk reads once. 0 when every chunk starts a prompt."""

    def __post_init__(self) -> None:
        if (
            min(
                self.num_prefill_tokens,
                self.prefill_attention_pairs,
                self.num_decode_seqs,
                self.num_decode_context_tokens,
                self.num_prefill_context_tokens,
            )
            < 0
        ):
            raise ValueError(f"StepShape fields must be >= 0: {self}")
        if self.num_prefill_tokens == 0 and (
            self.prefill_attention_pairs or self.num_prefill_context_tokens
        ):
            raise ValueError("prefill attention or context without prefill tokens")
        if self.num_decode_seqs == 0 and self.num_decode_context_tokens:
            raise ValueError("decode context tokens without decoding sequences")

    @classmethod
    def from_batch(
        cls,
        prefill_chunks: Iterable[tuple[int, int]] = (),
        decode_context_lengths: Iterable[int] = (),
    ) -> StepShape:
        """Shape of a step running ``(num_new_tokens, num_cached_tokens)`` prompt chunks
        and one decode token for each sequence with the given KV length."""
        num_prefill = 0
        pairs = 0.0
        prefill_context = 0
        for num_new, num_cached in prefill_chunks:
            if num_new == 0:
                continue
            num_prefill += num_new
            pairs += causal_attention_pairs(num_new, num_cached)
            prefill_context += num_cached
        contexts = list(decode_context_lengths)
        return cls(
            num_prefill_tokens=num_prefill,
            prefill_attention_pairs=pairs,
            num_decode_seqs=len(contexts),
            num_decode_context_tokens=sum(contexts),
            num_prefill_context_tokens=prefill_context,
        )

    @property
    def num_tokens(self) -> int:
        """Tokens that go through the weights in this step (prefill + decode)."""
        return self.num_prefill_tokens + self.num_decode_seqs

    @property
    def is_empty(self) -> bool:
        """True when the step does no work at all."""
        return self.num_tokens == 0


@dataclass(frozen=True)
class StepCost:
    """Seconds of one step by resource; compute and memory overlap, the rest adds up."""

    compute_s: float
    memory_s: float
    comm_s: float
    overhead_s: float

    @property
    def total(self) -> float:
        """Step time: ``max(compute_s, memory_s) + comm_s + overhead_s``."""
        return max(self.compute_s, self.memory_s) + self.comm_s + self.overhead_s

    @property
    def bound(self) -> str:
        """``"compute"`` when arithmetic is the slower of the two overlapped parts, else
        ``"memory"``."""
        return "compute" if self.compute_s > self.memory_s else "memory"


class PerfModel:
    """Step times of one model served on ``tp`` GPUs of one kind with tensor parallelism.

    Guarantees, relied on by the simulator's closed-form fast-forward:

    * ``step_time(StepShape())`` is 0.0; every other step costs at least
      ``efficiency.step_overhead_s``;
    * step time never decreases when any `StepShape` field grows;
    * for fixed prefill fields and ``num_decode_seqs``, ``compute_s`` and ``memory_s``
      are each affine in ``num_decode_context_tokens`` (``a + b * x``; ``comm_s`` and
      ``overhead_s`` do not depend on it), so two evaluations recover ``a`` and ``b``.
    """

    __slots__ = (
        "_allreduce_fixed_s",
        "_allreduce_s_per_token",
        "_attention_flops_per_pair",
        "_compute_rate",
        "_expert_bytes_per_gpu",
        "_flops_per_token",
        "_kv_bytes_per_token_per_gpu",
        "_kv_capacity_tokens",
        "_memory_rate",
        "_miss_per_token",
        "_sample_s_per_seq",
        "_shared_bytes_per_gpu",
        "efficiency",
        "gpu",
        "model",
        "tp",
    )

    def __init__(
        self,
        gpu: GPU,
        model: ModelSpec,
        tp: int = 1,
        efficiency: Efficiency = Efficiency(),  # frozen, so sharing one default is safe
    ) -> None:
        """Raise `ValueError` when ``tp`` is not a valid tensor-parallel degree for the
        model or when its weights and activation reserve leave no room for KV cache."""
        if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
            raise ValueError(f"tp must be an integer >= 1, got {tp!r}")
        # vLLM shards attention heads evenly; KV heads are split or replicated evenly.
        if model.num_attention_heads % tp:
            raise ValueError(
                f"tp={tp} does not divide the {model.num_attention_heads} attention heads "
                f"of {model.name}"
            )
        if model.num_kv_heads % tp and tp % model.num_kv_heads:
            raise ValueError(
                f"tp={tp} and the {model.num_kv_heads} KV heads of {model.name} "
                "must divide one another"
            )
        self.gpu = gpu
        self.model = model
        self.tp = tp
        self.efficiency = efficiency

        # Per-GPU bytes: weights are sharded tp ways; KV heads at most num_kv_heads ways
        # (beyond that each GPU holds a replica of its head).
        self._shared_bytes_per_gpu = (model.num_params - model.expert_params) * (
            model.dtype_bytes / tp
        )
        self._expert_bytes_per_gpu = model.expert_params * model.dtype_bytes / tp
        self._kv_bytes_per_token_per_gpu = model.kv_bytes_per_token / min(tp, model.num_kv_heads)
        # Chance that one token's router leaves a given expert out (k of E chosen).
        self._miss_per_token = 1.0 - model.num_experts_per_token / model.num_experts

        self._flops_per_token = 2.0 * model.num_active_params
        self._attention_flops_per_pair = (
            4.0 * model.num_layers * model.num_attention_heads * model.head_dim
        )
        self._compute_rate = tp * gpu.bf16_flops * efficiency.compute
        self._memory_rate = gpu.hbm_bandwidth * efficiency.memory  # per GPU, per-GPU bytes
        self._sample_s_per_seq = (
            model.vocab_size * efficiency.sampler_bytes_per_logit / self._memory_rate
        )

        # Two all-reduces per layer (after attention and after the MLP) of the hidden
        # states; a ring moves 2 * (tp - 1) / tp of the message through each link.
        if tp > 1:
            num_allreduces = 2 * model.num_layers
            ring_bytes_per_token = (
                2.0 * (tp - 1) / tp * model.hidden_size * model.dtype_bytes * num_allreduces
            )
            link_rate = gpu.interconnect_bandwidth * efficiency.interconnect
            self._allreduce_s_per_token = ring_bytes_per_token / link_rate
            latency = (
                efficiency.nvlink_allreduce_latency_s
                if gpu.link == "nvlink"
                else efficiency.pcie_allreduce_latency_s
            )
            self._allreduce_fixed_s = num_allreduces * latency
        else:
            self._allreduce_s_per_token = 0.0
            self._allreduce_fixed_s = 0.0

        usable = gpu.memory_bytes * (
            efficiency.gpu_memory_utilization - efficiency.activation_reserve_fraction
        )
        weights_per_gpu = model.weight_bytes / tp
        if weights_per_gpu >= usable:
            raise ValueError(self._does_not_fit_message(usable))
        self._kv_capacity_tokens = math.floor(
            (usable - weights_per_gpu) / self._kv_bytes_per_token_per_gpu
        )

    def _does_not_fit_message(self, usable_per_gpu: float) -> str:
        gb = 1e9
        model = self.model
        least = math.floor(model.weight_bytes / usable_per_gpu) + 1
        # The smallest degree vLLM can shard this model over (see __init__'s checks).
        valid = [
            t
            for t in range(least, model.num_attention_heads + 1)
            if model.num_attention_heads % t == 0
            and (model.num_kv_heads % t == 0 or t % model.num_kv_heads == 0)
        ]
        need = f"needs tp >= {valid[0]}" if valid else "no tensor-parallel degree fits it"
        eff = self.efficiency
        return (
            f"{self.model.name} does not fit on {self.tp} x {self.gpu.name}: "
            f"{self.model.weight_bytes / gb:.1f} GB of weights, but {self.tp} x "
            f"{usable_per_gpu / gb:.1f} GB usable (device memory x gpu_memory_utilization "
            f"{eff.gpu_memory_utilization} minus activation reserve "
            f"{eff.activation_reserve_fraction}) leaves no room for KV cache; "
            f"{need}"
        )

    def __repr__(self) -> str:
        return (
            f"PerfModel(gpu={self.gpu.name!r}, model={self.model.name!r}, tp={self.tp}, "
            f"efficiency={self.efficiency!r})"
        )

    @property
    def kv_capacity_tokens(self) -> int:
        """Tokens of KV cache that fit next to the weights (>= 0):
        ``floor((memory * (gpu_memory_utilization - activation_reserve_fraction)
        - weights / tp) / per-GPU KV bytes per token)``."""
        return self._kv_capacity_tokens

    def step_cost(self, shape: StepShape) -> StepCost:
        """Cost of one step by resource; all zeros for an empty shape."""
        return StepCost(
            *self.costs(
                shape.num_prefill_tokens,
                shape.prefill_attention_pairs,
                shape.num_decode_seqs,
                shape.num_decode_context_tokens,
                shape.num_prefill_context_tokens,
            )
        )

    def costs(
        self,
        num_prefill_tokens: int,
        prefill_attention_pairs: float,
        num_decode_seqs: int,
        num_decode_context_tokens: int,
        num_prefill_context_tokens: int,
    ) -> tuple[float, float, float, float]:
        """`step_cost` of the `StepShape` of these fields, as a plain tuple, unchecked:
        for an engine whose shapes are consistent by construction and that prices every
        step of a simulation (a `StepShape` and a `StepCost` per step cost more than the
        arithmetic)."""
        num_tokens = num_prefill_tokens + num_decode_seqs
        if num_tokens == 0:
            return 0.0, 0.0, 0.0, 0.0
        flops = self._flops_per_token * num_tokens + self._attention_flops_per_pair * (
            prefill_attention_pairs + num_decode_context_tokens
        )
        weight_bytes = self._shared_bytes_per_gpu
        if self._expert_bytes_per_gpu:
            # Expected share of experts that at least one token of the step routes to.
            touched = 1.0 - self._miss_per_token**num_tokens
            weight_bytes += self._expert_bytes_per_gpu * touched
        # KV read by decode tokens and by chunks over their cached prefix, plus KV written
        # for every new token.
        kv_tokens = num_decode_context_tokens + num_prefill_context_tokens + num_tokens
        memory_bytes = weight_bytes + kv_tokens * self._kv_bytes_per_token_per_gpu
        return (
            flops / self._compute_rate,
            memory_bytes / self._memory_rate,
            self._allreduce_fixed_s + self._allreduce_s_per_token * num_tokens,
            # Prompt chunks that finish their prompt sample too; the shape does not say
            # which do, so only decodes are counted.
            self.efficiency.step_overhead_s + self._sample_s_per_seq * num_decode_seqs,
        )

    def step_time(self, shape: StepShape) -> float:
        """Seconds of one step: ``step_cost(shape).total``; 0.0 for an empty shape."""
        return self.step_cost(shape).total

    def prefill_time(self, num_prompt_tokens: int) -> float:
        """Seconds of a step that runs one whole prompt alone (the uncached TTFT floor)."""
        return self.step_time(
            StepShape(
                num_prefill_tokens=num_prompt_tokens,
                prefill_attention_pairs=causal_attention_pairs(num_prompt_tokens),
            )
        )

    def decode_step_time(self, batch_size: int, context_tokens_per_seq: int) -> float:
        """Seconds of a decode-only step of ``batch_size`` sequences that each attend to
        ``context_tokens_per_seq`` tokens of KV cache."""
        if context_tokens_per_seq < 0:
            raise ValueError("context_tokens_per_seq must be >= 0")
        return self.step_time(
            StepShape(
                num_decode_seqs=batch_size,
                num_decode_context_tokens=batch_size * context_tokens_per_seq,
            )
        )
