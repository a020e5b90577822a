"""Idempotent PostgreSQL setup: the `embedded_in` column, the reset trigger, `embedding_session`.

Run as often as you like: it only adds what is missing and replaces its own trigger, never
drops or rewrites user data. Identifiers from config always go through `sql.Identifier`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg import sql

from vector_pipeline.config import TABLES_FILE, ProjectConfig, TableConfig, collection_name_for
from vector_pipeline.database import usable
from vector_pipeline.messages import shorten
from vector_pipeline.points import KeyLayout
from vector_pipeline.store_state import STORE_TABLE, create_store_table
from vector_pipeline.triggers import (
    EMBEDDED_IN,
    TOMBSTONE_TABLE,
    ensure_functions,
    ensure_triggers,
    partition_tree,
    table_triggers,
)

SESSION_TABLE = "embedding_session"
SKIP_TABLE = "vector_pipeline_skip"
CLAIM_TABLE = "vector_pipeline_claim"


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
    return _pending_index_name(table.table, collection)


def _pending_index_name(relation: str, collection: str) -> str:
    # Identifiers stop at 63 bytes; the hash keeps long table/collection names distinct.
    digest = hashlib.md5(f"{relation}/{collection}".encode()).hexdigest()[:10]
    return f"{relation[:40]}_pending_{digest}"


class SetupError(RuntimeError):
    """The database does not fit the configuration; the message says what to change."""


@dataclass(frozen=True)
class ColumnInfo:
    name: str
    type: str
    not_null: bool
    default: str | None = None  # the DEFAULT expression as PostgreSQL prints it


def table_columns(conn: psycopg.Connection, schema: str, table: str) -> dict[str, ColumnInfo]:
    """The table's columns by name; empty if the table does not exist."""
    rows = conn.execute(
        """
        SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid)
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped
        """,
        (schema, table),
    ).fetchall()
    return {row[0]: ColumnInfo(*row) for row in rows}


