"""How many requests a replica can run at once, learned from what it reports.

A vLLM-like engine runs up to its ``max_num_seqs`` requests (fewer when its
KV cache is full) and queues the rest, first come, first served, where the
gateway's priorities and fairness cannot reach them. So the gateway keeps its
own count of slots per replica and adjusts it from the replica's metrics:

- requests *waiting* in the engine: it is full at what it runs; the slots
  become that number (and the excess goes back to queueing in the gateway);
- nothing waiting, the gateway used every slot, and KV cache to spare: the
  replica might take more; add an eighth (additive increase, probing upwards);
- otherwise: keep them.

Pure: the driver scrapes the metrics and passes them in.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EngineLoad", "learn_slots"]

# A replica whose KV cache is this full is not offered more work.
_KV_HEADROOM = 0.9


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
