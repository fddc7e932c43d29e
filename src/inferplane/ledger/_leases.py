"""Budget leases in the database: the shared side of ``policy.lease_grant``.

One row per (scope, holder) with what the holder was granted and what of it
its committed usage consumed, per limit dimension, and an expiry that the
holder's heartbeat pushes forward. Spend per scope and hour is in
``budget_spend``, written by the ledger in the transaction that records the
usage, so "spent" and "consumed" move together.

A grant reads spend and leases in a single statement (one snapshot) while
holding the scope's lock: an advisory lock in PostgreSQL, the database write
lock in SQLite. Blocking calls: run them in a thread beside the event loop.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from inferplane.ledger._db import Connection, Database
from inferplane.policy import (
    LIMIT_DIMENSIONS,
    Amount,
    BudgetLimits,
    LeaseAsk,
    LeaseGrant,
    lease_grant,
)

__all__ = ["AMOUNT_ORDER", "LeaseRequest", "LeaseResult", "LeaseStore"]

log = logging.getLogger("inferplane.ledger")

_GRANTED = [f"granted_{d}" for d in LIMIT_DIMENSIONS]
_CONSUMED = [f"consumed_{d}" for d in LIMIT_DIMENSIONS]
_AMOUNT = ("input_tokens", "output_tokens", "calls", "retries", "cost_micros", "wall_ms")
_UNCONSUMED = ", ".join(
    f"SUM(CASE WHEN {g} > {c} THEN {g} - {c} ELSE 0 END)"
    for g, c in zip(_GRANTED, _CONSUMED, strict=True)
)
# One statement, one snapshot: spend in the window (kind 0), every live lease's
# unconsumed grant (kind 1), and this holder's own row (kind 2).
_STATE = (
    f"SELECT 0, {', '.join(f'SUM({d})' for d in _AMOUNT)}, 0 "
    "FROM budget_spend WHERE scope = ? AND hour >= ? "
    f"UNION ALL SELECT 1, {_UNCONSUMED} "
    "FROM budget_leases WHERE scope = ? AND expires_at >= ? "
    f"UNION ALL SELECT 2, {', '.join(_GRANTED)} "
    "FROM budget_leases WHERE scope = ? AND holder = ?"
)
_UPSERT = (
    f"INSERT INTO budget_leases (scope, holder, {', '.join(_GRANTED)}, "
    f"{', '.join(_CONSUMED)}, expires_at) "
    f"VALUES (?, ?, {', '.join('?' for _ in _GRANTED)}, {', '.join('0' for _ in _CONSUMED)}, ?) "
    "ON CONFLICT (scope, holder) DO UPDATE SET "
    + ", ".join(f"{g} = budget_leases.{g} + excluded.{g}" for g in _GRANTED)
    + ", expires_at = excluded.expires_at"
)
# The order in which the ledger passes amounts: the spend columns, then total tokens.
AMOUNT_ORDER = (*_AMOUNT, "total_tokens")
_CONSUME = (
    "UPDATE budget_leases SET "
    + ", ".join(f"consumed_{d} = consumed_{d} + ?" for d in AMOUNT_ORDER)
    + " WHERE scope = ? AND holder = ?"
)
_GIVE_BACK = (
    "UPDATE budget_leases SET "
    + ", ".join(f"{g} = {g} - ?" for g in _GRANTED)
    + " WHERE scope = ? AND holder = ?"
)


@dataclass(frozen=True, slots=True)
class LeaseRequest:
    scope: str  # str(Scope)
    limits: BudgetLimits  # the scope's budget
    since_hour: int  # the window's start, as a unix hour (spend from then on counts)
    ask: LeaseAsk


@dataclass(frozen=True, slots=True)
class LeaseResult:
    grant: LeaseGrant
    total: dict[str, int]  # the holder's whole grant for the scope after this one
    created: bool  # the holder had no lease on the scope before


class LeaseStore:
    """Leases of one database; one connection, used from one thread at a time."""

    CONSUME = _CONSUME  # the ledger applies consumption in its own commit

    def __init__(self, database: Database) -> None:
        self.database = database
        self._db: Connection | None = None

    def _connection(self) -> Connection:
        if self._db is None:
            self._db = self.database.connect()
        return self._db

    def _transaction(self) -> Connection:
        db = self._connection()
        try:
            db.execute(self.database.begin_exclusive())
        except self.database.errors:
            self._reset()
            raise
        return db

    def _reset(self) -> None:
        """Forget a connection that failed; the next call opens a new one."""
        if self._db is not None:
            try:
                self._db.close()
            except self.database.errors as exc:
                log.debug("closing a failed connection: %s", exc)
            self._db = None

    def lease(
        self, holder: str, requests: Sequence[LeaseRequest], now: float, ttl_s: float
    ) -> list[LeaseResult]:
        """Grant what each request asks, or nothing for a scope that cannot fit its need."""
        db = self._transaction()
        try:
            results = [self._lease_one(db, holder, r, now, ttl_s) for r in requests]
            db.execute("COMMIT")
        except BaseException:
            self._rollback(db)
            raise
        return results

    def _lease_one(
        self, db: Connection, holder: str, request: LeaseRequest, now: float, ttl_s: float
    ) -> LeaseResult:
        if self.database.is_postgres:
            # Scopes are locked in the caller's order; callers sort them (no deadlock).
            db.execute("SELECT pg_advisory_xact_lock(?)", (_lock_key(request.scope),))
        db.execute(
            "DELETE FROM budget_leases WHERE scope = ? AND expires_at < ?", (request.scope, now)
        )
        spent, unconsumed, own = Amount(), dict.fromkeys(LIMIT_DIMENSIONS, 0), None
        for kind, *values in db.execute(
            _STATE, (request.scope, request.since_hour, request.scope, now, request.scope, holder)
        ).fetchall():
            if kind == 0:
                spent = Amount(*(int(v or 0) for v in values[: len(_AMOUNT)]))
            elif kind == 1:
                unconsumed = {d: int(v or 0) for d, v in zip(LIMIT_DIMENSIONS, values, strict=True)}
            else:
                own = {d: int(v) for d, v in zip(LIMIT_DIMENSIONS, values, strict=True)}
        grant = lease_grant(request.limits, spent, unconsumed, request.ask)
        before = own or dict.fromkeys(LIMIT_DIMENSIONS, 0)
        added = [grant.granted.get(d, 0) for d in LIMIT_DIMENSIONS]
        db.execute(_UPSERT, (request.scope, holder, *added, now + ttl_s))
        total = {d: before[d] + grant.granted.get(d, 0) for d in LIMIT_DIMENSIONS}
        return LeaseResult(grant, total, created=own is None)

    def give_back(self, holder: str, returns: Sequence[tuple[str, dict[str, int]]]) -> None:
        """Return unused grant: (scope, amount per dimension) for each scope."""
        db = self._transaction()
        try:
            for scope, amount in sorted(returns):
                values = [amount.get(d, 0) for d in LIMIT_DIMENSIONS]
                db.execute(_GIVE_BACK, (*values, scope, holder))
            db.execute("COMMIT")
        except BaseException:
            self._rollback(db)
            raise

    def run_started(self, scope: str, now: float) -> float:
        """When the run ``scope`` began: the first time any process asked, ``now`` if
        this is the first time."""
        db = self._transaction()
        try:
            db.execute(
                "INSERT INTO budget_runs (scope, started_at) VALUES (?, ?) "
                "ON CONFLICT (scope) DO NOTHING",
                (scope, now),
            )
            (started,) = db.execute(
                "SELECT started_at FROM budget_runs WHERE scope = ?", (scope,)
            ).fetchone()
            db.execute("COMMIT")
        except BaseException:
            self._rollback(db)
            raise
        return float(started)

    def forget(self, holder: str, scopes: Sequence[str]) -> None:
        """Drop the leases of scopes the holder no longer serves."""
        db = self._transaction()
        try:
            for scope in scopes:
                db.execute(
                    "DELETE FROM budget_leases WHERE scope = ? AND holder = ?", (scope, holder)
                )
            db.execute("COMMIT")
        except BaseException:
            self._rollback(db)
            raise

    def heartbeat(self, holder: str, expires_at: float) -> None:
        """Keep every lease of ``holder`` alive until ``expires_at``."""
        self._run("UPDATE budget_leases SET expires_at = ? WHERE holder = ?", (expires_at, holder))

    def release(self, holder: str) -> None:
        """Drop every lease of ``holder``: its unconsumed grants return to the pool."""
        self._run("DELETE FROM budget_leases WHERE holder = ?", (holder,))

    def release_instance(self, instance: str) -> None:
        """Drop the leases of an earlier process of the same instance (host and port),
        which cannot be alive since this one holds its port."""
        self._run(
            "DELETE FROM budget_leases WHERE substr(holder, 1, ?) = ?",
            (len(instance) + 1, instance + "/"),
        )

    def _run(self, sql: str, params: Sequence[object]) -> None:
        try:
            self._connection().execute(sql, params)
        except self.database.errors:
            self._reset()
            raise

    def _rollback(self, db: Connection) -> None:
        try:
            db.execute("ROLLBACK")
        except self.database.errors:
            self._reset()

    def close(self) -> None:
        self._reset()


def _lock_key(scope: str) -> int:
    """A stable 31-bit key for the scope's advisory lock (collisions only serialise more)."""
    return zlib.crc32(scope.encode()) & 0x7FFFFFFF
