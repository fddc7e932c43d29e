"""Usage events, committed in groups by one background thread, in SQLite or PostgreSQL.

The event loop never blocks on the database: ``append`` queues the event and
returns a future that completes once the event is committed. The events of one
turn of the loop are handed to the writer thread together, and the writer
commits whatever it has been handed in one transaction as soon as it can
(group commit: the busier the gateway, the larger the batches, and the fewer
thread wake-ups per event). The same
transaction adds each request's charge to its scopes' spend per hour and to the
budget lease it was admitted under, so spend, leases and usage rows never
disagree. A committed event survives the gateway being killed (-9).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from inferplane.ledger._db import Database
from inferplane.ledger._events import UsageEvent
from inferplane.ledger._leases import AMOUNT_ORDER, LeaseStore
from inferplane.ledger._schema import migrate
from inferplane.policy import Amount

__all__ = ["Charge", "LedgerWriteError", "NullLedger", "SqlLedger"]


class LedgerWriteError(RuntimeError):
    """The ledger could not commit: the requests waiting on it must not be answered."""


@dataclass(frozen=True, slots=True)
class Charge:
    """What a request is charged, where, and the budget lease it was admitted under."""

    amount: Amount
    scopes: tuple[str, ...]  # every scope it is charged to (``policy.charge_scopes``)
    holder: str | None = None  # the lease holder (a gateway process), None if unbudgeted
    leased: tuple[str, ...] = ()  # the scopes whose lease it consumes


_COLUMNS = UsageEvent._fields
_INSERT = (
    f"INSERT INTO usage_events ({', '.join(_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _COLUMNS)}) ON CONFLICT (request_id) DO NOTHING"
)


def _sql_type(annotation: str) -> str:
    for python, sql in (("str", "text"), ("float", "float8"), ("int", "int8")):
        if python in annotation:
            return sql
    raise TypeError(f"no PostgreSQL type for {annotation}")


def _json_rows(types: list[str]) -> str:
    """SQL for the rows of a JSON array of arrays (a parameter), typed column by column."""
    values = ", ".join(f"(e->>{i})::{t}" for i, t in enumerate(types))
    return f"SELECT {values} FROM jsonb_array_elements(?::jsonb) AS e"


_SPEND = AMOUNT_ORDER[:6]
_ADD_SPEND = (
    f"INSERT INTO budget_spend (scope, hour, {', '.join(_SPEND)}) "
    f"VALUES (?, ?, {', '.join('?' for _ in _SPEND)}) ON CONFLICT (scope, hour) DO UPDATE SET "
    + ", ".join(f"{d} = budget_spend.{d} + excluded.{d}" for d in _SPEND)
)
# PostgreSQL: a batch is one statement (one transaction, in autocommit) doing the three
# above, its rows passed as three JSON documents: per statement and per parameter, the
# server's and psycopg's costs were most of what the ledger cost the gateway.
# Concurrent writers share only budget_spend rows, which it locks in the sorted order
# of its rows; each process consumes only its own lease rows.
_COMMIT_JSON = (
    f"WITH events AS (INSERT INTO usage_events ({', '.join(_COLUMNS)}) "
    + _json_rows([_sql_type(str(UsageEvent.__annotations__[c])) for c in _COLUMNS])
    + " ON CONFLICT (request_id) DO NOTHING), "
    + f"spend AS (INSERT INTO budget_spend (scope, hour, {', '.join(_SPEND)}) "
    + _json_rows(["text", "int8", *("int8" for _ in _SPEND)])
    + f" {_ADD_SPEND[_ADD_SPEND.index('ON CONFLICT') :]}) "
    + "UPDATE budget_leases AS l SET "
    + ", ".join(f"consumed_{d} = l.consumed_{d} + u.{d}" for d in AMOUNT_ORDER)
    + f" FROM ({_json_rows([*('int8' for _ in AMOUNT_ORDER), 'text', 'text'])}) "
    + f"AS u({', '.join(AMOUNT_ORDER)}, scope, holder) "
    + "WHERE l.scope = u.scope AND l.holder = u.holder"
)
_K = TypeVar("_K")
_STOP = object()
_BATCH = 1000  # events per transaction, at most
log = logging.getLogger("inferplane.ledger")


class SqlLedger:
    """The usage ledger of one gateway process; several processes may share a database."""

    def __init__(self, database: Database) -> None:
        self.database = database
        db = database.connect()
        migrate(db, database)
        self._db = db  # the writer thread's
        self._queue: queue.SimpleQueue[list[_Pending] | object] = queue.SimpleQueue()
        # Events of this turn of the event loop, handed over together at its end: one
        # wake-up of the writer per turn, not per event.
        self._outgoing: list[_Pending] = []
        self._writer = threading.Thread(target=self._write_loop, name="ledger", daemon=True)
        self._writer.start()

    def append(self, event: UsageEvent, charge: Charge) -> asyncio.Future[None]:
        """Queue an event; the future completes once it is committed. Never blocks.

        Call from a running event loop; nothing needs to await the future for
        the event to be written."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self._outgoing:
            loop.call_soon(self._hand_over)
        self._outgoing.append(_Pending(event, charge, future))
        return future

    def _hand_over(self) -> None:
        if self._outgoing:
            self._queue.put(self._outgoing)
            self._outgoing = []

    def close(self) -> None:
        """Write everything appended so far, then stop."""
        self._hand_over()  # in case the loop that appended them is gone
        self._queue.put(_STOP)
        self._writer.join()
        self._db.close()

    def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            pending: list[_Pending] = []
            item = self._queue.get()
            while True:  # everything queued by now, in one transaction per _BATCH events
                if isinstance(item, list):
                    pending += item
                else:
                    stopping = True
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            for start in range(0, len(pending), _BATCH):
                self._write(pending[start : start + _BATCH])

    def _write(self, batch: list[_Pending]) -> None:
        """Commit ``batch``, then tell its waiters, on their event loops."""
        error: LedgerWriteError | None = None
        try:
            self._commit(batch)
        except Exception as exc:
            # Disk full, database gone, or a bug: the waiting requests must fail, not
            # hang, and the writer must live on for the next batch.
            if isinstance(exc, self.database.errors):
                log.error("usage ledger write failed: %s", exc)
            else:
                log.exception("usage ledger write failed")
            error = LedgerWriteError(f"the usage ledger could not be written: {exc}")
            self._recover()
        loops: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for p in batch:
            loops.setdefault(p.future.get_loop(), []).append(p.future)
        for loop, futures in loops.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(_complete, futures, error)

    def _commit(self, pending: list[_Pending]) -> None:
        # This thread shares the GIL with the loop, so per event it only adds one Amount
        # to its charge path's (a batch has few paths: the runs in progress); the sums
        # are spread over the rows to update per path, not per event.
        paths: dict[tuple[tuple[str, ...], str | None, tuple[str, ...], int], Amount] = {}
        for p in pending:
            charge = p.charge
            path = (charge.scopes, charge.holder, charge.leased, int(p.event.time // 3600) * 3600)
            total = paths.get(path)
            paths[path] = charge.amount if total is None else total + charge.amount
        spend: dict[tuple[str, int], list[int]] = {}
        consumed: dict[tuple[str, str], list[int]] = {}
        for (scopes, holder, lease_scopes, hour), amount in paths.items():
            values = _values(amount)
            for scope in scopes:
                _add(spend, (scope, hour), values)
            if holder is not None:
                for scope in lease_scopes:
                    _add(consumed, (scope, holder), values)
        events = [p.event for p in pending]
        # Sorted, so that concurrent writers lock rows in the same order.
        spent = [(*key, *v[: len(_SPEND)]) for key, v in sorted(spend.items())]
        leased = [(*v, *key) for key, v in sorted(consumed.items())]
        db = self._db
        if self.database.is_postgres:
            db.execute(_COMMIT_JSON, [_json(events), _json(spent), _json(leased)])
            return
        db.execute("BEGIN")
        try:
            db.executemany(_INSERT, events)
            db.executemany(_ADD_SPEND, spent)
            db.executemany(LeaseStore.CONSUME, leased)
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(*self.database.errors):
                db.execute("ROLLBACK")
            raise

    def _recover(self) -> None:
        """After a failed commit, make sure the next batch has a working connection."""
        try:
            self._db.execute("SELECT 1")
        except self.database.errors:
            with contextlib.suppress(*self.database.errors):
                self._db.close()
            try:
                self._db = self.database.connect()
            except self.database.errors as exc:
                log.error("cannot reconnect to the usage ledger: %s", exc)


def _json(rows: Sequence[tuple[Any, ...]]) -> str:
    return orjson.dumps(rows, default=tuple).decode()  # default: named tuples


def _values(amount: Amount) -> list[int]:
    """The amount per spend column, then total tokens (leases limit it too)."""
    return [amount.get(d) for d in AMOUNT_ORDER]


def _add(sums: dict[_K, list[int]], key: _K, values: list[int]) -> None:
    total = sums.get(key)
    if total is None:
        sums[key] = values.copy()
    else:
        for i, v in enumerate(values):
            total[i] += v


@dataclass(frozen=True, slots=True)
class _Pending:
    event: UsageEvent
    charge: Charge
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

    def append(self, event: UsageEvent, charge: Charge) -> asyncio.Future[None]:
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    def close(self) -> None:
        pass
