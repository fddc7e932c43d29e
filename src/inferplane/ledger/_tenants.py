"""Tenants created through the admin API, kept beside the usage ledger.

Each tenant is one JSON document (its keys as SHA-256 digests, budgets,
allowed models, disabled flags); the gateway validates documents with the
config schema, so the file format and the API format are the same. Gateway
processes sharing the database see each other's changes by polling
``version``.
"""

from __future__ import annotations

import threading
import time

from inferplane.ledger._db import Database
from inferplane.ledger._schema import migrate

__all__ = ["TenantStore"]


class TenantStore:
    def __init__(self, database: Database) -> None:
        self.errors = database.errors
        self._db = database.connect()
        migrate(self._db, database)
        # Used from the event loop (admin calls) and from a poller thread.
        self._lock = threading.Lock()

    def load(self) -> dict[str, str]:
        """Every stored tenant: name -> JSON document."""
        with self._lock:
            rows = self._db.execute("SELECT name, doc FROM tenants ORDER BY name").fetchall()
        return {str(name): str(doc) for name, doc in rows}

    def version(self) -> tuple[float, int]:
        """Changes whenever a tenant is created or changed, by any process."""
        with self._lock:
            row = self._db.execute("SELECT MAX(updated_at), COUNT(*) FROM tenants").fetchone()
        return float(row[0] or 0.0), int(row[1])

    def save(self, name: str, doc: str) -> None:
        """Create or replace a tenant's document; durable when this returns."""
        with self._lock:
            self._db.execute(
                "INSERT INTO tenants (name, doc, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET doc = excluded.doc, "
                "updated_at = excluded.updated_at",
                (name, doc, time.time()),
            )

    def close(self) -> None:
        self._db.close()
