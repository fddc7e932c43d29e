"""Ledger queries: usage summaries and FinOps FOCUS rows from known events."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from inferplane.ledger import (
    FOCUS_COLUMNS,
    Connection,
    Database,
    SqlLedger,
    focus_rows,
    usage_summary,
)

from .test_ledger import append, event

HOUR = 1_800_000_000.0 - 1_800_000_000.0 % 3600  # an exact hour boundary


@pytest.fixture
async def db(database: Database) -> Iterator[tuple[Connection, Database]]:
    ledger = SqlLedger(database)
    # acme: costs 100..109 micro-dollars in one hour; globex: one failed request later.
    for i in range(10):
        append(ledger, event(i, time=HOUR + i, cost_micros=100 + i))
    append(
        ledger,
        event(
            10,
            time=HOUR + 3600,
            tenant="globex",
            status=502,
            error_type="upstream_unreachable",
            cost_micros=0,
            calls=0,
            input_tokens=None,
            output_tokens=None,
            backend=None,
        ),
    )
    ledger.close()
    connection = database.connect(read_only=True)
    yield connection, database
    connection.close()


def test_summary_groups_and_percentiles(db: tuple[Connection, Database]) -> None:
    rows = usage_summary(*db, ["tenant"])
    acme, globex = rows
    assert acme["tenant"] == "acme" and acme["requests"] == 10 and acme["errors"] == 0
    assert acme["input_tokens"] == sum(10 + i for i in range(10))
    assert acme["cost_usd"] == "0.001045"  # 100 + ... + 109 = 1045 micro-dollars
    assert acme["cost_per_request_usd"] == {"p50": "0.000105", "p90": "0.000109", "p99": "0.000109"}
    assert (globex["requests"], globex["errors"], globex["cost_usd"]) == (1, 1, "0")


def test_summary_filters_by_tenant_and_time(db: tuple[Connection, Database]) -> None:
    assert [r["tenant"] for r in usage_summary(*db, ["tenant"], tenant="globex")] == ["globex"]
    assert usage_summary(*db, [], start=HOUR + 5, end=HOUR + 7)[0]["requests"] == 2
    with pytest.raises(ValueError, match="cannot group by colour"):
        usage_summary(*db, ["colour"])


def test_focus_rows_are_hourly_with_tags(db: tuple[Connection, Database]) -> None:
    rows = focus_rows(*db)
    assert all(set(r) == set(FOCUS_COLUMNS) for r in rows)
    # acme's 10 events spread over 3 runs (run-0, run-1, run-2) in one hour, plus globex.
    acme = [r for r in rows if r["x_Tenant"] == "acme"]
    assert sorted(r["x_Run"] for r in acme) == ["run-0", "run-1", "run-2"]
    assert sum(r["x_Requests"] for r in acme) == 10
    first = acme[0]
    assert first["ChargePeriodEnd"] > first["ChargePeriodStart"]
    assert first["ChargePeriodStart"].endswith(":00:00Z")
    assert first["ConsumedUnit"] == "Tokens"
    assert first["ConsumedQuantity"] == first["x_InputTokens"] + first["x_OutputTokens"]
    assert json.loads(first["Tags"])["workflow"] == "triage"
    total = sum(float(r["BilledCost"]) for r in rows)
    assert total == pytest.approx(0.001045)
