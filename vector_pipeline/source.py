"""The PostgreSQL side of a sync: find pending rows, stream them, and mark them embedded.

A row is pending for a collection when its `embedded_in` lacks that collection's name (NULL and
non-arrays count as empty). Rows are read in primary-key order, one bounded batch per short
transaction (keyset pagination), so memory stays flat and no snapshot is held while embedding.
Each row carries a version, a hash of its text columns as read; marking re-checks it, so an edit
that lands while the row is being embedded leaves the row pending instead of marking stale text.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from vector_pipeline.config import TableConfig
from vector_pipeline.database_setup import (
    EMBEDDED_IN,
    check_table,
    collection_marker,
    pending_condition,
)

VERSION = "__vector_pipeline_version"


@dataclass(frozen=True)
class SourceRow:
    key: Any
    version: str
    values: dict[str, Any]


@dataclass(frozen=True)
class TableCounts:
    total: int
    embedded: int

    @property
    def pending(self) -> int:
        return self.total - self.embedded


def connect(database_url: str) -> psycopg.Connection:
    """An autocommit connection: each read stands alone, each write is an explicit transaction."""
    return psycopg.connect(database_url, autocommit=True, application_name="vector_pipeline")


class SourceTable:
    """One configured table, bound to an autocommit connection (see `connect`)."""

    def __init__(self, conn: psycopg.Connection, schema: str, table: TableConfig) -> None:
        self.conn = conn
        self.schema = schema
        self.config = table
        columns = check_table(conn, schema, table)
        if EMBEDDED_IN not in columns:
            raise RuntimeError(
                f"{schema}.{table.table} has no {EMBEDDED_IN} column; run `vector-pipeline init-db`"
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

    def pending_batches(self, collection: str, batch_size: int) -> Iterator[list[SourceRow]]:
        """Pending rows in key order, `batch_size` at a time, each read in its own transaction."""
        selected = sql.SQL(", ").join(
            sql.SQL("t.{}").format(sql.Identifier(c)) for c in self.config.selected_columns
        )
        base = "SELECT {selected}, {version} AS {version_name} FROM {relation} AS t "
        first = sql.SQL(base + "WHERE {pending} ORDER BY t.{pk} LIMIT %(limit)s")
        after = sql.SQL(
            base + "WHERE {pending} AND t.{pk} > %(after)s ORDER BY t.{pk} LIMIT %(limit)s"
        )
        parts = {
            "selected": selected,
            "version": self._version,
            "version_name": sql.Identifier(VERSION),
            "relation": self._relation,
            "pending": pending_condition(collection),
            "pk": self._pk,
        }
        params: dict[str, Any] = {"limit": batch_size}
        query = first.format(**parts)
        next_query = after.format(**parts)
        while True:
            with self.conn.cursor(row_factory=dict_row) as cursor:
                records = cursor.execute(query, params).fetchall()
            if not records:
                return
            batch = [
                SourceRow(
                    key=record[self.config.primary_key],
                    version=record.pop(VERSION),
                    values=record,
                )
                for record in records
            ]
            yield batch
            if len(records) < batch_size:
                return
            query = next_query
            params = {**params, "after": batch[-1].key}

    def mark_embedded(self, collection: str, rows: Sequence[SourceRow]) -> int:
        """Add `collection` to `embedded_in` of rows whose text is still as read, and commit.

        Returns how many rows were marked. A row edited since it was read fails the version
        check and stays pending; its point is overwritten by the next sync.
        """
        if not rows:
            return 0
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
        with self.conn.transaction():
            cursor = self.conn.execute(
                query,
                {
                    "keys": [row.key for row in rows],
                    "versions": [row.version for row in rows],
                },
            )
        return cursor.rowcount

    def counts(self, collection: str) -> TableCounts:
        query = sql.SQL(
            "SELECT count(*), count(*) FILTER (WHERE NOT {pending}) FROM {relation}"
        ).format(pending=pending_condition(collection), relation=self._relation)
        total, embedded = self.conn.execute(query).fetchone()
        return TableCounts(total=total, embedded=embedded)

    def pending_count(self, collection: str) -> int:
        """Rows pending for `collection`; served by the partial index init-db creates."""
        query = sql.SQL("SELECT count(*) FROM {} WHERE {}").format(
            self._relation, pending_condition(collection)
        )
        return self.conn.execute(query).fetchone()[0]

    def has_pending(self, collection: str) -> bool:
        """Whether any row is pending; with the partial index this reads one index page."""
        query = sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE {})").format(
            self._relation, pending_condition(collection)
        )
        return self.conn.execute(query).fetchone()[0]
