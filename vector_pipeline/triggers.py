"""The triggers every syncable table relies on, how init-db installs them, and how a sync checks
they are still there and still match the configuration.

Per table:

- `vector_pipeline_reset_embedded_in` (BEFORE UPDATE OF the text and key columns, per row):
  a change of the rendered text or of the key clears `embedded_in`;
- `vector_pipeline_record_delete` (AFTER DELETE, per statement, transition table) and
  `vector_pipeline_record_truncate` (AFTER TRUNCATE): tombstones, so deleted rows lose their
  points;
- `vector_pipeline_record_key_change` (AFTER UPDATE OF the key columns, per row): a tombstone
  for the old key;
- `vector_pipeline_distrust_marks` (BEFORE INSERT, per row): a row inserted with marks starts
  pending (see README, "Guarantees");
- `vector_pipeline_record_payload_change` (AFTER UPDATE OF the payload and name columns that
  are not in the text, per row; only where there are such columns): a refresh entry in the
  tombstone queue, so the next sync rewrites the point's payload without embedding it.

Each trigger carries a comment with a fingerprint of the statement that created it. init-db
replaces only a trigger whose fingerprint differs (so re-running it takes no lock on a table
that is already right), and every sync refuses to run while one is missing, disabled or out of
date: `ALTER TABLE ... DROP COLUMN ... CASCADE` drops the reset trigger silently, and a
`text_template` edited without init-db leaves it watching the wrong columns. Without its
triggers a table's marks would stop telling the truth, which no sync could notice later.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import psycopg
from psycopg import sql

from vector_pipeline.config import TableConfig
from vector_pipeline.points import KeyLayout, key_settings_clause

EMBEDDED_IN = "embedded_in"
TOMBSTONE_TABLE = "vector_pipeline_tombstone"
RESET_FUNCTION = "vector_pipeline_reset_embedded_in"
RESET_TRIGGER = "vector_pipeline_reset_embedded_in"
DELETE_FUNCTION = "vector_pipeline_record_delete"
DELETE_TRIGGER = "vector_pipeline_record_delete"
TRUNCATE_FUNCTION = "vector_pipeline_record_truncate"
TRUNCATE_TRIGGER = "vector_pipeline_record_truncate"
KEY_CHANGE_FUNCTION = "vector_pipeline_record_key_change"
KEY_CHANGE_TRIGGER = "vector_pipeline_record_key_change"
INSERT_FUNCTION = "vector_pipeline_distrust_marks"
INSERT_TRIGGER = "vector_pipeline_distrust_marks"
PAYLOAD_FUNCTION = "vector_pipeline_record_payload_change"
PAYLOAD_TRIGGER = "vector_pipeline_record_payload_change"
# A logical-replication subscriber applies deletes firing row triggers only, never statement
# triggers: this row trigger, enabled for replica sessions alone, writes their tombstones.
REPLICATED_DELETE_TRIGGER = "vector_pipeline_record_replicated_delete"
_COMMENT_PREFIX = "vector_pipeline "
# How each trigger is enabled. A logical-replication apply worker runs as a replica session,
# where ordinary (O) triggers do not fire: the row triggers and TRUNCATE's fire ALWAYS (A), so
# changes a subscriber applies are seen like any other; the statement-level DELETE trigger,
# which an apply worker never fires, is doubled there by a row trigger fired only in replica
# sessions (R).
_ENABLE = {"O": "ENABLE", "A": "ENABLE ALWAYS", "R": "ENABLE REPLICA"}
_MODES = {
    RESET_TRIGGER: "A",
    KEY_CHANGE_TRIGGER: "A",
    INSERT_TRIGGER: "A",
    TRUNCATE_TRIGGER: "A",
    DELETE_TRIGGER: "O",
    REPLICATED_DELETE_TRIGGER: "R",
    PAYLOAD_TRIGGER: "A",
}


@dataclass(frozen=True)
class Trigger:
    name: str
    schema: str  # of the relation it is on: the table, or one of its partitions
    relation: str
    enabled: str  # pg_trigger.tgenabled it must have: O (ordinary sessions), A (always), R
    statement: str  # CREATE OR REPLACE TRIGGER ...; ALTER TABLE ... ENABLE ..., as sent

    @property
    def fingerprint(self) -> str:
        return _COMMENT_PREFIX + hashlib.md5(self.statement.encode()).hexdigest()


def _as_printed(record: str, column: sql.Identifier) -> sql.Composable:
    """`record.column` as its text, compared byte for byte: a change that equality would not
    see still counts (numeric 1.50 -> 1.5, float 0 -> -0, 'Alice' -> 'ALICE' under a
    case-insensitive collation), since texts and key texts are what get embedded and hashed."""
    return sql.SQL('{}.{}::text COLLATE "C"').format(sql.SQL(record), column)


def ensure_functions(conn: psycopg.Connection, schemas: set[str], state_schema: str) -> None:
    """The trigger functions: the reset function in each table schema, the others (shared by
    every table through TG_ARGV) in the state schema. CREATE OR REPLACE FUNCTION takes no
    lock on any table."""
    for schema in sorted(schemas):
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
    tombstones = sql.Identifier(state_schema, TOMBSTONE_TABLE)
    settings = key_settings_clause()
    # TG_ARGV[1] is the SQL of the key text over the alias `gone` (points.KeyLayout), run under
    # the pinned key settings, so a tombstone holds exactly the key text the point id was
    # hashed from, whatever the deleting session's time zone.
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
                -- The row is about to get another key: its old key's point must go, like a
                -- delete's. BEFORE, not AFTER: an UPDATE that moves a row to another
                -- partition fires no AFTER UPDATE trigger, but this one fires on its way out.
                EXECUTE format('INSERT INTO %s (table_name, key_text) '
                               'SELECT %L, %s FROM (SELECT ($1).*) AS gone',
                               {tombstones_text}, TG_ARGV[0], TG_ARGV[1]) USING OLD;
                RETURN NEW;
            END
            $$;
            CREATE OR REPLACE FUNCTION {payload_function}() RETURNS trigger LANGUAGE plpgsql
            {settings} AS $$
            BEGIN
                -- Same text, other payload: the point stays, its payload is rewritten.
                EXECUTE format('INSERT INTO %s (table_name, key_text, refresh) '
                               'SELECT %L, %s, true FROM (SELECT ($1).*) AS gone',
                               {tombstones_text}, TG_ARGV[0], TG_ARGV[1]) USING NEW;
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
            """
        ).format(
            delete_function=sql.Identifier(state_schema, DELETE_FUNCTION),
            key_change_function=sql.Identifier(state_schema, KEY_CHANGE_FUNCTION),
            payload_function=sql.Identifier(state_schema, PAYLOAD_FUNCTION),
            truncate_function=sql.Identifier(state_schema, TRUNCATE_FUNCTION),
            insert_function=sql.Identifier(state_schema, INSERT_FUNCTION),
            settings=settings,
            tombstones=tombstones,
            tombstones_text=sql.Literal(tombstones.as_string(conn)),
            embedded_in=sql.Identifier(EMBEDDED_IN),
        )
    )


