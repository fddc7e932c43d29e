"""When to hedge: the observed time to a first byte, and the delay after which a request
that has none yet gets a second attempt on another replica.

"The Tail at Scale" (Dean and Barroso, CACM 2013): send a second copy of a
request once the first has been outstanding longer than the 95th percentile of
what requests usually take; whichever answers first wins and the other is
cancelled. Only the slowest few per cent are hedged, so the extra load is a
few per cent, and their tail shrinks to about p95 plus one more attempt.

``LatencyTracker`` keeps the last ``window`` first-byte times of a model (one
tracker per model and kind of answer: a stream's first token, a whole answer's
body) and answers quantiles by nearest rank over that window: exact, bounded,
deterministic (the twin replays it). A losing attempt is cancelled before its
first byte, so its time is never observed: the window leans to the fast side,
which makes hedges come a little sooner, never later; the retry budget bounds
how many there are.

Pure: times are passed in.
"""

from __future__ import annotations

import bisect
import math
from collections import deque

__all__ = ["LatencyTracker"]


class LatencyTracker:
    """First-byte times of one model; its p95, floored and capped, is the hedge delay."""

    def __init__(
        self,
        *,
        window: int = 256,
        min_samples: int = 20,
        min_delay_s: float = 0.02,
        max_delay_s: float = 2.0,
        quantile: float = 0.95,
    ) -> None:
        if window < 1 or not 1 <= min_samples <= window:
            raise ValueError("need window >= 1 and 1 <= min_samples <= window")
        if not 0 <= min_delay_s <= max_delay_s:
            raise ValueError("need 0 <= min_delay_s <= max_delay_s")
        if not 0 < quantile <= 1:
            raise ValueError("quantile must be within (0, 1]")
        self.min_samples = min_samples
        self.min_delay_s = min_delay_s
        self.max_delay_s = max_delay_s
        self.hedge_quantile = quantile
        self._recent: deque[float] = deque(maxlen=window)
        self._sorted: list[float] = []  # the same values, in order

    def __len__(self) -> int:
        return len(self._recent)

    def observe(self, seconds: float) -> None:
        """One attempt's time from being sent to its first byte."""
        if not math.isfinite(seconds) or seconds < 0:
            return
        if len(self._recent) == self._recent.maxlen:
            oldest = self._recent[0]
            del self._sorted[bisect.bisect_left(self._sorted, oldest)]
        self._recent.append(seconds)
        bisect.insort(self._sorted, seconds)

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile of the window by nearest rank; None while it is empty."""
        if not self._sorted:
            return None
        rank = max(1, math.ceil(q * len(self._sorted)))
        return self._sorted[min(rank, len(self._sorted)) - 1]

    def typical(self) -> float | None:
        """The median, once ``min_samples`` times are known (admission by TTFT target
        predicts with it); None before."""
        return self.quantile(0.5) if len(self._sorted) >= self.min_samples else None

    def hedge_delay(self) -> float | None:
        """Seconds without a first byte after which to hedge; None until ``min_samples``
        times are known (no grounds to hedge on)."""
        if len(self._sorted) < self.min_samples:
            return None
        p = self.quantile(self.hedge_quantile)
        assert p is not None
        return min(self.max_delay_s, max(self.min_delay_s, p))
