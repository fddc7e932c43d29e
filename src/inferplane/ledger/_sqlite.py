"""Usage events in SQLite (WAL), committed in groups by one background thread.

The event loop never blocks on the disk: ``append`` hands the event to a
queue and returns a future that completes once the event is committed. The
writer thread commits whatever is queued in one transaction as soon as it can
(group commit: the busier the gateway, the larger the batches). A committed
event is in the WAL file, so it survives the gateway being killed (-9);
``synchronous=NORMAL`` trades durability across a power loss for speed, as
SQLite's WAL documentation describes. The schema is versioned
(``PRAGMA user_version``) and migrated on open.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import operator
import os
import queue
import sqlite3
import threading
from dataclasses import dataclass, fields
from pathlib import Path
from typing import IO

from inferplane.ledger._events import UsageEvent

__all__ = ["LedgerInUse", "LedgerWriteError", "NullLedger", "SqliteLedger"]


class LedgerWriteError(RuntimeError):
    """The ledger could not commit: the requests waiting on it must not be answered."""


class LedgerInUse(RuntimeError):
    """Another gateway process writes this ledger: budgets would not be exact."""


# Each entry migrates the schema from version i to i + 1; never edit one that shipped.
_MIGRATIONS = (
    """
    CREATE TABLE usage_events (
        request_id TEXT PRIMARY KEY,
        time REAL NOT NULL,
        tenant TEXT NOT NULL,
        key_name TEXT NOT NULL,
        model TEXT NOT NULL,
        backend TEXT,
        operation TEXT NOT NULL,
        status INTEGER NOT NULL,
        error_type TEXT,
        input_tokens INTEGER,
        output_tokens INTEGER,
        ttft_s REAL,
        duration_s REAL NOT NULL
    );
    CREATE INDEX usage_events_tenant_time ON usage_events (tenant, time);
    """,
    """
    ALTER TABLE usage_events ADD COLUMN workflow TEXT;
    ALTER TABLE usage_events ADD COLUMN run TEXT;
    ALTER TABLE usage_events ADD COLUMN calls INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE usage_events ADD COLUMN cost_micros INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX usage_events_run ON usage_events (tenant, workflow, run, time);
    """,
    """
    CREATE TABLE tenants (
        name TEXT PRIMARY KEY,
        doc TEXT NOT NULL,
        updated_at REAL NOT NULL
    );
    """,
)

_COLUMNS = [f.name for f in fields(UsageEvent)]
_INSERT = (
    f"INSERT OR IGNORE INTO usage_events ({', '.join(_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _COLUMNS)})"
)
_STOP = object()
log = logging.getLogger("inferplane.ledger")
_row = operator.attrgetter(*_COLUMNS)  # an event as a row, without astuple's deep copy


def migrate(db: sqlite3.Connection) -> int:
    """Bring the schema to the newest version; returns that version."""
    version: int = db.execute("PRAGMA user_version").fetchone()[0]
    for i in range(version, len(_MIGRATIONS)):
        # One transaction per step: a crash leaves the schema at a whole version.
        db.executescript(f"BEGIN; {_MIGRATIONS[i]} PRAGMA user_version = {i + 1}; COMMIT;")
    return len(_MIGRATIONS)


class SqliteLedger:
    """One gateway process per ledger file: its budgets are kept in that process's memory,
    so a second process would admit against the same limits. A lock file refuses it
    (several processes will share budgets through a database store instead)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = _lock_exclusively(path.with_name(path.name + ".lock"))
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        migrate(db)
        self._db = db  # the writer thread's
        # Reads come from the thread that opened the ledger (the event loop's).
        self._reader = sqlite3.connect(path)
        self._queue: queue.SimpleQueue[_Pending | object] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write_loop, name="ledger", daemon=True)
        self._writer.start()

    def spend(self, since: float, **match: str | None) -> tuple[int, int, int, int]:
        """(input tokens, output tokens, calls, cost micros) recorded since ``since``
        for the rows whose columns equal ``match`` (tenant, key_name, workflow, run)."""
        unknown = set(match) - {"tenant", "key_name", "workflow", "run"}
        if unknown:
            raise ValueError(f"cannot match on {sorted(unknown)}")
        where = " AND ".join(f"{column} IS ?" for column in match)
        row = self._reader.execute(
            "SELECT COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0), "
            f"COALESCE(SUM(calls), 0), COALESCE(SUM(cost_micros), 0) FROM usage_events "
            f"WHERE time >= ? AND {where}",
            (since, *match.values()),
        ).fetchone()
        return int(row[0]), int(row[1]), int(row[2]), int(row[3])

    def append(self, event: UsageEvent) -> asyncio.Future[None]:
        """Queue an event; the future completes once it is committed. Never blocks.

        Call from a running event loop; nothing needs to await the future for
        the event to be written."""
        future = asyncio.get_running_loop().create_future()
        self._queue.put(_Pending(event, future))
        return future

    def close(self) -> None:
        """Write everything appended so far, then stop."""
        self._queue.put(_STOP)
        self._writer.join()
        self._db.close()
        self._reader.close()
        self._lock.close()  # closing the file releases the lock

    def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            batch = [self._queue.get()]
            while len(batch) < 1000:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            pending = [p for p in batch if isinstance(p, _Pending)]
            stopping = len(pending) < len(batch)
            if not pending:
                continue
            error: LedgerWriteError | None = None
            try:
                self._db.execute("BEGIN")
                self._db.executemany(_INSERT, [_row(p.event) for p in pending])
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                # Disk full, file gone...: the waiting requests must fail, not hang.
                log.error("usage ledger write failed: %s", exc)
                error = LedgerWriteError(f"the usage ledger could not be written: {exc}")
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            loops: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
            for p in pending:
                loops.setdefault(p.future.get_loop(), []).append(p.future)
            for loop, futures in loops.items():
                with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                    loop.call_soon_threadsafe(_complete, futures, error)


def _lock_exclusively(path: Path) -> IO[str]:
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise LedgerInUse(
            f"{path.with_suffix('')} is in use by another gateway (pid {holder}); run one "
            "gateway process per data_dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


@dataclass(frozen=True, slots=True)
class _Pending:
    event: UsageEvent
    future: asyncio.Future[None]


def _complete(futures: list[asyncio.Future[None]], error: Exception | None) -> None:
    for future in futures:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
            future.exception()  # retrieved: nobody awaiting it is not a bug


class NullLedger:
    """Records nothing: for a gateway run with ``usage_ledger: false``."""

    def spend(self, since: float, **match: str | None) -> tuple[int, int, int, int]:
        return 0, 0, 0, 0

    def append(self, event: UsageEvent) -> asyncio.Future[None]:
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    def close(self) -> None:
        pass