def check_table(conn: psycopg.Connection, schema: str, table: TableConfig) -> dict[str, ColumnInfo]:
    """Fail clearly if the table or a configured column is missing, or if `primary_key` is not
    a unique, NOT NULL key of the table (two rows would share one point)."""
    columns = table_columns(conn, schema, table.table)
    where = f"{TABLES_FILE}: tables.{shorten(table.name)}"
    if not columns:
        raise SetupError(
            f"{where}: table {shorten(schema)}.{shorten(table.table)} does not exist. Create "
            "it, fix `table:` "
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
                f"{shorten(', '.join(repr(m) for m in missing))}; its columns are: "
                f"{shorten(', '.join(columns), 1000)}"
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


# init-db on a live database: each DDL step waits at most this long for a lock before it lets
# go (so the application's writers never queue behind it for longer), says who holds the lock,
# and tries again, for at most MAX_LOCK_WAIT_SECONDS in all.
LOCK_TIMEOUT_SECONDS = 2.0
MAX_LOCK_WAIT_SECONDS = 300.0


def setup_database(
    conn: psycopg.Connection,
    config: ProjectConfig,
    *,
    on_wait: Callable[[str], None] | None = None,
    lock_timeout: float = LOCK_TIMEOUT_SECONDS,
    max_wait: float = MAX_LOCK_WAIT_SECONDS,
) -> list[str]:
    """Bring the database in line with the config; return what was done, one line each.

    Every table is checked before anything changes. Then the pipeline's own tables and
    functions, then each table in a short transaction of its own; a step that needs a lock
    another transaction holds waits at most `lock_timeout` seconds, tells `on_wait` who holds
    it, and retries for up to `max_wait` seconds before SetupError. Only what differs from the
    configuration is changed, so on a database that is right nothing is locked at all.

    `conn` must be in autocommit mode: the pending-row indexes are built CONCURRENTLY, which
    keeps the table writable while they build and cannot run inside a transaction.
    """
    tables = config.tables
    state_schema = tables.schema_
    retrying = _Retrying(conn, on_wait or (lambda _message: None), lock_timeout, max_wait)
    columns = {t.name: check_table(conn, tables.schema_for(t), t) for t in tables.tables}
    done: list[str] = []

    def own_objects() -> list[str]:
        made = []
        if _ensure_session_table(conn, state_schema):
            made.append(f"created {state_schema}.{SESSION_TABLE}")
        if _ensure_state_tables(conn, state_schema):
            made.append(
                f"created {state_schema}.{TOMBSTONE_TABLE}, {SKIP_TABLE}, {CLAIM_TABLE} and "
                f"{STORE_TABLE}"
            )
        ensure_functions(conn, {tables.schema_for(t) for t in tables.tables}, state_schema)
        return made

    done.extend(retrying.run(f"the pipeline's own tables in {state_schema}", None, own_objects))
    for table in tables.tables:
        schema = tables.schema_for(table)

        def table_objects(table: TableConfig = table, schema: str = schema) -> list[str]:
            made = _ensure_embedded_in(conn, schema, table, columns[table.name])
            layout = key_layout(table, columns[table.name])
            triggers = table_triggers(conn, schema, state_schema, table, layout)
            replaced = ensure_triggers(conn, triggers)
            if replaced:
                made.append(f"triggers on {schema}.{table.table}: installed {', '.join(replaced)}")
            return made

        done.extend(retrying.run(f"{schema}.{table.table}", (schema, table.table), table_objects))
    # An index build takes as long as its table is big; the statement timeout is for hangs.
    conn.execute("SET statement_timeout = 0")
    try:
        for table in tables.tables:
            for model in config.embeddings.models.values():
                collection = collection_name_for(table.collection_base, model.id)
                if _ensure_pending_index(conn, tables.schema_for(table), table, collection):
                    done.append(f"indexed pending rows of {table.table} for {collection}")
    finally:
        if usable(conn):
            conn.execute("RESET statement_timeout")
    return done


class _Retrying:
    """Runs a DDL step in a transaction with a short lock timeout, again and again while
    another transaction holds a lock it needs, saying who."""

    def __init__(
        self,
        conn: psycopg.Connection,
        on_wait: Callable[[str], None],
        lock_timeout: float,
        max_wait: float,
    ) -> None:
        self.conn, self.on_wait = conn, on_wait
        self.lock_timeout, self.max_wait = lock_timeout, max_wait

    def run(
        self, what: str, relation: tuple[str, str] | None, step: Callable[[], list[str]]
    ) -> list[str]:
        started = time.monotonic()
        while True:
            try:
                with self.conn.transaction():
                    self.conn.execute(
                        "SELECT set_config('lock_timeout', %s, true)",
                        (f"{max(1, round(self.lock_timeout * 1000))}ms",),
                    )
                    return step()
            except psycopg.errors.LockNotAvailable:
                waited = time.monotonic() - started
                holders = _lock_holders(self.conn, relation)
                if waited >= self.max_wait:
                    raise SetupError(
                        f"init-db gave up after {waited:.0f} s waiting for a lock on {what} "
                        f"held by {holders}; end that transaction and run init-db again"
                    ) from None
                self.on_wait(
                    f"waiting for a lock on {what} held by {holders} ({waited:.0f} s so far; "
                    f"giving up after {self.max_wait:.0f} s)"
                )


def _lock_holders(conn: psycopg.Connection, relation: tuple[str, str] | None) -> str:
    """Who holds locks on `relation` (or, for None, who is in a transaction): pids with their
    state and application, never their query text (it may hold anything)."""
    condition = "l.relation = %s::regclass" if relation else "l.locktype = 'relation'"
    params = (sql.Identifier(*relation).as_string(conn),) if relation else ()
    rows = conn.execute(
        "SELECT DISTINCT a.pid, a.state, a.application_name, "
        "extract(epoch FROM now() - a.xact_start)::int "
        "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        f"WHERE {condition} AND l.granted AND l.pid <> pg_backend_pid() ORDER BY a.pid",
        params,
    ).fetchall()
    if not rows:
        return "another transaction (gone by now)"
    return ", ".join(
        f"pid {pid} ({state or 'unknown'}"
        + (f", {application}" if application else "")
        + (f", in a transaction for {age} s" if age is not None else "")
        + ")"
        for pid, state, application, age in rows[:5]
    )


def _ensure_pending_index(
    conn: psycopg.Connection, schema: str, table: TableConfig, collection: str
) -> bool:
    """The partial index of the rows pending for `collection`; True if anything was built.

    A partitioned table cannot be indexed CONCURRENTLY: its index is made ON ONLY the table
    (instantly, invalid), each partition's is built CONCURRENTLY and attached, and once all
    are attached the table's index is valid. Partitions made later get theirs from
    PostgreSQL itself, as for any partitioned index.
    """
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in table.primary_key)
    condition = pending_condition(collection)
    tree = partition_tree(conn, schema, table.table)
    built = False
    for part_schema, part, parent, partitioned in tree:
        name = _pending_index_name(part, collection)
        parent_index = (parent[0], _pending_index_name(parent[1], collection)) if parent else None
        if parent_index and _has_attached_index(conn, parent_index, (part_schema, part)):
            continue  # e.g. made by PostgreSQL with the partition, under a name of its own
        valid = _index_validity(conn, part_schema, name)
        if partitioned:
            if valid is None:
                conn.execute(
                    sql.SQL("CREATE INDEX IF NOT EXISTS {} ON ONLY {} ({}) WHERE {}").format(
                        sql.Identifier(name),
                        sql.Identifier(part_schema, part),
                        columns,
                        condition,
                    )
                )
                built = True
        elif not valid:
            if valid is False:  # an interrupted CONCURRENTLY build leaves an invalid index
                conn.execute(
                    sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(
                        sql.Identifier(part_schema, name)
                    )
                )
            conn.execute(
                sql.SQL("CREATE INDEX CONCURRENTLY IF NOT EXISTS {} ON {} ({}) WHERE {}").format(
                    sql.Identifier(name), sql.Identifier(part_schema, part), columns, condition
                )
            )
            built = True
        if parent_index is not None:
            _attach_index(conn, parent_index, (part_schema, name))
            built = True
    return built


