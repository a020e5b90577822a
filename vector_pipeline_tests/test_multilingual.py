"""Arabic and Persian rows are found as people type; BM25 settings live with the collection;
search returns each row once and filters by table and payload."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql
from qdrant_client import QdrantClient, models

from vector_pipeline import encoding
from vector_pipeline.cli import main
from vector_pipeline.config import load_config
from vector_pipeline.database_setup import setup_database
from vector_pipeline.embedders import build_embedder
from vector_pipeline.points import point_id
from vector_pipeline.search import search_rows
from vector_pipeline.sparse import SparseSettings
from vector_pipeline.vector_store import SPARSE
from vector_pipeline_tests.conftest import create_doc_table, sync_model, write_config

pytestmark = pytest.mark.integration

VOWELLED = "إِنَّمَا الْأَعْمَالُ بِالنِّيَّاتِ، وَإِنَّمَا لِكُلِّ امْرِئٍ مَا نَوَى"
PERSIAN = "کتاب‌ها را می‌خوانم و یادداشت برمی‌دارم"
COLLECTION = "test_det-a_hybrid"


def _project(tmp_path: Path, schema: str, conn: psycopg.Connection, sparse: str = ""):
    models_yaml = f"""\
    det_a:
      provider: deterministic
      id: det-a
      dimensions: 16
      {sparse}
    """
    directory = write_config(tmp_path / "config", schema)
    text = (directory / "embeddings.yaml").read_text()
    # Replace det_a with one carrying the sparse settings under test.
    head, _, rest = text.partition("    det_a:\n")
    rest = rest.split("    det_b:\n", 1)[1]
    lines = [line for line in models_yaml.splitlines() if line.strip()]
    body = "".join("    " + line[4:] + "\n" for line in lines)
    (directory / "embeddings.yaml").write_text(head + body + "    det_b:\n" + rest)
    project = load_config(directory)
    setup_database(conn, project)
    return project


def _add_rows(conn: psycopg.Connection, schema: str) -> None:
    doc = sql.Identifier(schema, "doc")
    conn.execute(
        sql.SQL("INSERT INTO {} (id, title, body, category) VALUES (%s, %s, %s, %s)").format(doc),
        (1001, "Bukhari 1", VOWELLED, "bukhari"),
    )
    conn.execute(
        sql.SQL("INSERT INTO {} (id, title, body, category) VALUES (%s, %s, %s, %s)").format(doc),
        (1002, "یادداشت", PERSIAN, "persian"),
    )


def _typed_hits(qdrant: QdrantClient, project, text: str, **filters) -> list:
    key, model = project.embeddings.model()
    return search_rows(
        qdrant,
        build_embedder(key, model),
        COLLECTION,
        text,
        5,
        sparse=model.sparse.settings(),
        **filters,
    )


def test_default_settings_find_typed_arabic_and_persian(tmp_path, schema, conn, qdrant):
    create_doc_table(conn, schema, 30)
    _add_rows(conn, schema)
    project = _project(tmp_path, schema, conn)
    assert project.embeddings.models["det_a"].sparse.languages == ["english", "arabic"]
    assert sync_model(project, conn, qdrant).embedded == 32

    # Typed without diacritics, in another word order: the sparse half finds it first.
    hits = _typed_hits(qdrant, project, "بالنيات الاعمال انما")
    assert hits[0].row_id == 1001
    hits = _typed_hits(qdrant, project, "كتاب ها مي خوانم")  # Arabic yeh/kaf, spaces for ZWNJ
    assert hits[0].row_id == 1002
    # The collection says how its sparse vectors were made, for readers to reproduce.
    described = encoding.collection_settings(qdrant, COLLECTION)
    expected = SparseSettings(languages=("english", "arabic"), unstemmed=("arabic",))
    assert described == expected.describe()
    assert described["stemmers"] == {"english": "english", "arabic": None}


def test_changed_settings_reencode_sparse_vectors_without_embedding(tmp_path, schema, conn, qdrant):
    create_doc_table(conn, schema, 30)
    _add_rows(conn, schema)
    plain = _project(tmp_path, schema, conn, "sparse: {languages: [english]}")
    assert sync_model(plain, conn, qdrant).embedded == 32
    before = _sparse_of(qdrant, 1001), _sparse_of(qdrant, 5)

    multilingual = _project(tmp_path, schema, conn)
    result = sync_model(multilingual, conn, qdrant)
    # Nothing is embedded again: only the two Arabic-script rows' sparse vectors changed.
    assert (result.embedded, result.adopted, result.sparse_reencoded) == (0, 0, 2)
    assert _sparse_of(qdrant, 1001) != before[0]
    assert _sparse_of(qdrant, 5) == before[1]  # English text: the same vector
    assert _typed_hits(qdrant, multilingual, "بالنيات الاعمال انما")[0].row_id == 1001
    assert encoding.collection_settings(qdrant, COLLECTION)["languages"] == ["english", "arabic"]
    # Recorded: the next sync re-encodes nothing.
    assert sync_model(multilingual, conn, qdrant).sparse_reencoded == 0


def _sparse_of(qdrant: QdrantClient, row: int) -> dict[int, float]:
    (point,) = qdrant.retrieve(
        COLLECTION, [point_id("DOC", str(row), COLLECTION)], with_vectors=[SPARSE]
    )
    vector = point.vector[SPARSE]
    return dict(zip(vector.indices, vector.values, strict=True))


def test_search_returns_each_row_once_and_filters(tmp_path, schema, conn, qdrant):
    create_doc_table(conn, schema, 30)
    project = _project(tmp_path, schema, conn)
    sync_model(project, conn, qdrant)
    # A second point for row 3, as a chunk of a long row is: same row, another id.
    (point,) = qdrant.retrieve(
        COLLECTION, [point_id("DOC", "3", COLLECTION)], with_vectors=True, with_payload=True
    )
    qdrant.upsert(
        COLLECTION,
        [
            models.PointStruct(
                id="00000000-0000-0000-0000-000000000003",
                vector=point.vector,
                payload=point.payload,
            )
        ],
        wait=True,
    )
    hits = _typed_hits(qdrant, project, "Body of document 3 about topic 3")
    assert hits[0].row_id == 3
    assert len({hit.row_id for hit in hits}) == len(hits) == 5

    only = _typed_hits(qdrant, project, "document", where={"category": "cat1"})
    assert only and all(hit.payload["meta_data"]["category"] == "cat1" for hit in only)
    assert not _typed_hits(qdrant, project, "document", tables=["other"])


def test_search_cli_json_table_and_where(tmp_path, schema, conn, monkeypatch, database_url):
    create_doc_table(conn, schema, 12)
    directory = write_config(tmp_path / "config", schema)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("QDRANT_PATH", str(tmp_path / "qdrant"))
    monkeypatch.delenv("QDRANT_URL", raising=False)
    runner = CliRunner()
    run = lambda *args: runner.invoke(main, ["--config-dir", str(directory), *args])  # noqa: E731
    assert run("init-db").exit_code == 0
    assert run("sync").exit_code == 0
    found = run(
        "search", "topic", "--json", "--table", "doc", "--where", "category=cat2", "--limit", "3"
    )
    assert found.exit_code == 0, found.output
    answer = json.loads(found.output)
    assert answer["query"] == "topic" and answer["model"] == "det_a"
    assert [hit["rank"] for hit in answer["hits"]] == [1, 2, 3]
    assert {hit["meta_data"]["category"] for hit in answer["hits"]} == {"cat2"}
    assert all(hit["table"] == "doc" and hit["chunk"] == 0 for hit in answer["hits"])
    bad = run("search", "topic", "--where", "category")
    assert bad.exit_code != 0 and "is not FIELD=VALUE" in bad.output


def test_readers_with_fastembed_find_english_and_arabic_rows(tmp_path, schema, conn, qdrant):
    """Reader compatibility: a client that encodes queries with fastembed itself, as the README
    documents, finds the rows: English with plain Qdrant/bm25, Arabic with language="arabic",
    disable_stemmer=True and the shipped stopwords on normalised text."""
    from fastembed.sparse.bm25 import Bm25 as FastembedBm25

    from vector_pipeline.sparse import load_stopwords, normalise_arabic_script

    create_doc_table(conn, schema, 30)
    _add_rows(conn, schema)
    project = _project(tmp_path, schema, conn)
    sync_model(project, conn, qdrant)
    data = Path(__file__).resolve().parents[1] / "vector_pipeline" / "data"

    def fastembed(**options) -> FastembedBm25:
        folder = tmp_path / f"fastembed-{len(options)}"
        folder.mkdir()
        return FastembedBm25(
            "Qdrant/bm25",
            cache_dir=str(folder),
            specific_model_path=str(folder),
            local_files_only=True,
            **options,
        )

    def top(reader: FastembedBm25, text: str) -> int:
        vector = next(iter(reader.query_embed(text)))
        hits = qdrant.query_points(
            COLLECTION,
            query=models.SparseVector(
                indices=vector.indices.tolist(), values=vector.values.tolist()
            ),
            using=SPARSE,
            limit=1,
            with_payload=True,
        ).points
        return hits[0].payload["meta_data"]["row_id"]

    english = fastembed(stopwords=set(load_stopwords(data / "stopwords_english.txt")))
    assert top(english, "document 17 about topic 3") == 17
    arabic = fastembed(
        language="arabic",
        disable_stemmer=True,
        stopwords={
            normalise_arabic_script(word) for word in load_stopwords(data / "stopwords_arabic.txt")
        },
    )
    assert top(arabic, normalise_arabic_script("الأعمال بالنيات")) == 1001