def table_triggers(
    conn: psycopg.Connection,
    schema: str,
    state_schema: str,
    table: TableConfig,
    layout: KeyLayout,
    facts: TableFacts | None = None,
) -> list[Trigger]:
    """The triggers `table` needs, as the statements that create them (`facts`: the table's
    `table_facts`, read here when not given)."""
    relation = sql.Identifier(schema, table.table)
    facts = facts or table_facts(conn, schema, table.table)
    key_columns = [sql.Identifier(name) for name in facts.bases(table.primary_key)]
    # `UPDATE OF` limits the reset to statements naming a text or key column; WHEN to real
    # changes. A new key is a new row as far as Qdrant knows. Comparing the text forms works
    # for every column type, including ones without an equality operator. A generated column
    # is watched through the columns it is computed from (a BEFORE trigger cannot see its new
    # value). When the table has BEFORE UPDATE triggers of its own, which may set a template
    # column the statement never named, every UPDATE is watched.
    watched_names = facts.bases((*table.text_columns, *table.primary_key))
    watched = [sql.Identifier(name) for name in watched_names]
    name = sql.Literal(table.name)
    key_text = sql.Literal(layout.text("gone").as_string(conn))

    def delete_trigger(on: sql.Identifier) -> sql.Composable:
        # Statement-level with a transition table: a bulk DELETE writes its tombstones in one
        # INSERT ... SELECT.
        return sql.SQL(
            "CREATE OR REPLACE TRIGGER {trigger} AFTER DELETE ON {relation} "
            "REFERENCING OLD TABLE AS gone FOR EACH STATEMENT "
            "EXECUTE FUNCTION {function}({name}, {key_text})"
        ).format(
            trigger=sql.Identifier(DELETE_TRIGGER),
            relation=on,
            function=sql.Identifier(state_schema, DELETE_FUNCTION),
            name=name,
            key_text=key_text,
        )

    def truncate_trigger(on: sql.Identifier) -> sql.Composable:
        return sql.SQL(
            "CREATE OR REPLACE TRIGGER {trigger} AFTER TRUNCATE ON {relation} "
            "FOR EACH STATEMENT EXECUTE FUNCTION {function}({name})"
        ).format(
            trigger=sql.Identifier(TRUNCATE_TRIGGER),
            relation=on,
            function=sql.Identifier(state_schema, TRUNCATE_FUNCTION),
            name=name,
        )

    statements = {
        RESET_TRIGGER: _on_change(
            RESET_TRIGGER,
            "BEFORE",
            relation,
            watched,
            watch_all=bool(facts.before_update),
            function=sql.Identifier(schema, RESET_FUNCTION),
        ),
        DELETE_TRIGGER: delete_trigger(relation),
        KEY_CHANGE_TRIGGER: _on_change(
            KEY_CHANGE_TRIGGER,
            "BEFORE",
            relation,
            key_columns,
            function=sql.Identifier(state_schema, KEY_CHANGE_FUNCTION),
            arguments=(name, key_text),
        ),
        TRUNCATE_TRIGGER: truncate_trigger(relation),
        INSERT_TRIGGER: sql.SQL(
            "CREATE OR REPLACE TRIGGER {trigger} BEFORE INSERT ON {relation} FOR EACH ROW "
            "WHEN (NEW.{embedded_in} IS DISTINCT FROM '[]'::jsonb) EXECUTE FUNCTION {function}()"
        ).format(
            trigger=sql.Identifier(INSERT_TRIGGER),
            relation=relation,
            embedded_in=sql.Identifier(EMBEDDED_IN),
            function=sql.Identifier(state_schema, INSERT_FUNCTION),
        ),
        # The key-change function writes a tombstone for OLD, which is what a deleted row needs.
        REPLICATED_DELETE_TRIGGER: sql.SQL(
            "CREATE OR REPLACE TRIGGER {trigger} AFTER DELETE ON {relation} FOR EACH ROW "
            "EXECUTE FUNCTION {function}({name}, {key_text})"
        ).format(
            trigger=sql.Identifier(REPLICATED_DELETE_TRIGGER),
            relation=relation,
            function=sql.Identifier(state_schema, KEY_CHANGE_FUNCTION),
            name=name,
            key_text=key_text,
        ),
    }
    # Payload and name columns outside the text change no vector, only the payload.
    in_text = set(watched_names)
    payload_only = [
        sql.Identifier(c) for c in facts.bases(table.payload_columns_and_name) if c not in in_text
    ]
    if payload_only:
        statements[PAYLOAD_TRIGGER] = _on_change(
            PAYLOAD_TRIGGER,
            "AFTER",
            relation,
            payload_only,
            function=sql.Identifier(state_schema, PAYLOAD_FUNCTION),
            arguments=(name, key_text),
        )
    triggers = [
        _trigger(conn, trigger_name, schema, table.table, statement)
        for trigger_name, statement in statements.items()
    ]
    # Row triggers on a partitioned table are cloned onto every partition, present and future;
    # statement triggers are not, and a DELETE or TRUNCATE aimed at one partition fires only
    # that partition's. So each partition gets its own (a partition made after init-db is
    # reported by `trigger_problems` until init-db runs again).
    for part_schema, part, parent, _ in partition_tree(conn, schema, table.table):
        if parent is None:
            continue  # the table itself
        on = sql.Identifier(part_schema, part)
        for trigger_name, statement in (
            (DELETE_TRIGGER, delete_trigger(on)),
            (TRUNCATE_TRIGGER, truncate_trigger(on)),
        ):
            triggers.append(_trigger(conn, trigger_name, part_schema, part, statement))
    return triggers


