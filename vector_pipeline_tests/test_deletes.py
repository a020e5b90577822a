"""Deleted and truncated rows lose their points in every collection on the next sync."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql
from qdrant_client import QdrantClient

from vector_pipeline.config import ProjectConfig
from vector_pipeline.deletes import _lock_key
from vector_pipeline.sync import SyncResult
from vector_pipeline_tests.conftest import all_points, reference_point_id, sync_model

pytestmark = pytest.mark.integration

COLLECTIONS = ("test_det-a_hybrid", "test_det-b_hybrid")


def sync(project: ProjectConfig, conn, qdrant, model: str) -> SyncResult:
    return sync_model(project, conn, qdrant, model)


def point_ids(qdrant: QdrantClient, collection: str) -> set[str]:
    return {str(p.id) for p in all_points(qdrant, collection)}


def pid(row_id: int, collection: str) -> str:
    return reference_point_id("DOC", row_id, collection)


def tombstones(conn, schema: str) -> int:
    return conn.execute(
        sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier(schema, "vector_pipeline_tombstone")
        )
    ).fetchone()[0]


@pytest.fixture
def synced_both(project, conn, qdrant):
    for model in ("det_a", "det_b"):
        assert sync(project, conn, qdrant, model).embedded == 120
    return project


def test_deleting_rows_removes_their_points_from_every_collection(
    synced_both, conn, qdrant, schema
):
    doc = sql.Identifier(schema, "doc")
    conn.execute(sql.SQL("DELETE FROM {} WHERE id IN (3, 4)").format(doc))
    conn.execute(sql.SQL("DELETE FROM {} WHERE id > 100").format(doc))  # bulk, one statement
    assert tombstones(conn, schema) == 22

    result = sync(synced_both, conn, qdrant, "det_a")
    assert result.deleted == 22
    assert result.embedded == 0
    for collection in COLLECTIONS:  # the other model's collection too
        ids = point_ids(qdrant, collection)
        assert len(ids) == 98
        assert pid(3, collection) not in ids and pid(101, collection) not in ids
        assert pid(5, collection) in ids
    assert tombstones(conn, schema) == 0


def test_truncate_removes_every_point_of_the_table(synced_both, conn, qdrant, schema):
    doc = sql.Identifier(schema, "doc")
    conn.execute(sql.SQL("TRUNCATE {}").format(doc))
    # Rows inserted after the TRUNCATE are new: they get synced, nothing else survives.
    conn.execute(sql.SQL("INSERT INTO {} (id, title, body) VALUES (500, 'new', 'row')").format(doc))
    result = sync(synced_both, conn, qdrant, "det_a")
    assert result.embedded == 1
    assert point_ids(qdrant, "test_det-a_hybrid") == {pid(500, "test_det-a_hybrid")}
    assert point_ids(qdrant, "test_det-b_hybrid") == set()
    assert tombstones(conn, schema) == 0


def test_a_reinserted_key_keeps_its_new_point(synced_both, conn, qdrant, schema):
    doc = sql.Identifier(schema, "doc")
    conn.execute(sql.SQL("DELETE FROM {} WHERE id = 9").format(doc))
    conn.execute(
        sql.SQL("INSERT INTO {} (id, title, body) VALUES (9, 'again', 'reborn')").format(doc)
    )
    result = sync(synced_both, conn, qdrant, "det_a")
    assert result.embedded == 1
    (point,) = qdrant.retrieve(
        "test_det-a_hybrid", [pid(9, "test_det-a_hybrid")], with_payload=True
    )
    assert point.payload["content"] == "TITLE: again\nCONTENT: reborn"
    # In the other collection the old point stays until that model re-embeds the new row.
    assert sync(synced_both, conn, qdrant, "det_b").embedded == 1
    assert len(point_ids(qdrant, "test_det-b_hybrid")) == 120


def test_a_collection_being_synced_elsewhere_is_left_to_that_sync(
    synced_both, conn, qdrant, schema, database_url
):
    doc = sql.Identifier(schema, "doc")
    conn.execute(sql.SQL("DELETE FROM {} WHERE id = 1").format(doc))
    table = synced_both.tables.tables[0]
    with psycopg.connect(database_url, autocommit=True) as other:
        # Another process is syncing det_b into its collection: it holds that lock.
        other.execute(
            "SELECT pg_advisory_lock(hashtext(%s))",
            (_lock_key(schema, table, "test_det-b_hybrid"),),
        )
        sync(synced_both, conn, qdrant, "det_a")
        assert pid(1, "test_det-a_hybrid") not in point_ids(qdrant, "test_det-a_hybrid")
        assert pid(1, "test_det-b_hybrid") in point_ids(qdrant, "test_det-b_hybrid")
        (cleaned,) = conn.execute(
            sql.SQL("SELECT cleaned FROM {}").format(
                sql.Identifier(schema, "vector_pipeline_tombstone")
            )
        ).fetchone()
        assert cleaned == ["test_det-a_hybrid"]
    sync(synced_both, conn, qdrant, "det_b")
    assert pid(1, "test_det-b_hybrid") not in point_ids(qdrant, "test_det-b_hybrid")
    assert tombstones(conn, schema) == 0


def test_deletes_before_the_first_sync_leave_nothing_behind(project, conn, qdrant, schema):
    conn.execute(sql.SQL("DELETE FROM {} WHERE id <= 20").format(sql.Identifier(schema, "doc")))
    result = sync(project, conn, qdrant, "det_a")
    assert (result.deleted, result.embedded) == (20, 100)
    assert len(point_ids(qdrant, "test_det-a_hybrid")) == 100
    # det_b has no collection yet; its share of the tombstones is trivially done.
    assert tombstones(conn, schema) == 0
