"""Adopting a collection the reference design wrote through Agno's own Qdrant store.

The writer here is the reference design's worker (docs: seed-incremental-vector-sync.txt) run
for real: Agno's `Qdrant` store in hybrid mode, its OpenAI embedder talking to the loopback
OpenAI server, fastembed's Qdrant/bm25 for the sparse vectors, the formula passed as
`content_hash`, `embedded_in` appended after each upsert. The readers are Agno's keyword and
hybrid searches. Between them, vector_pipeline adopts the collection and keeps it in step.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql
from qdrant_client import QdrantClient, models

from vector_pipeline.adoption import AdoptionError, adopt
from vector_pipeline.cli import main
from vector_pipeline.config import ProjectConfig, load_config
from vector_pipeline.database_setup import setup_database
from vector_pipeline.locations import QdrantLocation
from vector_pipeline.points import content_hash, point_id
from vector_pipeline.reconcile import reconcile
from vector_pipeline.sparse import load_stopwords
from vector_pipeline.vector_store import (
    SPARSE,
    CollectionMismatchError,
    ForeignPointsError,
    open_qdrant,
)
from vector_pipeline_tests.conftest import (
    API_KEY_VARIABLE,
    marked_count,
    reference_point_id,
    sync_model,
    write_config,
)
from vector_pipeline_tests.openai_server import FakeOpenAIServer

KEY = "sk-adoption-test"
DIMENSIONS = 8
MODEL_ID = "text-embedding-3-small"
COLLECTION = f"kb_{MODEL_ID}_hybrid"
ROWS = 240
NULL_BODIES = {7, 8, 9}
# How a sync refuses a collection Agno wrote: its sparse vector lacks IDF, its points lack
# our payload; either way it says to adopt.
REFUSED = (
    ForeignPointsError,
    CollectionMismatchError,
)  # rows whose body is NULL: the reference printed it as "None"

pytestmark = pytest.mark.integration


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAIServer]:
    monkeypatch.setenv(API_KEY_VARIABLE, KEY)
    with FakeOpenAIServer(api_key=KEY, dimensions=DIMENSIONS) as fake:
        yield fake


def _config(tmp_path: Path, schema: str, url: str, null_as: str | None = None) -> ProjectConfig:
    null_line = f"    null_as: {json.dumps(null_as)}\n" if null_as is not None else ""
    tables = (
        f"schema: {schema}\ncollection_base: kb\ntables:\n  article:\n    data_type: ARTICLE\n"
        '    text_template: "TITLE: {title}\\nCONTENT: {body}"\n'
        f"    payload_columns: [title]\n{null_line}"
    )
    directory = write_config(
        tmp_path / f"config-{null_as}",
        schema,
        default="api",
        extra_models=(
            f"api:\n  provider: openai\n  id: {MODEL_ID}\n  dimensions: {DIMENSIONS}\n"
            f"  api_key: ${{{API_KEY_VARIABLE}}}\n  base_url: {url}\n"
        ),
        tables=tables,
    )
    return load_config(directory)


def _create_django_table(conn: psycopg.Connection, schema: str) -> None:
    """As Django's migration makes `Article` with `embedded_in = JSONField(default=list)`:
    NOT NULL, no database default."""
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} (id bigint PRIMARY KEY, title text NOT NULL, body text, "
            "embedded_in jsonb NOT NULL)"
        ).format(sql.Identifier(schema, "article"))
    )
    conn.cursor().executemany(
        sql.SQL("INSERT INTO {} (id, title, body, embedded_in) VALUES (%s, %s, %s, '[]')").format(
            sql.Identifier(schema, "article")
        ),
        [
            (
                i,
                f"Article {i}",
                None if i in NULL_BODIES else f"Body {i} on gardening topic t{i % 11}.",
            )
            for i in range(1, ROWS + 1)
        ],
    )


def _fastembed_offline(tmp_path: Path) -> dict[str, Any]:
    """fastembed's Qdrant/bm25 with its English stopwords and no download."""
    folder = tmp_path / "fastembed"
    folder.mkdir(exist_ok=True)
    return {
        "specific_model_path": str(folder),
        "cache_dir": str(folder),
        "local_files_only": True,
        "stopwords": set(load_stopwords()),
    }


