"""What one replica can serve, from the performance model alone: the planner's pruning.

A replica runs up to ``batch`` requests at once: ``max_num_seqs``, or fewer when
their KV cache (prompt + output each) does not fit. At saturation, while a batch
lives its ``output`` decode steps, ``batch`` new prompts are prefilled in chunks
mixed into those steps (vLLM's chunked prefill), so each step costs

    max(decode compute + batch * prefill compute / output, decode memory) + fixed

and the replica finishes ``batch`` requests per ``output`` such steps.

No queueing is in it: the twin decides how far below this a fleet must run to
keep its tail latency.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from statistics import NormalDist

from inferplane.perf import PerfModel, StepShape, causal_attention_pairs
from inferplane.twin._lengths import (
    FixedLength,
    LengthSpec,
    LogNormalFit,
    LogNormalLength,
    Role,
    UniformLength,
    length_sampler,
)

__all__ = ["ReplicaEstimate", "estimate_replica", "longest_length", "mean_length"]


@dataclass(frozen=True, slots=True)
class ReplicaEstimate:
    rps: float  # requests per second at saturation
    batch: int  # requests running at once
    prefill_share: float  # of a saturated step's time, the prompts' arithmetic
    bottleneck: str  # compute | memory bandwidth | KV capacity
    reason: str


def mean_length(spec: LengthSpec, role: Role, seed: int = 0, draws: int = 4000) -> float:
    """The mean of a length distribution, by sampling it (presets and clamps included)."""
    draw = length_sampler(spec, role)
    rng = random.Random(seed)
    return sum(draw(rng) for _ in range(draws)) / draws


# An unbounded lognormal has no longest draw: take the length it exceeds once in 10**12
# draws (a plan's twin runs draw about a million), 7 standard deviations above the median.
_UNBOUNDED_TAIL = 1e-12


def longest_length(spec: LengthSpec, role: Role) -> tuple[int, bool]:
    """The longest length ``spec`` draws, and whether that is its bound (False: a lognormal
    without ``max``, whose length exceeded once in 10**12 draws stands in)."""
    if isinstance(spec, FixedLength):
        return spec.fixed, True
    if isinstance(spec, UniformLength):
        return spec.uniform[1], True
    if isinstance(spec, LogNormalLength):
        fit = LogNormalFit(spec.lognormal.median, spec.lognormal.sigma, spec.lognormal.max)
    else:
        found = spec.fit(role)
        if found is None:  # the sampler says which presets have a fit
            length_sampler(spec, role)
        assert found is not None
        fit = found
    if fit.sigma == 0:  # every draw is the median, clamped
        median = max(1, int(fit.median + 0.5))
        return (median if fit.max is None else min(median, fit.max)), True
    if fit.max is not None:
        return fit.max, True
    z = NormalDist().inv_cdf(1 - _UNBOUNDED_TAIL)
    return max(1, int(math.exp(math.log(fit.median) + z * fit.sigma) + 0.5)), False


def estimate_replica(
    perf: PerfModel, prompt: float, output: float, max_num_seqs: int
) -> ReplicaEstimate | None:
    """None when not even one request's KV cache fits the replica."""
    per_request = prompt + output
    kv_batch = math.floor(perf.kv_capacity_tokens / per_request)
    batch = min(max_num_seqs, kv_batch)
    if batch < 1:
        return None
    prefill = perf.step_cost(
        StepShape(
            num_prefill_tokens=max(1, round(prompt)),
            prefill_attention_pairs=causal_attention_pairs(max(1, round(prompt))),
        )
    ).compute_s
    context = round(prompt + output / 2)
    decode = perf.step_cost(
        StepShape(num_decode_seqs=batch, num_decode_context_tokens=batch * context)
    )
    steps = max(1.0, output)
    compute = decode.compute_s + batch * prefill / steps
    step = max(compute, decode.memory_s) + decode.comm_s + decode.overhead_s
    share = batch * prefill / steps / step
    if compute > decode.memory_s:
        # A bigger batch would not help: the arithmetic is the limit.
        bottleneck = "compute"
        reason = f"arithmetic outweighs memory traffic; prefill is {share:.0%} of a step"
    elif kv_batch < max_num_seqs:
        bottleneck = "KV capacity"
        reason = (
            f"the KV cache holds {kv_batch} requests of {per_request:.0f} tokens, "
            f"below max_num_seqs {max_num_seqs}"
        )
    else:
        bottleneck = "memory bandwidth"
        reason = f"each decode step of {batch} requests reads the weights and their KV cache"
    if perf.tp > 1:
        # Communication adds to the step rather than overlapping it: say how much, since it
        # is what makes tensor parallelism over PCIe a poor buy.
        share_comm = decode.comm_s / step
        reason += f"; all-reduces over {perf.gpu.link_name} take {share_comm:.0%} of a step"
    return ReplicaEstimate(batch / (steps * step), batch, share, bottleneck, reason)
