"""Load-aware replica choice for the scheduling issue: two random choices by outstanding
tokens, and consistent hashing with bounded loads for prefix and session affinity.

Pure and deterministic: "random" picks come from a hash of the request's key,
so the twin replays the gateway's choices exactly. ``Router`` uses them.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["BoundedLoadRing", "ReplicaLoad", "least_loaded_of_two", "stable_hash"]


def stable_hash(key: str) -> int:
    """A 64-bit hash that is the same in every process (unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


@dataclass(frozen=True, slots=True)
class ReplicaLoad:
    """What routing knows of a replica now: tokens sent and not yet answered."""

    index: int
    outstanding_tokens: int
    healthy: bool = True


def least_loaded_of_two(
    candidates: Sequence[int], load: Callable[[int], float], key: str
) -> int | None:
    """Power of two choices: of two ``candidates`` picked by ``key``, the one with the
    smaller ``load``.

    Mitzenmacher's result: two random choices spread load exponentially better than
    one, without the herd that "always the least loaded" causes on stale load data.
    Reads the load of two replicas only, so it costs the same on any fleet size."""
    if not candidates:
        return None
    if len(candidates) == 1:
        return candidates[0]
    h = stable_hash(key)
    first = h % len(candidates)
    second = (first + 1 + (h >> 32) % (len(candidates) - 1)) % len(candidates)
    a, b = candidates[first], candidates[second]
    return b if load(b) < load(a) else a  # ties: the first


class BoundedLoadRing:
    """Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam, SODA 2018).

    A key (a prompt prefix, a session id) goes to the first replica clockwise on the
    ring whose load is at most ``c`` times the mean; a hot key spills to the next ones
    instead of overloading its replica, and keys stay put while loads are balanced.
    """

    def __init__(
        self,
        num_replicas: int,
        *,
        c: float = 1.25,
        virtual_nodes: int = 64,
        floor_tokens: int = 0,
    ) -> None:
        if num_replicas < 1 or c < 1.0:
            raise ValueError("need at least one replica and c >= 1")
        self.c = c
        # Below this load nobody counts as overloaded: on a quiet fleet, keys stay home.
        self.floor_tokens = floor_tokens
        points = sorted(
            (stable_hash(f"replica-{i}-{v}"), i)
            for i in range(num_replicas)
            for v in range(virtual_nodes)
        )
        self._hashes = [h for h, _ in points]
        self._owners = [i for _, i in points]

    def choose(self, key: str, loads: Sequence[ReplicaLoad], tokens: int = 1) -> int | None:
        """The replica for ``key`` carrying ``tokens`` more; ``loads`` is indexed by
        replica, unhealthy ones are skipped."""
        healthy = [r for r in loads if r.healthy]
        if not healthy:
            return None
        # The bound is on the loads after placing this request.
        mean = (sum(r.outstanding_tokens for r in healthy) + tokens) / len(healthy)
        bound = max(self.c * mean, self.floor_tokens)
        start = bisect.bisect_left(self._hashes, stable_hash(key)) % len(self._hashes)
        seen: set[int] = set()
        for step in range(len(self._owners)):
            i = self._owners[(start + step) % len(self._owners)]
            if i in seen:
                continue
            seen.add(i)
            if loads[i].healthy and loads[i].outstanding_tokens + tokens <= bound:
                return i
        # A request larger than the slack everywhere: the least loaded takes it.
        return min(healthy, key=lambda r: (r.outstanding_tokens, r.index)).index
