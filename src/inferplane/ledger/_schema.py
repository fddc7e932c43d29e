"""The ledger's schema, versioned and migrated on open, the same for SQLite and PostgreSQL.

``{float}`` and ``{int}`` are spelled per database (``Database.ddl``): REAL and
INTEGER in SQLite are 8 bytes, PostgreSQL needs DOUBLE PRECISION and BIGINT.
"""

from __future__ import annotations

from inferplane.ledger._db import Connection, Database

__all__ = ["SCHEMA_VERSION", "migrate"]

# Each entry migrates the schema from version i to i + 1; never change what one does.
_MIGRATIONS = (
    """
    CREATE TABLE usage_events (
        request_id TEXT PRIMARY KEY,
        time {float} NOT NULL,
        tenant TEXT NOT NULL,
        key_name TEXT NOT NULL,
        model TEXT NOT NULL,
        backend TEXT,
        operation TEXT NOT NULL,
        status {int} NOT NULL,
        error_type TEXT,
        input_tokens {int},
        output_tokens {int},
        ttft_s {float},
        duration_s {float} NOT NULL
    );
    CREATE INDEX usage_events_tenant_time ON usage_events (tenant, time);
    """,
    """
    ALTER TABLE usage_events ADD COLUMN workflow TEXT;
    ALTER TABLE usage_events ADD COLUMN run TEXT;
    ALTER TABLE usage_events ADD COLUMN calls {int} NOT NULL DEFAULT 1;
    ALTER TABLE usage_events ADD COLUMN cost_micros {int} NOT NULL DEFAULT 0;
    CREATE INDEX usage_events_run ON usage_events (tenant, workflow, run, time);
    """,
    """
    CREATE TABLE tenants (
        name TEXT PRIMARY KEY,
        doc TEXT NOT NULL,
        updated_at {float} NOT NULL
    );
    """,
    # More of each request (cached tokens, finish reason, retries, SLO class), and budgets
    # shared by gateway processes: spend per scope and hour (updated in the same
    # transaction as the usage rows), the budget each process has leased, and when
    # each run began (for wall-time budgets).
    """
    ALTER TABLE usage_events ADD COLUMN cached_tokens {int};
    ALTER TABLE usage_events ADD COLUMN finish_reason TEXT;
    ALTER TABLE usage_events ADD COLUMN retries {int} NOT NULL DEFAULT 0;
    ALTER TABLE usage_events ADD COLUMN slo_class TEXT;
    CREATE TABLE budget_spend (
        scope TEXT NOT NULL,
        hour {int} NOT NULL,
        input_tokens {int} NOT NULL,
        output_tokens {int} NOT NULL,
        calls {int} NOT NULL,
        retries {int} NOT NULL,
        cost_micros {int} NOT NULL,
        wall_ms {int} NOT NULL,
        PRIMARY KEY (scope, hour)
    );
    CREATE TABLE budget_leases (
        scope TEXT NOT NULL,
        holder TEXT NOT NULL,
        granted_input_tokens {int} NOT NULL,
        granted_output_tokens {int} NOT NULL,
        granted_total_tokens {int} NOT NULL,
        granted_calls {int} NOT NULL,
        granted_retries {int} NOT NULL,
        granted_cost_micros {int} NOT NULL,
        granted_wall_ms {int} NOT NULL,
        consumed_input_tokens {int} NOT NULL,
        consumed_output_tokens {int} NOT NULL,
        consumed_total_tokens {int} NOT NULL,
        consumed_calls {int} NOT NULL,
        consumed_retries {int} NOT NULL,
        consumed_cost_micros {int} NOT NULL,
        consumed_wall_ms {int} NOT NULL,
        expires_at {float} NOT NULL,
        PRIMARY KEY (scope, holder)
    );
    CREATE INDEX budget_leases_holder ON budget_leases (holder);
    CREATE TABLE budget_runs (
        scope TEXT PRIMARY KEY,
        started_at {float} NOT NULL
    );
    INSERT INTO budget_spend
        SELECT scope, hour, SUM(i), SUM(o), SUM(c), 0, SUM(m), SUM(w) FROM (
            SELECT 'tenant:' || tenant AS scope, {hour_of_time} AS hour,
                COALESCE(input_tokens, 0) AS i, COALESCE(output_tokens, 0) AS o,
                calls AS c, cost_micros AS m, CAST(duration_s * 1000 AS {int}) AS w
            FROM usage_events
            UNION ALL
            SELECT 'key:' || tenant || '/' || key_name, {hour_of_time},
                COALESCE(input_tokens, 0), COALESCE(output_tokens, 0),
                calls, cost_micros, CAST(duration_s * 1000 AS {int})
            FROM usage_events
            UNION ALL
            SELECT 'workflow:' || tenant || '/' || workflow, {hour_of_time},
                COALESCE(input_tokens, 0), COALESCE(output_tokens, 0),
                calls, cost_micros, CAST(duration_s * 1000 AS {int})
            FROM usage_events WHERE workflow IS NOT NULL
            UNION ALL
            SELECT 'run:' || tenant || '/' || COALESCE(workflow, '-') || '/' || run,
                {hour_of_time}, COALESCE(input_tokens, 0), COALESCE(output_tokens, 0),
                calls, cost_micros, CAST(duration_s * 1000 AS {int})
            FROM usage_events WHERE run IS NOT NULL
        ) AS spend GROUP BY scope, hour
    """,
    # request_id is the gateway's own (unique) id; the client's id, which need not be
    # unique, is kept beside it.
    """
    ALTER TABLE usage_events ADD COLUMN client_request_id TEXT;
    """,
)
SCHEMA_VERSION = len(_MIGRATIONS)
# Any constant: PostgreSQL processes starting together take turns to migrate.
_MIGRATION_LOCK = 7_261_905_113


def migrate(db: Connection, database: Database) -> int:
    """Bring the schema to the newest version; returns that version.

    Each step is one transaction, so a crash leaves the schema at a whole version,
    and concurrent openers (processes starting together) take turns."""
    if database.is_postgres:
        # A session lock, taken before the version is read: a transaction that starts
        # after it sees the tables the previous holder created.
        db.execute(f"SELECT pg_advisory_lock({_MIGRATION_LOCK})")
    try:
        version = _version(db, database)
        while version < SCHEMA_VERSION:
            db.execute(database.begin_exclusive())
            try:
                version = _version(db, database)  # SQLite: another process may have got here
                if version < SCHEMA_VERSION:
                    for statement in database.ddl(_MIGRATIONS[version]):
                        db.execute(statement)
                    _set_version(db, database, version + 1)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            version = _version(db, database)
    finally:
        if database.is_postgres:
            db.execute(f"SELECT pg_advisory_unlock({_MIGRATION_LOCK})")
    return SCHEMA_VERSION


def _version(db: Connection, database: Database) -> int:
    if not database.is_postgres:
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    if db.execute("SELECT to_regclass('inferplane_schema')").fetchone()[0] is None:
        return 0
    row = db.execute("SELECT max(version) FROM inferplane_schema").fetchone()
    return int(row[0] or 0)


def _set_version(db: Connection, database: Database, version: int) -> None:
    if database.is_postgres:
        db.execute("CREATE TABLE IF NOT EXISTS inferplane_schema (version BIGINT NOT NULL)")
        db.execute("DELETE FROM inferplane_schema")
        db.execute("INSERT INTO inferplane_schema (version) VALUES (?)", (version,))
    else:
        db.execute(f"PRAGMA user_version = {version}")