def _on_change(
    trigger: str,
    timing: str,
    relation: sql.Identifier,
    columns: list[sql.Identifier],
    *,
    function: sql.Identifier,
    arguments: tuple[sql.Composable, ...] = (),
    watch_all: bool = False,
) -> sql.Composable:
    """A row trigger on UPDATE OF `columns` (of any column with `watch_all`) that fires when
    their texts change (`_as_printed`)."""
    update_of = (
        sql.SQL("UPDATE")
        if watch_all
        else sql.SQL("UPDATE OF {}").format(sql.SQL(", ").join(columns))
    )
    return sql.SQL(
        "CREATE OR REPLACE TRIGGER {trigger} {timing} {update_of} ON {relation} "
        "FOR EACH ROW WHEN (ROW({old}) IS DISTINCT FROM ROW({new})) "
        "EXECUTE FUNCTION {function}({arguments})"
    ).format(
        trigger=sql.Identifier(trigger),
        timing=sql.SQL(timing),
        update_of=update_of,
        relation=relation,
        old=sql.SQL(", ").join(_as_printed("OLD", c) for c in columns),
        new=sql.SQL(", ").join(_as_printed("NEW", c) for c in columns),
        function=function,
        arguments=sql.SQL(", ").join(arguments),
    )


def _trigger(
    conn: psycopg.Connection, name: str, schema: str, relation: str, create: sql.Composable
) -> Trigger:
    """The trigger with its statement: the CREATE, then the ENABLE that sets when it fires."""
    mode = _MODES[name]
    enable = sql.SQL("ALTER TABLE {} {} TRIGGER {}").format(
        sql.Identifier(schema, relation), sql.SQL(_ENABLE[mode]), sql.Identifier(name)
    )
    statement = f"{create.as_string(conn)}; {enable.as_string(conn)}"
    return Trigger(name, schema, relation, mode, statement)


