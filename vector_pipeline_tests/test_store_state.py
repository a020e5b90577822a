"""Marks never outlive the points they vouch for: a lost, replaced or restored Qdrant store is
noticed by the next sync, which re-embeds exactly what the store lacks, and the active alias
never serves a collection that does not hold every row."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from psycopg import sql

from vector_pipeline.aliases import serving
from vector_pipeline.embedders import build_embedder
from vector_pipeline.locations import QdrantLocation
from vector_pipeline.points import point_id
from vector_pipeline.reconcile import reconcile
from vector_pipeline.status import sync_status
from vector_pipeline.sync import sync_configured_table
from vector_pipeline.vector_store import open_qdrant
from vector_pipeline_tests.conftest import sync_model

pytestmark = pytest.mark.integration

COLLECTION = "test_det-a_hybrid"


def _exact(project, conn, qdrant) -> None:
    table = project.tables.tables[0]
    report = reconcile(conn, qdrant, table, project.tables.schema_, COLLECTION)
    assert (report.missing_count, report.stale_count, report.orphan_count) == (0, 0, 0)
    assert report.points == report.rows == report.embedded


def test_a_deleted_collection_voids_every_mark_and_the_alias_waits(project, conn, qdrant):
    assert sync_model(project, conn, qdrant).embedded == 120
    assert serving(qdrant, "test_active") == COLLECTION
    qdrant.delete_collection(COLLECTION)  # takes the alias with it

    # Before any sync, status asks Qdrant and does not vouch for the marks.
    (status,) = sync_status(conn, project, ["det_a"], qdrant=qdrant)
    assert status.verified is False

    result = sync_model(project, conn, qdrant)
    assert (result.created_collection, result.marks_voided) == (True, 120)
    assert (result.embedded, result.adopted, result.pending_after) == (120, 0, 0)
    assert serving(qdrant, "test_active") == COLLECTION
    _exact(project, conn, qdrant)
    (status,) = sync_status(conn, project, ["det_a"], qdrant=qdrant)
    assert (status.verified, status.embedded) == (True, 120)


def test_a_new_empty_folder_is_filled_again(project, conn, tmp_path: Path):
    with open_qdrant(QdrantLocation(path=str(tmp_path / "first"))) as first:
        assert sync_model(project, conn, first).embedded == 120
    with open_qdrant(QdrantLocation(path=str(tmp_path / "second"))) as second:
        result = sync_model(project, conn, second)
        assert (result.marks_voided, result.embedded) == (120, 120)
        _exact(project, conn, second)
        assert serving(second, "test_active") == COLLECTION


def test_a_restored_older_snapshot_costs_only_what_it_lacks(project, conn, schema, tmp_path):
    folder, backup = tmp_path / "qdrant", tmp_path / "snapshot"
    with open_qdrant(QdrantLocation(path=str(folder))) as qdrant:
        assert sync_model(project, conn, qdrant).embedded == 120
    shutil.copytree(folder, backup)  # the operator's snapshot

    doc = sql.Identifier(schema, "doc")
    conn.execute(
        sql.SQL("UPDATE {} SET body = 'edited after the snapshot' WHERE id = 5").format(doc)
    )
    conn.execute(sql.SQL("DELETE FROM {} WHERE id = 6").format(doc))
    conn.execute(sql.SQL("INSERT INTO {} (id, title, body) VALUES (121, 'new', 'row')").format(doc))
    with open_qdrant(QdrantLocation(path=str(folder))) as qdrant:
        assert sync_model(project, conn, qdrant).embedded == 2

    shutil.rmtree(folder)
    shutil.copytree(backup, folder)  # restored: holds row 6, lacks 121 and 5's new text
    with open_qdrant(QdrantLocation(path=str(folder))) as qdrant:
        result = sync_model(project, conn, qdrant)
        assert result.marks_voided == 120
        # Only rows 5 and 121 are paid for; the 118 others still had their current text.
        assert (result.embedded, result.adopted) == (2, 118)
        _exact(project, conn, qdrant)
        assert qdrant.count(COLLECTION, exact=True).count == 120
        # A second sync trusts the store again: nothing to do.
        again = sync_model(project, conn, qdrant)
        assert (again.marks_voided, again.embedded, again.adopted) == (0, 0, 0)


def test_rows_restored_with_marks_are_not_trusted_but_not_paid_twice(project, conn, qdrant, schema):
    """A bulk restore into the same store (pg_dump/COPY) brings marks along: they are cleared
    on insert, and the sync marks again, without embedding, every row whose point is current."""
    assert sync_model(project, conn, qdrant).embedded == 120
    doc = sql.Identifier(schema, "doc")
    conn.execute(
        sql.SQL("CREATE TABLE {} AS SELECT * FROM {}").format(sql.Identifier(schema, "backup"), doc)
    )
    conn.execute(sql.SQL("DELETE FROM {}").format(doc))
    conn.execute(
        sql.SQL("INSERT INTO {} SELECT * FROM {}").format(doc, sql.Identifier(schema, "backup"))
    )
    marked = conn.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE embedded_in <> '[]'::jsonb").format(doc)
    ).fetchone()[0]
    assert marked == 0
    result = sync_model(project, conn, qdrant)
    assert (result.embedded, result.adopted, result.tokens) == (0, 120, 0)
    _exact(project, conn, qdrant)


class _DiesOnSecondBatch:
    """The project's embedder until its second batch, which raises: a sync that crashes after
    writing and marking one batch."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, 0

    def embed_documents(self, texts):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("the worker died")
        return self.inner.embed_documents(texts)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_snapshot_from_before_a_crashed_sync_is_noticed(project, conn, schema, tmp_path):
    folder, backup = tmp_path / "qdrant", tmp_path / "snapshot"
    with open_qdrant(QdrantLocation(path=str(folder))) as qdrant:
        assert sync_model(project, conn, qdrant).embedded == 120
    shutil.copytree(folder, backup)

    doc = sql.Identifier(schema, "doc")
    conn.execute(sql.SQL("UPDATE {} SET body = 'second edition' WHERE id <= 60").format(doc))
    key, model = project.embeddings.model()
    dying = _DiesOnSecondBatch(build_embedder(key, model))
    with (
        open_qdrant(QdrantLocation(path=str(folder))) as qdrant,
        pytest.raises(RuntimeError, match="the worker died"),
    ):
        sync_configured_table(
            conn=conn,
            qdrant=qdrant,
            embedder=dying,
            project=project,
            table=project.tables.tables[0],
            batch_size=30,
        )
    # Rows 1-30 were marked with their new text before the crash; the snapshot predates them.
    shutil.rmtree(folder)
    shutil.copytree(backup, folder)
    with open_qdrant(QdrantLocation(path=str(folder))) as qdrant:
        result = sync_model(project, conn, qdrant)
        assert result.marks_voided == 90
        assert (result.embedded, result.adopted) == (60, 60)
        _exact(project, conn, qdrant)


