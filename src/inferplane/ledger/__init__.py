"""Durable usage records: every forwarded request, with its tokens and timings."""

from inferplane.ledger._events import UsageEvent
from inferplane.ledger._sqlite import SqliteLedger, migrate

__all__ = ["SqliteLedger", "UsageEvent", "migrate"]