def _agno_store(tmp_path: Path, qdrant_path: str, url: str, search_type: str) -> Any:
    from agno.knowledge.embedder.openai import OpenAIEmbedder
    from agno.vectordb.qdrant import Qdrant
    from agno.vectordb.search import SearchType

    return Qdrant(
        collection=COLLECTION,
        path=qdrant_path,
        embedder=OpenAIEmbedder(id=MODEL_ID, dimensions=DIMENSIONS, api_key=KEY, base_url=url),
        search_type=SearchType(search_type),
        fastembed_kwargs=_fastembed_offline(tmp_path),
    )


def _close(store: Any) -> None:
    # Local mode lets one client hold the folder; vector_pipeline opens its own after.
    store.client.close()
    store._client = None


def _formula(row_id: int) -> str:
    return reference_point_id("ARTICLE", row_id, COLLECTION)


def reference_worker(
    conn: psycopg.Connection, schema: str, tmp_path: Path, qdrant_path: str, url: str
) -> None:
    """run_global_embedding_sync of the reference design, through Agno's own store."""
    from agno.knowledge.document import Document

    store = _agno_store(tmp_path, qdrant_path, url, "hybrid")
    store.create()
    article = sql.Identifier(schema, "article")
    rows = conn.execute(
        sql.SQL("SELECT id, title, body FROM {} WHERE NOT (embedded_in @> %s::jsonb)").format(
            article
        ),
        (json.dumps([COLLECTION]),),
    ).fetchall()
    for row_id, title, body in rows:
        text = f"TITLE: {title}\nCONTENT: {body}"  # an f-string: NULL prints as "None"
        store.upsert(
            content_hash=_formula(row_id),
            documents=[Document(content=text, name=title, meta_data={"id": row_id})],
        )
        conn.execute(
            sql.SQL("UPDATE {} SET embedded_in = embedded_in || %s::jsonb WHERE id = %s").format(
                article
            ),
            (json.dumps([COLLECTION]), row_id),
        )
    _close(store)


def _points(qdrant: QdrantClient, collection: str = COLLECTION) -> list[models.Record]:
    points, _ = qdrant.scroll(collection, limit=100_000, with_payload=True)
    return points


def _texts(conn: psycopg.Connection, schema: str, null_as: str = "") -> dict[int, str | None]:
    rows = conn.execute(
        sql.SQL("SELECT id, title, body FROM {}").format(sql.Identifier(schema, "article"))
    ).fetchall()
    return {
        row_id: f"TITLE: {title}\nCONTENT: {null_as if body is None else body}"
        for row_id, title, body in rows
    }


def _repair_command(database_url: str, qdrant_path: str, config: ProjectConfig) -> Any:
    """`vector-pipeline repair`, the operator's command, in this process (it shares the open
    local-mode client)."""
    return CliRunner().invoke(
        main,
        ["repair"],
        env={
            "DATABASE_URL": database_url,
            "QDRANT_PATH": qdrant_path,
            "VECTOR_PIPELINE_CONFIG_DIR": str(config.config_dir),
        },
    )


def _marked(conn: psycopg.Connection, schema: str) -> int:
    return marked_count(conn, schema, COLLECTION, table="article")


def _assert_exact(qdrant: QdrantClient, conn: psycopg.Connection, schema: str, null_as: str):
    """One point per row, at its formula id, holding the row's current text, every row
    marked: the promise."""
    points = _points(qdrant)
    texts = _texts(conn, schema, null_as)
    by_id = {str(p.id): p for p in points}
    assert len(points) == len(texts)
    for row_id, text in texts.items():
        point = by_id[_formula(row_id)]
        assert point.payload["content"] == text
        assert point.payload["meta_data"]["row_id"] == row_id
    pending = conn.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE NOT (embedded_in @> %s::jsonb)").format(
            sql.Identifier(schema, "article")
        ),
        (json.dumps([COLLECTION]),),
    ).fetchone()[0]
    assert pending == 0


