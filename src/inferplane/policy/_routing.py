"""Choosing a backend replica for a request: by rotation, by load, or by affinity, among
the replicas their breakers let through, honouring canary weights.

Pure: the caller passes ``now``, a request's affinity key and size, and reports
what it sent and what finished; nothing here reads a clock or touches the
network. One interface for every mode: ``choose(now, exclude, key, tokens)``.

- ``round_robin``: rotation (smooth weighted round robin when weights differ);
- ``least_loaded``: power of two choices by outstanding tokens per unit of weight;
- ``prefix_affinity``: requests sharing a prompt prefix go to the same replica
  (its KV cache holds the prefix), by consistent hashing with bounded loads so a
  hot prefix spills over instead of overloading one replica;
- ``session_affinity``: the same, keyed by the session header.

A replica with weight 0 takes no new traffic (a canary switched off); weights
are relative (a canary at 0.05 beside ones at 1 takes about 5%).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from inferplane.policy._balance import BoundedLoadRing, ReplicaLoad, least_loaded_of_two
from inferplane.policy._health import Health

__all__ = ["Router", "RoutingMode"]


class RoutingMode(enum.StrEnum):
    ROUND_ROBIN = "round_robin"
    LEAST_LOADED = "least_loaded"
    PREFIX_AFFINITY = "prefix_affinity"
    SESSION_AFFINITY = "session_affinity"


class Router:
    """Guarantees: ``choose`` never returns an excluded index, nor a weight-0 one unless
    nothing else is left; it returns an ejected replica only when every candidate is
    ejected (trying one beats refusing), and then the one back soonest."""

    def __init__(
        self,
        health: Health,
        mode: RoutingMode = RoutingMode.ROUND_ROBIN,
        weights: Sequence[float] | None = None,
    ) -> None:
        n = len(health.breakers)
        if n < 1:
            raise ValueError("a model needs at least one backend")
        self.health = health
        self.mode = mode
        self.weights = list(weights) if weights is not None else [1.0] * n
        if len(self.weights) != n or any(w < 0 for w in self.weights):
            raise ValueError("one non-negative weight per backend")
        self.outstanding = [0] * n  # tokens sent and not yet answered, per replica
        # Who takes new traffic when every replica is up: the ones with a weight.
        self._serving = [i for i in range(n) if self.weights[i] > 0] or list(range(n))
        self._credit = [0.0] * n  # smooth weighted round robin's running credit
        # A replica is not "overloaded" below a few requests' worth of tokens.
        self._ring = BoundedLoadRing(n, floor_tokens=_AFFINITY_FLOOR) if mode in _AFFINITY else None

    def choose(
        self,
        now: float,
        exclude: frozenset[int] = frozenset(),
        key: str = "",
        tokens: int = 1,
    ) -> int | None:
        """The backend for the next attempt of a request ``tokens`` in size, or None when
        all are excluded. ``key`` is its affinity key (prompt prefix, session) in the
        affinity modes, else anything that differs between requests (their id): the
        "random" choices are hashes of it, so the twin replays them exactly."""
        if not exclude and not self.health.not_closed:
            weighted = self._serving  # the common case, without a pass over the fleet
        else:
            candidates = [i for i in range(len(self.weights)) if i not in exclude]
            if not candidates:
                return None
            up = [i for i in candidates if self.health.available(i, now)]
            if not up:
                fallback = self.health.soonest_back(candidates)
                assert fallback is not None
                return self._take(fallback)
            weighted = [i for i in up if self.weights[i] > 0] or up
        if self.mode is RoutingMode.ROUND_ROBIN:
            return self._take(self._smooth_round_robin(weighted))
        if self._ring is None:
            chosen = least_loaded_of_two(weighted, self._load, key)
        else:
            loads = [
                ReplicaLoad(i, self._load(i), healthy=i in weighted)
                for i in range(len(self.weights))
            ]
            chosen = self._ring.choose(key, loads, tokens)
        assert chosen is not None
        return self._take(chosen)

    def sent(self, index: int, tokens: int) -> None:
        self.outstanding[index] += tokens

    def done(self, index: int, tokens: int) -> None:
        self.outstanding[index] = max(0, self.outstanding[index] - tokens)

    def _load(self, i: int) -> int:
        """Outstanding tokens per unit of weight, so a light canary looks busy sooner."""
        w = self.weights[i]
        return self.outstanding[i] if w <= 0 else int(self.outstanding[i] / w)

    def _smooth_round_robin(self, candidates: list[int]) -> int:
        """nginx's smooth weighted round robin: equal weights rotate; unequal ones
        interleave in proportion, without bursts."""
        total = 0.0
        for i in candidates:
            self._credit[i] += self.weights[i] or 1.0
            total += self.weights[i] or 1.0
        best = max(candidates, key=lambda i: (self._credit[i], -i))
        self._credit[best] -= total
        return best

    def _take(self, i: int) -> int:
        self.health.sent(i)
        return i


_AFFINITY = (RoutingMode.PREFIX_AFFINITY, RoutingMode.SESSION_AFFINITY)
_AFFINITY_FLOOR = 16_384
