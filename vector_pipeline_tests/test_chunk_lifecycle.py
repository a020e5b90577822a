"""A long row is several points (chunks) for its whole life: grow, shrink, edit, delete,
truncate, skip, payload refresh, reconcile and repair, and crashes in between.

The deterministic model with `max_tokens_per_input: 12` makes a token a word and a row of
60 words five or six chunks, so every path runs in milliseconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from psycopg import sql
from qdrant_client import QdrantClient, models

from vector_pipeline.config import ConfigError, load_config
from vector_pipeline.database_setup import setup_database
from vector_pipeline.embedders import build_embedder
from vector_pipeline.locations import QdrantLocation
from vector_pipeline.plan import plan
from vector_pipeline.points import chunk_point_id, point_id
from vector_pipeline.reconcile import reconcile, repair
from vector_pipeline.search import search_rows
from vector_pipeline.vector_store import open_qdrant
from vector_pipeline_tests.conftest import create_doc_table, sync_model, write_config

pytestmark = pytest.mark.integration

COLLECTION = "test_det-a_hybrid"
LIMIT = 12  # words per input, specials included (deterministic tokens are words)


def words(n: int, tag: str = "w") -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


@pytest.fixture
def chunked(tmp_path, schema, conn):
    create_doc_table(conn, schema, 0)
    directory = write_config(tmp_path / "config", schema)
    text = (directory / "embeddings.yaml").read_text()
    text = text.replace(
        "      id: det-a\n      dimensions: 16\n",
        f"      id: det-a\n      dimensions: 16\n      max_tokens_per_input: {LIMIT}\n",
    )
    (directory / "embeddings.yaml").write_text(text)
    project = load_config(directory)
    setup_database(conn, project)
    return project


def put(conn, schema, row: int, body: str | None, title: str = "T", category: str = "c") -> None:
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (id, title, body, category) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (id) DO UPDATE SET title = EXCLUDED.title, body = EXCLUDED.body, "
            "category = EXCLUDED.category"
        ).format(sql.Identifier(schema, "doc")),
        (row, title, body, category),
    )


def row_points(qdrant: QdrantClient, row: int) -> list[dict]:
    points, _ = qdrant.scroll(COLLECTION, limit=10_000, with_payload=True)
    mine = [p for p in points if p.payload["meta_data"]["row_id"] == row]
    return sorted(
        (p.payload | {"id": str(p.id)} for p in mine), key=lambda p: p["meta_data"].get("chunk", 0)
    )


def check(conn, qdrant, project, schema, *, points: int) -> None:
    report = reconcile(conn, qdrant, project.tables.tables[0], schema, COLLECTION)
    assert report.ok, report
    assert report.points == qdrant.count(COLLECTION, exact=True).count == points


def test_grow_shrink_and_one_again(chunked, conn, schema, qdrant):
    put(conn, schema, 1, "short body")
    put(conn, schema, 2, "another short one")
    assert sync_model(chunked, conn, qdrant).embedded == 2
    (only,) = row_points(qdrant, 1)
    # A row that fits is one point under the reference id, with the payload it always had.
    assert only["id"] == point_id("DOC", "1", COLLECTION)
    assert "chunk" not in only["meta_data"] and only["content"] == "TITLE: T\nCONTENT: short body"

    put(conn, schema, 1, words(60))  # grows: several chunks
    result = sync_model(chunked, conn, qdrant)
    assert (result.embedded, result.chunked) == (1, 1)
    grown = row_points(qdrant, 1)
    n = len(grown)
    assert n >= 5
    assert [p["id"] for p in grown] == [chunk_point_id("DOC", "1", COLLECTION, k) for k in range(n)]
    assert grown[0]["id"] == point_id("DOC", "1", COLLECTION)  # chunk 0 keeps the reference id
    assert all(
        p["meta_data"]["chunks"] == n and p["content"].startswith("TITLE: T\n") for p in grown
    )
    assert all(len(p["content"].split()) <= LIMIT for p in grown)
    assert grown[0]["meta_data"]["chunk_ids"] == n
    check(conn, qdrant, chunked, schema, points=n + 1)

    # The last words are found, and the row comes back once however many chunks match.
    key, model = chunked.embeddings.model()
    hits = search_rows(qdrant, build_embedder(key, model), COLLECTION, "w58 w59 w57", 5)
    assert hits[0].row_id == 1 and [h.row_id for h in hits].count(1) == 1

    put(conn, schema, 1, words(20, "v"))  # shrinks: the extra chunks go
    assert sync_model(chunked, conn, qdrant).embedded == 1
    shrunk = row_points(qdrant, 1)
    assert 1 < len(shrunk) < n and shrunk[0]["meta_data"]["chunk_ids"] == n
    check(conn, qdrant, chunked, schema, points=len(shrunk) + 1)

    put(conn, schema, 1, "short again")  # back to one point, still the reference id
    assert sync_model(chunked, conn, qdrant).embedded == 1
    (again,) = row_points(qdrant, 1)
    assert again["id"] == point_id("DOC", "1", COLLECTION)
    check(conn, qdrant, chunked, schema, points=2)


def test_delete_truncate_skip_and_payload_refresh_reach_every_chunk(chunked, conn, schema, qdrant):
    for row in (1, 2, 3):
        put(conn, schema, row, words(50, f"r{row}x"))
    sync_model(chunked, conn, qdrant)
    per_row = len(row_points(qdrant, 1))
    assert per_row > 3

    conn.execute(
        sql.SQL("UPDATE {} SET category = 'moved' WHERE id = 2").format(
            sql.Identifier(schema, "doc")
        )
    )
    result = sync_model(chunked, conn, qdrant)
    assert (result.embedded, result.payloads_refreshed) == (0, 1)
    assert {p["meta_data"]["category"] for p in row_points(qdrant, 2)} == {"moved"}

    conn.execute(sql.SQL("DELETE FROM {} WHERE id = 1").format(sql.Identifier(schema, "doc")))
    conn.execute(
        sql.SQL("UPDATE {} SET title = NULL, body = NULL WHERE id = 3").format(
            sql.Identifier(schema, "doc")
        )
    )
    result = sync_model(chunked, conn, qdrant)
    assert (result.deleted, result.skipped) == (1, 1)
    assert row_points(qdrant, 1) == [] and row_points(qdrant, 3) == []
    check(conn, qdrant, chunked, schema, points=per_row)

    conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(schema, "doc")))
    sync_model(chunked, conn, qdrant)
    assert qdrant.count(COLLECTION, exact=True).count == 0


def test_reconcile_finds_a_lost_chunk_and_a_leftover_one_and_repair_fixes_both(
    chunked, conn, schema, qdrant
):
    put(conn, schema, 1, words(60))
    put(conn, schema, 2, words(60, "z"))
    sync_model(chunked, conn, qdrant)
    n = len(row_points(qdrant, 1))
    qdrant.delete(
        COLLECTION, points_selector=[chunk_point_id("DOC", "1", COLLECTION, 2)], wait=True
    )
    # A chunk id beyond what chunk 0 counts: a leftover nobody would clean.
    (donor,) = qdrant.retrieve(COLLECTION, [point_id("DOC", "2", COLLECTION)], with_vectors=True)
    leftover = chunk_point_id("DOC", "2", COLLECTION, n + 3)
    qdrant.upsert(
        COLLECTION,
        [models.PointStruct(id=leftover, vector=donor.vector, payload=donor.payload)],
        wait=True,
    )
    table = chunked.tables.tables[0]

    report = reconcile(conn, qdrant, table, schema, COLLECTION)
    assert (report.missing_count, report.stale_count, report.orphan_count) == (0, 1, 1)
    assert report.stale == [1] and report.orphans == [leftover]
    fixed = repair(conn, qdrant, report, table, schema, COLLECTION)
    assert (fixed.marked_pending, fixed.orphans_deleted) == (1, 1)
    assert sync_model(chunked, conn, qdrant).embedded == 1
    check(conn, qdrant, chunked, schema, points=2 * n)


def _sync_in_child(project, database_url, qdrant_path, failpoint):
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "QDRANT_PATH": qdrant_path,
        "VECTOR_PIPELINE_CONFIG_DIR": str(project.config_dir),
        "VECTOR_PIPELINE_FAILPOINT": failpoint,
    }
    env.pop("QDRANT_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "vector_pipeline.cli", "sync"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_crash_between_writing_new_chunks_and_deleting_old_ones(
    chunked, conn, schema, database_url, qdrant_path
):
    put(conn, schema, 1, words(80))
    with open_qdrant(QdrantLocation(path=qdrant_path)) as qdrant:
        sync_model(chunked, conn, qdrant)
        n = len(row_points(qdrant, 1))
    put(conn, schema, 1, words(20, "v"))  # shrinks
    crashed = _sync_in_child(chunked, database_url, qdrant_path, "after_upsert:1")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    with open_qdrant(QdrantLocation(path=qdrant_path)) as qdrant:
        # The new chunks are written and the old ones not yet deleted: never without points.
        assert len(row_points(qdrant, 1)) == n
        result = sync_model(chunked, conn, qdrant)
        # Its points hold its text already: marked without embedding, leftovers deleted.
        assert (result.embedded, result.adopted) == (0, 1)
        kept = row_points(qdrant, 1)
        assert len(kept) < n and " ".join(p["content"] for p in kept).count("v19") >= 1
        check(conn, qdrant, chunked, schema, points=len(kept))


@pytest.mark.slow
def test_crash_after_chunk_zero_before_the_others_reembeds(
    chunked, conn, schema, database_url, qdrant_path
):
    # 1,500 words make ~150 chunks: more than one upsert request (128 points), chunk 0 first.
    put(conn, schema, 1, words(1500))
    crashed = _sync_in_child(chunked, database_url, qdrant_path, "between_upsert_chunks:1")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    with open_qdrant(QdrantLocation(path=qdrant_path)) as qdrant:
        written = row_points(qdrant, 1)
        assert (
            written[0]["meta_data"]["chunk"] == 0
            and len(written) < written[0]["meta_data"]["chunks"]
        )
        result = sync_model(chunked, conn, qdrant)
        # Chunk 0 holds the text, but not every chunk exists: the row is embedded again.
        assert (result.embedded, result.adopted) == (1, 0)
        total = written[0]["meta_data"]["chunks"]
        check(conn, qdrant, chunked, schema, points=total)


def test_plan_counts_what_the_sync_then_sends_for_chunked_rows(chunked, conn, schema, qdrant):
    """plan and sync agree on tokens (the model's own count: hyphens and URLs split words)
    and on which rows a changed chunking makes the sync embed again."""
    put(conn, schema, 1, "state-of-the-art " * 20)
    put(conn, schema, 2, "see https://example.org/a/b?c=d and a-b-c-d-e-f-g-h-i-j")
    put(conn, schema, 3, words(30))
    (entry,) = plan(conn, chunked, qdrant=qdrant)
    result = sync_model(chunked, conn, qdrant)
    assert entry.tokens == result.tokens > 0 and result.chunked >= 2

    # Another overlap changes the chunks but not the text: the sync embeds them again, and
    # plan says so (instead of calling them current).
    directory = chunked.config_dir
    tables = (directory / "tables.yaml").read_text()
    (directory / "tables.yaml").write_text(
        tables.replace("payload_columns:", "chunking: {overlap_tokens: 0}\n    payload_columns:")
    )
    changed = load_config(directory)
    setup_database(conn, changed)
    (entry,) = plan(conn, changed, qdrant=qdrant)
    result = sync_model(changed, conn, qdrant)
    assert entry.tokens == result.tokens > 0
    # Every row is chunked, so every one is split anew: none is adopted with its old chunks.
    assert entry.already_current == result.adopted == 0
    assert result.embedded == 3
    check(conn, qdrant, changed, schema, points=result.points_written)


def test_an_input_limit_too_small_to_chunk_by_is_a_config_error(tmp_path, schema, conn, qdrant):
    create_doc_table(conn, schema, 2)
    directory = write_config(tmp_path / "config", schema)
    text = (directory / "embeddings.yaml").read_text()
    (directory / "embeddings.yaml").write_text(
        text.replace(
            "      dimensions: 16\n", "      dimensions: 16\n      max_tokens_per_input: 7\n", 1
        )
    )
    project = load_config(directory)
    setup_database(conn, project)
    with pytest.raises(ConfigError) as info:
        sync_model(project, conn, qdrant)
    assert str(info.value) == (
        "model 'det_a' (config/embeddings.yaml: embeddings.models.det_a.max_tokens_per_input): "
        "max_tokens_per_input 7 leaves no room for text (the model adds 0 tokens of its own); "
        "raise it to at least 8"
    )
    pending = conn.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE embedded_in = '[]'").format(
            sql.Identifier(schema, "doc")
        )
    ).fetchone()[0]
    assert pending == 2  # nothing was touched
