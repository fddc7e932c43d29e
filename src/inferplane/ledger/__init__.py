"""Durable usage records: every forwarded request, with its tokens, cost and timings."""

from inferplane.ledger._base import Ledger
from inferplane.ledger._events import UsageEvent
from inferplane.ledger._query import (
    FOCUS_COLUMNS,
    GROUPS,
    focus_rows,
    usage_summary,
    write_focus_parquet,
)
from inferplane.ledger._sqlite import (
    LedgerInUse,
    LedgerWriteError,
    NullLedger,
    SqliteLedger,
    migrate,
)
from inferplane.ledger._tenants import TenantStore

__all__ = [
    "FOCUS_COLUMNS",
    "GROUPS",
    "Ledger",
    "LedgerInUse",
    "LedgerWriteError",
    "NullLedger",
    "SqliteLedger",
    "TenantStore",
    "UsageEvent",
    "focus_rows",
    "migrate",
    "usage_summary",
    "write_focus_parquet",
]
