"""The PostgreSQL side of a sync: find pending rows, stream them, and mark them embedded.

Every row is read here, in a form that no value can break: the template and name columns as
PostgreSQL's own text (`col::text`, under the pinned settings of points.KEY_SETTINGS, so a
timestamptz reads the same whatever the client's time zone), and the payload columns as JSON
text (`to_json(col)::text`) decoded here, row by row. A value with no Python form (a date
'infinity', a NaN numeric, JSON with a `\\u0000` escape) so never fails a batch in the driver;
a payload that cannot become JSON Qdrant accepts makes that row's `problem`, and the sync skips
the row with it as the reason. A value PostgreSQL itself cannot convert (a user type's cast to
json that raises) fails the statement; that read is done again with each payload value
converted on its own (`read_safely`), so again only its row has a problem.

A row is pending for a collection when its `embedded_in` lacks that collection's name (NULL and
non-arrays count as empty). Rows are read in primary-key order, one bounded batch per short
transaction (keyset pagination), so memory stays flat and no snapshot is held while embedding.
Each row carries a version, a hash of its text columns as read; marking re-checks it, so an edit
that lands while the row is being embedded leaves the row pending instead of marking stale text.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row

from vector_pipeline import database
from vector_pipeline.claims import Claims
from vector_pipeline.config import ProjectConfig, TableConfig
from vector_pipeline.database_setup import (
    CLAIM_TABLE,
    EMBEDDED_IN,
    SKIP_TABLE,
    SetupError,
    check_table,
    collection_marker,
    key_layout,
    pending_condition,
    table_columns,
)
from vector_pipeline.failpoints import failpoint
from vector_pipeline.points import apply_key_settings
from vector_pipeline.store_state import STORE_TABLE
from vector_pipeline.triggers import (
    ordering_problems,
    table_facts,
    table_triggers,
    trigger_problems,
)

VERSION = "__vector_pipeline_version"
MARK_CHUNK = 1000  # keys per UPDATE when marking rows pending
VOID_CHUNK = 5000  # rows per transaction when voiding every mark of a collection
KEY_TEXT = "__vector_pipeline_key"
MINE = "__vector_pipeline_mine"
SCAN_PAGE = 5000  # rows per statement when reading a whole table (`scan`)
TEXT_VALUE = "__vector_pipeline_text_{}"  # the i-th template/name column, as text
JSON_VALUE = "__vector_pipeline_json_{}"  # the i-th payload column, as JSON text
# What a conversion of one value can raise: a user-defined cast to json that refuses the value,
# JSON over PostgreSQL's 1 GB limit. Anything else (a lost connection) is no row's fault.
VALUE_ERRORS = (
    psycopg.DataError,
    psycopg.errors.ProgramLimitExceeded,
    psycopg.errors.RaiseException,
)
# The safe read's answer for a value it could not convert starts with this; no JSON text does.
_UNREADABLE = "\x01"
# The safe read: one value's JSON text, or _UNREADABLE and the error. A function of the
# session's own temporary schema, created only when a page could not be read the fast way.
_SAFE_JSON = """
CREATE OR REPLACE FUNCTION pg_temp.vector_pipeline_json(value anyelement) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    RETURN to_json(value)::text;
EXCEPTION WHEN data_exception OR program_limit_exceeded OR raise_exception THEN
    RETURN E'\\x01' || SQLERRM;
