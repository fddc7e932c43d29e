"""What the gateway needs of a ledger, whatever keeps it."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

from inferplane.ledger._events import UsageEvent

if TYPE_CHECKING:
    from inferplane.ledger._ledger import Charge

__all__ = ["Ledger"]


class Ledger(Protocol):
    def append(self, event: UsageEvent, charge: Charge) -> asyncio.Future[None]:
        """Record ``event`` and its charge; the future completes once it is durable."""
        ...

    def close(self) -> None: ...
