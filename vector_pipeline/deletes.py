"""Deletes: drain the tombstones that DELETE and TRUNCATE triggers leave, from every collection
(and the payload refreshes queued beside them, see payloads.py).

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
from qdrant_client import QdrantClient

from vector_pipeline.config import TableConfig
from vector_pipeline.database import usable
from vector_pipeline.database_setup import TOMBSTONE_TABLE
from vector_pipeline.failpoints import failpoint
from vector_pipeline.messages import shorten
from vector_pipeline.payloads import refresh_payloads
from vector_pipeline.points import key_text_of_row_id, row_point_ids, scroll_table_points
from vector_pipeline.source import SourceTable
from vector_pipeline.store_state import StoreState
from vector_pipeline.vector_store import delete_points

PAGE = 1000  # tombstones per round
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
        logger.warning(
            f"{holder} of {shorten(table.name)} in {shorten(collection)} is running; waiting for it"
        )
        # The wait is the point (the holder finishes its work), so lock_timeout, meant for
        # locks held by forgotten transactions, does not cut it short.
        with conn.transaction():
            conn.execute("SET LOCAL lock_timeout = 0")
            conn.execute(f"SELECT pg_advisory_lock{mode}(hashtext(%s))", (key,))
    try:
        yield
    finally:
        if usable(conn):
            conn.execute(f"SELECT pg_advisory_unlock{mode}(hashtext(%s))", (key,))


def drain_tombstones(
    source: SourceTable,
    qdrant: QdrantClient,
    state_schema: str,
    own_collection: str,
    collections: Sequence[str],
) -> tuple[int, int]:
    """Delete the points of deleted rows and rewrite the payloads queued for refresh; return
    how many deletions and how many refreshes were finished in every collection.

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
            cleaned = _clean_collection(source, qdrant, tombstones, collection)
            if cleaned and collection != own_collection:
                # Points went from that collection too: a snapshot of it from before now
                # holds them, so its store record moves on (store_state.py); the own
                # collection's record moves on at the end of the sync.
                StoreState(conn, qdrant, state_schema, table, collection).advance()
        finally:
            if collection != own_collection and usable(conn):
                conn.execute("SELECT pg_advisory_unlock_shared(hashtext(%s))", (key,))
    finished = conn.execute(
        sql.SQL(
            "DELETE FROM {} WHERE table_name = %s AND cleaned @> %s::jsonb RETURNING refresh"
        ).format(tombstones),
        (table.name, json.dumps(all_collections)),
    ).fetchall()
    refreshed = sum(1 for (refresh,) in finished if refresh)
    return len(finished) - refreshed, refreshed


def _clean_collection(
    source: SourceTable, qdrant: QdrantClient, tombstones: sql.Identifier, collection: str
) -> int:
    """Apply the table's tombstones not yet applied to `collection`; return how many."""
    conn, table = source.conn, source.config
    marker = json.dumps([collection])
    exists = qdrant.collection_exists(collection)
    after = 0
    applied = 0
    while True:
        # Tombstones written before key texts hold the key as JSON (`row_key`); for the
        # integer and text keys of those days its text is the key text.
        page = conn.execute(
            sql.SQL(
                "SELECT id, coalesce(key_text, row_key #>> '{{}}'), truncated, refresh FROM {} "
                "WHERE table_name = %s AND NOT cleaned @> %s::jsonb AND id > %s "
                "ORDER BY id LIMIT %s"
            ).format(tombstones),
            (table.name, marker, after, PAGE),
        ).fetchall()
        if not page:
            return applied
        after = page[-1][0]
        gone = [(id_, key, truncated) for id_, key, truncated, refresh in page if not refresh]
        refreshed = [key for _, key, _, refresh in page if refresh and key is not None]
        held: set[str] = set()
        if exists:
            if any(truncated for _, _, truncated in gone):
                for points in scroll_table_points(
                    qdrant, collection, table.name, ["meta_data.row_id"]
                ):
                    held |= delete_points_of_gone_rows(source, qdrant, collection, points)
            else:
                keys = [key for _, key, _ in gone if key is not None]
                held = _delete_gone(source, qdrant, collection, {key: [] for key in keys})
            held |= refresh_payloads(source, qdrant, collection, refreshed)
        failpoint("after_tombstone_delete")
        # Recorded only after Qdrant applied the deletes: a crash in between redoes them. A
        # truncate with any key held by a worker waits for a later drain, as does that key.
        # A tombstone without a key names no point: it is done, and never blocks the drain.
        done = [
            id_
            for id_, key, truncated, _ in page
            if not (held and truncated) and (key is None or key not in held)
        ]
        conn.execute(
            sql.SQL("UPDATE {} SET cleaned = cleaned || %s::jsonb WHERE id = ANY(%s)").format(
                tombstones
            ),
            (marker, done),
        )
        applied += len(done)


def _delete_gone(
    source: SourceTable, qdrant: QdrantClient, collection: str, points: dict[str, list[Any]]
) -> set[str]:
    """Delete the points of keys whose rows are gone (`points`: key text -> ids known to be
    the key's, besides the chunk ids its chunk 0 counts); return the keys a worker holds.

    A key that exists again belongs to a re-inserted row: it is pending (its point will be
    overwritten) or already synced with its new text, so its point stays. The claims keep a
    re-inserted row from being embedded between the existence check and the delete; its chunk
    ids are looked up after the claim, so none written before it is missed.
    """
    keys = list(points)
    claimed = source.claims.claim_keys(collection, keys)
    try:
        present = source.existing_keys(claimed)
        gone = [key for key in claimed if key not in present]
        chunk_ids = row_point_ids(qdrant, source.config.data_type, collection, gone)
        delete_points(
            qdrant,
            collection,
            list(dict.fromkeys(point for key in gone for point in [*points[key], *chunk_ids[key]])),
        )
    finally:
        if usable(source.conn):
            source.claims.release(collection, claimed)
    got = set(claimed)
    return {key for key in keys if key not in got}


def delete_points_of_gone_rows(
    source: SourceTable, qdrant: QdrantClient, collection: str, records: list[Any]
) -> set[str]:
    """Delete the scrolled points (`records`) whose rows are gone, found by the row id in
    their payload whatever their id (after a TRUNCATE, or when a store is re-checked); a
    point naming no row is deleted too. Returns the keys a worker holds."""
    by_key: dict[str, list[Any]] = {}
    unreadable = []
    for record in records:
        key = key_text_of_row_id(((record.payload or {}).get("meta_data") or {}).get("row_id"))
        if key is None:
            unreadable.append(record.id)
        else:
            by_key.setdefault(key, []).append(record.id)
    delete_points(qdrant, collection, unreadable)
    return _delete_gone(source, qdrant, collection, by_key)
