"""Choosing a backend replica: round robin that steps around replicas that just failed.

Pure: the caller passes ``now`` and reports outcomes; nothing here reads a
clock or touches the network. The scheduling issue grows this into scorers
(least load, prefix affinity, canary weights); the interface stays
``choose(now, exclude) -> index`` plus outcome reports.
"""

from __future__ import annotations

__all__ = ["RoundRobin"]


class RoundRobin:
    """Rotates over ``num_backends``; a backend that failed to connect cools down.

    Guarantees: ``choose`` never returns an excluded index; it returns a backend
    in cooldown only when every non-excluded backend is in cooldown (trying one
    beats refusing), and then the one whose cooldown ends first.
    """

    def __init__(self, num_backends: int, cooldown_s: float) -> None:
        if num_backends < 1:
            raise ValueError("a model needs at least one backend")
        self.num_backends = num_backends
        self.cooldown_s = cooldown_s
        self._next = 0
        self._down_until = [float("-inf")] * num_backends

    def choose(self, now: float, exclude: frozenset[int] = frozenset()) -> int | None:
        """The backend for the next attempt, or None when all are excluded."""
        fallback: int | None = None
        for step in range(self.num_backends):
            i = (self._next + step) % self.num_backends
            if i in exclude:
                continue
            if self._down_until[i] <= now:
                self._next = i + 1
                return i
            if fallback is None or self._down_until[i] < self._down_until[fallback]:
                fallback = i
        if fallback is not None:
            self._next = fallback + 1
        return fallback

    def record_failure(self, index: int, now: float) -> None:
        self._down_until[index] = now + self.cooldown_s

    def record_success(self, index: int) -> None:
        self._down_until[index] = float("-inf")

    def is_up(self, index: int, now: float) -> bool:
        return self._down_until[index] <= now
