"""The simulated clock: a heap of timed callbacks, SimPy's core cut to what the twin needs.

Entries are ``(time, seq, callback, arg)``; the sequence number breaks ties in the
order things were scheduled, so a run is the same on every machine. Nothing
is ever cancelled: an owner that reschedules keeps a version number and ignores
wake-ups that are no longer current (cheaper than removing from a heap).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from typing import Any

__all__ = ["EventLoop"]

Callback = Callable[[float, Any], None]


class EventLoop:
    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Callback, Any]] = []
        self._seq = 0

    def at(self, time: float, callback: Callback, arg: Any = None) -> None:
        """Call ``callback(time, arg)`` when the clock reaches ``time`` (never earlier than now)."""
        self._seq += 1
        heapq.heappush(self._heap, (max(time, self.now), self._seq, callback, arg))

    def run(self, until: float = math.inf) -> None:
        """Run every callback due at or before ``until``, in time order."""
        heap = self._heap
        pop = heapq.heappop
        while heap and heap[0][0] <= until:
            time, _, callback, arg = pop(heap)
            self.now = time
            callback(time, arg)
        if until != math.inf:
            self.now = max(self.now, until)

    def stop(self) -> None:
        """Drop everything scheduled: ``run`` returns once the current callback does."""
        self._heap.clear()