def _agno_finds(tmp_path: Path, qdrant_path: str, url: str, kind: str, query: str) -> list[str]:
    store = _agno_store(tmp_path, qdrant_path, url, kind)
    try:
        return [doc.content for doc in store.search(query, limit=5)]
    finally:
        _close(store)


@pytest.mark.slow
def test_an_agno_collection_is_adopted_without_embedding_and_then_kept_exact(
    tmp_path: Path,
    schema: str,
    conn: psycopg.Connection,
    server: FakeOpenAIServer,
    database_url: str,
) -> None:
    qdrant_path = str(tmp_path / "qdrant")
    article = sql.Identifier(schema, "article")
    _create_django_table(conn, schema)
    reference_worker(conn, schema, tmp_path, qdrant_path, server.url)
    written_by_agno = len(server.requests)
    assert {t for r in server.requests for t in r.inputs} == set(
        _texts(conn, schema, "None").values()
    )

    # Life went on before the switch: a psql edit the Django save() never saw, a delete
    # (its point stays behind), a row added while the worker was down.
    conn.execute(sql.SQL("UPDATE {} SET body = 'Edited in psql' WHERE id = 20").format(article))
    conn.execute(sql.SQL("DELETE FROM {} WHERE id IN (30, 31)").format(article))
    conn.execute(
        sql.SQL("INSERT INTO {} VALUES (1000, 'Late article', 'Late body', '[]')").format(article)
    )

    config = _config(tmp_path, schema, server.url)
    setup_database(conn, config)
    with open_qdrant(QdrantLocation(path=qdrant_path)) as qdrant:
        agno_ids = {str(p.id) for p in _points(qdrant)}
        assert not agno_ids & {_formula(i) for i in range(1, ROWS + 1)}  # Agno's own ids
        sparse = qdrant.get_collection(COLLECTION).config.params.sparse_vectors[SPARSE]
        assert sparse.modifier is None  # as Agno creates it

        # A sync refuses rather than paying for every row beside Agno's points.
        with pytest.raises(REFUSED, match="vector-pipeline adopt"):
            sync_model(config, conn, qdrant)

        # So does repair, before it unmarks a single row.
        marked_before = _marked(conn, schema)
        refused = _repair_command(database_url, qdrant_path, config)
        assert refused.exit_code == 1 and "vector-pipeline adopt" in refused.output
        assert _marked(conn, schema) == marked_before == ROWS - 2

        # The dry run reports, writes nothing and sees the NULL rendering.
        (dry,) = adopt(conn, qdrant, config, dry_run=True)
        (stats,) = dry.tables
        assert {str(p.id) for p in _points(qdrant)} == agno_ids
        assert (dry.points_scanned, dry.unattributed, dry.idf) == (ROWS, 0, "missing")
        assert (stats.points_moved, stats.gone_deleted) == (ROWS - 2, 2)
        assert (stats.stale, stats.null_as_reference, stats.without_point) == (4, 3, 1)
        assert stats.rows_held == ROWS - 2 - 4 and stats.rows_to_embed == 5
        assert stats.tokens > 0 and stats.cost is None  # no price configured

    # As the dry run suggests: render NULL as the reference did, and keep those rows too.
    config = _config(tmp_path, schema, server.url, null_as="None")
    with open_qdrant(QdrantLocation(path=qdrant_path)) as qdrant:
        (report,) = adopt(conn, qdrant, config)
        (stats,) = report.tables
        assert len(server.requests) == written_by_agno  # not one embedding request
        assert (stats.points_moved, stats.gone_deleted, stats.duplicates_deleted) == (
            ROWS - 2,
            2,
            0,
        )
        assert (stats.rows_held, stats.stale, stats.without_point) == (ROWS - 3, 1, 1)
        assert stats.marks_removed == 1  # row 20: marked, but its point holds the old text
        assert report.idf == "set"
        sparse = qdrant.get_collection(COLLECTION).config.params.sparse_vectors[SPARSE]
        assert sparse.modifier == models.Modifier.IDF
        point = {str(p.id): p for p in _points(qdrant)}[_formula(5)]
        assert point.payload["meta_data"]["id"] == 5  # the reference's own fields stay
        assert point.payload["content_hash"] == content_hash(point.payload["content"])
        assert "user_id" in point.payload  # Agno 3's tenant field stays

        # Again: nothing to do.
        (again,) = adopt(conn, qdrant, config)
        assert again.points_written == 0 and again.tables[0].points_in_place == ROWS - 2
        assert (again.tables[0].stale, again.tables[0].without_point) == (1, 1)

        # The sync embeds exactly the edited row and the late one.
        result = sync_model(config, conn, qdrant)
        assert (result.embedded, result.adopted) == (2, 0)
        assert sorted(t for r in server.requests[written_by_agno:] for t in r.inputs) == sorted(
            [
                "TITLE: Article 20\nCONTENT: Edited in psql",
                "TITLE: Late article\nCONTENT: Late body",
            ]
        )
        _assert_exact(qdrant, conn, schema, "None")

        # From now on: edits, deletes, reconcile and repair keep one current point per row.
        conn.execute(
            sql.SQL("UPDATE {} SET body = 'Zucchini glut remedies' WHERE id = 50").format(article)
        )
        conn.execute(sql.SQL("DELETE FROM {} WHERE id = 60").format(article))
        result = sync_model(config, conn, qdrant)
        assert (result.embedded, result.deleted) == (1, 1)
        _assert_exact(qdrant, conn, schema, "None")
        table = config.tables.tables[0]
        check = reconcile(conn, qdrant, table, schema, COLLECTION)
        assert check.ok, check.to_dict()
        requests_before_repair = len(server.requests)
        repaired = _repair_command(database_url, qdrant_path, config)
        assert repaired.exit_code == 0, repaired.output
        assert "missing 0, orphan 0, stale 0" in repaired.output
        assert len(server.requests) == requests_before_repair
        _assert_exact(qdrant, conn, schema, "None")

    # Agno's readers see the current text, never the old one.
    for kind in ("keyword", "hybrid"):
        found = _agno_finds(tmp_path, qdrant_path, server.url, kind, "zucchini glut remedies")
        assert found[0] == "TITLE: Article 50\nCONTENT: Zucchini glut remedies"
        old = _agno_finds(tmp_path, qdrant_path, server.url, kind, "Body 50 on gardening")
        assert "TITLE: Article 50\nCONTENT: Body 50 on gardening topic t6." not in old
        assert not any("Article 60\n" in text for text in old)


