"""Choosing a backend replica: round robin over the replicas their breakers let through.

Pure: the caller passes ``now`` and reports outcomes to ``health``; nothing
here reads a clock or touches the network. The scheduling issue grows this
into scorers (least load, prefix affinity, canary weights); the interface stays
``choose(now, exclude) -> index`` plus outcome reports.
"""

from __future__ import annotations

from inferplane.policy._health import Health

__all__ = ["RoundRobin"]


class RoundRobin:
    """Rotates over the backends ``health`` makes available.

    Guarantees: ``choose`` never returns an excluded index; it returns an ejected
    backend only when every non-excluded one is ejected (trying one beats
    refusing), and then the one whose ejection ends first.
    """

    def __init__(self, num_backends: int, health: Health) -> None:
        if num_backends < 1:
            raise ValueError("a model needs at least one backend")
        if len(health.breakers) != num_backends:
            raise ValueError("one breaker per backend")
        self.num_backends = num_backends
        self.health = health
        self._next = 0

    def choose(self, now: float, exclude: frozenset[int] = frozenset()) -> int | None:
        """The backend for the next attempt, or None when all are excluded."""
        candidates = []
        for step in range(self.num_backends):
            i = (self._next + step) % self.num_backends
            if i in exclude:
                continue
            candidates.append(i)
            if self.health.available(i, now):
                return self._take(i)
        fallback = self.health.soonest_back(candidates)
        return None if fallback is None else self._take(fallback)

    def _take(self, i: int) -> int:
        self._next = i + 1
        self.health.sent(i)
        return i
