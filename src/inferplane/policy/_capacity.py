"""How many requests, and how many tokens, a replica can run at once, learned from what
it reports.

A vLLM-like engine runs up to its ``max_num_seqs`` requests (fewer when its
KV cache is full) and queues the rest, first come, first served, where the
gateway's priorities and fairness cannot reach them. So the gateway keeps its
own count of slots per replica and adjusts it from the replica's metrics:

- requests *waiting* in the engine: it is full at what it runs; the slots
  become that number (and the excess goes back to queueing in the gateway);
- nothing waiting, the gateway used every slot, and KV cache to spare: the
  replica might take more; add an eighth (additive increase, probing upwards);
- otherwise: keep them.

Tokens (``learn_token_capacity``) are what the gateway reserves per request
(prompt + max output), so the capacity learned is in those units: how many
reserved tokens the replica holds without queueing. With the KV cache
``kv_usage`` full while the gateway has ``R`` tokens in flight there,
``R / kv_usage`` is what fits when full, at the current ratio of tokens actually
cached to tokens reserved (requests early in their output cache less than they
reserve; a replica shared with other clients looks fuller, so this errs low):

- requests *waiting* in the engine: it is over-committed; the capacity drops at
  once to the part of the gateway's tokens the engine runs (by its share of
  requests), with headroom (multiplicative decrease);
- KV usage high enough to measure (a few percent): the estimate, with
  headroom, is a sample; a sample below the capacity pulls it down half way; one
  above raises it by at most an eighth, and only while the gateway used most of
  it (probing upwards, as for slots);
- nothing measurable: keep it (None: not learned yet, no limit).

Pure: the driver scrapes the metrics and passes them in.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EngineLoad", "learn_slots", "learn_token_capacity"]

# A replica whose KV cache is this full is not offered more work; a learned token
# capacity is this share of the estimate.
_KV_HEADROOM = 0.9
# Below this KV usage the ratio of tokens to usage is mostly rounding (blocks).
_KV_MEASURABLE = 0.05
# A capacity used this much may probe upwards.
_WELL_USED = 0.8


@dataclass(frozen=True, slots=True)
class EngineLoad:
    """A replica's own report (vLLM's ``num_requests_running`` / ``_waiting``,
    ``kv_cache_usage_perc`` as a fraction)."""

    running: int
    waiting: int
    kv_usage: float


def learn_slots(
    slots: int, load: EngineLoad, in_flight: int, *, floor: int = 1, ceiling: int = 4096
) -> int:
    """The replica's slots after seeing ``load`` while the gateway had ``in_flight`` there."""
    if load.waiting > 0:
        learned = load.running
    elif in_flight >= slots and load.kv_usage < _KV_HEADROOM:
        learned = slots + max(1, slots // 8)
    else:
        learned = slots
    return max(floor, min(ceiling, learned))


def learn_token_capacity(
    capacity: int | None,
    load: EngineLoad,
    in_flight_tokens: int,
    *,
    floor: int = 1,
    ceiling: int = 1 << 40,
) -> int | None:
    """The replica's token capacity (reserved tokens it may hold at once) after seeing
    ``load`` while the gateway had ``in_flight_tokens`` there; None while unlearned."""
    if in_flight_tokens <= 0:
        return capacity
    if load.waiting > 0 and load.running > 0:
        held = _KV_HEADROOM * in_flight_tokens * load.running / (load.running + load.waiting)
        learned = held if capacity is None else min(capacity, held)
    elif load.kv_usage >= _KV_MEASURABLE:
        sample = _KV_HEADROOM * in_flight_tokens / min(load.kv_usage, 1.0)
        if capacity is None:
            learned = sample
        elif sample < capacity:
            learned = capacity - (capacity - sample) / 2
        elif in_flight_tokens >= _WELL_USED * capacity:
            learned = min(sample, capacity + max(1, capacity // 8))
        else:
            learned = capacity
    else:
        return capacity
    return max(floor, min(ceiling, int(learned)))
