"""Reading the ledger: usage grouped by scope and day, and FinOps FOCUS rows.

Plain SQL over a ledger connection (``?`` parameters), the same for SQLite
and PostgreSQL but for calendar functions; the CLI runs it offline, the
gateway in a thread.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from inferplane.ledger._db import Connection, Database

__all__ = [
    "FOCUS_COLUMNS",
    "GROUPS",
    "event_rows",
    "focus_rows",
    "usage_summary",
    "write_focus_parquet",
]

# Column for each grouping users may ask for; "day" is the UTC date of ``time``.
GROUPS = {
    "tenant": "tenant",
    "key": "key_name",
    "workflow": "workflow",
    "run": "run",
    "model": "model",
    "backend": "backend",
    "day": "time",
}

FOCUS_COLUMNS = (
    "BillingCurrency",
    "BilledCost",
    "EffectiveCost",
    "ListCost",
    "ChargeCategory",
    "ChargeDescription",
    "ChargePeriodStart",
    "ChargePeriodEnd",
    "ServiceName",
    "ServiceCategory",
    "ResourceId",
    "ResourceName",
    "ConsumedQuantity",
    "ConsumedUnit",
    "Tags",
    "x_Tenant",
    "x_ApiKey",
    "x_Workflow",
    "x_Run",
    "x_Requests",
    "x_InputTokens",
    "x_OutputTokens",
    "x_Errors",
)


def _usd(micros: int) -> str:
    return str(Decimal(micros) / 10**6)


def _percentile(ordered: Sequence[int], q: float) -> int:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def usage_summary(
    db: Connection,
    database: Database,
    group_by: Sequence[str],
    *,
    start: float | None = None,
    end: float | None = None,
    tenant: str | None = None,
) -> list[dict[str, Any]]:
    """Requests, tokens and cost per group, with cost-per-request percentiles (USD strings)."""
    unknown = [g for g in group_by if g not in GROUPS]
    if unknown:
        raise ValueError(f"cannot group by {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    where, params = _filters(start, end, tenant)
    keys = [database.day_of("time") if g == "day" else GROUPS[g] for g in group_by]
    select = ", ".join([*keys, "cost_micros", "input_tokens", "output_tokens", "status"])
    order = ", ".join(keys) if keys else "1"
    groups: dict[tuple[Any, ...], list[tuple[Any, ...]]] = {}
    for row in db.execute(f"SELECT {select} FROM usage_events {where} ORDER BY {order}", params):
        groups.setdefault(tuple(row[: len(keys)]), []).append(row[len(keys) :])
    out = []
    for key, rows in groups.items():
        costs = sorted(r[0] for r in rows)
        entry: dict[str, Any] = dict(zip(group_by, key, strict=True))
        entry.update(
            requests=len(rows),
            errors=sum(1 for r in rows if r[3] >= 400),
            input_tokens=sum(r[1] or 0 for r in rows),
            output_tokens=sum(r[2] or 0 for r in rows),
            cost_usd=_usd(sum(costs)),
            cost_per_request_usd={
                "p50": _usd(_percentile(costs, 0.5)),
                "p90": _usd(_percentile(costs, 0.9)),
                "p99": _usd(_percentile(costs, 0.99)),
            },
        )
        out.append(entry)
    return out


def _filters(start: float | None, end: float | None, tenant: str | None) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if start is not None:
        clauses.append("time >= ?")
        params.append(start)
    if end is not None:
        clauses.append("time < ?")
        params.append(end)
    if tenant is not None:
        clauses.append("tenant = ?")
        params.append(tenant)
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", params


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def focus_rows(
    db: Connection, database: Database, *, start: float | None = None, end: float | None = None
) -> list[dict[str, Any]]:
    """FOCUS 1.x cost rows: one per hour, tenant, key, workflow, run, model and backend.

    Costs are list prices from the config (BilledCost = EffectiveCost = ListCost);
    consumed quantity is tokens. inferplane's own dimensions are ``x_`` columns and
    also appear in ``Tags``.
    """
    where, params = _filters(start, end, None)
    sql = (
        f"SELECT {database.hour_of('time')} AS hour, tenant, key_name, workflow, run, "
        "model, backend, COUNT(*), SUM(COALESCE(input_tokens, 0)), "
        "SUM(COALESCE(output_tokens, 0)), SUM(cost_micros), "
        "SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END) "
        f"FROM usage_events {where} "
        "GROUP BY hour, tenant, key_name, workflow, run, model, backend ORDER BY hour"
    )
    rows = []
    for hour, tenant, key, workflow, run, model, backend, n, *sums in db.execute(sql, params):
        inp, out, cost, errors = (int(v) for v in sums)  # PostgreSQL sums are numeric
        tags = {"tenant": tenant, "api_key": key, "workflow": workflow, "run": run}
        rows.append(
            {
                "BillingCurrency": "USD",
                "BilledCost": _usd(cost),
                "EffectiveCost": _usd(cost),
                "ListCost": _usd(cost),
                "ChargeCategory": "Usage",
                "ChargeDescription": f"LLM inference on {model}",
                "ChargePeriodStart": _iso(hour),
                "ChargePeriodEnd": _iso(hour + 3600),
                "ServiceName": "inferplane",
                "ServiceCategory": "AI and Machine Learning",
                "ResourceId": backend or "",
                "ResourceName": model,
                "ConsumedQuantity": inp + out,
                "ConsumedUnit": "Tokens",
                "Tags": json.dumps({k: v for k, v in tags.items() if v is not None}),
                "x_Tenant": tenant,
                "x_ApiKey": key,
                "x_Workflow": workflow or "",
                "x_Run": run or "",
                "x_Requests": n,
                "x_InputTokens": inp,
                "x_OutputTokens": out,
                "x_Errors": errors,
            }
        )
    return rows


def event_rows(
    db: Connection, database: Database, *, start: float | None = None, end: float | None = None
) -> Iterator[dict[str, Any]]:
    """One row per usage event, in time order, read as the cursor goes (flat memory).

    Keys, in this order: request_id, time (ISO-8601 UTC with microseconds), tenant, key,
    workflow, run, model, backend, slo_class, status, input_tokens, output_tokens,
    cached_tokens, cost_usd (a decimal string), ttft_s, duration_s, retries,
    finish_reason, client_request_id; unknown values are None. The twin replays this
    export as a trace.
    """
    columns = (
        "request_id, time, tenant, key_name, workflow, run, model, backend, slo_class, status, "
        "input_tokens, output_tokens, cached_tokens, cost_micros, ttft_s, duration_s, retries, "
        "finish_reason, client_request_id"
    )
    keys = [{"key_name": "key", "cost_micros": "cost_usd"}.get(c, c) for c in columns.split(", ")]
    where, params = _filters(start, end, None)
    sql = f"SELECT {columns} FROM usage_events {where} ORDER BY time, request_id"
    for values in db.execute(sql, params):
        row = dict(zip(keys, values, strict=True))
        row["time"] = datetime.fromtimestamp(row["time"], UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        row["cost_usd"] = _usd(row["cost_usd"])
        yield row


_COSTS = ("BilledCost", "EffectiveCost", "ListCost")
_PERIODS = ("ChargePeriodStart", "ChargePeriodEnd")
_COUNTS = ("ConsumedQuantity", "x_Requests", "x_InputTokens", "x_OutputTokens", "x_Errors")


def write_focus_parquet(rows: list[dict[str, Any]], path: str) -> None:
    """FOCUS rows as Parquet with typed columns: costs decimal(20, 6) USD, periods UTC
    timestamps, quantities int64, the rest strings. Needs pyarrow (extra ``parquet``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fields = []
    for name in FOCUS_COLUMNS:
        if name in _COSTS:
            kind = pa.decimal128(20, 6)
        elif name in _PERIODS:
            kind = pa.timestamp("ms", tz="UTC")  # Parquet has no second unit
        elif name in _COUNTS:
            kind = pa.int64()
        else:
            kind = pa.string()
        fields.append(pa.field(name, kind))
    columns: dict[str, list[Any]] = {name: [] for name in FOCUS_COLUMNS}
    for row in rows:
        for name in FOCUS_COLUMNS:
            value = row[name]
            if name in _COSTS:
                value = Decimal(value)
            elif name in _PERIODS:
                value = datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            columns[name].append(value)
    pq.write_table(pa.table(columns, schema=pa.schema(fields)), path)
