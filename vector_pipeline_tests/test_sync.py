"""The sync engine against real PostgreSQL and Qdrant local mode."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Sequence

import psycopg
import pytest
from psycopg import sql
from qdrant_client import QdrantClient, models

from vector_pipeline.config import ProjectConfig, collection_name_for, load_config
from vector_pipeline.database_setup import setup_database
from vector_pipeline.embedders import DenseEmbeddings, Embedder, build_embedder
from vector_pipeline.locations import QdrantLocation
from vector_pipeline.search import search
from vector_pipeline.sync import BatchReport, SyncResult, sync_table
from vector_pipeline.vector_store import CollectionMismatchError, open_qdrant
from vector_pipeline_tests.conftest import (
    all_points,
    create_doc_table,
    marked_ids,
    reference_point_id,
    write_config,
)

pytestmark = pytest.mark.integration


def run_sync(
    config: ProjectConfig,
    conn: psycopg.Connection,
    qdrant: QdrantClient,
    model: str | None = None,
    embedder: Embedder | None = None,
    **kwargs: object,
) -> SyncResult:
    key, model_config = config.embeddings.model(model)
    return sync_table(
        conn=conn,
        qdrant=qdrant,
        embedder=embedder or build_embedder(key, model_config),
        table=config.tables.tables[0],
        schema=config.tables.schema_,
        **kwargs,  # type: ignore[arg-type]
    )


def collection(config: ProjectConfig, model: str | None = None) -> str:
    _, model_config = config.embeddings.model(model)
    return collection_name_for("test", model_config.id)


def test_first_sync_embeds_every_row_and_second_embeds_nothing(project, conn, qdrant, doc_rows):
    first = run_sync(project, conn, qdrant, batch_size=50)
    assert first.embedded == doc_rows
    assert first.pending_after == 0
    assert first.batches == 3
    assert qdrant.count(first.collection, exact=True).count == doc_rows

    second = run_sync(project, conn, qdrant, batch_size=50)
    assert (second.embedded, second.batches) == (0, 0)
    assert qdrant.count(first.collection, exact=True).count == doc_rows


def test_batches_are_bounded_by_batch_size(project, conn, qdrant, doc_rows):
    reports: list[BatchReport] = []
    run_sync(project, conn, qdrant, batch_size=32, on_batch=reports.append)
    assert [r.rows for r in reports] == [32, 32, 32, 24]
    assert sum(r.embedded for r in reports) == doc_rows


def test_point_ids_follow_the_reference_formula_and_payload_layout(project, conn, qdrant):
    result = run_sync(project, conn, qdrant)
    points = {str(p.id): p for p in all_points(qdrant, result.collection, with_payload=True)}
    for row_id in (1, 42, 120):
        point = points[reference_point_id("DOC", row_id, result.collection)]
        text = f"TITLE: Title {row_id}\nCONTENT: Body of document {row_id} about topic {row_id % 7}"
        assert point.payload["content"] == text
        assert point.payload["content_hash"] == hashlib.md5(text.encode()).hexdigest()
        assert point.payload["name"] == f"DOC_{row_id}"
        assert point.payload["meta_data"] == {
            "table": "doc",
            "data_type": "DOC",
            "row_id": row_id,
            "truncated": False,
            "title": f"Title {row_id}",
            "category": f"cat{row_id % 3}",
        }
    stored = qdrant.retrieve(result.collection, [next(iter(points))], with_vectors=True)[0]
    assert set(stored.vector) == {"dense", "sparse"}
    assert len(stored.vector["dense"]) == 16
    info = qdrant.get_collection(result.collection).config.params
    assert info.sparse_vectors["sparse"].modifier == models.Modifier.IDF


def test_editing_text_reembeds_exactly_that_row(project, conn, qdrant, schema):
    result = run_sync(project, conn, qdrant)
    doc = sql.Identifier(schema, "doc")
    conn.execute(sql.SQL("UPDATE {} SET body = 'rewritten body' WHERE id = 7").format(doc))
    assert marked_ids(conn, schema, result.collection) == set(range(1, 121)) - {7}

    again = run_sync(project, conn, qdrant)
    assert again.embedded == 1
    point_id = reference_point_id("DOC", 7, result.collection)
    (point,) = qdrant.retrieve(result.collection, [point_id], with_payload=True)
    assert point.payload["content"] == "TITLE: Title 7\nCONTENT: rewritten body"
    assert qdrant.count(result.collection, exact=True).count == 120


def test_editing_columns_outside_the_text_reembeds_nothing(project, conn, qdrant, schema):
    result = run_sync(project, conn, qdrant)
    doc = sql.Identifier(schema, "doc")
    # A payload column, a column in no config, and a text column set to its own value.
    conn.execute(sql.SQL("UPDATE {} SET category = 'new', views = views + 1").format(doc))
    conn.execute(sql.SQL("UPDATE {} SET title = title WHERE id < 10").format(doc))
    assert marked_ids(conn, schema, result.collection) == set(range(1, 121))
    assert run_sync(project, conn, qdrant).embedded == 0


def test_bulk_update_of_text_resets_every_touched_row(project, conn, qdrant, schema):
    result = run_sync(project, conn, qdrant)
    doc = sql.Identifier(schema, "doc")
    conn.execute(sql.SQL("UPDATE {} SET title = upper(title) WHERE id % 10 = 0").format(doc))
    assert len(marked_ids(conn, schema, result.collection)) == 120 - 12
    assert run_sync(project, conn, qdrant).embedded == 12


def test_switching_default_model_fills_a_new_collection_and_keeps_the_old(
    project, conn, qdrant, tmp_path, schema
):
    old = run_sync(project, conn, qdrant)
    switched = load_config(write_config(tmp_path / "switched", schema, default="det_b"))
    new = run_sync(switched, conn, qdrant)
    assert new.collection != old.collection
    assert new.embedded == 120
    assert qdrant.count(new.collection, exact=True).count == 120
    assert qdrant.count(old.collection, exact=True).count == 120
    # Rows now list both collections, and the old model still has nothing pending.
    assert marked_ids(conn, schema, old.collection) == marked_ids(conn, schema, new.collection)
    assert run_sync(project, conn, qdrant).embedded == 0


def test_clearing_markers_and_rerunning_creates_no_duplicates_and_pays_nothing(
    project, conn, qdrant, schema
):
    result = run_sync(project, conn, qdrant)
    doc = sql.Identifier(schema, "doc")
    conn.execute(sql.SQL("UPDATE {} SET embedded_in = '[]'").format(doc))
    # An edited row's point holds its old text: that one is embedded again, the rest adopted.
    conn.execute(sql.SQL("UPDATE {} SET body = 'new text' WHERE id = 7").format(doc))
    again = run_sync(project, conn, qdrant)
    assert (again.embedded, again.adopted, again.tokens > 0) == (1, 119, True)
    assert marked_ids(conn, schema, result.collection) == set(range(1, 121))
    assert qdrant.count(result.collection, exact=True).count == 120


def test_null_and_non_array_markers_count_as_pending(project, conn, qdrant, schema):
    doc = sql.Identifier(schema, "doc")
    conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN embedded_in DROP NOT NULL").format(doc))
    conn.execute(sql.SQL("UPDATE {} SET embedded_in = NULL WHERE id <= 3").format(doc))
    conn.execute(sql.SQL("""UPDATE {} SET embedded_in = '"x"' WHERE id = 4""").format(doc))
    conn.execute(sql.SQL("""UPDATE {} SET embedded_in = '{{"a": 1}}' WHERE id = 5""").format(doc))
    result = run_sync(project, conn, qdrant)
    assert result.embedded == 120
    assert marked_ids(conn, schema, result.collection) == set(range(1, 121))


def test_other_collections_in_embedded_in_are_kept(project, conn, qdrant, schema):
    doc = sql.Identifier(schema, "doc")
    conn.execute(sql.SQL("""UPDATE {} SET embedded_in = '["elsewhere"]'""").format(doc))
    result = run_sync(project, conn, qdrant)
    (markers,) = conn.execute(
        sql.SQL("SELECT embedded_in FROM {} WHERE id = 1").format(doc)
    ).fetchone()
    assert markers == ["elsewhere", result.collection]


class EditingEmbedder:
    """Wraps a real embedder and, while a batch is being embedded, edits rows from another
    connection, as a user would in the middle of a sync."""

    def __init__(self, inner: Embedder, database_url: str, schema: str, edit_ids: set[int]):
        self.inner = inner
        self.model_key, self.model_id, self.dimensions = (
            inner.model_key,
            inner.model_id,
            inner.dimensions,
        )
        self.database_url, self.schema, self.edit_ids = database_url, schema, edit_ids

    def embed_documents(self, texts: Sequence[str]) -> DenseEmbeddings:
        result = self.inner.embed_documents(texts)
        with psycopg.connect(self.database_url, autocommit=True) as other:
            other.execute(
                sql.SQL("UPDATE {} SET body = body || ' (edited)' WHERE id = ANY(%s)").format(
                    sql.Identifier(self.schema, "doc")
                ),
                (list(self.edit_ids),),
            )
        self.edit_ids = set()  # edit once
        return result

    def embed_query(self, text: str) -> list[float]:
        return self.inner.embed_query(text)

    def close(self) -> None:
        self.inner.close()


def test_edit_during_embedding_leaves_the_row_pending(project, conn, qdrant, schema, database_url):
    key, model = project.embeddings.model()
    embedder = EditingEmbedder(build_embedder(key, model), database_url, schema, {3, 4})
    result = run_sync(project, conn, qdrant, embedder=embedder, batch_size=50)
    assert result.embedded == 118
    assert result.left_pending == 2
    assert result.pending_after == 2
    assert 3 not in marked_ids(conn, schema, result.collection)

    # The next sync writes the edited text over the stale point and marks the rows.
    again = run_sync(project, conn, qdrant)
    assert again.embedded == 2
    point_id = reference_point_id("DOC", 3, result.collection)
    (point,) = qdrant.retrieve(result.collection, [point_id], with_payload=True)
    assert point.payload["content"].endswith("(edited)")


def test_rows_without_text_are_skipped_and_reported(project, conn, qdrant, schema):
    doc = sql.Identifier(schema, "doc")
    conn.execute(sql.SQL("UPDATE {} SET title = NULL, body = '  ' WHERE id IN (5, 6)").format(doc))
    result = run_sync(project, conn, qdrant)
    assert result.skipped == 2
    assert sorted(result.skipped_ids) == [5, 6]
    assert result.embedded == 118
    assert qdrant.count(result.collection, exact=True).count == 118


def test_dimension_mismatch_with_existing_collection_is_a_clear_error(
    project, conn, qdrant, tmp_path, schema
):
    name = collection(project)
    qdrant.create_collection(
        name,
        vectors_config={"dense": models.VectorParams(size=99, distance=models.Distance.COSINE)},
        sparse_vectors_config={"sparse": models.SparseVectorParams(modifier=models.Modifier.IDF)},
    )
    with pytest.raises(CollectionMismatchError, match="99-dimensional.*configured for 16"):
        run_sync(project, conn, qdrant)
    assert marked_ids(conn, schema, name) == set()


def test_concurrent_local_mode_openers_wait_instead_of_crashing(qdrant_path: str):
    """A second process opening the same local-mode folder waits for the first to close."""
    script = (
        "import logging, sys; logging.basicConfig(stream=sys.stdout, level=logging.INFO,"
        " format='%(message)s');"
        "from vector_pipeline.vector_store import open_qdrant;"
        "from vector_pipeline.locations import QdrantLocation;"
        "ctx = open_qdrant(QdrantLocation(path=sys.argv[1])); client = ctx.__enter__();"
        "print('opened', client.collection_exists('x'), flush=True); ctx.__exit__(None, None, None)"
    )
    with open_qdrant(QdrantLocation(path=qdrant_path)) as client:
        client.create_collection("x", vectors_config=models.VectorParams(size=2, distance="Cosine"))
        waiting = subprocess.Popen(
            [sys.executable, "-c", script, qdrant_path], stdout=subprocess.PIPE, text=True
        )
        # The child says it is waiting (it did not crash on Qdrant's own lock) ...
        assert "in use by another process; waiting" in waiting.stdout.readline()
        assert waiting.poll() is None
    # ... and opens the folder once we close it.
    out, _ = waiting.communicate(timeout=60)
    assert waiting.returncode == 0
    assert out.splitlines()[-1] == "opened True"


def test_local_model_sync_records_cuts_and_finds_by_meaning(conn, schema, tmp_path, qdrant):
    """The shipped MiniLM provider end to end: a text over 256 word pieces is split into
    chunks that each fit (nothing is cut), and a hybrid search ranks the row that answers the
    question first, once."""
    create_doc_table(conn, schema, 0)
    rows = [
        (1, "Growing tomatoes", "Water tomato plants deeply and stake them as they grow."),
        (2, "Stars", "A telescope gathers light from distant galaxies and nebulae."),
        (3, "Bread", "Knead the dough, let it rise, then bake it in a hot oven."),
        (4, "Long", " ".join(["The committee discussed the annual budget at length."] * 80)),
    ]
    conn.cursor().executemany(
        sql.SQL("INSERT INTO {} (id, title, body) VALUES (%s, %s, %s)").format(
            sql.Identifier(schema, "doc")
        ),
        rows,
    )
    config = load_config(
        write_config(
            tmp_path / "local",
            schema,
            default="minilm",
            extra_models="""\
            minilm:
              provider: local
              id: all-MiniLM-L6-v2
              dimensions: 384
            """,
        )
    )
    setup_database(conn, config)
    result = run_sync(config, conn, qdrant)
    assert (result.embedded, result.truncated, result.chunked) == (4, 0, 1)
    points = all_points(qdrant, result.collection, with_payload=True)
    long_row = sorted(
        (p.payload for p in points if p.payload["meta_data"]["row_id"] == 4),
        key=lambda payload: payload["meta_data"]["chunk"],
    )
    assert len(points) == 3 + len(long_row) and len(long_row) >= 3
    assert [payload["meta_data"]["chunk"] for payload in long_row] == list(range(len(long_row)))
    assert not any(p.payload["meta_data"]["truncated"] for p in points)
    key, model = config.embeddings.model()
    count = build_embedder(key, model).count_tokens
    assert all(count(payload["content"]) <= 256 for payload in long_row)
    assert all(payload["content"].startswith("TITLE: Long\n") for payload in long_row)

    hits = search(qdrant, build_embedder(key, model), result.collection, "how to grow vegetables")
    assert hits[0].payload["meta_data"]["row_id"] == 1