def _index_validity(conn: psycopg.Connection, schema: str, name: str) -> bool | None:
    """Whether the index is valid; None if there is none."""
    row = conn.execute(
        """
        SELECT i.indisvalid FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_index i ON i.indexrelid = c.oid
        WHERE n.nspname = %s AND c.relname = %s
        """,
        (schema, name),
    ).fetchone()
    return None if row is None else row[0]


def _has_attached_index(
    conn: psycopg.Connection, parent_index: tuple[str, str], partition: tuple[str, str]
) -> bool:
    """Whether some index of `partition` is attached to the partitioned `parent_index`."""
    if _index_validity(conn, *parent_index) is None:
        return False
    return conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_inherits h JOIN pg_index i ON i.indexrelid = h.inhrelid "
        "WHERE h.inhparent = %s::regclass AND i.indrelid = %s::regclass)",
        (
            sql.Identifier(*parent_index).as_string(conn),
            sql.Identifier(*partition).as_string(conn),
        ),
    ).fetchone()[0]


def _attach_index(
    conn: psycopg.Connection, parent: tuple[str, str], child: tuple[str, str]
) -> None:
    """Attach a partition's index to its table's partitioned index."""
    conn.execute(
        sql.SQL("ALTER INDEX {} ATTACH PARTITION {}").format(
            sql.Identifier(*parent), sql.Identifier(*child)
        )
    )


def _ensure_embedded_in(
    conn: psycopg.Connection, schema: str, table: TableConfig, columns: dict[str, ColumnInfo]
) -> list[str]:
    existing = columns.get(EMBEDDED_IN)
    relation = sql.Identifier(schema, table.table)
    if existing is None:
        # A constant default makes this a catalog-only change: no table rewrite, no long lock.
        conn.execute(
            sql.SQL(
                "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} JSONB NOT NULL DEFAULT '[]'::jsonb"
            ).format(relation, sql.Identifier(EMBEDDED_IN))
        )
        return [f"added {EMBEDDED_IN} to {schema}.{table.table}"]
    if existing.type != "jsonb":
        raise SetupError(_conversion_advice(conn, schema, table.table, existing))
    if existing.default is None:
        # Django's JSONField(default=list) makes the column NOT NULL with no database default
        # (Django fills it in Python), so an INSERT from psql or another service that leaves
        # it out fails. A default is a catalog-only change; an existing one is left alone.
        conn.execute(
            sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET DEFAULT '[]'::jsonb").format(
                relation, sql.Identifier(EMBEDDED_IN)
            )
        )
        return [f"set the default of {schema}.{table.table}.{EMBEDDED_IN} to '[]'"]
    return []


