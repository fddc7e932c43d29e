"""Where the ledger lives: a SQLite file (one host) or PostgreSQL (several gateway hosts).

Both are reached through DB-API connections and the same SQL, written with
``?`` parameters; the few differences (types, placeholders, calendar
functions, locks) are this module's. Every connection is in autocommit mode
and transactions are explicit ``BEGIN``/``COMMIT``, which both drivers honour.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

__all__ = ["Connection", "Database", "DatabaseError"]


class Connection(Protocol):
    """What both drivers' connections offer and the ledger uses."""

    def execute(self, sql: Any, params: Sequence[Any] = ...) -> Any: ...

    def executemany(self, sql: Any, rows: Iterable[Sequence[Any]]) -> Any: ...

    def close(self) -> None: ...


class DatabaseError(RuntimeError):
    """The database could not be reached or refused an operation."""


@dataclass(frozen=True)
class Database:
    """A SQLite file or a PostgreSQL DSN, and how to talk to it."""

    url: str  # a filesystem path for SQLite, postgresql://... for PostgreSQL

    @classmethod
    def sqlite(cls, path: Path) -> Database:
        return cls(str(path))

    @property
    def is_postgres(self) -> bool:
        return self.url.startswith(("postgresql://", "postgres://"))

    @property
    def errors(self) -> tuple[type[Exception], ...]:
        """The driver's exceptions, to catch around any database call."""
        if self.is_postgres:
            import psycopg

            return (psycopg.Error, DatabaseError)
        return (sqlite3.Error, DatabaseError)

    def describe(self) -> str:
        """The URL without its password, for logs and errors."""
        if not self.is_postgres:
            return self.url
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        user = f"{parts.username}@" if parts.username else ""
        return f"{parts.scheme}://{user}{host}{port}{parts.path}"

    def connect(self, *, read_only: bool = False) -> Connection:
        if self.is_postgres:
            import psycopg

            try:
                pg = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
            except psycopg.Error as exc:
                raise DatabaseError(f"cannot connect to {self.describe()}: {exc}") from None
            if read_only:
                pg.execute("SET default_transaction_read_only = on")
            return _Postgres(pg)
        if read_only:
            return sqlite3.connect(f"file:{self.url}?mode=ro", uri=True, isolation_level=None)
        Path(self.url).parent.mkdir(parents=True, exist_ok=True)
        # Several processes share the file: wait up to 10 s for another's lock.
        db = sqlite3.connect(self.url, timeout=10.0, check_same_thread=False, isolation_level=None)
        for attempt in range(50):
            try:
                # Switching a new file to WAL needs it alone; the busy handler does not wait.
                db.execute("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError:
                if attempt == 49:
                    raise
                time.sleep(0.1)
        # Committed in WAL is durable across a kill -9; NORMAL skips only the fsync
        # that protects against power loss, as SQLite's documentation describes.
        db.execute("PRAGMA synchronous = NORMAL")
        return db

    # -- dialect -------------------------------------------------------------

    def begin_exclusive(self) -> str:
        """Start a transaction that serialises with every other writer's (SQLite), or a
        plain one whose rows are then locked explicitly (PostgreSQL)."""
        return "BEGIN" if self.is_postgres else "BEGIN IMMEDIATE"

    def hour_of(self, column: str) -> str:
        """SQL for the unix hour (seconds, floored to 3600) of a unix-seconds column."""
        if self.is_postgres:
            return f"(floor({column} / 3600) * 3600)::bigint"
        return f"(CAST({column} / 3600 AS INTEGER) * 3600)"

    def day_of(self, column: str) -> str:
        """SQL for the UTC date (YYYY-MM-DD) of a unix-seconds column."""
        if self.is_postgres:
            return f"to_char(to_timestamp({column}) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
        return f"date({column}, 'unixepoch')"

    def ddl(self, script: str) -> list[str]:
        """A migration script's statements, with types this database spells its way."""
        types = (
            {"{float}": "DOUBLE PRECISION", "{int}": "BIGINT"}
            if self.is_postgres
            else {"{float}": "REAL", "{int}": "INTEGER"}
        )
        types["{hour_of_time}"] = self.hour_of("time")
        for placeholder, name in types.items():
            script = script.replace(placeholder, name)
        return [s.strip() for s in script.split(";") if s.strip()]


class _Postgres:
    """A psycopg connection that takes the ledger's ``?`` placeholders."""

    def __init__(self, pg: Any) -> None:
        self._pg = pg

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._pg.execute(sql.replace("?", "%s"), params or None)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self._pg.cursor() as cursor:
            cursor.executemany(sql.replace("?", "%s"), rows)

    def close(self) -> None:
        self._pg.close()
