"""One simulated replica: the engine core the emulator runs, on the twin's clock.

The replica wakes only when its core has something to report: the end of the
step in flight or, across a decode run, of the whole run (the core jumps over
the steps in between in closed form). It keeps the books the twin reports:
busy time (a step in flight), up time (ready or draining: the only states in
which its engine holds work, so busy time never exceeds it) and billed time
(every state but ``OFF``: a starting, draining or broken replica still holds
its GPUs).
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from inferplane.engines import EngineCore, EngineLimits, EngineRequest
from inferplane.engines._core import Event
from inferplane.perf import PerfModel
from inferplane.twin._loop import EventLoop

__all__ = ["ReplicaState", "SimReplica"]


class ReplicaState(enum.Enum):
    READY = "ready"  # takes work
    STARTING = "starting"  # cold start: loading weights
    DRAINING = "draining"  # scaled down: finishes what it has, takes nothing new
    FAILED = "failed"  # down until repaired
    OFF = "off"  # not provisioned, not billed


# The states in which the engine runs (ready, or finishing its work while draining).
_UP = frozenset({ReplicaState.READY, ReplicaState.DRAINING})

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
        self._perf, self.limits = perf, limits
        self.core = EngineCore(perf, limits, every_token=False)
        self.state = ReplicaState.READY
        self._billed_s = 0.0
        self._billed_since: float | None = 0.0
        self._up_s = 0.0
        self._up_since: float | None = 0.0
        self._loop = loop
        self._listener = listener
        self._wake_at: float | None = None
        self._version = 0
        self.busy_s = 0.0
        self._busy_since: float | None = None

    @property
    def in_engine(self) -> int:
        return self.core.num_running + self.core.num_waiting

    def fits(self, num_prompt_tokens: int, num_output_tokens: int) -> bool:
        """Whether this replica can serve a request of this size at all: the emulated
        engine's own rules, prompt + output within the model's context and their KV
        blocks within the replica's cache (more, and ``EngineCore.add_request`` raises;
        the emulator answers both 400 context_length_exceeded)."""
        total = num_prompt_tokens + num_output_tokens
        blocks = -(-total // self.limits.block_size)
        return total <= self._perf.model.max_context and blocks <= self.core.num_blocks

    def add(self, request: EngineRequest, now: float) -> None:
        self.core.add_request(request, now)
        self._after(now)

    def abort(self, request_id: str, now: float) -> None:
        self.core.abort(request_id, now)
        self._after(now)

    def set_state(self, state: ReplicaState, now: float) -> None:
        billed = state is not ReplicaState.OFF
        if billed and self._billed_since is None:
            self._billed_since = now
        elif not billed and self._billed_since is not None:
            self._billed_s += now - self._billed_since
            self._billed_since = None
        up = state in _UP
        if up and self._up_since is None:
            self._up_since = now
        elif not up and self._up_since is not None:
            self._up_s += now - self._up_since
            self._up_since = None
        self.state = state

    def billed_until(self, now: float) -> float:
        """Billed seconds so far, counting the current spell up to ``now``."""
        if self._billed_since is None:
            return self._billed_s
        return self._billed_s + now - self._billed_since

    def up_until(self, now: float) -> float:
        """Seconds ready or draining so far, counting the current spell up to ``now``."""
        if self._up_since is None:
            return self._up_s
        return self._up_s + now - self._up_since

    def crash(self, now: float) -> None:
        """Everything in the engine is lost; a new engine starts empty when repaired."""
        self.core = EngineCore(self._perf, self.limits, every_token=False)
        self._version += 1  # the old core's wake-up is void
        self._wake_at = None
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
        t = self.core.next_change_time()
        if t == self._wake_at:
            return
        self._version += 1
        self._wake_at = t
        if t is not None:
            self._loop.at(t, self._wake, self._version)