@dataclass(frozen=True)
class TableFacts:
    """What the catalog says that changes how a table's changes must be watched."""

    generated: dict[str, tuple[str, ...]]  # stored generated column -> the columns it reads
    before_update: tuple[str, ...]  # the table's own BEFORE UPDATE row triggers, by name

    def bases(self, columns: tuple[str, ...] | list[str]) -> list[str]:
        """`columns` with each generated column replaced by the columns it is computed from."""
        out: list[str] = []
        for column in columns:
            out.extend(self.generated.get(column, (column,)))
        return list(dict.fromkeys(out))


def table_facts(conn: psycopg.Connection, schema: str, table: str) -> TableFacts:
    relation = sql.Identifier(schema, table).as_string(conn)
    generated = conn.execute(
        """
        SELECT a.attname, array_agg(ref.attname::text ORDER BY ref.attnum)
        FROM pg_attribute a
        JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        JOIN pg_depend dep ON dep.classid = 'pg_attrdef'::regclass AND dep.objid = d.oid
             AND dep.refobjid = a.attrelid AND dep.refobjsubid > 0
             AND dep.refobjsubid <> a.attnum
        JOIN pg_attribute ref ON ref.attrelid = a.attrelid AND ref.attnum = dep.refobjsubid
        WHERE a.attrelid = %s::regclass AND a.attgenerated = 's'
        GROUP BY a.attname
        """,
        (relation,),
    ).fetchall()
    # tgtype bits: 1 row-level, 2 BEFORE, 16 UPDATE.
    before_update = conn.execute(
        """
        SELECT tgname FROM pg_trigger
        WHERE tgrelid = %s::regclass AND NOT tgisinternal AND tgenabled <> 'D'
          AND tgtype & 19 = 19 AND tgname NOT LIKE 'vector\\_pipeline\\_%%'
        ORDER BY tgname
        """,
        (relation,),
    ).fetchall()
    return TableFacts(
        generated={name: tuple(bases) for name, bases in generated},
        before_update=tuple(name for (name,) in before_update),
    )


def ordering_problems(facts: TableFacts) -> list[str]:
    """BEFORE UPDATE triggers of the table's own that run after the reset trigger (triggers of
    one event run in name order): a template column they set would not be seen."""
    return [
        f"trigger {name} runs after {RESET_TRIGGER} (BEFORE triggers run in name order), so "
        "a text column it sets would not reset the row: rename it to sort before "
        f"{RESET_TRIGGER!r}"
        for name in facts.before_update
        if name.encode() > RESET_TRIGGER.encode()
    ]