def test_a_restore_never_brings_back_the_text_a_row_lost(project, conn, schema, tmp_path):
    """Row 1's text was erased after the snapshot (skipped, its point deleted); the restored
    snapshot still holds the old point, which must go again."""
    folder, backup = tmp_path / "qdrant", tmp_path / "snapshot"
    with open_qdrant(QdrantLocation(path=str(folder))) as qdrant:
        sync_model(project, conn, qdrant)
    shutil.copytree(folder, backup)
    doc = sql.Identifier(schema, "doc")
    conn.execute(sql.SQL("UPDATE {} SET title = NULL, body = NULL WHERE id = 1").format(doc))
    with open_qdrant(QdrantLocation(path=str(folder))) as qdrant:
        assert sync_model(project, conn, qdrant).skipped == 1
    shutil.rmtree(folder)
    shutil.copytree(backup, folder)
    with open_qdrant(QdrantLocation(path=str(folder))) as qdrant:
        sync_model(project, conn, qdrant)
        assert qdrant.retrieve(COLLECTION, [point_id("DOC", "1", COLLECTION)]) == []
        assert qdrant.count(COLLECTION, exact=True).count == 119


def test_deletes_drained_from_another_models_collection_move_its_record_on(
    project, conn, schema, tmp_path
):
    """A sync of det_a also removes deleted rows' points from det_b's collection; a snapshot of
    det_b's collection from before that must not pass for current."""
    other = "test_det-b_hybrid"
    folder, backup = tmp_path / "qdrant", tmp_path / "snapshot"
    with open_qdrant(QdrantLocation(path=str(folder))) as qdrant:
        sync_model(project, conn, qdrant, "det_a")
        sync_model(project, conn, qdrant, "det_b")
    shutil.copytree(folder, backup)
    conn.execute(sql.SQL("DELETE FROM {} WHERE id = 9").format(sql.Identifier(schema, "doc")))
    with open_qdrant(QdrantLocation(path=str(folder))) as qdrant:
        assert sync_model(project, conn, qdrant, "det_a").deleted == 1  # from both collections
    shutil.rmtree(folder)
    shutil.copytree(backup, folder)
    with open_qdrant(QdrantLocation(path=str(folder))) as qdrant:
        result = sync_model(project, conn, qdrant, "det_b")
        assert result.marks_voided == 119
        report = reconcile(conn, qdrant, project.tables.tables[0], schema, other)
        assert (report.orphan_count, report.points, report.rows) == (0, 119, 119)
