"""Edits that land while a sync runs: at the end every row is pending or its point carries its
current text. None is stale and marked done."""

from __future__ import annotations

import random
import threading

import psycopg
import pytest
from psycopg import sql

from vector_pipeline.locations import QdrantLocation
from vector_pipeline.reconcile import reconcile
from vector_pipeline.vector_store import open_qdrant
from vector_pipeline_tests.conftest import sync_model

pytestmark = pytest.mark.integration

COLLECTION = "test_det-a_hybrid"


@pytest.fixture
def doc_rows() -> int:
    return 2000


@pytest.mark.slow
def test_edits_during_a_sync_never_leave_stale_text_marked_done(
    project, conn, schema, database_url, qdrant_path
):
    stop = threading.Event()
    edits: list[int] = []
    errors: list[BaseException] = []

    def edit_continuously() -> None:
        rng = random.Random(5)
        try:
            with psycopg.connect(database_url, autocommit=True) as editor:
                doc = sql.Identifier(schema, "doc")
                while not stop.is_set():
                    row_id = rng.randint(1, 2000)
                    # Text edits (the trigger resets embedded_in) and edits of other columns.
                    if rng.random() < 0.8:
                        editor.execute(
                            sql.SQL("UPDATE {} SET body = %s WHERE id = %s").format(doc),
                            (f"edited {len(edits)} {rng.random()}", row_id),
                        )
                    else:
                        editor.execute(
                            sql.SQL("UPDATE {} SET views = views + 1 WHERE id = %s").format(doc),
                            (row_id,),
                        )
                    edits.append(row_id)
        except BaseException as exc:  # surfaced below; a dead editor would prove nothing
            errors.append(exc)

    editor = threading.Thread(target=edit_continuously)
    with open_qdrant(QdrantLocation(path=qdrant_path)) as qdrant:
        editor.start()
        try:
            result = sync_model(project, conn, qdrant)
        finally:
            stop.set()
            editor.join(timeout=60)
        assert not errors, errors
        assert len(edits) > 100, "the editor must have raced the sync"
        report = reconcile(conn, qdrant, project.tables.tables[0], schema, COLLECTION)

    assert (report.missing_count, report.stale_count, report.orphan_count) == (0, 0, 0)
    # Edits did land behind the sync (rows it had already done are pending again), so the
    # zeros above were earned under contention, not in a quiet table.
    assert result.left_pending + result.pending_after > 0
