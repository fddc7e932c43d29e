"""Tenants created through the admin API, kept beside the usage ledger.

Each tenant is one JSON document (its keys as SHA-256 digests, budgets,
allowed models, disabled flags); the gateway validates documents with the
config schema, so the file format and the API format are the same.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from inferplane.ledger._sqlite import migrate

__all__ = ["TenantStore"]


class TenantStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA busy_timeout = 5000")
        migrate(self._db)

    def load(self) -> dict[str, str]:
        """Every stored tenant: name -> JSON document."""
        return dict(self._db.execute("SELECT name, doc FROM tenants ORDER BY name"))

    def save(self, name: str, doc: str) -> None:
        """Create or replace a tenant's document; durable when this returns."""
        self._db.execute(
            "INSERT INTO tenants (name, doc, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET doc = excluded.doc, updated_at = excluded.updated_at",
            (name, doc, time.time()),
        )

    def close(self) -> None:
        self._db.close()
