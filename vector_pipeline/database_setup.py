"""Idempotent PostgreSQL setup: the `embedded_in` column, the reset trigger, `embedding_session`.

Run as often as you like: it only adds what is missing and replaces its own trigger, never
drops or rewrites user data. Identifiers from config always go through `sql.Identifier`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import psycopg
from psycopg import sql

from vector_pipeline.config import TABLES_FILE, ProjectConfig, TableConfig, collection_name_for

EMBEDDED_IN = "embedded_in"
RESET_FUNCTION = "vector_pipeline_reset_embedded_in"
RESET_TRIGGER = "vector_pipeline_reset_embedded_in"
SESSION_TABLE = "embedding_session"
TOMBSTONE_TABLE = "vector_pipeline_tombstone"
SKIP_TABLE = "vector_pipeline_skip"
CLAIM_TABLE = "vector_pipeline_claim"
DELETE_FUNCTION = "vector_pipeline_record_delete"
DELETE_TRIGGER = "vector_pipeline_record_delete"
TRUNCATE_FUNCTION = "vector_pipeline_record_truncate"
TRUNCATE_TRIGGER = "vector_pipeline_record_truncate"


def collection_marker(collection: str) -> sql.Composable:
    """`'["collection"]'::jsonb`, the value appended to and looked for in `embedded_in`."""
    return sql.SQL("{}::jsonb").format(sql.Literal(json.dumps([collection])))


def pending_condition(collection: str) -> sql.Composable:
    """True for rows whose `embedded_in` lacks `collection` (NULL and non-arrays count as empty).

    The collection is a literal, not a parameter, and the expression is the same everywhere,
    so PostgreSQL matches it to the partial index `setup_database` creates per collection:
    finding k pending rows then costs time in k, not in the size of the table.
    """
    return sql.SQL("NOT (coalesce({}, '[]'::jsonb) @> {})").format(
        sql.Identifier(EMBEDDED_IN), collection_marker(collection)
    )


def pending_index_name(table: TableConfig, collection: str) -> str:
    # Identifiers stop at 63 bytes; the hash keeps long table/collection names distinct.
    digest = hashlib.md5(f"{table.table}/{collection}".encode()).hexdigest()[:10]
    return f"{table.table[:40]}_pending_{digest}"


class SetupError(RuntimeError):
    """The database does not fit the configuration; the message says what to change."""


@dataclass(frozen=True)
class ColumnInfo:
    name: str
    type: str
    not_null: bool


def table_columns(conn: psycopg.Connection, schema: str, table: str) -> dict[str, ColumnInfo]:
    """The table's columns by name; empty if the table does not exist."""
    rows = conn.execute(
        """
        SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped
        """,
        (schema, table),
    ).fetchall()
    return {name: ColumnInfo(name, type_, not_null) for name, type_, not_null in rows}


def check_table(conn: psycopg.Connection, schema: str, table: TableConfig) -> dict[str, ColumnInfo]:
    """Fail clearly if the table or a configured column is missing."""
    columns = table_columns(conn, schema, table.table)
    where = f"{TABLES_FILE}: tables.{table.name}"
    if not columns:
        raise SetupError(
            f"{where}: table {schema}.{table.table} does not exist. Create it, fix `table:` "
            "or `schema:`, or run `vector-pipeline seed-demo` for the demo tables."
        )
    for key, names in (
        ("primary_key", (table.primary_key,)),
        ("text_template", table.text_columns),
        ("payload_columns", table.payload_columns),
        ("name_column", (table.name_column,) if table.name_column else ()),
    ):
        missing = [name for name in names if name not in columns]
        if missing:
            raise SetupError(
                f"{where}.{key}: {schema}.{table.table} has no column "
                f"{', '.join(repr(m) for m in missing)}; its columns are: {', '.join(columns)}"
            )
    return columns


def setup_database(conn: psycopg.Connection, config: ProjectConfig) -> list[str]:
    """Bring the database in line with the config; return what was done, one line each.

    `conn` must be in autocommit mode: the pending-row indexes are built CONCURRENTLY, which
    keeps the table writable while they build and cannot run inside a transaction.
    """
    tables = config.tables
    done: list[str] = []
    with conn.transaction():
        for table in tables.tables:
            schema = tables.schema_for(table)
            columns = check_table(conn, schema, table)
            done.extend(_ensure_embedded_in(conn, schema, table, columns))
        for schema in sorted({tables.schema_for(t) for t in tables.tables} | {tables.schema_}):
            _ensure_reset_function(conn, schema)
        for table in tables.tables:
            _ensure_reset_trigger(conn, tables.schema_for(table), table)
            done.append(
                f"trigger on {tables.schema_for(table)}.{table.table} resets embedded_in when "
                f"{', '.join(table.text_columns)} change"
            )
        if _ensure_session_table(conn, tables.schema_):
            done.append(f"created {tables.schema_}.{SESSION_TABLE}")
        if _ensure_state_tables(conn, tables.schema_):
            done.append(
                f"created {tables.schema_}.{TOMBSTONE_TABLE}, {SKIP_TABLE} and {CLAIM_TABLE}"
            )
        for table in tables.tables:
            _ensure_delete_triggers(conn, tables.schema_for(table), tables.schema_, table)
            done.append(
                f"triggers on {tables.schema_for(table)}.{table.table} record DELETE and TRUNCATE"
            )
    for table in tables.tables:
        for model in config.embeddings.models.values():
            collection = collection_name_for(table.collection_base, model.id)
            if _ensure_pending_index(conn, tables.schema_for(table), table, collection):
                done.append(f"indexed pending rows of {table.table} for {collection}")
    return done