def partition_tree(
    conn: psycopg.Connection, schema: str, table: str
) -> list[tuple[str, str, tuple[str, str] | None, bool]]:
    """The table and every partition below it, parents first: (schema, name, its parent's
    (schema, name) or None for the table, whether it is itself partitioned). A table that is
    not partitioned is the one entry."""
    rows = conn.execute(
        """
        SELECT n.nspname, c.relname, pn.nspname, pc.relname, c.relkind = 'p'
        FROM pg_partition_tree(%s::regclass) AS tree
        JOIN pg_class c ON c.oid = tree.relid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_class pc ON pc.oid = tree.parentrelid
        LEFT JOIN pg_namespace pn ON pn.oid = pc.relnamespace
        ORDER BY tree.level, n.nspname, c.relname
        """,
        (sql.Identifier(schema, table).as_string(conn),),
    ).fetchall()
    if not rows:  # not partitioned (pg_partition_tree gives nothing for a plain table)
        return [(schema, table, None, False)]
    return [
        (n, r, (pn, pr) if pr is not None else None, partitioned)
        for n, r, pn, pr, partitioned in rows
    ]


def _installed(
    conn: psycopg.Connection, triggers: list[Trigger]
) -> dict[tuple[str, str, str], tuple[str, str]]:
    """Our triggers on the relations of `triggers`: (schema, relation, name) -> (tgenabled,
    comment)."""
    relations = sorted({(t.schema, t.relation) for t in triggers})
    rows = conn.execute(
        """
        SELECT n.nspname, c.relname, t.tgname, t.tgenabled,
               coalesce(obj_description(t.oid, 'pg_trigger'), '')
        FROM pg_trigger t
        JOIN pg_class c ON c.oid = t.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN unnest(%s::text[], %s::text[]) AS r(nspname, relname)
          ON r.nspname = n.nspname AND r.relname = c.relname
        WHERE NOT t.tgisinternal AND t.tgname LIKE 'vector\\_pipeline\\_%%'
        """,
        ([r[0] for r in relations], [r[1] for r in relations]),
    ).fetchall()
    return {(n, r, name): (enabled, comment) for n, r, name, enabled, comment in rows}


def ensure_triggers(conn: psycopg.Connection, triggers: list[Trigger]) -> list[str]:
    """Create or replace the triggers whose fingerprint differs; return them, as
    `name` (on the table) or `name on partition`."""
    installed = _installed(conn, triggers)
    replaced = []
    for trigger in triggers:
        enabled, comment = installed.get((trigger.schema, trigger.relation, trigger.name), ("", ""))
        if enabled == trigger.enabled and comment == trigger.fingerprint:
            continue  # already right: no lock taken on the table
        conn.execute(trigger.statement)
        conn.execute(
            sql.SQL("COMMENT ON TRIGGER {} ON {} IS {}").format(
                sql.Identifier(trigger.name),
                sql.Identifier(trigger.schema, trigger.relation),
                sql.Literal(trigger.fingerprint),
            )
        )
        replaced.append(_where(trigger, triggers[0]))
    return replaced


def trigger_problems(conn: psycopg.Connection, triggers: list[Trigger]) -> list[str]:
    """What is wrong with the table's triggers (empty: nothing), one phrase each."""
    installed = _installed(conn, triggers)
    problems = []
    for trigger in triggers:
        found = installed.get((trigger.schema, trigger.relation, trigger.name))
        where = _where(trigger, triggers[0])
        if found is None:
            problems.append(f"trigger {where} is missing")
        elif found[0] == "D":
            problems.append(f"trigger {where} is disabled")
        elif found[0] != trigger.enabled:
            problems.append(
                f"trigger {where} is enabled {_ENABLE[found[0]].lower()}, not "
                f"{_ENABLE[trigger.enabled].lower()}"
            )
        elif found[1] != trigger.fingerprint:
            problems.append(f"trigger {where} does not match config/tables.yaml")
    return problems


def _where(trigger: Trigger, first: Trigger) -> str:
    """The trigger's name, with its partition when it is not on the table itself."""
    if (trigger.schema, trigger.relation) == (first.schema, first.relation):
        return trigger.name
    return f"{trigger.name} on partition {trigger.schema}.{trigger.relation}"
