"""SqliteLedger: what is appended is on disk after close, in a versioned schema."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from inferplane.ledger import LedgerWriteError, SqliteLedger, UsageEvent, migrate


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


def rows(path: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute(
            "SELECT request_id, tenant, input_tokens, output_tokens, status, error_type "
            "FROM usage_events ORDER BY time"
        ).fetchall()


async def test_an_append_completes_once_the_event_is_committed(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "ledger.sqlite3")
    await ledger.append(event(7))
    # Another connection (another process, after a kill -9) sees it now.
    assert rows(tmp_path / "ledger.sqlite3") == [("r7", "acme", 17, 27, 200, None)]
    ledger.close()


async def test_everything_appended_is_written_by_close(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "ledger.sqlite3")
    for i in range(2500):  # more than one batch
        ledger.append(event(i))
    ledger.append(
        event(
            2500,
            status=502,
            error_type="upstream_unreachable",
            backend=None,
            input_tokens=None,
            output_tokens=None,
        )
    )
    ledger.close()
    written = rows(tmp_path / "ledger.sqlite3")
    assert len(written) == 2501
    assert written[0] == ("r0", "acme", 10, 20, 200, None)
    assert written[-1] == ("r2500", "acme", None, None, 502, "upstream_unreachable")


async def test_a_request_is_recorded_once_even_if_appended_twice(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "ledger.sqlite3")
    ledger.append(event(1))
    ledger.append(event(1, output_tokens=999))
    ledger.close()
    assert rows(tmp_path / "ledger.sqlite3") == [("r1", "acme", 11, 21, 200, None)]


async def test_reopening_keeps_data_and_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    first = SqliteLedger(path)
    first.append(event(1))
    first.close()
    second = SqliteLedger(path)
    second.append(event(2))
    second.close()
    assert [r[0] for r in rows(path)] == ["r1", "r2"]
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert migrate(db) == db.execute("PRAGMA user_version").fetchone()[0] == 3


async def test_spend_sums_a_scope_since_a_time(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    ledger = SqliteLedger(path)
    for i in range(9):
        ledger.append(event(i))
    ledger.append(event(9, tenant="other"))
    ledger.close()
    ledger = SqliteLedger(path)
    # run-1 holds events 1, 4, 7: input 11+14+17, output 21+24+27, cost 101+104+107.
    assert ledger.spend(float("-inf"), tenant="acme", workflow="triage", run="run-1") == (
        42,
        72,
        3,
        312,
    )
    assert ledger.spend(1_700_000_000.0 + 7, tenant="acme") == (17 + 18, 27 + 28, 2, 215)
    assert ledger.spend(float("-inf"), tenant="nobody") == (0, 0, 0, 0)
    ledger.close()


async def test_opening_a_version_1_ledger_migrates_it(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        from inferplane.ledger import _sqlite

        db.executescript(f"BEGIN; {_sqlite._MIGRATIONS[0]} PRAGMA user_version = 1; COMMIT;")
        db.execute(
            "INSERT INTO usage_events (request_id, time, tenant, key_name, model, "
            "operation, status, duration_s) VALUES ('old', 1, 'acme', 'k', 'm', 'chat', "
            "200, 0.1)"
        )
    ledger = SqliteLedger(path)
    ledger.append(event(1))
    ledger.close()
    with sqlite3.connect(path) as db:
        assert db.execute(
            "SELECT request_id, run, calls FROM usage_events ORDER BY time"
        ).fetchall() == [("old", None, 1), ("r1", "run-1", 1)]


async def test_a_failed_write_fails_the_waiters_instead_of_hanging_them(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    ledger = SqliteLedger(path)
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE usage_events")  # the disk is gone, as far as inserts can tell
    for i in range(2):  # and the writer carries on failing cleanly, batch after batch
        with pytest.raises(LedgerWriteError, match="could not be written"):
            await asyncio.wait_for(ledger.append(event(i)), timeout=5)
    ledger.close()
