"""Tenants created through the admin API, kept beside the usage ledger.

Each tenant is one JSON document (its keys as SHA-256 digests, budgets,
allowed models, disabled flags); the gateway validates documents with the
config schema, so the file format and the API format are the same. Gateway
processes sharing the database see each other's changes by polling
``version``, and change a document only through ``change``: a read, edit and
write of the stored document in one transaction, so that no process's change
is lost to another's made from an older copy.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

from inferplane.ledger._db import Database
from inferplane.ledger._schema import migrate

__all__ = ["TenantStore"]


class TenantStore:
    def __init__(self, database: Database) -> None:
        self.errors = database.errors
        self._database = database
        self._db = database.connect()
        migrate(self._db, database)
        # Used from the event loop and from threads (admin changes, the poller).
        self._lock = threading.Lock()
        self._changes = 0  # this process's changes, counted
        self._changed: dict[str, int] = {}  # tenant -> the count at its latest change here
        self._loaded = 0  # the count when the latest ``load`` read the table

    def load(self) -> dict[str, str]:
        """Every stored tenant: name -> JSON document."""
        with self._lock:
            rows = self._db.execute("SELECT name, doc FROM tenants ORDER BY name").fetchall()
            self._loaded = self._changes
        return {str(name): str(doc) for name, doc in rows}

    def changed_since_load(self, name: str) -> bool:
        """Whether this process changed tenant ``name`` after the latest ``load`` read it,
        so that the document that load returned is older than the one now stored."""
        with self._lock:
            return self._changed.get(name, 0) > self._loaded

    def version(self) -> tuple[float, int]:
        """Changes whenever a tenant is created or changed, by any process."""
        with self._lock:
            row = self._db.execute("SELECT MAX(updated_at), COUNT(*) FROM tenants").fetchone()
        return float(row[0] or 0.0), int(row[1])

    def change(self, name: str, edit: Callable[[str | None], str]) -> str:
        """Store ``edit(doc)`` as tenant ``name``'s document, where ``doc`` is the one
        stored now (None: there is none), and return it; durable when this returns.

        The read and the write are one transaction that excludes every other change of
        this tenant, by any process, so ``edit`` always sees the latest document. What
        ``edit`` raises aborts the change and is raised here; ``edit`` may be called more
        than once (if another process creates the tenant meanwhile), so it must have no
        effect but its result.
        """
        lock_row = " FOR UPDATE" if self._database.is_postgres else ""
        with self._lock:
            while True:
                self._db.execute(self._database.begin_exclusive())
                try:
                    row = self._db.execute(
                        f"SELECT doc FROM tenants WHERE name = ?{lock_row}", (name,)
                    ).fetchone()
                    doc = edit(None if row is None else str(row[0]))
                    # Later than every stored change, so that ``version`` changes even
                    # if this host's clock is behind the last writer's.
                    (latest,) = self._db.execute("SELECT MAX(updated_at) FROM tenants").fetchone()
                    now = max(time.time(), float(latest or 0.0) + 1e-3)
                    if row is not None:
                        self._db.execute(
                            "UPDATE tenants SET doc = ?, updated_at = ? WHERE name = ?",
                            (doc, now, name),
                        )
                    elif not self._db.execute(
                        "INSERT INTO tenants (name, doc, updated_at) VALUES (?, ?, ?) "
                        "ON CONFLICT (name) DO NOTHING",
                        (name, doc, now),
                    ).rowcount:
                        # PostgreSQL: another process created it after our SELECT (a
                        # missing row cannot be locked). Start again from its document.
                        self._rollback()
                        continue
                    self._db.execute("COMMIT")
                except BaseException:
                    self._rollback()
                    raise
                self._changes += 1
                self._changed[name] = self._changes
                return doc

    def _rollback(self) -> None:
        # Failing means no transaction is open (or the connection is gone): nothing to undo.
        with contextlib.suppress(*self.errors):
            self._db.execute("ROLLBACK")

    def close(self) -> None:
        self._db.close()
