"""Durable usage records: every forwarded request, with its tokens, cost and timings,
and the shared state of budgets (spend per scope, leases per gateway process)."""

from inferplane.ledger._base import Ledger
from inferplane.ledger._db import Connection, Database, DatabaseError
from inferplane.ledger._events import UsageEvent
from inferplane.ledger._leases import LeaseRequest, LeaseResult, LeaseStore
from inferplane.ledger._ledger import Charge, LedgerWriteError, NullLedger, SqlLedger
from inferplane.ledger._query import (
    FOCUS_COLUMNS,
    GROUPS,
    event_rows,
    focus_rows,
    usage_summary,
    write_focus_parquet,
)
from inferplane.ledger._schema import SCHEMA_VERSION, migrate
from inferplane.ledger._tenants import TenantStore

__all__ = [
    "FOCUS_COLUMNS",
    "GROUPS",
    "SCHEMA_VERSION",
    "Charge",
    "Connection",
    "Database",
    "DatabaseError",
    "LeaseRequest",
    "LeaseResult",
    "LeaseStore",
    "Ledger",
    "LedgerWriteError",
    "NullLedger",
    "SqlLedger",
    "TenantStore",
    "UsageEvent",
    "event_rows",
    "focus_rows",
    "migrate",
    "usage_summary",
    "write_focus_parquet",
]
