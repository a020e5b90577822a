"""Deletes: drain the tombstones that DELETE and TRUNCATE triggers leave, from every collection.

Each tombstone remembers which collections it has been cleaned from. A sync of a table cleans
its own collection and every other collection of that table that `repair` is not working on.
Before it deletes the point of a key that is gone it claims the key (see `claims.py`), so it
never races a worker writing a point for a re-inserted row with the same key: a key that a
worker holds keeps its tombstone until a later drain. A tombstone goes away once every
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
    conn: psycopg.Connection,
    schema: str,
    table: TableConfig,
    collection: str,
    logger: Any = log,
    *,
    shared: bool = False,
) -> Iterator[None]:
    """Hold the (table, collection) lock; waits for a conflicting holder.

    Syncs hold it shared, so several share the work; `repair` holds it exclusively, so no sync
    marks rows while it compares and fixes. A session-level advisory lock: PostgreSQL releases
    it if the process dies, so a crashed sync never leaves it behind.
    """
    mode = "_shared" if shared else ""
    key = _lock_key(schema, table, collection)
    (got,) = conn.execute(f"SELECT pg_try_advisory_lock{mode}(hashtext(%s))", (key,)).fetchone()
    if not got:
        holder = "a repair" if shared else "another sync or repair"
        logger.info(f"{holder} of {table.name} in {collection} is running; waiting for it")
        conn.execute(f"SELECT pg_advisory_lock{mode}(hashtext(%s))", (key,))
    try:
        yield
    finally:
        conn.execute(f"SELECT pg_advisory_unlock{mode}(hashtext(%s))", (key,))


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
        if (
            collection != own_collection
            and not conn.execute(
                "SELECT pg_try_advisory_lock_shared(hashtext(%s))", (key,)
            ).fetchone()[0]
        ):
            continue  # `repair` is working on that collection; a later drain cleans it
        try:
            _clean_collection(source, qdrant, tombstones, collection)
        finally:
            if collection != own_collection:
                conn.execute("SELECT pg_advisory_unlock_shared(hashtext(%s))", (key,))
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
    after = 0
    while True:
        page = conn.execute(
            sql.SQL(
                "SELECT id, row_key, truncated FROM {} WHERE table_name = %s "
                "AND NOT cleaned @> %s::jsonb AND id > %s ORDER BY id LIMIT %s"
            ).format(tombstones),
            (table.name, marker, after, PAGE),
        ).fetchall()
        if not page:
            return
        after = page[-1][0]
        held: set[Any] = set()
        if exists:
            if any(truncated for _, _, truncated in page):
                for keys in _point_row_ids(qdrant, table, collection):
                    held |= _delete_gone(source, qdrant, collection, keys)
            else:
                held = _delete_gone(source, qdrant, collection, [key for _, key, _ in page])
        failpoint("after_tombstone_delete")
        # Recorded only after Qdrant applied the deletes: a crash in between redoes them. A
        # truncate with any key held by a worker waits for a later drain, as does that key.
        done = [
            id_
            for id_, key, truncated in page
            if not (held and truncated) and (key is None or key not in held)
        ]
        conn.execute(
            sql.SQL("UPDATE {} SET cleaned = cleaned || %s::jsonb WHERE id = ANY(%s)").format(
                tombstones
            ),
            (marker, done),
        )


def _delete_gone(
    source: SourceTable, qdrant: QdrantClient, collection: str, keys: list[Any]
) -> set[Any]:
    """Delete the points of `keys` whose rows are gone; return the keys a worker holds.

    A key that exists again belongs to a re-inserted row: it is pending (its point will be
    overwritten) or already synced with its new text, so its point stays. The claims keep a
    re-inserted row from being embedded between the existence check and the delete.
    """
    claims, table = source.claims, source.config
    claimed = claims.claim_keys(collection, keys)
    try:
        present = source.existing_keys(claimed)
        gone = [key for key in claimed if key not in present]
        delete_points(
            qdrant, collection, [point_id(table.data_type, key, collection) for key in gone]
        )
    finally:
        claims.release(collection, claimed)
    got = set(claimed)
    return {key for key in keys if key not in got}


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