def _formula_collection(qdrant: QdrantClient, collection: str, payload_hash: str) -> None:
    """A collection whose ids already follow the formula (an earlier writer used it as the
    id) but whose payload is Agno's: `content_hash` is the formula, or some other hash."""
    qdrant.create_collection(
        collection,
        vectors_config={"dense": models.VectorParams(size=16, distance=models.Distance.COSINE)},
        sparse_vectors_config={"sparse": models.SparseVectorParams()},
    )
    points = []
    for i in range(1, 41):
        text = f"TITLE: Title {i}\nCONTENT: Body of document {i} about topic {i % 7}"
        stored = {"formula": _formula_doc(i), "sha": hashlib.sha1(text.encode()).hexdigest()}
        points.append(
            models.PointStruct(
                id=_formula_doc(i),
                vector={
                    "dense": [float((i + k) % 5 + 1) for k in range(16)],
                    "sparse": models.SparseVector(indices=[i], values=[1.0]),
                },
                payload={
                    "name": f"doc {i}",
                    "meta_data": {},
                    "content": text,
                    "content_hash": stored[payload_hash],
                    "usage": None,
                    "content_id": None,
                },
            )
        )
    qdrant.upsert(collection, points, wait=True)


def _formula_doc(row_id: int) -> str:
    return point_id("DOC", str(row_id), "test_det-a_hybrid")