# A JSON array of plain strings, as PostgreSQL itself prints one: exactly the texts that
# `::jsonb` accepts and that can hold collection names. PostgreSQL 15 has no `IS JSON`, and a
# cast that fails aborts the whole ALTER, so anything else is turned into [] (pending: the
# next sync re-embeds the row, or adopts its point if the point already holds its text).
_JSON_STRING = r'"([^"\\[:cntrl:]]|\\["\\/bfnrt])*"'
_JSON_STRING_ARRAY = (
    rf"^[ \t\n\r]*\[[ \t\n\r]*({_JSON_STRING}[ \t\n\r]*"
    rf"(,[ \t\n\r]*{_JSON_STRING}[ \t\n\r]*)*)?\][ \t\n\r]*$"
)


def _conversion_advice(
    conn: psycopg.Connection, schema: str, table: str, column: ColumnInfo
) -> str:
    """Why a non-jsonb `embedded_in` stops setup, and for a text or json column the exact
    statement that converts it (setup never rewrites user data itself)."""
    problem = f"{schema}.{table}.{EMBEDDED_IN} is {column.type}, not jsonb"
    textual = column.type.startswith(("text", "character", "json"))
    if not textual or column.type.endswith("]"):  # arrays (text[]) need another USING
        return (
            f"{problem}. Convert it yourself to a jsonb array of collection names (ALTER TABLE "
            f"... ALTER COLUMN {EMBEDDED_IN} TYPE jsonb USING ...) or drop it and run init-db "
            "again to add it; setup never rewrites user data."
        )
    # The default goes first and comes back after: PostgreSQL cannot cast a default such as
    # '[]'::text to jsonb by itself. NOT NULL survives a type change.
    fix = sql.SQL(
        "ALTER TABLE {table} ALTER COLUMN {column} DROP DEFAULT, "
        "ALTER COLUMN {column} TYPE jsonb USING CASE WHEN {column}::text ~ {pattern} "
        "THEN {column}::text::jsonb ELSE '[]'::jsonb END, "
        "ALTER COLUMN {column} SET DEFAULT '[]'::jsonb;"
    ).format(
        table=sql.Identifier(schema, table),
        column=sql.Identifier(EMBEDDED_IN),
        pattern=sql.Literal(_JSON_STRING_ARRAY),
    )
    return (
        f"{problem}; setup never rewrites user data. This statement converts it (it rewrites "
        "the table under an exclusive lock, so run it at a quiet time); arrays of strings "
        "are kept, anything else (NULL, '', plain text) becomes [], pending:\n"
        + fix.as_string(conn)
    )


# Everything below changes a table only when it lacks the change: ALTER TABLE, and CREATE INDEX
# even with IF NOT EXISTS, lock the table before looking, and a lock request queued behind one
# long transaction stalls every writer behind it. A re-run of init-db on a set-up database
# takes no lock on anything.


def _exists(conn: psycopg.Connection, schema: str, name: str) -> bool:
    """Whether the relation (table or index) `schema.name` exists."""
    regclass = sql.Identifier(schema, name).as_string(conn)
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (regclass,)).fetchone()[0]


def _primary_key(conn: psycopg.Connection, schema: str, table: str) -> str | None:
    row = conn.execute(
        "SELECT con.conname FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND con.contype = 'p'",
        (schema, table),
    ).fetchone()
    return row[0] if row else None


# Columns added to `embedding_session` after it was first released, with their definitions.
_SESSION_COLUMNS = {
    # Budgets: a session may cap the tokens, or the dollars, its run may spend; `tokens_used`
    # is what its batches have reserved so far.
    "token_budget": "bigint CHECK (token_budget > 0)",
    "cost_budget": "numeric CHECK (cost_budget > 0)",
    "tokens_used": "bigint NOT NULL DEFAULT 0",
    # Unique per session, unlike ids (RESTART IDENTITY, several source databases on one
    # Dagster instance): a Dagster run is tied to the token, not the id.
    "run_token": "uuid NOT NULL DEFAULT gen_random_uuid()",
}


FINITE_BUDGET = f"{SESSION_TABLE}_cost_budget_finite"


def _constraint_exists(conn: psycopg.Connection, schema: str, table: str, name: str) -> bool:
    return bool(
        conn.execute(
            "SELECT 1 FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s AND con.conname = %s",
            (schema, table, name),
        ).fetchone()
    )


