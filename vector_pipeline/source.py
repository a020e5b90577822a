"""The PostgreSQL side of a sync: find pending rows, stream them, and mark them embedded.

A row is pending for a collection when its `embedded_in` lacks that collection's name (NULL and
non-arrays count as empty). Rows are read in primary-key order, one bounded batch per short
transaction (keyset pagination), so memory stays flat and no snapshot is held while embedding.
Each row carries a version, a hash of its text columns as read; marking re-checks it, so an edit
that lands while the row is being embedded leaves the row pending instead of marking stale text.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row

from vector_pipeline.claims import Claims
from vector_pipeline.config import ProjectConfig, TableConfig
from vector_pipeline.database_setup import (
    CLAIM_TABLE,
    EMBEDDED_IN,
    SKIP_TABLE,
    SetupError,
    check_table,
    collection_marker,
    pending_condition,
    table_columns,
)
from vector_pipeline.failpoints import failpoint

VERSION = "__vector_pipeline_version"
KEY_TEXT = "__vector_pipeline_key"
MINE = "__vector_pipeline_mine"


@dataclass(frozen=True)
class SourceRow:
    key: Any
    version: str
    values: dict[str, Any]


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
    """An autocommit connection: each read stands alone, each write is an explicit transaction."""
    return psycopg.connect(database_url, autocommit=True, application_name="vector_pipeline")


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
        state = state_schema or schema
        self._skips = sql.Identifier(state, SKIP_TABLE)
        columns = check_table(conn, schema, table)
        missing = [
            name
            for name, present in (
                (f"{EMBEDDED_IN} column", EMBEDDED_IN in columns),
                (f"{state}.{SKIP_TABLE}", table_columns(conn, state, SKIP_TABLE)),
                (f"{state}.{CLAIM_TABLE}", table_columns(conn, state, CLAIM_TABLE)),
            )
            if not present
        ]
        if missing:
            raise SetupError(
                f"{schema}.{table.table} is not set up for syncing (no {', '.join(missing)}); "
                "run `vector-pipeline init-db`"
            )
        self._relation = sql.Identifier(schema, table.table)
        self._pk = sql.Identifier(table.primary_key)
        # Keys are sent back as an array of the column's own type so the primary-key index
        # serves the mark.
        self._pk_type = sql.SQL(columns[table.primary_key].type)
        text_columns = sql.SQL(", ").join(
            sql.SQL("t.{}::text").format(sql.Identifier(c)) for c in table.text_columns
        )
        self._version = sql.SQL("md5(ROW({})::text)").format(text_columns)
        self.claims = Claims(conn, state, table.name, self._pk_type)

    @classmethod
    def for_config(
        cls, conn: psycopg.Connection, config: ProjectConfig, table: TableConfig
    ) -> SourceTable:
        return cls(conn, config.tables.schema_for(table), table, config.tables.schema_)

    def _waiting(self, collection: str) -> sql.Composable:
        """Pending for `collection`, and not skipped for the text it has now (alias `t`).

        A skipped row is not retried on every sync; once its text changes, its version no
        longer matches the skip and it is tried again.
        """
        return sql.SQL(
            "{pending} AND NOT EXISTS (SELECT 1 FROM {skips} AS s WHERE s.table_name = {name} "
            "AND s.collection = {collection} AND s.row_key = t.{pk}::text "
            "AND s.version = {version})"
        ).format(
            pending=pending_condition(collection),
            skips=self._skips,
            name=sql.Literal(self.config.name),
            collection=sql.Literal(collection),
            pk=self._pk,
            version=self._version,
        )

    def pending_batches(self, collection: str, batch_size: int) -> Iterator[list[SourceRow]]:
        """Claim and read pending rows in key order, `batch_size` at a time (see `claims.py`).

        Each batch is one autocommit statement: no transaction stays open while it is embedded.
        Rows claimed by other workers are passed over; the caller releases its claims when it
        marks the rows (`mark_embedded`) or gives up (`Claims.release_all`).
        """
        selected = sql.SQL(", ").join(
            sql.SQL("t.{}").format(sql.Identifier(c)) for c in self.config.selected_columns
        )
        key_text = sql.Identifier(KEY_TEXT)
        template = """
            WITH picked AS (
                SELECT {selected}, {version} AS {version_name}, t.{pk}::text AS {key_text}
                FROM {relation} AS t
                WHERE {pending} AND {unclaimed} %s
                ORDER BY t.{pk} LIMIT %%(limit)s
                FOR NO KEY UPDATE OF t SKIP LOCKED
            ), claimed AS ({claim})
            SELECT picked.*, claimed.row_key IS NOT NULL AS {mine}
            FROM picked LEFT JOIN claimed ON claimed.row_key = picked.{key_text}
            ORDER BY picked.{pk}
            """
        parts = {
            "selected": selected,
            "version": self._version,
            "version_name": sql.Identifier(VERSION),
            "key_text": key_text,
            "relation": self._relation,
            "pending": self._waiting(collection),
            "unclaimed": self.claims.unclaimed(collection, sql.SQL("t.{}::text").format(self._pk)),
            "pk": self._pk,
            "claim": self.claims.insert(collection, sql.Identifier("picked"), key_text),
            "mine": sql.Identifier(MINE),
        }
        # Two statements rather than `(after IS NULL OR key > after)`, which a generic plan
        # could not turn into an index range.
        query = sql.SQL(template % "").format(**parts)
        next_query = sql.SQL(template % "AND t.{pk} > %(after)s").format(**parts)
        params: dict[str, Any] = {"limit": batch_size}
        while True:
            with self.conn.cursor(row_factory=dict_row) as cursor:
                records = cursor.execute(query, params).fetchall()
            if not records:
                return
            batch = []
            for record in records:
                # A row another worker claimed in the same instant is that worker's to embed.
                mine = record.pop(MINE)
                del record[KEY_TEXT]
                version = record.pop(VERSION)
                if mine:
                    batch.append(SourceRow(record[self.config.primary_key], version, record))
            if batch:
                yield batch
            if len(records) < batch_size:
                return
            query = next_query
            params = {**params, "after": records[-1][self.config.primary_key]}

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
            FROM unnest(%(keys)s::{pk_type}[], %(versions)s::text[]) AS v(key, version)
            WHERE t.{pk} = v.key AND {version} = v.version AND {pending}
            """
        ).format(
            relation=self._relation,
            embedded_in=sql.Identifier(EMBEDDED_IN),
            marker=collection_marker(collection),
            pk_type=self._pk_type,
            pk=self._pk,
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
                    (self.config.name, collection, [str(row.key) for row in rows]),
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

    def pending_texts(self, collection: str, limit: int) -> list[str | None]:
        """The texts the first `limit` pending rows would embed (None: no text), read only.

        For estimates (`plan`): no claim is taken and nothing is locked.
        """
        query = sql.SQL("SELECT {} FROM {} AS t WHERE {} ORDER BY t.{} LIMIT %s").format(
            sql.SQL(", ").join(sql.Identifier(c) for c in self.config.text_columns),
            self._relation,
            self._waiting(collection),
            self._pk,
        )
        columns = self.config.text_columns
        texts: list[str | None] = []
        with self.conn.cursor() as cursor:
            for values in cursor.execute(query, (limit,)):
                row = dict(zip(columns, values, strict=True))
                texts.append(self.config.render_text(row) if self.config.has_text(row) else None)
        return texts

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
            "ON t.{pk} = s.row_key::{pk_type} "
            "WHERE s.table_name = {name} AND s.collection = {collection} "
            "AND s.version = {version} AND {pending})"
        ).format(
            relation=self._relation,
            pending=pending_condition(collection),
            skips=self._skips,
            pk=self._pk,
            pk_type=self._pk_type,
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
        query = sql.SQL("SELECT 1 FROM {} AS t WHERE {} ORDER BY t.{} LIMIT 1").format(
            self._relation, self._waiting(collection), self._pk
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
                    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (table_name, collection, row_key) "
                    "DO UPDATE SET version = EXCLUDED.version, reason = EXCLUDED.reason, "
                    "skipped_at = now()"
                ).format(self._skips),
                [
                    (self.config.name, collection, str(row.key), row.version, reason)
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

    def existing_keys(self, keys: Sequence[Any]) -> set[Any]:
        """Which of `keys` are rows of the table now (keys as Python values: int, str)."""
        if not keys:
            return set()
        query = sql.SQL("SELECT {pk} FROM {relation} WHERE {pk} = ANY(%s::{pk_type}[])").format(
            pk=self._pk, relation=self._relation, pk_type=self._pk_type
        )
        # Compared as text: a uuid key arrives from JSON as a string, the row's as a UUID.
        found = {str(row[0]) for row in self.conn.execute(query, (list(keys),))}
        return {key for key in keys if str(key) in found}
