"""Payload and name columns: a change that leaves the text alone reaches every collection's
point on the next sync without embedding anything, and reconcile counts payload drift."""

from __future__ import annotations

import pytest
from psycopg import sql

from vector_pipeline.database_setup import setup_database
from vector_pipeline.points import point_id
from vector_pipeline.reconcile import reconcile, repair
from vector_pipeline_tests.conftest import doc_config, sync_model

pytestmark = pytest.mark.integration

COLLECTIONS = ("test_det-a_hybrid", "test_det-b_hybrid")


def _project(tmp_path, schema, conn):
    config = doc_config(
        tmp_path / "payloads",
        schema,
        "{title}: {body}",
        payload_columns="[title, category, views]",
        name_column="category",
    )
    setup_database(conn, config)
    return config


def _point(qdrant, collection: str, row_id: int):
    (point,) = qdrant.retrieve(
        collection, [point_id("DOC", str(row_id), collection)], with_payload=True, with_vectors=True
    )
    return point


def _clean(config, conn, qdrant, schema, collection: str) -> None:
    report = reconcile(conn, qdrant, config.tables.tables[0], schema, collection)
    assert report.ok, report


def test_a_payload_change_rewrites_every_collections_point_without_embedding(
    project, conn, qdrant, schema, tmp_path
):
    config = _project(tmp_path, schema, conn)
    for model in ("det_a", "det_b"):
        assert sync_model(config, conn, qdrant, model).embedded == 120
    before = _point(qdrant, COLLECTIONS[1], 5)

    doc = sql.Identifier(schema, "doc")
    conn.execute(sql.SQL("UPDATE {} SET category = 'moved', views = 7 WHERE id = 5").format(doc))
    conn.execute(sql.SQL("UPDATE {} SET category = NULL WHERE id = 6").format(doc))
    result = sync_model(config, conn, qdrant, "det_a")
    assert (result.embedded, result.tokens, result.payloads_refreshed) == (0, 0, 2)
    assert result.deleted == 0

    for collection in COLLECTIONS:  # det_b's point too: the drain serves every collection
        point = _point(qdrant, collection, 5)
        assert point.payload["name"] == "moved"
        assert (point.payload["meta_data"]["category"], point.payload["meta_data"]["views"]) == (
            "moved",
            7,
        )
        assert point.payload["content"] == "Title 5: Body of document 5 about topic 5"
        assert _point(qdrant, collection, 6).payload["name"] == "DOC_6"  # no name: the default
        _clean(config, conn, qdrant, schema, collection)
    after = _point(qdrant, COLLECTIONS[1], 5)
    assert after.vector == before.vector  # nothing was embedded again


def test_reconcile_counts_payload_drift_and_repair_rewrites_it(
    project, conn, qdrant, schema, tmp_path
):
    config = _project(tmp_path, schema, conn)
    sync_model(config, conn, qdrant)
    collection = COLLECTIONS[0]
    tampered = point_id("DOC", "9", collection)
    qdrant.set_payload(collection, {"category": "stale"}, points=[tampered], key="meta_data")
    qdrant.set_payload(
        collection, {"name": "stale name"}, points=[point_id("DOC", "10", collection)]
    )

    table = config.tables.tables[0]
    report = reconcile(conn, qdrant, table, schema, collection)
    assert (report.payload_drift_count, report.payload_drift, report.ok) == (2, [9, 10], False)
    assert (report.missing_count, report.stale_count, report.orphan_count) == (0, 0, 0)

    fixed = repair(conn, qdrant, report, table, schema, collection)
    assert (fixed.payloads_refreshed, fixed.marked_pending) == (2, 0)
    _clean(config, conn, qdrant, schema, collection)
    assert _point(qdrant, collection, 9).payload["meta_data"]["category"] == "cat0"