def _ensure_session_table(conn: psycopg.Connection, schema: str) -> bool:
    table = sql.Identifier(schema, SESSION_TABLE)
    existing = table_columns(conn, schema, SESSION_TABLE)
    if not existing:
        conn.execute(
            sql.SQL(
                """
                CREATE TABLE IF NOT EXISTS {table} (
                    id              bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                    status          text NOT NULL DEFAULT 'PENDING'
                                    CHECK (status IN ('PENDING', 'PROCESSING', 'COMPLETED',
                                                      'FAILED')),
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
            ).format(table=table)
        )
    missing = [name for name in _SESSION_COLUMNS if name not in existing]
    if missing:
        conn.execute(
            sql.SQL("ALTER TABLE {} {}").format(
                table,
                sql.SQL(", ").join(
                    sql.SQL("ADD COLUMN IF NOT EXISTS {} {}").format(
                        sql.Identifier(name), sql.SQL(_SESSION_COLUMNS[name])
                    )
                    for name in missing
                ),
            )
        )
    # numeric's NaN and Infinity pass `cost_budget > 0` (NaN sorts above every number), and a
    # budget no spend can reach is no budget. NOT VALID: rows already there stay readable,
    # every new or updated row is checked.
    if not _constraint_exists(conn, schema, SESSION_TABLE, FINITE_BUDGET):
        conn.execute(
            sql.SQL(
                "ALTER TABLE {} ADD CONSTRAINT {} "
                "CHECK (cost_budget < 'Infinity'::numeric) NOT VALID"
            ).format(table, sql.Identifier(FINITE_BUDGET))
        )
    # The launcher looks only for PENDING sessions: a partial index keeps that check cheap
    # however many finished sessions pile up.
    index = f"{SESSION_TABLE}_pending_idx"
    if not _exists(conn, schema, index):
        conn.execute(
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (id) WHERE status = 'PENDING'").format(
                sql.Identifier(index), table
            )
        )
    return not existing


def _ensure_state_tables(conn: psycopg.Connection, schema: str) -> bool:
    """The tombstones the sync drains (deletes), the rows it skipped (with why), the rows
    workers have claimed (see `claims.py`) and the store records (see `store_state.py`)."""
    exists = bool(table_columns(conn, schema, CLAIM_TABLE))
    tombstones = sql.Identifier(schema, TOMBSTONE_TABLE)
    conn.execute(
        sql.SQL(
            """
            CREATE TABLE IF NOT EXISTS {tombstones} (
                id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                table_name  text NOT NULL,
                row_key     jsonb,                          -- before key texts; unused
                key_text    text,                           -- points.py; NULL for a TRUNCATE
                truncated   boolean NOT NULL DEFAULT false,
                refresh     boolean NOT NULL DEFAULT false, -- row kept; its payload changed
                cleaned     jsonb NOT NULL DEFAULT '[]',    -- collections already cleaned
                deleted_at  timestamptz NOT NULL DEFAULT now()
            );
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
            """
        ).format(
            tombstones=tombstones,
            skips=sql.Identifier(schema, SKIP_TABLE),
            claims=sql.Identifier(schema, CLAIM_TABLE),
        )
    )
    made_before = table_columns(conn, schema, TOMBSTONE_TABLE)
    for column, definition in (
        ("key_text", "text"),
        ("refresh", "boolean NOT NULL DEFAULT false"),
    ):
        if column not in made_before:
            conn.execute(
                sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
                    tombstones, sql.Identifier(column), sql.SQL(definition)
                )
            )
    index = f"{TOMBSTONE_TABLE}_table_idx"
    if not _exists(conn, schema, index):
        conn.execute(
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (table_name, id)").format(
                sql.Identifier(index), tombstones
            )
        )
    for table in (SKIP_TABLE, CLAIM_TABLE):
        # Unique by the key text's md5, not the text: a btree entry holds at most ~2.7 kB, and
        # a table's own key may be longer. Tables made before this had the text itself as
        # their primary key; that key is replaced.
        relation = sql.Identifier(schema, table)
        if not _exists(conn, schema, f"{table}_key"):
            conn.execute(
                sql.SQL(
                    "CREATE UNIQUE INDEX IF NOT EXISTS {} ON {} "
                    "(table_name, collection, md5(row_key))"
                ).format(sql.Identifier(f"{table}_key"), relation)
            )
        old_key = _primary_key(conn, schema, table)
        if old_key is not None:
            conn.execute(
                sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                    relation, sql.Identifier(old_key)
                )
            )
    create_store_table(conn, schema)
    return not exists
