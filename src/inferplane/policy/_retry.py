"""How many retries a model's traffic may carry: Envoy's retry budget.

Retries help a request past one bad replica and hurt a fleet that is
overloaded: every retry is more load. So at any time the requests that have
retried may be at most ``ratio`` of those in flight, and always at least
``min_concurrent`` (so a quiet model can still retry).

Pure: the driver reports starts and ends.
"""

from __future__ import annotations

__all__ = ["RetryBudget"]


class RetryBudget:
    def __init__(self, ratio: float = 0.2, min_concurrent: int = 3) -> None:
        if not 0 <= ratio <= 1 or min_concurrent < 0:
            raise ValueError("ratio must be within [0, 1] and min_concurrent >= 0")
        self.ratio = ratio
        self.min_concurrent = min_concurrent
        self.in_flight = 0
        self.retrying = 0  # requests in flight that have retried

    def started(self) -> None:
        self.in_flight += 1

    def ended(self, retried: bool) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        if retried:
            self.retrying = max(0, self.retrying - 1)

    def allow(self, already_retried: bool) -> bool:
        """May a request retry now? One that retried before needs no new share."""
        if already_retried:
            return True
        if self.retrying >= max(self.min_concurrent, self.ratio * self.in_flight):
            return False
        self.retrying += 1
        return True