END
$$
"""


def _number(text: str) -> float | str:
    """A JSON number as a float, or its text when no float holds it (numeric 1e400)."""
    number = float(text)
    return number if math.isfinite(number) else text


def decode_payload(texts: dict[str, str | None], numeric: frozenset[str]) -> dict[str, Any]:
    """The payload columns' values from their `to_json` texts, by column; `numeric` names the
    numeric columns, whose integral values stay floats (as Decimals always became).

    Raises ValueError naming the column when a value has no JSON form Qdrant takes: nesting
    deeper than Python's parser goes, a lone surrogate escape.
    """
    payload: dict[str, Any] = {}
    for column, text in texts.items():
        if text is None:
            payload[column] = None
            continue
        if text.startswith(_UNREADABLE):
            raise ValueError(
                f"payload column {column[:100]!r} cannot be converted to JSON "
                f"({text[1:].splitlines()[0][:200] if text[1:] else 'no reason given'})"
            )
        integer = _number if column in numeric else int
        try:
            value = json.loads(text, parse_float=_number, parse_int=integer)
            # What the upsert sends must encode: a `\ud800` escape decodes to a lone surrogate.
            json.dumps(value, ensure_ascii=False).encode()
        except (ValueError, RecursionError) as exc:
            why = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise ValueError(
                f"payload column {column[:100]!r} has no JSON form Qdrant takes ({why})"
            ) from None
        payload[column] = value
    return payload


@dataclass(frozen=True)
class SourceRow:
    key: str  # the canonical key text (points.py)
    version: str
    # The template and name columns, each as PostgreSQL's text for it (None for NULL).
    values: dict[str, str | None]
    row_id: str | int  # the payload's meta_data.row_id (points.KeyLayout.row_id)
    # The payload columns as JSON values (what `to_json` makes of them).
    payload: dict[str, Any] = field(default_factory=dict)
    # Why the row cannot be written as it is (a skip reason), or None.
    problem: str | None = None


@dataclass(frozen=True)
class TableCounts:
    total: int
    embedded: int
    skipped: int = 0

    @property
    def pending(self) -> int:
        """Rows a sync would still embed (skipped rows wait for their text to change)."""
        return self.total - self.embedded - self.skipped


def connect(database_url: str) -> psycopg.Connection:
    """An autocommit connection: each read stands alone, each write is an explicit transaction.

    Its session settings are pinned (points.KEY_SETTINGS) so key texts do not depend on the
    environment's PGTZ or the server's defaults; its timeouts and keepalives are database.py's.
    Raises database.DatabaseError (one line, no password) if it cannot connect.
    """
    conn = database.connect(database_url, autocommit=True)
    apply_key_settings(conn)
    return conn


class SourceTable:
    """One configured table, bound to an autocommit connection (see `connect`)."""

    def __init__(
        self,
        conn: psycopg.Connection,
        schema: str,
        table: TableConfig,
        state_schema: str | None = None,
    ) -> None:
        self.conn = conn
        self.schema = schema
        self.config = table
        state = self.state_schema = state_schema or schema
        self._skips = sql.Identifier(state, SKIP_TABLE)
        columns = check_table(conn, schema, table)
        missing = [
            name
            for name, present in (
                (f"{EMBEDDED_IN} column", EMBEDDED_IN in columns),
                (f"{state}.{SKIP_TABLE}", table_columns(conn, state, SKIP_TABLE)),
                (f"{state}.{CLAIM_TABLE}", table_columns(conn, state, CLAIM_TABLE)),
                (f"{state}.{STORE_TABLE}", table_columns(conn, state, STORE_TABLE)),
            )
            if not present
        ]
        if missing:
            raise SetupError(
                f"{schema}.{table.table} is not set up for syncing (no {', '.join(missing)}); "
                "run `vector-pipeline init-db`"
            )
        if columns[EMBEDDED_IN].type != "jsonb":
            raise SetupError(
                f"{schema}.{table.table}.{EMBEDDED_IN} is {columns[EMBEDDED_IN].type}, not "
                "jsonb; run `vector-pipeline init-db`, which prints the statement that converts it"
            )
        # Key texts are computed by PostgreSQL under pinned settings; a connection handed in
        # by a caller gets them too.
        apply_key_settings(conn)
        self._relation = sql.Identifier(schema, table.table)
        self.key = key_layout(table, columns)
        text_columns = sql.SQL(", ").join(
            sql.SQL("t.{}::text").format(sql.Identifier(c)) for c in table.text_columns
        )
        self._version = sql.SQL("md5(ROW({})::text)").format(text_columns)
        self.claims = Claims(conn, state, table.name)
        named = (table.name_column,) if table.name_column else ()
        self._text_read = tuple(dict.fromkeys((*table.text_columns, *named)))
        self._numeric = frozenset(
            c for c in table.payload_columns if columns[c].type.startswith("numeric")
        )
        self._safe = False  # payload values through the safe read (see `read_safely`)

    def read_safely(self, read: Callable[[], Any]) -> Any:
        """`read()` (which builds its queries with `select_values`); when one value made it
        fail (VALUE_ERRORS), `read()` again with every payload value converted on its own (a
        temporary function: not on a read-only standby), so that row alone gets a `problem`
        and the rest are read as usual."""
        # Inside the caller's transaction a failed statement would abort it: a savepoint.
        idle = self.conn.info.transaction_status == TransactionStatus.IDLE
        try:
            with nullcontext() if idle else self.conn.transaction():
                return read()
        except VALUE_ERRORS:
            if not self.config.payload_columns:
                raise
        self.conn.execute(_SAFE_JSON)
        self._safe = True
        try:
            return read()
        finally:
            self._safe = False

    def _reads(self, alias: str, *, texts: bool = True) -> list[tuple[sql.Composable, str]]:
        """(expression, result name) of every value column a row is read with (see the module
        docstring); without `texts`, of the name and payload columns only."""
        table = sql.Identifier(alias)
        reads = [
            (sql.SQL("{}.{}::text").format(table, sql.Identifier(c)), TEXT_VALUE.format(i))
            for i, c in enumerate(self._text_read)
            if texts or c == self.config.name_column
        ]
        payload = (
            sql.SQL("pg_temp.vector_pipeline_json({}.{})")
            if self._safe
            else sql.SQL("to_json({}.{})::text")
        )
        reads += [
            (payload.format(table, sql.Identifier(c)), JSON_VALUE.format(i))
            for i, c in enumerate(self.config.payload_columns)
        ]
        return reads

    def select_values(self, alias: str = "t", *, texts: bool = True) -> sql.Composable:
        """The select list (`expr AS name, ...`) that reads a row's values from `alias`, for
        `read_row`."""
        return sql.SQL(", ").join(
            sql.SQL("{} AS {}").format(expr, sql.Identifier(name))
            for expr, name in self._reads(alias, texts=texts)
        )

    def value_names(self, alias: str) -> sql.Composable:
        """`alias.name, ...` for the result names of `select_values` (an outer query's list)."""
        return sql.SQL(", ").join(
            sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(name))
            for _, name in self._reads(alias)
        )

    def read_row(self, key: str, version: str, record: dict[str, Any]) -> SourceRow:
        """The SourceRow of a record holding `select_values`'s columns (they are popped; those
        it lacks are left out)."""
        values = {
            column: record.pop(TEXT_VALUE.format(i))
            for i, column in enumerate(self._text_read)
            if TEXT_VALUE.format(i) in record
        }
        texts = {
            column: record.pop(JSON_VALUE.format(i))
            for i, column in enumerate(self.config.payload_columns)
            if JSON_VALUE.format(i) in record
        }
        try:
            payload = decode_payload(texts, self._numeric)
        except ValueError as exc:
            return SourceRow(key, version, values, self.key.row_id(key), {}, str(exc))
        return SourceRow(key, version, values, self.key.row_id(key), payload)

    @classmethod
    def for_config(
        cls, conn: psycopg.Connection, config: ProjectConfig, table: TableConfig
    ) -> SourceTable:
        return cls(conn, config.tables.schema_for(table), table, config.tables.schema_)

    def trigger_problems(self) -> list[str]:
        """What is wrong with the triggers the table's marks rely on (triggers.py); empty when
        nothing is. One catalog query."""
        facts = table_facts(self.conn, self.schema, self.config.table)
        triggers = table_triggers(
            self.conn, self.schema, self.state_schema, self.config, self.key, facts
        )
        return trigger_problems(self.conn, triggers) + ordering_problems(facts)

    def check_triggers(self) -> None:
        """Raise SetupError, naming init-db, if the table's triggers are missing, disabled or
        out of date: without them its marks would stop telling the truth."""
        problems = self.trigger_problems()
        if problems:
            raise SetupError(
                f"{self.schema}.{self.config.table}: {'; '.join(problems)} (a trigger is "
                "dropped with a column by DROP ... CASCADE; text_template, primary_key or the "
                "table's own triggers may have changed since init-db); fix that and run "
                "`vector-pipeline init-db`"
            )

    def _waiting(self, collection: str) -> sql.Composable:
        """Pending for `collection`, and not skipped for the text it has now (alias `t`).

        A skipped row is not retried on every sync; once its text changes, its version no
        longer matches the skip and it is tried again.
        """
        return sql.SQL(
            "{pending} AND NOT EXISTS (SELECT 1 FROM {skips} AS s WHERE s.table_name = {name} "
            "AND s.collection = {collection} "
            # In the skip index's collation, so the index serves it; then the text itself.
            'AND md5(s.row_key) = md5({key_text}) COLLATE "default" '
            "AND s.row_key = {key_text} AND s.version = {version})"
        ).format(
            pending=pending_condition(collection),
            skips=self._skips,
            name=sql.Literal(self.config.name),
            collection=sql.Literal(collection),
            key_text=self.key.text("t"),
            version=self._version,
        )

    def pending_batches(self, collection: str, batch_size: int) -> Iterator[list[SourceRow]]:
        """Claim and read pending rows in key order, `batch_size` at a time (see `claims.py`).

        Each batch is one autocommit statement: no transaction stays open while it is embedded.
        Rows claimed by other workers are passed over; the caller releases its claims when it
        marks the rows (`mark_embedded`) or gives up (`Claims.release_all`).
        """
        # The key columns ride along only to order by: values such as a date 'infinity' or
        # a year BC have no Python form, and the key travels as its text anyway.
        order = [
            sql.Identifier(f"__vector_pipeline_order_{i}") for i in range(len(self.key.columns))
        ]
        key_text = sql.Identifier(KEY_TEXT)
        template = """
            WITH picked AS (
                SELECT {selected}, {order_columns}, {version} AS {version_name},
                       {row_key} AS {key_text}
                FROM {relation} AS t
                WHERE {pending} AND {unclaimed} %s
                ORDER BY {order} LIMIT %%(limit)s
                FOR NO KEY UPDATE OF t SKIP LOCKED
            ), claimed AS ({claim})
            SELECT {picked_columns}, picked.{version_name}, picked.{key_text},
                   claimed.row_key IS NOT NULL AS {mine}
            FROM picked LEFT JOIN claimed
                ON claimed.row_key = picked.{key_text} COLLATE "C"
            ORDER BY {picked_order}
            """

        def parts() -> dict[str, sql.Composable]:  # built again for the safe read
            return {
                "selected": self.select_values("t"),
                "order_columns": sql.SQL(", ").join(
                    sql.SQL("t.{} AS {}").format(sql.Identifier(c), alias)
                    for c, alias in zip(self.key.columns, order, strict=True)
                ),
                "picked_columns": self.value_names("picked"),
                "picked_order": sql.SQL(", ").join(sql.SQL("picked.{}").format(o) for o in order),
                "version": self._version,
                "version_name": sql.Identifier(VERSION),
                "row_key": self.key.text("t"),
                "key_text": key_text,
                "relation": self._relation,
                "pending": self._waiting(collection),
                "unclaimed": self.claims.unclaimed(collection, self.key.text("t")),
                "order": self.key.columns_of("t"),
                "claim": self.claims.insert(collection, sql.Identifier("picked"), key_text),
                "mine": sql.Identifier(MINE),
            }

        # A row another worker claimed in the same instant is that worker's to embed.
        yield from self._keyset_pages(template, parts, batch_size, keep=lambda r: r.pop(MINE))

    def scan(
        self, *, marked_in: str | None = None, with_values: bool = False, page: int = SCAN_PAGE
    ) -> Iterator[list[SourceRow]]:
        """Every row in key order, `page` at a time, read only (no claim, no lock): only rows
        marked for `marked_in` when given; with `with_values`, the text, payload and name
        columns and the text version too (else `values` is empty and `version` blank).

        Each page is one statement (keyset pagination on the key), so no transaction stays
        open between pages and a table of any size is read in bounded memory.
        """
        template = """
            SELECT {key_text} AS {key_name}, {version} AS {version_name} {selected}
            FROM {relation} AS t WHERE {marked} %s ORDER BY {order} LIMIT %%(limit)s
            """

        def parts() -> dict[str, sql.Composable]:  # built again for the safe read
            return {
                "key_text": self.key.text("t"),
                "key_name": sql.Identifier(KEY_TEXT),
                "version": self._version if with_values else sql.SQL("''"),
                "version_name": sql.Identifier(VERSION),
                "selected": sql.SQL(", {}").format(self.select_values("t"))
                if with_values
                else sql.SQL(""),
                "relation": self._relation,
                "marked": sql.SQL("NOT ({})").format(pending_condition(marked_in))
                if marked_in
                else sql.SQL("true"),
                "order": self.key.columns_of("t"),
            }

        yield from self._keyset_pages(template, parts, page)

    def _keyset_pages(
        self,
        template: str,
        parts: Callable[[], dict[str, sql.Composable]],
        limit: int,
        keep: Callable[[dict[str, Any]], bool] | None = None,
    ) -> Iterator[list[SourceRow]]:
        """Run `template` a page at a time in key order: its `%s` takes the keyset condition,
        `%%(limit)s` the page size, and each row carries its key text and version under
        KEY_TEXT and VERSION; `parts()` gives what the template's fields stand for. Yields the
        rows `keep` keeps (it sees each record first), as SourceRows; a page it keeps none of
        is not yielded."""
        params: dict[str, Any] = {"limit": limit}

        def page() -> list[dict[str, Any]]:
            # Two statements rather than `(after IS NULL OR key > after)`, which a generic
            # plan could not turn into an index range.
            after = sql.SQL("AND {}").format(self.key.after("t", sql.SQL("%(after)s::text")))
            filled = sql.SQL(template % ("{after}" if "after" in params else "")).format(
                **parts(), after=after
            )
            with self.conn.cursor(row_factory=dict_row) as cursor:
                return cursor.execute(filled, params).fetchall()

        while True:
            records = self.read_safely(page)
            if not records:
                return
            batch = []
            for record in records:
                kept = keep(record) if keep else True
                key = record.pop(KEY_TEXT)
                version = record.pop(VERSION)
                if kept:
                    batch.append(self.read_row(key, version, record))
            if batch:
                yield batch
            if len(records) < limit:
                return
            params["after"] = key

    def rows(self, keys: Sequence[str]) -> dict[str, SourceRow]:
        """The rows with exactly these key texts (gone ones are left out), with their text,
        payload and name columns and text version, read only; by key text."""
        return self._rows_by_key(keys, texts=True)

    def _rows_by_key(self, keys: Sequence[str], *, texts: bool) -> dict[str, SourceRow]:
        """The rows with exactly these key texts, by key text: with `texts`, every column a
        sync reads and the text version; else only the payload and name columns (`version`
        blank)."""
        if not keys:
            return {}

        def read() -> list[dict[str, Any]]:
            query = sql.SQL(
                "SELECT v.k AS {key_name}, {version} AS {version_name}, {columns} "
                "FROM unnest(%s::text[]) AS v(k) JOIN {relation} AS t ON {match}"
            ).format(
                key_name=sql.Identifier(KEY_TEXT),
                version=self._version if texts else sql.SQL("''"),
                version_name=sql.Identifier(VERSION),
                columns=self.select_values("t", texts=texts),
                relation=self._relation,
                match=self.key.match("t", sql.SQL("v.k")),
            )
            with self.conn.cursor(row_factory=dict_row) as cursor:
                return cursor.execute(query, (list(keys),)).fetchall()

        found: dict[str, SourceRow] = {}
        for record in self.read_safely(read):
            key = record.pop(KEY_TEXT)
            version = record.pop(VERSION)
            found[key] = self.read_row(key, version, record)
        return found

    def mark_embedded(
        self, collection: str, rows: Sequence[SourceRow], release: Sequence[SourceRow] = ()
    ) -> int:
        """Add `collection` to `embedded_in` of rows whose text is still as read, release the
        claims on `release` (the whole batch), and commit.

        Returns how many rows were marked. A row edited since it was read fails the version
        check and stays pending; its point is overwritten by the next sync.
        """
        query = sql.SQL(
            """
            UPDATE {relation} AS t
            SET {embedded_in} = CASE WHEN jsonb_typeof(t.{embedded_in}) = 'array'
                                     THEN t.{embedded_in} ELSE '[]'::jsonb END
                                || {marker}
            FROM unnest(%(keys)s::text[], %(versions)s::text[]) AS v(key, version)
            WHERE {match} AND {version} = v.version AND {pending}
            """
        ).format(
            relation=self._relation,
            embedded_in=sql.Identifier(EMBEDDED_IN),
            marker=collection_marker(collection),
            match=self.key.match("t", sql.SQL("v.key")),
            version=self._version,
            pending=pending_condition(collection),
        )
        marked = 0
        with self.conn.transaction():
            if rows:
                marked = self.conn.execute(
                    query,
                    {
                        "keys": [row.key for row in rows],
                        "versions": [row.version for row in rows],
                    },
                ).rowcount
                failpoint("mark_before_commit")
                # Rows skipped before that now have a point are skipped no more.
                self.conn.execute(
                    sql.SQL(
                        "DELETE FROM {} WHERE table_name = %s AND collection = %s "
                        "AND row_key = ANY(%s::text[])"
                    ).format(self._skips),
                    (self.config.name, collection, [row.key for row in rows]),
                )
            # In the same transaction as the mark: other workers see the claim or the mark.
            self.claims.release(collection, [row.key for row in release])
        return marked

    def counts(self, collection: str) -> TableCounts:
        """Rows in all, embedded and skipped, from one snapshot (so they agree). The total is
        a plain count; the rest comes from the partial index, in time proportional to the
        rows that lack the collection rather than to the table."""
        total_query = sql.SQL("SELECT count(*) FROM {}").format(self._relation)
        with self._transaction(snapshot=True) as steerable:
            total = self.conn.execute(total_query).fetchone()[0]
            lacking, skipped = self._lacking_and_skipped(collection, steerable)
        return TableCounts(total=total, embedded=total - lacking, skipped=skipped)

    def pending_values(
        self, collection: str, limit: int, *, every_row: bool = False
    ) -> list[tuple[str, dict[str, Any] | None]]:
        """(key text, the text columns' values, or None: no text) of the first `limit` pending
        rows (with `every_row`, of the first rows whether pending or not), read only.

        For estimates (`plan`): no claim is taken and nothing is locked.
        """
        query = sql.SQL("SELECT {}, {} FROM {} AS t WHERE {} ORDER BY {} LIMIT %s").format(
            self.key.text("t"),
            sql.SQL(", ").join(
                sql.SQL("t.{}::text").format(sql.Identifier(c)) for c in self.config.text_columns
            ),
            self._relation,
            sql.SQL("true") if every_row else self._waiting(collection),
            self.key.columns_of("t"),
        )
        columns = self.config.text_columns
        rows: list[tuple[str, dict[str, Any] | None]] = []
        with self.conn.cursor() as cursor:
            for key, *values in cursor.execute(query, (limit,)):
                row = dict(zip(columns, values, strict=True))
                rows.append((key, row if self.config.has_text(row) else None))
        return rows

    def pending_count(self, collection: str) -> int:
        """Rows waiting for `collection`; served by the partial index init-db creates."""
        with self._transaction(snapshot=False) as steerable:
            lacking, skipped = self._lacking_and_skipped(collection, steerable)
        return lacking - skipped

    def _lacking_and_skipped(self, collection: str, steerable: bool) -> tuple[int, int]:
        """Rows whose `embedded_in` lacks `collection`, and how many of those are skipped for
        the text they have now (the rest are pending).

        PostgreSQL has no statistics for `NOT (embedded_in @> ...)`: it guesses that nearly
        every row matches and scans the whole table in parallel (160 ms on 1M rows with
        nothing pending), where the partial index answers in time proportional to the rows
        that match (under 1 ms). So, inside this statement's own transaction, the planner is
        told to prefer indexes and not to start parallel workers. The skipped rows are found
        from the skip table's side, which is small.
        """
        query = sql.SQL(
            "SELECT (SELECT count(*) FROM {relation} AS t WHERE {pending}), "
            "(SELECT count(*) FROM {skips} AS s JOIN {relation} AS t "
            "ON {match} "
            "WHERE s.table_name = {name} AND s.collection = {collection} "
            "AND s.version = {version} AND {pending})"
        ).format(
            relation=self._relation,
            pending=pending_condition(collection),
            skips=self._skips,
            match=self.key.match("t", sql.SQL("s.row_key")),
            name=sql.Literal(self.config.name),
            collection=sql.Literal(collection),
            version=self._version,
        )
        if steerable:
            self.conn.execute("SET LOCAL enable_seqscan = off")
            self.conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")
        return self.conn.execute(query).fetchone()

    @contextmanager
    def _transaction(self, snapshot: bool) -> Iterator[bool]:
        """A transaction of our own, REPEATABLE READ when `snapshot` (several counts that
        must agree); yields whether SET LOCAL is safe in it. On a connection already inside a
        transaction, nothing is started and nothing is set: a SET LOCAL would outlive us."""
        if self.conn.info.transaction_status != TransactionStatus.IDLE:
            yield False
            return
        with self.conn.transaction():
            if snapshot:
                self.conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            yield True

    def has_pending(self, collection: str) -> bool:
        """Whether any row is waiting; reads the first entry of the partial index.

        Written as ORDER BY key LIMIT 1, not EXISTS: PostgreSQL's default estimate for the
        containment test says nearly every row is pending, so for EXISTS it picks a full
        scan (216 ms on 1M rows with nothing pending), while the ordered form walks the
        partial index (under 1 ms).
        """
        query = sql.SQL("SELECT 1 FROM {} AS t WHERE {} ORDER BY {} LIMIT 1").format(
            self._relation, self._waiting(collection), self.key.columns_of("t")
        )
        return self.conn.execute(query).fetchone() is not None

    def record_skips(self, collection: str, skipped: Sequence[tuple[SourceRow, str]]) -> None:
        """Remember rows that cannot be embedded as they are, with why, until their text changes."""
        if not skipped:
            return
        with self.conn.cursor() as cursor:
            cursor.executemany(
                sql.SQL(
                    "INSERT INTO {} (table_name, collection, row_key, version, reason) "
                    "VALUES (%s, %s, %s, %s, %s) "
                    "ON CONFLICT (table_name, collection, md5(row_key)) "
                    "DO UPDATE SET version = EXCLUDED.version, reason = EXCLUDED.reason, "
                    "skipped_at = now()"
                ).format(self._skips),
                [
                    (self.config.name, collection, row.key, row.version, reason)
                    for row, reason in skipped
                ],
            )
        failpoint("after_skip_record")

    def skipped_rows(self, collection: str | None = None) -> list[tuple[str, str, str, Any]]:
        """(collection, row key, reason, when) of the table's skipped rows."""
        query = sql.SQL(
            "SELECT collection, row_key, reason, skipped_at FROM {} WHERE table_name = %s "
            "AND (%s::text IS NULL OR collection = %s) ORDER BY collection, row_key"
        ).format(self._skips)
        return self.conn.execute(query, (self.config.name, collection, collection)).fetchall()

    def existing_keys(self, keys: Sequence[str]) -> set[str]:
        """Which of the key texts `keys` are rows of the table now, with exactly that text.

        A text that is no valid key of the table (a payload written by something else) names
        no row; it is looked up alone so it cannot hide the others.
        """
        if not keys:
            return set()
        # `match` wants exactly that key text, not just an equal key: after `1.50` became
        # `1.5` (equal as numeric) the point hashed from '1.50' belongs to no row.
        query = sql.SQL(
            "SELECT v.k FROM unnest(%s::text[]) AS v(k) WHERE EXISTS "
            "(SELECT 1 FROM {relation} AS t WHERE {match})"
        ).format(relation=self._relation, match=self.key.match("t", sql.SQL("v.k")))
        return {row[0] for row in self._each_valid(query, keys)}

    def keys_equal_to(self, texts: Sequence[str]) -> dict[str, str | None]:
        """For texts another writer printed keys as (the reference design hashed Python's
        `str()` of a key: `'ab   '` for a char(5), `2024-05-01 09:30:00+00:00` for a
        timestamptz), the key text of the row whose key equals each, read as the key's type:
        None when no row has it; absent when the text is no value of that type (a Python tuple
        is no composite key text)."""
        if not texts:
            return {}
        query = sql.SQL(
            "SELECT v.k, (SELECT {key_text} FROM {relation} AS t WHERE ({columns}) = ({typed}) "
            "LIMIT 1) FROM unnest(%s::text[]) AS v(k)"
        ).format(
            key_text=self.key.text("t"),
            relation=self._relation,
            columns=self.key.columns_of("t"),
            typed=sql.SQL(", ").join(self.key.typed(sql.SQL("v.k"))),
        )
        return dict(self._each_valid(query, texts))

    def _each_valid(self, query: sql.Composable, keys: Sequence[str]) -> list[tuple[Any, ...]]:
        """`query`'s rows for the texts `keys` (its one parameter): all at once, or, when one
        of them is no valid value of the key's type, each alone, leaving the invalid out."""
        try:
            with self.conn.transaction():
                return self.conn.execute(query, (list(keys),)).fetchall()
        except psycopg.DataError:
            found: list[tuple[Any, ...]] = []
            for key in keys:
                try:
                    with self.conn.transaction():
                        found += self.conn.execute(query, ([key],)).fetchall()
                except psycopg.DataError:
                    continue
            return found

    def payload_values(self, keys: Sequence[str]) -> dict[str, SourceRow]:
        """The rows with exactly these key texts, by key text, with only their name column
        (in `values`) and payload columns (rows that are gone are left out)."""
        if not self.config.payload_columns_and_name:
            return {}
        return self._rows_by_key(keys, texts=False)

    def mark_pending(self, collection: str, keys: Sequence[str]) -> int:
        """Remove `collection` (only it) from `embedded_in` of the rows with these key texts;
        return how many rows changed. It changes no text or key column, so the reset
        trigger's condition is false for it."""
        # `jsonb - text` drops the matching string elements of an array; only rows still
        # marked (so their embedded_in is an array holding the collection) are touched.
        query = sql.SQL(
            """
            UPDATE {relation} AS t SET {embedded_in} = t.{embedded_in} - %(collection)s::text
            FROM unnest(%(keys)s::text[]) AS v(k)
            WHERE {match} AND NOT ({pending})
            """
        ).format(
            relation=self._relation,
            embedded_in=sql.Identifier(EMBEDDED_IN),
            match=self.key.match("t", sql.SQL("v.k")),
            pending=pending_condition(collection),
        )
        marked = 0
        for start in range(0, len(keys), MARK_CHUNK):
            with self.conn.transaction():
                cursor = self.conn.execute(
                    query,
                    {"collection": collection, "keys": list(keys[start : start + MARK_CHUNK])},
                )
            marked += cursor.rowcount
        return marked

    def void_marks(self, collection: str) -> int:
        """Remove `collection` from `embedded_in` of every row that has it; return how many.

        For a store that lost points (see store_state.py): a page of keys per short
        transaction, so the table is never locked for long.
        """
        query = sql.SQL(
            """
            WITH page AS (
                SELECT {key_columns} FROM {relation} AS t WHERE NOT ({pending})
                ORDER BY {key_columns} LIMIT %s FOR NO KEY UPDATE
            )
            UPDATE {relation} AS t SET {embedded_in} = t.{embedded_in} - %s::text
            FROM page WHERE ({key_columns}) = ({page_columns})
            """
        ).format(
            relation=self._relation,
            key_columns=self.key.columns_of("t"),
            page_columns=self.key.columns_of("page"),
            pending=pending_condition(collection),
            embedded_in=sql.Identifier(EMBEDDED_IN),
        )
        voided = 0
        while True:
            with self.conn.transaction():
                changed = self.conn.execute(query, (VOID_CHUNK, collection)).rowcount
            voided += changed
            if changed < VOID_CHUNK:
                return voided
