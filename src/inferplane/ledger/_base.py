"""What the gateway needs of a ledger, whatever keeps it."""

from __future__ import annotations

import asyncio
from typing import Protocol

from inferplane.ledger._events import UsageEvent

__all__ = ["Ledger"]


class Ledger(Protocol):
    def append(self, event: UsageEvent) -> asyncio.Future[None]:
        """Record ``event``; the future completes once it is durable."""
        ...

    def spend(self, since: float, **match: str | None) -> tuple[int, int, int, int]:
        """(input tokens, output tokens, calls, cost micros) since ``since`` for a scope."""
        ...

    def close(self) -> None: ...
