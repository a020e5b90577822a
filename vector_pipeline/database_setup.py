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
from vector_pipeline.points import KeyLayout, key_settings_clause
from vector_pipeline.store_state import STORE_TABLE, create_store_table

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
KEY_CHANGE_FUNCTION = "vector_pipeline_record_key_change"
KEY_CHANGE_TRIGGER = "vector_pipeline_record_key_change"
INSERT_FUNCTION = "vector_pipeline_distrust_marks"
INSERT_TRIGGER = "vector_pipeline_distrust_marks"


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
    """Fail clearly if the table or a configured column is missing, or if `primary_key` is not
    a unique, NOT NULL key of the table (two rows would share one point)."""
    columns = table_columns(conn, schema, table.table)
    where = f"{TABLES_FILE}: tables.{table.name}"
    if not columns:
        raise SetupError(
            f"{where}: table {schema}.{table.table} does not exist. Create it, fix `table:` "
            "or `schema:`, or run `vector-pipeline seed-demo` for the demo tables."
        )
    for key, names in (
        ("primary_key", table.primary_key),
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
    _check_key(conn, schema, table, columns, where)
    return columns


def _check_key(
    conn: psycopg.Connection,
    schema: str,
    table: TableConfig,
    columns: dict[str, ColumnInfo],
    where: str,
) -> None:
    (kind,) = conn.execute(
        "SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s",
        (schema, table.table),
    ).fetchone()
    if kind not in ("r", "p"):  # an ordinary or a partitioned table
        what = {"v": "a view", "m": "a materialized view", "f": "a foreign table"}
        raise SetupError(
            f"{where}.table: {schema}.{table.table} is {what.get(kind, 'not a table')}; a sync "
            "needs a table (its triggers see every change, its unique key names each point): "
            "name the table the rows live in"
        )
    key = ", ".join(table.primary_key)
    nullable = [name for name in table.primary_key if not columns[name].not_null]
    if nullable:
        raise SetupError(
            f"{where}.primary_key: column {', '.join(nullable)} of {schema}.{table.table} allows "
            "NULL, and a row without a key cannot have a point; name the table's PRIMARY KEY "
            f"column(s), or make them NOT NULL (ALTER TABLE ... ALTER COLUMN ... SET NOT NULL)"
        )
    # A unique index on the key columns (or on some of them) makes the key unique; expression
    # and partial indexes do not, nor one whose CONCURRENTLY build failed on duplicates (left
    # invalid). Only the index's key columns count, not its INCLUDE columns.
    unique = conn.execute(
        """
        SELECT EXISTS (
            SELECT 1 FROM pg_index i
            JOIN pg_class c ON c.oid = i.indrelid
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = %s AND c.relname = %s AND i.indisunique AND i.indisvalid
              AND i.indpred IS NULL AND i.indexprs IS NULL
              AND (SELECT array_agg(a.attname::text) FROM pg_attribute a
                   WHERE a.attrelid = i.indrelid
                     AND a.attnum = ANY ((i.indkey::int2[])[0:i.indnkeyatts - 1]))
                  <@ %s::text[]
        )
        """,
        (schema, table.table, list(table.primary_key)),
    ).fetchone()[0]
    if not unique:
        raise SetupError(
            f"{where}.primary_key: ({key}) is not a unique key of {schema}.{table.table} (no "
            "PRIMARY KEY or UNIQUE index on those columns), so two rows could share one point; "
            "name the table's primary key columns (a list for a composite key), or add one "
            f"(ALTER TABLE ... ADD PRIMARY KEY ({key}))"
        )


def key_layout(table: TableConfig, columns: dict[str, ColumnInfo]) -> KeyLayout:
    """The table's key columns with their SQL types (from `check_table`'s columns)."""
    return KeyLayout(table.primary_key, tuple(columns[name].type for name in table.primary_key))


def setup_database(conn: psycopg.Connection, config: ProjectConfig) -> list[str]:
    """Bring the database in line with the config; return what was done, one line each.

    `conn` must be in autocommit mode: the pending-row indexes are built CONCURRENTLY, which
    keeps the table writable while they build and cannot run inside a transaction.
    """
    tables = config.tables
    done: list[str] = []
    layouts: dict[str, KeyLayout] = {}
    with conn.transaction():
        for table in tables.tables:
            schema = tables.schema_for(table)
            columns = check_table(conn, schema, table)
            layouts[table.name] = key_layout(table, columns)
            done.extend(_ensure_embedded_in(conn, schema, table, columns))
        for schema in sorted({tables.schema_for(t) for t in tables.tables} | {tables.schema_}):
            _ensure_reset_function(conn, schema)
        for table in tables.tables:
            _ensure_reset_trigger(conn, tables.schema_for(table), table)
            done.append(
                f"trigger on {tables.schema_for(table)}.{table.table} resets embedded_in when "
                f"{', '.join(dict.fromkeys((*table.text_columns, *table.primary_key)))} change"
            )
        if _ensure_session_table(conn, tables.schema_):
            done.append(f"created {tables.schema_}.{SESSION_TABLE}")
        if _ensure_state_tables(conn, tables.schema_):
            done.append(
                f"created {tables.schema_}.{TOMBSTONE_TABLE}, {SKIP_TABLE}, {CLAIM_TABLE} and "
                f"{STORE_TABLE}"
            )
        for table in tables.tables:
            _ensure_delete_triggers(
                conn, tables.schema_for(table), tables.schema_, table, layouts[table.name]
            )
            done.append(
                f"triggers on {tables.schema_for(table)}.{table.table} record DELETE, TRUNCATE "
                "and key changes, and clear marks that inserted rows bring along"
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
            sql.SQL(", ").join(sql.Identifier(c) for c in table.primary_key),
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
    # `UPDATE OF` limits it to statements naming a text or key column; WHEN to real changes.
    # A new key is a new row as far as Qdrant knows (the old key's point goes through the
    # key-change trigger's tombstone). Comparing the text forms works for every column type,
    # including ones without an equality operator.
    watched = [
        sql.Identifier(name) for name in dict.fromkeys((*table.text_columns, *table.primary_key))
    ]
    old = sql.SQL(", ").join(_as_printed("OLD", c) for c in watched)
    new = sql.SQL(", ").join(_as_printed("NEW", c) for c in watched)
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
            columns=sql.SQL(", ").join(watched),
            table=sql.Identifier(schema, table.table),
            old=old,
            new=new,
            function=sql.Identifier(schema, RESET_FUNCTION),
        )
    )


