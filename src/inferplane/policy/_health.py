"""Which replicas may take traffic: passive outlier ejection with a circuit breaker.

Each replica's breaker is *closed* (serving), *open* (ejected until a time) or
*half-open* (one probe request at a time). A replica is ejected after
``consecutive_errors`` failures in a row (5xx, timeouts, broken streams), or
at once when it refuses connections; each ejection lasts ``base_ejection_s``
times the number of ejections in a row, up to ``max_ejection_s`` (Envoy's
outlier detection). When the ejection ends, one probe goes through: success
closes the breaker and forgets the past, failure ejects it again, longer.

Pure: time is passed in, outcomes are reported by the driver.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Breaker", "BreakerState", "Health"]


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(slots=True)
class Breaker:
    state: BreakerState = BreakerState.CLOSED
    errors_in_a_row: int = 0
    ejections_in_a_row: int = 0
    open_until: float = float("-inf")
    probing: bool = False  # half-open: a probe is in flight


class Health:
    def __init__(
        self,
        num_backends: int,
        *,
        consecutive_errors: int = 5,
        base_ejection_s: float = 10.0,
        max_ejection_s: float = 300.0,
    ) -> None:
        if consecutive_errors < 1:
            raise ValueError("consecutive_errors must be >= 1")
        self.breakers = [Breaker() for _ in range(num_backends)]
        # Indexes whose breaker is not closed: empty, every replica may take traffic and
        # callers skip asking one by one (the twin routes on fleets of hundreds).
        self.not_closed: set[int] = set()
        self.consecutive_errors = consecutive_errors
        self.base_ejection_s = base_ejection_s
        self.max_ejection_s = max_ejection_s

    def available(self, index: int, now: float) -> bool:
        """May a request go to ``index`` now? (An ended ejection allows one probe.)"""
        b = self.breakers[index]
        if b.state is BreakerState.CLOSED:
            return True
        if b.state is BreakerState.OPEN and now >= b.open_until:
            b.state, b.probing = BreakerState.HALF_OPEN, False
        return b.state is BreakerState.HALF_OPEN and not b.probing

    def sent(self, index: int) -> None:
        """A request went to ``index``: in half-open state it is the probe."""
        b = self.breakers[index]
        if b.state is BreakerState.HALF_OPEN:
            b.probing = True

    def abandoned(self, index: int) -> None:
        """A request sent to ``index`` ended with no outcome (cancelled before any answer):
        if it was the probe, the next request may probe instead."""
        b = self.breakers[index]
        if b.state is BreakerState.HALF_OPEN:
            b.probing = False

    def succeeded(self, index: int) -> None:
        b = self.breakers[index]
        b.state, b.errors_in_a_row, b.ejections_in_a_row, b.probing = (
            BreakerState.CLOSED,
            0,
            0,
            False,
        )
        self.not_closed.discard(index)

    def failed(self, index: int, now: float, *, refused: bool = False) -> None:
        """A request to ``index`` failed; ``refused``: the connection itself was refused,
        which ejects at once."""
        b = self.breakers[index]
        b.errors_in_a_row += 1
        if (
            refused
            or b.state is BreakerState.HALF_OPEN
            or (b.state is BreakerState.CLOSED and b.errors_in_a_row >= self.consecutive_errors)
        ):
            self._eject(index, now)

    def _eject(self, index: int, now: float) -> None:
        b = self.breakers[index]
        self.not_closed.add(index)
        b.ejections_in_a_row += 1
        duration = min(self.max_ejection_s, self.base_ejection_s * b.ejections_in_a_row)
        b.state, b.open_until, b.probing = BreakerState.OPEN, now + duration, False

    def checked(self, index: int, ok: bool, now: float) -> None:
        """An active health check's outcome: a failed one ejects at once (nothing
        listens, or it says it is unwell); a passing one lets an ejected replica have
        its probe request now instead of at the end of its ejection."""
        b = self.breakers[index]
        if not ok:
            if b.state is not BreakerState.OPEN:
                self.failed(index, now, refused=True)
        elif b.state is BreakerState.OPEN:
            b.open_until = min(b.open_until, now)

    def soonest_back(self, candidates: list[int]) -> int | None:
        """Of ``candidates``, the one whose ejection ends first (when all are ejected,
        trying one beats refusing)."""
        return min(candidates, key=lambda i: self.breakers[i].open_until, default=None)