@pytest.mark.parametrize("payload_hash", ["formula", "sha"])
def test_a_collection_with_formula_ids_is_adopted_in_place(
    project: ProjectConfig,
    conn: psycopg.Connection,
    qdrant: QdrantClient,
    schema: str,
    payload_hash: str,
) -> None:
    collection = "test_det-a_hybrid"
    _formula_collection(qdrant, collection, payload_hash)
    conn.execute(
        sql.SQL("UPDATE {} SET body = 'changed' WHERE id = 3").format(sql.Identifier(schema, "doc"))
    )
    (report,) = adopt(conn, qdrant, project)
    (stats,) = report.tables
    assert (stats.points_moved, stats.payloads_rewritten) == (0, 40)
    # Rows 41..120 never had a point; row 3 changed since.
    assert (stats.rows_held, stats.stale, stats.without_point) == (39, 1, 80)
    result = sync_model(project, conn, qdrant, batch_size=200)
    assert (result.embedded, result.adopted) == (81, 0)
    check = reconcile(conn, qdrant, project.tables.tables[0], schema, collection)
    assert check.ok and check.points == 120, check.to_dict()


def test_a_collection_this_pipeline_wrote_is_left_as_it_is(
    project: ProjectConfig, conn: psycopg.Connection, qdrant: QdrantClient
) -> None:
    sync_model(project, conn, qdrant)
    (report,) = adopt(conn, qdrant, project)
    assert report.points_written == 0 and report.tables[0].points_in_place == 120
    assert report.tables[0].rows_held == 120 and report.tables[0].marks_removed == 0
    assert sync_model(project, conn, qdrant).embedded == 0


def test_a_collection_that_cannot_be_adopted_is_refused_before_any_write(
    project: ProjectConfig, conn: psycopg.Connection, qdrant: QdrantClient
) -> None:
    with pytest.raises(AdoptionError, match="no collection 'test_det-a_hybrid'"):
        adopt(conn, qdrant, project)
    qdrant.create_collection(
        "test_det-a_hybrid",
        vectors_config=models.VectorParams(size=16, distance=models.Distance.COSINE),
    )
    with pytest.raises(AdoptionError, match="lacks the named vectors"):
        adopt(conn, qdrant, project)


ADOPT_CRASH_POINTS = ["adopt_after_write", "adopt_after_delete"]


