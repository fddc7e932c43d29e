"""Budget leases: how several gateway processes share one budget exactly, without a
database round trip per request.

Each process admits against its own ``Book``, whose limits are the budget it
has *leased*, not the budget itself. The shared store keeps, per scope, the
committed spend in the current window and every live lease (granted so far,
consumed so far). A lease is granted under a per-scope lock, only out of what
nobody has spent or leased:

    available = limit - spent in window - sum over live leases of (granted - consumed)

and a holder never admits beyond its grant, so the spend the store will ever
commit stays within the limit. Settling moves an amount from a lease's
unconsumed part to spend in one transaction, which leaves the sum unchanged.
Leases carry an expiry: the grant of a process that died returns to the pool.

These functions are the arithmetic; the store runs them inside its transaction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from inferplane.policy._budgets import Amount, BudgetLimits

__all__ = ["CHUNK_DIVISOR", "LeaseAsk", "LeaseGrant", "lease_ask", "lease_grant"]

# A lease tops a holder up by a 1/16 of the limit beyond what the request needs:
# about 16 round trips per window for a busy scope, and little left idle per process.
CHUNK_DIVISOR = 16


@dataclass(frozen=True, slots=True)
class LeaseAsk:
    """Per limited dimension: the least that makes a request fit, and the top-up wanted."""

    need: dict[str, int]
    want: dict[str, int]


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    granted: dict[str, int]  # added to the holder's lease; empty when refused
    available: dict[str, int]  # what nobody had spent or leased, before this grant
    refused: str | None = None  # the first dimension that could not be granted

    @property
    def ok(self) -> bool:
        return self.refused is None


def lease_ask(
    limits: BudgetLimits, leased: BudgetLimits, used: Amount, amount: Amount
) -> LeaseAsk | None:
    """What to ask the store for so that ``amount`` fits on top of ``used`` (spent +
    held locally) within ``leased``; None when it already fits."""
    need: dict[str, int] = {}
    want: dict[str, int] = {}
    for dimension, limit in limits.items():
        room = (leased.get(dimension) or 0) - used.get(dimension)
        requested = amount.get(dimension)
        need[dimension] = max(0, requested - room)
        chunk = max(1, math.ceil(limit / CHUNK_DIVISOR))
        want[dimension] = max(need[dimension], requested + chunk - room)
    if not any(need.values()):
        return None
    return LeaseAsk(need, want)


def lease_grant(
    limits: BudgetLimits, spent: Amount, leased: dict[str, int], ask: LeaseAsk
) -> LeaseGrant:
    """Grant all of ``ask.need`` or nothing; beyond the need, at most half of what is
    left, so that near the end of a budget one process cannot take it all."""
    available = {
        dimension: limit - spent.get(dimension) - leased.get(dimension, 0)
        for dimension, limit in limits.items()
    }
    for dimension, free in available.items():
        if ask.need.get(dimension, 0) > free:
            return LeaseGrant({}, available, refused=dimension)
    granted = {}
    for dimension, free in available.items():
        need = ask.need.get(dimension, 0)
        granted[dimension] = min(free, max(need, min(ask.want.get(dimension, 0), free // 2)))
    return LeaseGrant(granted, available)