def _ensure_pending_index(
    conn: psycopg.Connection, schema: str, table: TableConfig, collection: str
) -> bool:
    name = pending_index_name(table, collection)
    exists = conn.execute(
        """
        SELECT i.indisvalid FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_index i ON i.indexrelid = c.oid
        WHERE n.nspname = %s AND c.relname = %s
        """,
        (schema, name),
    ).fetchone()
    if exists and exists[0]:
        return False
    if exists:  # a CONCURRENTLY build that was interrupted leaves an invalid index behind
        conn.execute(
            sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(schema, name))
        )
    conn.execute(
        sql.SQL("CREATE INDEX CONCURRENTLY IF NOT EXISTS {} ON {} ({}) WHERE {}").format(
            sql.Identifier(name),
            sql.Identifier(schema, table.table),
            sql.Identifier(table.primary_key),
            pending_condition(collection),
        )
    )
    return True


def _ensure_embedded_in(
    conn: psycopg.Connection, schema: str, table: TableConfig, columns: dict[str, ColumnInfo]
) -> list[str]:
    existing = columns.get(EMBEDDED_IN)
    if existing is None:
        # A constant default makes this a catalog-only change: no table rewrite, no long lock.
        conn.execute(
            sql.SQL(
                "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} JSONB NOT NULL DEFAULT '[]'::jsonb"
            ).format(sql.Identifier(schema, table.table), sql.Identifier(EMBEDDED_IN))
        )
        return [f"added {EMBEDDED_IN} to {schema}.{table.table}"]
    if existing.type != "jsonb":
        raise SetupError(
            f"{schema}.{table.table}.{EMBEDDED_IN} is {existing.type}, not jsonb. Convert it "
            f"yourself (ALTER TABLE ... ALTER COLUMN {EMBEDDED_IN} TYPE jsonb USING "
            f"{EMBEDDED_IN}::jsonb); setup never rewrites user data."
        )
    return []


def _ensure_reset_function(conn: psycopg.Connection, schema: str) -> None:
    conn.execute(
        sql.SQL(
            """
            CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                -- The embedded text changed: no collection holds it any more.
                NEW.embedded_in := '[]'::jsonb;
                RETURN NEW;
            END
            $$
            """
        ).format(sql.Identifier(schema, RESET_FUNCTION))
    )


def _ensure_reset_trigger(conn: psycopg.Connection, schema: str, table: TableConfig) -> None:
    # A trigger, not application code, so every writer (ORM, psql, bulk UPDATE) is covered.
    # `UPDATE OF` limits it to statements naming a text column; WHEN to real changes. Comparing
    # the text forms works for every column type, including ones without an equality operator.
    columns = [sql.Identifier(name) for name in table.text_columns]
    old = sql.SQL(", ").join(sql.SQL("OLD.{}::text").format(c) for c in columns)
    new = sql.SQL(", ").join(sql.SQL("NEW.{}::text").format(c) for c in columns)
    conn.execute(
        sql.SQL(
            """
            CREATE OR REPLACE TRIGGER {trigger}
            BEFORE UPDATE OF {columns} ON {table}
            FOR EACH ROW
            WHEN (ROW({old}) IS DISTINCT FROM ROW({new}))
            EXECUTE FUNCTION {function}()
            """
        ).format(
            trigger=sql.Identifier(RESET_TRIGGER),
            columns=sql.SQL(", ").join(columns),
            table=sql.Identifier(schema, table.table),
            old=old,
            new=new,
            function=sql.Identifier(schema, RESET_FUNCTION),
        )
    )


