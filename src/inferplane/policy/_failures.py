"""When replicas fail and come back: an alternating up/down renewal process per replica.

A replica runs for an exponentially distributed time with mean ``mtbf_s``, then is down
for a repair time with mean ``mean_repair_s`` (exponential, or fixed), then runs again.
Exponential up-times are what a constant failure rate gives, the usual model for
hardware past burn-in.

Pure: randomness comes from a generator the caller creates and seeds (anything with
``random.Random``'s ``expovariate``), so the same seed gives the same outages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = ["GPU_MTBF_S", "FailureModel", "Outage", "RandomSource"]

# Meta's Llama 3 pre-training ("The Llama 3 Herd of Models", 2024, section 3.3.4): 419
# unexpected interruptions in a 54-day snapshot on 16,384 H100 GPUs, 58.7% of them GPU
# faults (HBM3 included), the rest mostly network, host and software. Any of them on a
# GPU's server stopped the job, as it would stop a replica: 16,384 x 54 days / 419 =
# 2,111 GPU-days between interruptions per GPU.
GPU_MTBF_S = 16_384 * 54 * 86_400 / 419
"""Mean seconds between failures of one GPU and its share of the server (see above)."""


class RandomSource(Protocol):
    """What the failure model draws from: ``random.Random`` satisfies it."""

    def expovariate(self, lambd: float, /) -> float: ...


@dataclass(frozen=True, slots=True)
class Outage:
    """One replica down from ``failed_at`` until ``repaired_at``."""

    replica: int
    failed_at: float
    repaired_at: float


@dataclass(frozen=True, slots=True)
class FailureModel:
    """Failure and repair times of replicas that fail independently."""

    mtbf_s: float
    """Mean up-time between failures of one replica."""
    mean_repair_s: float
    """Mean down-time: detection, replacement and the new replica's cold start."""
    repair: Literal["exponential", "fixed"] = "exponential"

    def __post_init__(self) -> None:
        if not (self.mtbf_s > 0 and self.mean_repair_s > 0):
            raise ValueError("mtbf_s and mean_repair_s must be > 0")
        if self.repair not in ("exponential", "fixed"):
            raise ValueError(f"repair must be 'exponential' or 'fixed', got {self.repair!r}")

    @classmethod
    def for_gpus(cls, num_gpus: int, mean_repair_s: float) -> FailureModel:
        """A replica on ``num_gpus`` GPUs fails when any of them does: MTBF / num_gpus."""
        if num_gpus < 1:
            raise ValueError("num_gpus must be >= 1")
        return cls(GPU_MTBF_S / num_gpus, mean_repair_s)

    def next_failure_at(self, up_since: float, rng: RandomSource) -> float:
        """When a replica running since ``up_since`` fails next."""
        return up_since + rng.expovariate(1.0 / self.mtbf_s)

    def repaired_at(self, failed_at: float, rng: RandomSource) -> float:
        """When a replica that failed at ``failed_at`` serves again."""
        if self.repair == "fixed":
            return failed_at + self.mean_repair_s
        return failed_at + rng.expovariate(1.0 / self.mean_repair_s)

    def outages(
        self, num_replicas: int, start: float, until: float, rng: RandomSource
    ) -> list[Outage]:
        """Every outage that begins in ``[start, until)`` for replicas 0..n-1, all up at
        ``start``, ordered by failure time (then replica). Draws replica by replica, so
        the schedule of replica ``i`` does not depend on later replicas."""
        if num_replicas < 0 or until < start:
            raise ValueError("need num_replicas >= 0 and until >= start")
        result = []
        for replica in range(num_replicas):
            up_since = start
            while (failed := self.next_failure_at(up_since, rng)) < until:
                up_since = self.repaired_at(failed, rng)
                result.append(Outage(replica, failed, up_since))
        result.sort(key=lambda o: (o.failed_at, o.replica))
        return result
