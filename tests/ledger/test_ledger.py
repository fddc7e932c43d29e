"""The usage ledger on SQLite and PostgreSQL: what is appended is committed, once,
in a versioned schema, together with the spend of every scope it is charged to."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from inferplane.ledger import (
    SCHEMA_VERSION,
    Charge,
    Database,
    LedgerWriteError,
    SqlLedger,
    UsageEvent,
    migrate,
)
from inferplane.policy import Amount, charge_scopes


def event(i: int, **changes: object) -> UsageEvent:
    base = dict(
        request_id=f"r{i}",
        time=1_700_000_000.0 + i,
        tenant="acme",
        key_name="prod",
        workflow="triage",
        run=f"run-{i % 3}",
        calls=1,
        cost_micros=100 + i,
        model="llama-3.1-8b",
        backend="10.0.0.5:8000",
        operation="chat",
        status=200,
        error_type=None,
        input_tokens=10 + i,
        output_tokens=20 + i,
        ttft_s=0.05,
        duration_s=0.5,
    )
    return UsageEvent(**{**base, **changes})  # type: ignore[arg-type]


def charge(e: UsageEvent) -> Charge:
    amount = Amount(
        input_tokens=e.input_tokens or 0,
        output_tokens=e.output_tokens or 0,
        calls=e.calls,
        cost_micros=e.cost_micros,
    )
    return Charge(amount, tuple(map(str, charge_scopes(e.tenant, e.key_name, e.workflow, e.run))))


def append(ledger: SqlLedger, e: UsageEvent) -> asyncio.Future[None]:
    return ledger.append(e, charge(e))


def query(database: Database, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with contextlib.closing(database.connect()) as db:
        return [tuple(r) for r in db.execute(sql, params).fetchall()]


def rows(database: Database) -> list[tuple[Any, ...]]:
    return query(
        database,
        "SELECT request_id, tenant, input_tokens, output_tokens, status, error_type "
        "FROM usage_events ORDER BY time",
    )


async def test_an_append_completes_once_the_event_is_committed(database: Database) -> None:
    ledger = SqlLedger(database)
    await append(ledger, event(7))
    # Another connection (another process, after a kill -9) sees it now.
    assert rows(database) == [("r7", "acme", 17, 27, 200, None)]
    ledger.close()


async def test_everything_appended_is_written_by_close(database: Database) -> None:
    ledger = SqlLedger(database)
    for i in range(2500):  # more than one batch
        append(ledger, event(i))
    append(
        ledger,
        event(
            2500,
            status=502,
            error_type="upstream_unreachable",
            backend=None,
            input_tokens=None,
            output_tokens=None,
        ),
    )
    ledger.close()
    written = rows(database)
    assert len(written) == 2501
    assert written[0] == ("r0", "acme", 10, 20, 200, None)
    assert written[-1] == ("r2500", "acme", None, None, 502, "upstream_unreachable")


async def test_a_request_is_recorded_once_even_if_appended_twice(database: Database) -> None:
    ledger = SqlLedger(database)
    append(ledger, event(1))
    append(ledger, event(1, output_tokens=999))
    ledger.close()
    assert rows(database) == [("r1", "acme", 11, 21, 200, None)]


async def test_reopening_keeps_data_and_schema_version(database: Database) -> None:
    first = SqlLedger(database)
    append(first, event(1))
    first.close()
    second = SqlLedger(database)
    append(second, event(2))
    second.close()
    assert [r[0] for r in rows(database)] == ["r1", "r2"]
    with contextlib.closing(database.connect()) as db:
        assert migrate(db, database) == SCHEMA_VERSION == 5


async def test_spend_is_counted_per_scope_and_hour_with_the_events(database: Database) -> None:
    ledger = SqlLedger(database)
    for i in range(9):
        append(ledger, event(i))
    append(ledger, event(9, tenant="other", workflow=None, run="solo"))
    ledger.close()
    spend = {
        scope: (i, o, c, m)
        for scope, i, o, c, m in query(
            database,
            "SELECT scope, SUM(input_tokens), SUM(output_tokens), SUM(calls), "
            "SUM(cost_micros) FROM budget_spend GROUP BY scope",
        )
    }
    # run-1 holds events 1, 4, 7: input 11+14+17, output 21+24+27, cost 101+104+107.
    assert spend["run:acme/triage/run-1"] == (42, 72, 3, 312)
    assert spend["tenant:acme"] == (sum(range(10, 19)), sum(range(20, 29)), 9, sum(range(100, 109)))
    assert spend["key:acme/prod"] == spend["tenant:acme"]
    assert spend["workflow:acme/triage"] == spend["tenant:acme"]
    assert spend["run:other/-/solo"] == (19, 29, 1, 109)
    assert "workflow:other/-" not in spend


async def test_opening_a_version_1_sqlite_ledger_migrates_and_counts_its_spend(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.sqlite3"
    database = Database.sqlite(path)
    with contextlib.closing(sqlite3.connect(path)) as db:
        from inferplane.ledger import _schema

        (script,) = [database.ddl(_schema._MIGRATIONS[0])]
        db.executescript(f"BEGIN; {';'.join(script)}; PRAGMA user_version = 1; COMMIT;")
        db.execute(
            "INSERT INTO usage_events (request_id, time, tenant, key_name, model, "
            "operation, status, duration_s, input_tokens, output_tokens) "
            "VALUES ('old', 7200, 'acme', 'k', 'm', 'chat', 200, 0.1, 5, 6)"
        )
        db.commit()
    ledger = SqlLedger(database)
    append(ledger, event(1))
    ledger.close()
    assert query(database, "SELECT request_id, run, calls FROM usage_events ORDER BY time") == [
        ("old", None, 1),
        ("r1", "run-1", 1),
    ]
    assert query(
        database, "SELECT hour, input_tokens, output_tokens FROM budget_spend WHERE scope = ?",
        ("key:acme/k",),
    ) == [(7200, 5, 6)]  # fmt: skip


def test_processes_opening_a_new_database_together_migrate_it_once(database: Database) -> None:
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            with contextlib.closing(database.connect()) as db:
                migrate(db, database)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert query(database, "SELECT COUNT(*) FROM budget_leases") == [(0,)]


async def test_a_failed_write_fails_the_waiters_instead_of_hanging_them(
    database: Database,
) -> None:
    ledger = SqlLedger(database)
    with contextlib.closing(database.connect()) as db:
        db.execute("DROP TABLE usage_events")  # the disk is gone, as far as inserts can tell
    for i in range(2):  # and the writer carries on failing cleanly, batch after batch
        with pytest.raises(LedgerWriteError, match="could not be written"):
            await asyncio.wait_for(append(ledger, event(i)), timeout=5)
    ledger.close()


async def test_an_event_the_database_cannot_take_fails_its_batch_not_the_writer(
    database: Database,
) -> None:
    ledger = SqlLedger(database)
    with pytest.raises(LedgerWriteError, match="could not be written"):
        await asyncio.wait_for(append(ledger, event(0, model=object())), timeout=5)
    await asyncio.wait_for(append(ledger, event(1)), timeout=5)  # the writer lives on
    ledger.close()
    assert [r[0] for r in rows(database)] == ["r1"]