@pytest.mark.parametrize("point", ADOPT_CRASH_POINTS)
@pytest.mark.slow
def test_sigkill_during_adoption_then_a_rerun_leaves_it_exact(
    tmp_path: Path,
    schema: str,
    conn: psycopg.Connection,
    server: FakeOpenAIServer,
    database_url: str,
    point: str,
) -> None:
    qdrant_path = str(tmp_path / "qdrant")
    _create_django_table(conn, schema)
    reference_worker(conn, schema, tmp_path, qdrant_path, server.url)
    config = _config(tmp_path, schema, server.url, null_as="None")
    setup_database(conn, config)
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "QDRANT_PATH": qdrant_path,
        "VECTOR_PIPELINE_CONFIG_DIR": str(config.config_dir),
    }
    env.pop("QDRANT_URL", None)
    command = [sys.executable, "-m", "vector_pipeline.cli", "adopt", "--json"]
    # Pages of 1000 points: the first page's write or delete is the crash.
    crashed = subprocess.run(
        command,
        env={**env, "VECTOR_PIPELINE_FAILPOINT": point},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert crashed.returncode == -9, crashed.stderr
    # Until adoption completes, a sync still refuses the collection.
    with open_qdrant(QdrantLocation(path=qdrant_path)) as qdrant:
        with pytest.raises(REFUSED, match="vector-pipeline adopt"):
            sync_model(config, conn, qdrant)
        # Where it died: every point written at its formula id, the old ids not yet deleted
        # (two copies of each row), or deleted but no row marked anew.
        copies = 2 if point == "adopt_after_write" else 1
        assert len(_points(qdrant)) == copies * ROWS
    requests = len(server.requests)
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    (report,) = json.loads(rerun.stdout)
    assert report["tables"][0]["rows_held"] == ROWS
    assert len(server.requests) == requests  # none since the reference's
    with open_qdrant(QdrantLocation(path=qdrant_path)) as qdrant:
        _assert_exact(qdrant, conn, schema, "None")
        assert sync_model(config, conn, qdrant).embedded == 0


@pytest.mark.slow
def test_an_operator_adopts_from_dagster_after_a_dry_run(
    project: ProjectConfig,
    conn: psycopg.Connection,
    qdrant: QdrantClient,
    database_url: str,
    qdrant_path: str,
) -> None:
    import dagster as dg

    from vector_pipeline.definitions import build_definitions
    from vector_pipeline.orchestration.resources import PostgresResource, QdrantResource

    collection = "test_det-a_hybrid"
    _formula_collection(qdrant, collection, "formula")
    defs = build_definitions(
        project,
        postgres=PostgresResource(database_url=database_url),
        qdrant=QdrantResource(path=qdrant_path),
    )
    job = defs.resolve_job_def("adopt_collection")

    def launch(**config: Any) -> dict[str, Any]:
        with dg.instance_for_test() as instance:
            result = job.execute_in_process(
                run_config={"ops": {"adopt": {"config": config}}}, instance=instance
            )
        assert result.success
        (output,) = result.output_for_node("adopt")
        return output

    with dg.instance_for_test() as instance:
        failed = job.execute_in_process(
            run_config={"ops": {"adopt": {"config": {"tables": ["nope"]}}}},
            instance=instance,
            raise_on_error=False,
        )
    assert not failed.success
    (failure,) = [e for e in failed.all_events if e.is_step_failure]
    assert failure.step_failure_data.user_failure_data.description == (
        "no table 'nope' in tables.yaml"
    )
    dry = launch()  # the launchpad's default is a dry run
    assert dry["dry_run"] and dry["tables"][0]["payloads_rewritten"] == 40
    assert all(p.payload["meta_data"] == {} for p in _points(qdrant, collection))  # untouched
    done = launch(dry_run=False)
    assert (done["points_written"], done["tables"][0]["rows_held"]) == (40, 40)
    check = reconcile(conn, qdrant, project.tables.tables[0], project.tables.schema_, collection)
    assert check.ok and check.points == 40, check.to_dict()


DOC_COLLECTION = "test_det-a_hybrid"


def _write_agno_points(
    qdrant: QdrantClient,
    collection: str,
    points: list[tuple[str, str, str, dict[str, Any]]],
    *,
    dense: bool = True,
) -> None:
    """Points in Agno's hybrid layout: (id, content, content_hash, meta_data) each; the
    collection is created as Agno creates it (no IDF modifier) when it does not exist."""
    if not qdrant.collection_exists(collection):
        qdrant.create_collection(
            collection,
            vectors_config={"dense": models.VectorParams(size=16, distance=models.Distance.COSINE)},
            sparse_vectors_config={"sparse": models.SparseVectorParams()},
        )
    structs = []
    for pid, content, stored, meta in points:
        vector: dict[str, Any] = {"sparse": models.SparseVector(indices=[1], values=[1.0])}
        if dense:
            vector["dense"] = [1.0 + (len(content) + k) % 7 for k in range(16)]
        payload = {"name": "n", "meta_data": meta, "content": content, "content_hash": stored}
        structs.append(models.PointStruct(id=pid, vector=vector, payload=payload))
    qdrant.upsert(collection, structs, wait=True)


def _doc_text(conn: psycopg.Connection, schema: str, row_id: int) -> str:
    title, body = conn.execute(
        sql.SQL("SELECT title, body FROM {} WHERE id = %s").format(sql.Identifier(schema, "doc")),
        (row_id,),
    ).fetchone()
    return f"TITLE: {title}\nCONTENT: {body}"


def _agno_doc_points(conn: psycopg.Connection, schema: str, rows: range) -> list[tuple]:
    return [
        (
            str(uuid.UUID(hashlib.md5(_doc_text(conn, schema, i).encode()).hexdigest())),
            _doc_text(conn, schema, i),
            _formula_doc(i),
            {"id": i},
        )
        for i in rows
    ]


def _counts(report: Any) -> dict[str, Any]:
    (stats,) = report.tables
    return {k: v for k, v in asdict(stats).items() if k not in ("marks_added", "marks_removed")}


def test_the_copy_holding_the_current_text_survives_whichever_page_it_is_on(
    project: ProjectConfig, conn: psycopg.Connection, qdrant: QdrantClient, schema: str
) -> None:
    # Row 1 has two copies: its old text under the id that scrolls first, its current text
    # under the id that scrolls last. One point per page puts them on different pages.
    points = _agno_doc_points(conn, schema, range(1, 121))
    old = ("00000000-0000-0000-0000-000000000001", "TITLE: Title 1\nCONTENT: old", points[0][2])
    points[0] = ("ffffffff-ffff-ffff-ffff-ffffffffffff", *points[0][1:])
    _write_agno_points(qdrant, DOC_COLLECTION, [*points, (*old, {"id": 1})])
    (dry,) = adopt(conn, qdrant, project, dry_run=True, page=1)
    (done,) = adopt(conn, qdrant, project, page=1)
    assert _counts(dry) == _counts(done)
    stats = done.tables[0]
    assert (stats.points_moved, stats.duplicates_deleted, stats.rows_held) == (120, 1, 120)
    assert (stats.rows_to_embed, stats.stale, stats.without_point) == (0, 0, 0)
    assert _points(qdrant, DOC_COLLECTION)[0].payload is not None
    by_id = {str(p.id): p for p in _points(qdrant, DOC_COLLECTION)}
    assert len(by_id) == 120 and by_id[_formula_doc(1)].payload["content"] == points[0][1]
    assert sync_model(project, conn, qdrant).embedded == 0


@pytest.mark.parametrize(
    ("key_type", "keys"),
    [
        ("char(5)", ["ab", "cd"]),  # psycopg reads 'ab   ', which the reference hashed
        ("timestamptz", ["2024-05-01 09:30:00+00", "2024-05-02 10:00:00+00"]),
    ],
)
def test_a_key_the_reference_printed_otherwise_is_moved_not_deleted(
    tmp_path: Path,
    schema: str,
    conn: psycopg.Connection,
    qdrant: QdrantClient,
    key_type: str,
    keys: list[str],
) -> None:
    from vector_pipeline_tests.conftest import doc_config

    doc = sql.Identifier(schema, "doc")
    conn.execute(
        sql.SQL(f"CREATE TABLE {{}} (code {key_type} PRIMARY KEY, title text, body text)").format(
            doc
        )
    )
    for key in keys:
        conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s, 'b')").format(doc), (key, f"t {key}"))
    config = doc_config(tmp_path / "c", schema, "{title} {body}", primary_key="code")
    setup_database(conn, config)
    # The reference hashed str() of what the driver gave it.
    values = [row[0] for row in conn.execute(sql.SQL("SELECT code, title FROM {}").format(doc))]
    points = []
    for value in values:
        (title,) = conn.execute(
            sql.SQL("SELECT title FROM {} WHERE code = %s").format(doc), (value,)
        ).fetchone()
        formula = point_id("DOC", str(value), DOC_COLLECTION)
        points.append((str(uuid.uuid4()), f"{title} b", formula, {"id": str(value)}))
    assert all(
        point_id("DOC", k, DOC_COLLECTION) != p[2] for k, p in zip(keys, points, strict=True)
    )
    _write_agno_points(qdrant, DOC_COLLECTION, points)
    (report,) = adopt(conn, qdrant, config)
    stats = report.tables[0]
    assert (stats.gone_deleted, stats.points_moved, stats.rows_held) == (0, 2, 2)
    assert {str(p.id) for p in _points(qdrant, DOC_COLLECTION)} == {
        point_id("DOC", key, DOC_COLLECTION) for key in keys
    }
    # A key no row has any more is still a gone row's point, proven by the formula of the
    # key as the reference printed it.
    conn.execute(sql.SQL("DELETE FROM {} WHERE title = %s").format(doc), (f"t {keys[0]}",))
    gone = point_id("DOC", str(values[0]), DOC_COLLECTION)
    _write_agno_points(qdrant, DOC_COLLECTION, [(str(uuid.uuid4()), "x", gone, {"id": "x"})])
    _write_agno_points(
        qdrant, DOC_COLLECTION, [(str(uuid.uuid4()), "y", gone, {"id": str(values[0])})]
    )
    (again,) = adopt(conn, qdrant, config)
    # The row's moved point and the "y" copy go; the "x" copy names no key: left alone.
    assert (again.tables[0].gone_deleted, again.unattributed) == (2, 1)


