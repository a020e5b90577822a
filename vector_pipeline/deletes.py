"""Deletes: drain the tombstones that DELETE and TRUNCATE triggers leave, from every collection.

Each tombstone remembers which collections it has been cleaned from. A sync of a table cleans
its own collection and every other collection of that table that no sync is writing at the
moment (it takes that collection's lock without waiting); a collection being synced elsewhere
is cleaned by that sync. This keeps a drain from deleting a point that a concurrent sync has
just written for a re-inserted row with the same key. A tombstone goes away once every
configured collection is clean of it; until then a crash only means the delete is redone.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql
from qdrant_client import QdrantClient, models

from vector_pipeline.config import TableConfig
from vector_pipeline.database_setup import TOMBSTONE_TABLE
from vector_pipeline.failpoints import failpoint
from vector_pipeline.source import SourceTable
from vector_pipeline.vector_store import delete_points, point_id

PAGE = 1000
log = logging.getLogger(__name__)


def _lock_key(schema: str, table: TableConfig, collection: str) -> str:
    return f"vector_pipeline|{schema}.{table.table}|{collection}"


@contextmanager
def collection_lock(
    conn: psycopg.Connection, schema: str, table: TableConfig, collection: str, logger: Any = log
) -> Iterator[None]:
    """Hold the (table, collection) lock for a whole sync; waits for another holder.

    A session-level advisory lock: PostgreSQL releases it if the process dies, so a crashed
    sync never leaves it behind.
    """
    key = _lock_key(schema, table, collection)
    (got,) = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (key,)).fetchone()
    if not got:
        logger.info(f"another sync of {table.name} into {collection} is running; waiting for it")
        conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (key,))
    try:
        yield
    finally:
        conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (key,))


def _try_lock(conn: psycopg.Connection, key: str) -> bool:
    return conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (key,)).fetchone()[0]


def drain_tombstones(
    source: SourceTable,
    qdrant: QdrantClient,
    state_schema: str,
    own_collection: str,
    collections: Sequence[str],
) -> int:
    """Delete the points of deleted rows; return how many tombstones were finished.

    The caller holds `own_collection`'s lock (see `collection_lock`).
    """
    conn, table = source.conn, source.config
    tombstones = sql.Identifier(state_schema, TOMBSTONE_TABLE)
    all_collections = sorted({own_collection, *collections})
    for collection in all_collections:
        key = _lock_key(source.schema, table, collection)
        if collection != own_collection and not _try_lock(conn, key):
            continue  # a sync of that collection is running and will clean it itself
        try:
            _clean_collection(source, qdrant, tombstones, collection)
        finally:
            if collection != own_collection:
                conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (key,))
    finished = conn.execute(
        sql.SQL("DELETE FROM {} WHERE table_name = %s AND cleaned @> %s::jsonb").format(tombstones),
        (table.name, json.dumps(all_collections)),
    )
    return finished.rowcount


def _clean_collection(
    source: SourceTable, qdrant: QdrantClient, tombstones: sql.Identifier, collection: str
) -> None:
    conn, table = source.conn, source.config
    marker = json.dumps([collection])
    exists = qdrant.collection_exists(collection)
    while True:
        page = conn.execute(
            sql.SQL(
                "SELECT id, row_key, truncated FROM {} WHERE table_name = %s "
                "AND NOT cleaned @> %s::jsonb ORDER BY id LIMIT %s"
            ).format(tombstones),
            (table.name, marker, PAGE),
        ).fetchall()
        if not page:
            return
        if exists:
            if any(truncated for _, _, truncated in page):
                for keys in _point_row_ids(qdrant, table, collection):
                    _delete_gone(source, qdrant, collection, keys)
            else:
                _delete_gone(source, qdrant, collection, [key for _, key, _ in page])
        failpoint("after_tombstone_delete")
        # Recorded only after Qdrant applied the deletes: a crash in between redoes them.
        conn.execute(
            sql.SQL("UPDATE {} SET cleaned = cleaned || %s::jsonb WHERE id = ANY(%s)").format(
                tombstones
            ),
            (marker, [row[0] for row in page]),
        )


def _delete_gone(
    source: SourceTable, qdrant: QdrantClient, collection: str, keys: list[Any]
) -> None:
    # A key that exists again belongs to a re-inserted row: it is pending (its point will be
    # overwritten) or already synced with its new text, so its point stays.
    present = source.existing_keys(keys)
    gone = [key for key in keys if key not in present]
    table = source.config
    delete_points(qdrant, collection, [point_id(table.data_type, key, collection) for key in gone])


def _point_row_ids(
    qdrant: QdrantClient, table: TableConfig, collection: str
) -> Iterator[list[Any]]:
    """Row ids of every point the table has in `collection`, a page at a time (TRUNCATE)."""
    only_table = models.Filter(
        must=[
            models.FieldCondition(key="meta_data.table", match=models.MatchValue(value=table.name))
        ]
    )
    offset = None
    while True:
        points, offset = qdrant.scroll(
            collection,
            scroll_filter=only_table,
            limit=PAGE,
            offset=offset,
            with_payload=["meta_data.row_id"],
            with_vectors=False,
        )
        yield [point.payload["meta_data"]["row_id"] for point in points]
        if offset is None:
            return
