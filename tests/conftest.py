"""Fixtures every test package may use: databases for the ledger, SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from inferplane.ledger import Database
from tests.postgres import PostgresServer


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    """An empty ledger database of each kind."""
    if request.param == "sqlite":
        return Database.sqlite(tmp_path / "ledger.sqlite3")
    server: PostgresServer = request.getfixturevalue("postgres")
    return Database(server.create_database())