def test_a_point_without_a_dense_vector_is_deleted_and_its_row_embedded(
    project: ProjectConfig, conn: psycopg.Connection, qdrant: QdrantClient, schema: str
) -> None:
    points = _agno_doc_points(conn, schema, range(1, 121))
    _write_agno_points(qdrant, DOC_COLLECTION, points[1:])
    _write_agno_points(qdrant, DOC_COLLECTION, points[:1], dense=False)
    (dry,) = adopt(conn, qdrant, project, dry_run=True)
    (done,) = adopt(conn, qdrant, project)
    assert _counts(dry) == _counts(done)
    assert (done.tables[0].no_vector, done.tables[0].rows_to_embed) == (1, 1)
    assert sync_model(project, conn, qdrant).embedded == 1
    check = reconcile(conn, qdrant, project.tables.tables[0], schema, DOC_COLLECTION)
    assert check.ok and check.points == 120, check.to_dict()


def test_with_chunking_off_a_long_adopted_row_is_flagged_truncated(
    tmp_path: Path, schema: str, conn: psycopg.Connection, qdrant: QdrantClient
) -> None:
    from vector_pipeline_tests.conftest import create_doc_table

    create_doc_table(conn, schema, 3)
    conn.execute(
        sql.SQL("UPDATE {} SET body = repeat('word ', 50) WHERE id = 1").format(
            sql.Identifier(schema, "doc")
        )
    )
    tables = (
        f"schema: {schema}\ncollection_base: test\ntables:\n  doc:\n    data_type: DOC\n"
        '    text_template: "TITLE: {title}\\nCONTENT: {body}"\n'
        "    chunking: {enabled: false}\n"
    )
    config = load_config(
        write_config(
            tmp_path / "c",
            schema,
            default="det_s",
            extra_models="det_s:\n  provider: deterministic\n  id: det-a\n  dimensions: 16\n"
            "  max_tokens_per_input: 20\n",
            tables=tables,
        )
    )
    setup_database(conn, config)
    _write_agno_points(qdrant, DOC_COLLECTION, _agno_doc_points(conn, schema, range(1, 4)))
    (report,) = adopt(conn, qdrant, config)
    assert report.tables[0].rows_held == 3
    truncated = {
        p.payload["meta_data"]["row_id"]: p.payload["meta_data"]["truncated"]
        for p in _points(qdrant, DOC_COLLECTION)
    }
    assert truncated == {1: True, 2: False, 3: False}
