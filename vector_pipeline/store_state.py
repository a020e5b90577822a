"""Marks never outlive the points they vouch for: detect a Qdrant store that is not the one the
marks were made against.

A mark (`embedded_in` holding a collection) promises a point. That promise breaks silently
when the store changes under the marks: the collection is deleted and recreated, `QDRANT_PATH`
points at a new folder, or an older snapshot is restored. So each (table, collection) carries
a record in two places, written together:

- PostgreSQL: `vector_pipeline_store` (table_name, collection, token, generation);
- Qdrant: the collection's metadata key `vector_pipeline.<table>` = {token, generation}.

The token is drawn when the record is (re)started; the generation advances when a sync starts
(before it writes anything) and again when it ends, if it changed points. A sync compares the
two before it reads a row. If they differ (a new collection has no record; a snapshot restored
from before a sync, even one that crashed, has an older generation; another environment's copy
has another token), every mark of the table for that collection is void: the marks are
removed, points whose rows are gone are deleted, and a new record is started. Nothing is paid
twice for it: the sync marks a pending row without embedding it when the point under its id
already holds its current text (`content_hash`).

Order of writes. Advancing updates the PostgreSQL row (locked, uncommitted), then Qdrant, then
commits; starting writes Qdrant first. A crash in between leaves the two different, which only
costs one needless re-check. Limit: a snapshot taken while a sync was writing, restored after
that sync crashed before it finished, carries the generation PostgreSQL still has; `repair`
finds what such a restore lost.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from qdrant_client import QdrantClient

from vector_pipeline.config import TableConfig

STORE_TABLE = "vector_pipeline_store"
METADATA_PREFIX = "vector_pipeline."


@dataclass(frozen=True)
class Record:
    token: str
    generation: int


class StoreState:
    """The store record of one table in one collection."""

    def __init__(
        self,
        conn: psycopg.Connection,
        qdrant: QdrantClient | None,
        state_schema: str,
        table: TableConfig,
        collection: str,
    ) -> None:
        """`qdrant` may be None for `rendering_changed` alone."""
        self.conn, self.qdrant = conn, qdrant
        self.table_name, self.collection = table.name, collection
        self.rendering = table.rendering
        self._relation = sql.Identifier(state_schema, STORE_TABLE)
        self._key = f"{METADATA_PREFIX}{table.name}"

    def recorded(self, *, for_share: bool = False) -> Record | None:
        """What PostgreSQL recorded (None: nothing yet); `for_share` locks the row against
        `advance` until the caller's transaction ends."""
        row = self._row(for_share)
        return Record(str(row[0]), row[1]) if row else None

    def _row(self, for_share: bool) -> tuple[Any, ...] | None:
        return self.conn.execute(
            sql.SQL(
                "SELECT token, generation, rendering FROM {} "
                "WHERE table_name = %s AND collection = %s {}"
            ).format(self._relation, sql.SQL("FOR SHARE" if for_share else "")),
            (self.table_name, self.collection),
        ).fetchone()

    def rendering_changed(self) -> bool:
        """Whether the marks were made for texts another text_template rendered (PostgreSQL
        only): the next sync re-checks every row and embeds those whose text changed."""
        row = self._row(for_share=False)
        return row is not None and row[2] != self.rendering

    def in_store(self) -> Record | None:
        """What the collection's metadata says (None: no collection, or no record in it)."""
        if self.qdrant is None or not self.qdrant.collection_exists(self.collection):
            return None
        metadata = self.qdrant.get_collection(self.collection).config.metadata or {}
        value: Any = metadata.get(self._key)
        if not isinstance(value, dict):
            return None
        token, generation = value.get("token"), value.get("generation")
        if not isinstance(token, str) or not isinstance(generation, int):
            return None
        return Record(token, generation)

    def matches(self) -> bool:
        """Whether the marks were made against this very store, for the text the table
        renders now (see the module docstring)."""
        return self.mismatch() is None

    def mismatch(self) -> str | None:
        """Why the marks cannot be trusted, or None when they can.

        PostgreSQL's record is read with a share lock held while Qdrant is read, so a
        concurrent `advance` (which writes Qdrant while it holds the row) is seen whole or not
        at all, never half: a worker starting beside another never mistakes it for a restore.
        """
        with self.conn.transaction():
            row = self._row(for_share=True)
            if row is None:
                return "has no record of this table"
            if row[2] != self.rendering:
                return "holds texts rendered by another text_template"
            if Record(str(row[0]), row[1]) != self.in_store():
                return "is not the store the rows were marked in (recreated, replaced or restored)"
            return None

    def start(self) -> Record:
        """A new record, in Qdrant first, then PostgreSQL (after the marks were voided)."""
        record = Record(str(uuid.uuid4()), 1)
        self._write_store(record)
        with self.conn.transaction():
            self.conn.execute(
                sql.SQL(
                    "INSERT INTO {} (table_name, collection, token, generation, rendering) "
                    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (table_name, collection) "
                    "DO UPDATE SET token = EXCLUDED.token, generation = EXCLUDED.generation, "
                    "rendering = EXCLUDED.rendering, updated_at = now()"
                ).format(self._relation),
                (
                    self.table_name,
                    self.collection,
                    record.token,
                    record.generation,
                    self.rendering,
                ),
            )
        return record

    def advance(self) -> None:
        """Move to the next generation (a sync starts, or ended having changed points):
        PostgreSQL's row is locked and updated, Qdrant is written, then PostgreSQL commits
        (concurrent workers take turns here). A store that does not match is left as it is:
        copying the record into it would make it look vouched for."""
        with self.conn.transaction() as transaction:
            row = self.conn.execute(
                sql.SQL(
                    "UPDATE {} SET generation = generation + 1, updated_at = now() "
                    "WHERE table_name = %s AND collection = %s RETURNING token, generation"
                ).format(self._relation),
                (self.table_name, self.collection),
            ).fetchone()
            if row is None:
                return
            if self.in_store() != Record(str(row[0]), row[1] - 1):
                raise psycopg.Rollback(transaction)
            self._write_store(Record(str(row[0]), row[1]))

    def _write_store(self, record: Record) -> None:
        assert self.qdrant is not None, "writing a store record needs the store"
        self.qdrant.update_collection(
            self.collection,
            metadata={self._key: {"token": record.token, "generation": record.generation}},
        )


def create_store_table(conn: psycopg.Connection, schema: str) -> None:
    conn.execute(
        sql.SQL(
            """
            CREATE TABLE IF NOT EXISTS {} (
                table_name  text NOT NULL,
                collection  text NOT NULL,
                token       uuid NOT NULL,              -- drawn when the record (re)starts
                generation  bigint NOT NULL,            -- syncs that changed points since
                rendering   text,                       -- TableConfig.rendering of the marks
                updated_at  timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (table_name, collection)
            )
            """
        ).format(sql.Identifier(schema, STORE_TABLE))
    )


def vouch_for(
    conn: psycopg.Connection,
    qdrant: QdrantClient,
    state_schema: str,
    table: TableConfig,
    collection: str,
) -> Record:
    """Record the existing `collection` in `qdrant` as the store the table's marks were made
    in: PostgreSQL's record is copied into it (one is started if there is none).

    Only for stand-ins, never for a real store, which earns its record by syncing: tests and
    benchmarks that give each worker process its own local store in place of one shared
    server, or that generate a table "as after a full sync" without writing its points.
    """
    state = StoreState(conn, qdrant, state_schema, table, collection)
    record = state.recorded()
    if record is None:
        return state.start()
    state._write_store(record)
    return record