def _as_printed(record: str, column: sql.Identifier) -> sql.Composable:
    """`record.column` as its text, compared byte for byte: a change that equality would not
    see still counts (numeric 1.50 -> 1.5, float 0 -> -0, 'Alice' -> 'ALICE' under a
    case-insensitive collation), since texts and key texts are what get embedded and hashed."""
    return sql.SQL('{}.{}::text COLLATE "C"').format(sql.SQL(record), column)


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
                ADD COLUMN IF NOT EXISTS tokens_used bigint NOT NULL DEFAULT 0,
                -- Unique per session, unlike ids (RESTART IDENTITY, several source databases
                -- on one Dagster instance): a Dagster run is tied to the token, not the id.
                ADD COLUMN IF NOT EXISTS run_token uuid NOT NULL DEFAULT gen_random_uuid()
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
                row_key     jsonb,                          -- before key texts; unused
                truncated   boolean NOT NULL DEFAULT false,
                cleaned     jsonb NOT NULL DEFAULT '[]',    -- collections already cleaned
                deleted_at  timestamptz NOT NULL DEFAULT now()
            );
            -- The deleted row's key text (see points.py); NULL for a TRUNCATE.
            ALTER TABLE {tombstones} ADD COLUMN IF NOT EXISTS key_text text;
            CREATE INDEX IF NOT EXISTS {tombstone_index} ON {tombstones} (table_name, id);
            CREATE TABLE IF NOT EXISTS {skips} (
                table_name  text NOT NULL,
                collection  text NOT NULL,
                row_key     text NOT NULL,
                version     text NOT NULL,                  -- the text it was skipped for
                reason      text NOT NULL,
                skipped_at  timestamptz NOT NULL DEFAULT now()
            );
            -- Unlogged: a claim only means something while its worker's session lives, and a
            -- server crash ends every session, so there is nothing to keep and no WAL to write.
            CREATE UNLOGGED TABLE IF NOT EXISTS {claims} (
                table_name    text NOT NULL,
                collection    text NOT NULL,
                row_key       text NOT NULL,                -- the key text (points.py)
                pid           integer NOT NULL,             -- the claiming session ...
                backend_start timestamptz NOT NULL,         -- ... (pids are reused)
                claimed_at    timestamptz NOT NULL DEFAULT now()
            );
            -- Unique by the key text's md5, not the text: a btree entry holds at most ~2.7 kB,
            -- and a table's own key may be longer (its index may compress it). Tables made
            -- before this had the text itself as primary key; that key is replaced.
            CREATE UNIQUE INDEX IF NOT EXISTS {skip_key} ON {skips}
                (table_name, collection, md5(row_key));
            ALTER TABLE {skips} DROP CONSTRAINT IF EXISTS {skip_pkey};
            CREATE UNIQUE INDEX IF NOT EXISTS {claim_key} ON {claims}
                (table_name, collection, md5(row_key));
            ALTER TABLE {claims} DROP CONSTRAINT IF EXISTS {claim_pkey};
            """
        ).format(
            claims=sql.Identifier(schema, CLAIM_TABLE),
            tombstones=sql.Identifier(schema, TOMBSTONE_TABLE),
            tombstone_index=sql.Identifier(f"{TOMBSTONE_TABLE}_table_idx"),
            skips=sql.Identifier(schema, SKIP_TABLE),
            skip_key=sql.Identifier(f"{SKIP_TABLE}_key"),
            skip_pkey=sql.Identifier(f"{SKIP_TABLE}_pkey"),
            claim_key=sql.Identifier(f"{CLAIM_TABLE}_key"),
            claim_pkey=sql.Identifier(f"{CLAIM_TABLE}_pkey"),
        )
    )
    create_store_table(conn, schema)
    return not exists


def _ensure_delete_triggers(
    conn: psycopg.Connection,
    schema: str,
    state_schema: str,
    table: TableConfig,
    layout: KeyLayout,
) -> None:
    """Tombstones for deleted rows, truncates and old keys, and distrust of inserted marks.

    DELETE is statement-level with a transition table: a bulk DELETE writes its tombstones in
    one INSERT ... SELECT. The functions are shared by every table: TG_ARGV carries the asset
    name and the SQL of the key text over the alias `gone` (built by points.KeyLayout), run
    under the pinned key settings, so the tombstone holds exactly the key text the point id
    was hashed from, whatever the deleting session's time zone.
    """
    tombstones = sql.Identifier(state_schema, TOMBSTONE_TABLE)
    settings = key_settings_clause()
    key_columns = [sql.Identifier(name) for name in table.primary_key]
    conn.execute(
        sql.SQL(
            """
            CREATE OR REPLACE FUNCTION {delete_function}() RETURNS trigger LANGUAGE plpgsql
            {settings} AS $$
            BEGIN
                EXECUTE format('INSERT INTO %s (table_name, key_text) SELECT %L, %s FROM gone',
                               {tombstones_text}, TG_ARGV[0], TG_ARGV[1]);
                RETURN NULL;
            END
            $$;
            CREATE OR REPLACE FUNCTION {key_change_function}() RETURNS trigger LANGUAGE plpgsql
            {settings} AS $$
            BEGIN
                -- The row now has another key: its old key's point must go, like a delete's.
                EXECUTE format('INSERT INTO %s (table_name, key_text) '
                               'SELECT %L, %s FROM (SELECT ($1).*) AS gone',
                               {tombstones_text}, TG_ARGV[0], TG_ARGV[1]) USING OLD;
                RETURN NULL;
            END
            $$;
            CREATE OR REPLACE FUNCTION {truncate_function}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO {tombstones} (table_name, truncated) VALUES (TG_ARGV[0], true);
                RETURN NULL;
            END
            $$;
            CREATE OR REPLACE FUNCTION {insert_function}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                -- A row restored from a copy or another environment brings marks no store of
                -- ours vouches for: it starts pending. A sync then finds any point that already
                -- holds its current text and marks it without embedding again.
                NEW.{embedded_in} := '[]'::jsonb;
                RETURN NEW;
            END
            $$;
            CREATE OR REPLACE TRIGGER {delete_trigger}
            AFTER DELETE ON {relation} REFERENCING OLD TABLE AS gone
            FOR EACH STATEMENT EXECUTE FUNCTION {delete_function}({name}, {key_text});
            CREATE OR REPLACE TRIGGER {key_change_trigger}
            AFTER UPDATE OF {key_columns} ON {relation} FOR EACH ROW
            WHEN (ROW({old_key}) IS DISTINCT FROM ROW({new_key}))
            EXECUTE FUNCTION {key_change_function}({name}, {key_text});
            CREATE OR REPLACE TRIGGER {truncate_trigger}
            AFTER TRUNCATE ON {relation}
            FOR EACH STATEMENT EXECUTE FUNCTION {truncate_function}({name});
            CREATE OR REPLACE TRIGGER {insert_trigger}
            BEFORE INSERT ON {relation} FOR EACH ROW
            WHEN (NEW.{embedded_in} IS DISTINCT FROM '[]'::jsonb)
            EXECUTE FUNCTION {insert_function}();
            """
        ).format(
            delete_function=sql.Identifier(state_schema, DELETE_FUNCTION),
            key_change_function=sql.Identifier(state_schema, KEY_CHANGE_FUNCTION),
            truncate_function=sql.Identifier(state_schema, TRUNCATE_FUNCTION),
            insert_function=sql.Identifier(state_schema, INSERT_FUNCTION),
            settings=settings,
            tombstones=tombstones,
            tombstones_text=sql.Literal(tombstones.as_string(conn)),
            delete_trigger=sql.Identifier(DELETE_TRIGGER),
            key_change_trigger=sql.Identifier(KEY_CHANGE_TRIGGER),
            truncate_trigger=sql.Identifier(TRUNCATE_TRIGGER),
            insert_trigger=sql.Identifier(INSERT_TRIGGER),
            relation=sql.Identifier(schema, table.table),
            name=sql.Literal(table.name),
            key_text=sql.Literal(layout.text("gone").as_string(conn)),
            key_columns=sql.SQL(", ").join(key_columns),
            old_key=sql.SQL(", ").join(_as_printed("OLD", c) for c in key_columns),
            new_key=sql.SQL(", ").join(_as_printed("NEW", c) for c in key_columns),
            embedded_in=sql.Identifier(EMBEDDED_IN),
        )
    )