def _ensure_session_table(conn: psycopg.Connection, schema: str) -> bool:
    exists = bool(table_columns(conn, schema, SESSION_TABLE))
    conn.execute(
        sql.SQL(
            """
            CREATE TABLE IF NOT EXISTS {table} (
                id              bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                status          text NOT NULL DEFAULT 'PENDING'
                                CHECK (status IN ('PENDING', 'PROCESSING', 'COMPLETED', 'FAILED')),
                model           text,
                tables          text[],
                total_items     integer NOT NULL DEFAULT 0,
                processed_items integer NOT NULL DEFAULT 0,
                progress        integer NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
                error_message   text,
                created_at      timestamptz NOT NULL DEFAULT now(),
                started_at      timestamptz,
                finished_at     timestamptz,
                run_id          text
            )
            """
        ).format(table=sql.Identifier(schema, SESSION_TABLE))
    )
    # Budgets (added to tables created before they existed): a session may cap the tokens, or
    # the dollars, its run may spend; `tokens_used` is what its batches have reserved so far.
    conn.execute(
        sql.SQL(
            """
            ALTER TABLE {table}
                ADD COLUMN IF NOT EXISTS token_budget bigint CHECK (token_budget > 0),
                ADD COLUMN IF NOT EXISTS cost_budget numeric CHECK (cost_budget > 0),
                ADD COLUMN IF NOT EXISTS tokens_used bigint NOT NULL DEFAULT 0
            """
        ).format(table=sql.Identifier(schema, SESSION_TABLE))
    )
    # The launcher looks only for PENDING sessions: a partial index keeps that check cheap
    # however many finished sessions pile up.
    conn.execute(
        sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (id) WHERE status = 'PENDING'").format(
            sql.Identifier(f"{SESSION_TABLE}_pending_idx"),
            sql.Identifier(schema, SESSION_TABLE),
        )
    )
    return not exists


def _ensure_state_tables(conn: psycopg.Connection, schema: str) -> bool:
    """The tombstones the sync drains (deletes), the rows it skipped (with why), and the rows
    workers have claimed (see `claims.py`)."""
    exists = bool(table_columns(conn, schema, CLAIM_TABLE))
    conn.execute(
        sql.SQL(
            """
            CREATE TABLE IF NOT EXISTS {tombstones} (
                id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                table_name  text NOT NULL,
                row_key     jsonb,                          -- NULL for a TRUNCATE
                truncated   boolean NOT NULL DEFAULT false,
                cleaned     jsonb NOT NULL DEFAULT '[]',    -- collections already cleaned
                deleted_at  timestamptz NOT NULL DEFAULT now()
            );
            CREATE INDEX IF NOT EXISTS {tombstone_index} ON {tombstones} (table_name, id);
            CREATE TABLE IF NOT EXISTS {skips} (
                table_name  text NOT NULL,
                collection  text NOT NULL,
                row_key     text NOT NULL,
                version     text NOT NULL,                  -- the text it was skipped for
                reason      text NOT NULL,
                skipped_at  timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (table_name, collection, row_key)
            );
            -- Unlogged: a claim only means something while its worker's session lives, and a
            -- server crash ends every session, so there is nothing to keep and no WAL to write.
            CREATE UNLOGGED TABLE IF NOT EXISTS {claims} (
                table_name    text NOT NULL,
                collection    text NOT NULL,
                row_key       text NOT NULL,                -- the key as `key::text`
                pid           integer NOT NULL,             -- the claiming session ...
                backend_start timestamptz NOT NULL,         -- ... (pids are reused)
                claimed_at    timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (table_name, collection, row_key)
            );
            """
        ).format(
            claims=sql.Identifier(schema, CLAIM_TABLE),
            tombstones=sql.Identifier(schema, TOMBSTONE_TABLE),
            tombstone_index=sql.Identifier(f"{TOMBSTONE_TABLE}_table_idx"),
            skips=sql.Identifier(schema, SKIP_TABLE),
        )
    )
    return not exists


def _ensure_delete_triggers(
    conn: psycopg.Connection, schema: str, state_schema: str, table: TableConfig
) -> None:
    # Statement-level with a transition table: a bulk DELETE writes its tombstones in one
    # INSERT ... SELECT instead of one trigger call per row. TG_ARGV carries the asset name
    # and the key column, so one function serves every table.
    tombstones = sql.Identifier(state_schema, TOMBSTONE_TABLE)
    conn.execute(
        sql.SQL(
            """
            CREATE OR REPLACE FUNCTION {delete_function}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO {tombstones} (table_name, row_key)
                SELECT TG_ARGV[0], to_jsonb(gone) -> TG_ARGV[1] FROM gone;
                RETURN NULL;
            END
            $$;
            CREATE OR REPLACE FUNCTION {truncate_function}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO {tombstones} (table_name, truncated) VALUES (TG_ARGV[0], true);
                RETURN NULL;
            END
            $$;
            CREATE OR REPLACE TRIGGER {delete_trigger}
            AFTER DELETE ON {relation} REFERENCING OLD TABLE AS gone
            FOR EACH STATEMENT EXECUTE FUNCTION {delete_function}({name}, {key});
            CREATE OR REPLACE TRIGGER {truncate_trigger}
            AFTER TRUNCATE ON {relation}
            FOR EACH STATEMENT EXECUTE FUNCTION {truncate_function}({name});
            """
        ).format(
            delete_function=sql.Identifier(state_schema, DELETE_FUNCTION),
            truncate_function=sql.Identifier(state_schema, TRUNCATE_FUNCTION),
            tombstones=tombstones,
            delete_trigger=sql.Identifier(DELETE_TRIGGER),
            truncate_trigger=sql.Identifier(TRUNCATE_TRIGGER),
            relation=sql.Identifier(schema, table.table),
            name=sql.Literal(table.name),
            key=sql.Literal(table.primary_key),
        )
    )
