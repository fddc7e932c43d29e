"""One simulated replica: the engine core the emulator runs, on the twin's clock.

The replica wakes only when its core has something to report: the end of the
step in flight or, across a decode run, of the whole run (the core jumps over
the steps in between in closed form). It keeps the books the twin reports:
busy time (a step in flight) and the price of its hours.
"""

from __future__ import annotations

from collections.abc import Callable

from inferplane.engines import EngineCore, EngineLimits, EngineRequest
from inferplane.engines._core import Event
from inferplane.perf import PerfModel
from inferplane.twin._loop import EventLoop

__all__ = ["SimReplica"]

# Told every event of a replica, at its time.
Listener = Callable[["SimReplica", Event], None]


class SimReplica:
    def __init__(
        self,
        index: int,
        name: str,
        perf: PerfModel,
        limits: EngineLimits,
        price_per_hour: float,
        loop: EventLoop,
        listener: Listener,
    ) -> None:
        self.index = index
        self.name = name
        self.price_per_hour = price_per_hour
        self.core = EngineCore(perf, limits, every_token=False)
        self._loop = loop
        self._listener = listener
        self._wake_at: float | None = None
        self._version = 0
        self.busy_s = 0.0
        self._busy_since: float | None = None

    @property
    def in_engine(self) -> int:
        return self.core.num_running + self.core.num_waiting

    def add(self, request: EngineRequest, now: float) -> None:
        self.core.add_request(request, now)
        self._after(now)

    def abort(self, request_id: str, now: float) -> None:
        self.core.abort(request_id, now)
        self._after(now)

    def busy_until(self, now: float) -> float:
        """Busy seconds so far, counting the current busy spell up to ``now``."""
        if self._busy_since is None:
            return self.busy_s
        return self.busy_s + now - self._busy_since

    def _wake(self, now: float, version: int) -> None:
        if version != self._version:
            return  # superseded by a later schedule
        self._wake_at = None
        for event in self.core.advance(now):
            self._listener(self, event)
        self._after(now)

    def _after(self, now: float) -> None:
        """Re-arm the wake-up and the busy books after the core's state changed."""
        busy = self.in_engine > 0
        if busy and self._busy_since is None:
            self._busy_since = now
        elif not busy and self._busy_since is not None:
            self.busy_s += now - self._busy_since
            self._busy_since = None
        t = self.core.next_event_time()
        if t == self._wake_at:
            return
        self._version += 1
        self._wake_at = t
        if t is not None:
            self._loop.at(t, self._wake, self._version)
