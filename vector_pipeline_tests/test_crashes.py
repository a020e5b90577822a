"""Crash safety: SIGKILL the sync process at a dozen points, rerun once, and find everything exact.

The sync runs as `vector-pipeline sync` in a child process that kills itself at a named
failpoint (see vector_pipeline/failpoints.py), like a power cut: no cleanup of any kind. One
normal rerun must then leave every row embedded exactly once, no duplicate, orphan or stale
point, deleted rows gone, skipped rows recorded, and `embedded_in` consistent.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from psycopg import sql

from vector_pipeline.locations import QdrantLocation
from vector_pipeline.reconcile import reconcile
from vector_pipeline.vector_store import open_qdrant
from vector_pipeline_tests.conftest import sync_model

pytestmark = pytest.mark.e2e

ROWS = 1500
BATCH = 150  # two upsert chunks per batch (128 + 22)
DELETED = 40  # rows deleted before the crashing sync: their tombstones get drained
BLANK = 7  # rows with no text: recorded as skipped
COLLECTION = "test_det-a_hybrid"

# (failpoint, which pass kills): mid-sync where the point is passed once per batch.
CRASH_POINTS = [
    ("after_ensure_collection", 1),
    ("after_tombstone_delete", 1),
    ("after_drain", 1),
    ("after_skip_record", 1),
    ("after_read", 3),
    ("after_embed", 4),
    ("between_upsert_chunks", 5),
    ("after_upsert", 6),
    ("mark_before_commit", 6),
    ("after_mark", 7),
    ("before_final_count", 1),
    ("after_upsert", 1),
]


@pytest.fixture
def doc_rows() -> int:
    return ROWS


def run_sync(project, database_url: str, qdrant_path: str, failpoint: str | None):
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "QDRANT_PATH": qdrant_path,
        "VECTOR_PIPELINE_CONFIG_DIR": str(project.config_dir),
    }
    env.pop("QDRANT_URL", None)
    if failpoint:
        env["VECTOR_PIPELINE_FAILPOINT"] = failpoint
    return subprocess.run(
        [sys.executable, "-m", "vector_pipeline.cli", "sync", "--batch-size", str(BATCH)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(("point", "nth"), CRASH_POINTS, ids=[f"{p}-{n}" for p, n in CRASH_POINTS])
def test_sigkill_then_one_rerun_leaves_everything_exact(
    project, conn, schema, database_url, qdrant_path, point, nth
):
    doc = sql.Identifier(schema, "doc")
    # A first, complete sync; then work for the crashing one: deletes to drain, rows with no
    # text to skip, 1,000 edited rows to re-embed (7 batches) and 500 rows to leave alone.
    # The setup sync runs in this process: only the crash and the rerun need their own.
    with open_qdrant(QdrantLocation(path=qdrant_path)) as qdrant:
        assert sync_model(project, conn, qdrant, batch_size=BATCH).embedded == ROWS
    conn.execute(sql.SQL("DELETE FROM {} WHERE id <= %s").format(doc), (DELETED,))
    conn.execute(sql.SQL("UPDATE {} SET body = body || ' (v2)' WHERE id > 500").format(doc))
    conn.execute(
        sql.SQL("UPDATE {} SET title = NULL, body = '' WHERE id BETWEEN 1001 AND %s").format(doc),
        (1000 + BLANK,),
    )

    crashed = run_sync(project, database_url, qdrant_path, f"{point}:{nth}")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr

    rerun = run_sync(project, database_url, qdrant_path, None)
    assert rerun.returncode == 0, rerun.stderr

    live = ROWS - DELETED
    with open_qdrant(QdrantLocation(path=qdrant_path)) as qdrant:
        report = reconcile(conn, qdrant, project.tables.tables[0], schema, COLLECTION)
        points = qdrant.count(COLLECTION, exact=True).count
    assert (report.missing_count, report.orphan_count, report.stale_count) == (0, 0, 0)
    assert report.rows == live
    assert points == live - BLANK  # one point per row with text: no duplicates, no leftovers

    marks = conn.execute(
        sql.SQL(
            "SELECT count(*) FILTER (WHERE embedded_in = %s::jsonb), "
            "count(*) FILTER (WHERE embedded_in = '[]'::jsonb) FROM {}"
        ).format(doc),
        (f'["{COLLECTION}"]',),
    ).fetchone()
    assert marks == (live - BLANK, BLANK)  # the collection listed exactly once, or not at all
    state = sql.Identifier(schema, "vector_pipeline_skip")
    skipped = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(state)).fetchone()[0]
    assert skipped == BLANK
    tombstones = sql.Identifier(schema, "vector_pipeline_tombstone")
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(tombstones)).fetchone() == (0,)
    # The killed sync's claims died with it; the rerun freed them and left none of its own.
    claims = sql.Identifier(schema, "vector_pipeline_claim")
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(claims)).fetchone() == (0,)
