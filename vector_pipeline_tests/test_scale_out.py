"""Scale-out: several workers sync one table into one collection, and no row is embedded twice.

Each worker is a process running the engine's sync, as `vector-pipeline sync` does, with its
own local-mode Qdrant folder (a folder cannot be shared between processes; with a Qdrant server
they would share one). Separate folders are separate stores, so the workers leave out the store
record (`check_store=False`), which one shared store would keep for all of them. The
loopback API holds its first requests until every worker has one in flight, so the workers
provably run together. Then the union of the stores holds every row exactly once, and the API
saw every text exactly once. Claims left by dead workers are taken over; claims of live ones
are respected.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from collections import Counter

import psycopg
import pytest
from psycopg import sql

from vector_pipeline.locations import QdrantLocation
from vector_pipeline.source import SourceTable
from vector_pipeline.vector_store import open_qdrant
from vector_pipeline_tests.conftest import (
    API_KEY_VARIABLE,
    api_project,
    create_doc_table,
    marked_count,
    sync_model,
)
from vector_pipeline_tests.openai_server import FakeOpenAIServer

pytestmark = pytest.mark.e2e

WORKERS = 3
# What `vector-pipeline sync` runs, with the store record left out (see the module docstring).
WORKER = """
from vector_pipeline import locations
from vector_pipeline.config import load_config
from vector_pipeline.embedders import build_embedder
from vector_pipeline.source import connect
from vector_pipeline.sync import sync_configured_table
from vector_pipeline.vector_store import open_qdrant

project = load_config()
key, model = project.embeddings.model()
embedder = build_embedder(key, model)
with connect(locations.database_url()) as conn, open_qdrant(locations.qdrant_location()) as q:
    for table in project.tables.tables:
        sync_configured_table(conn=conn, qdrant=q, embedder=embedder, project=project,
                              table=table, batch_size=10, check_store=False)
embedder.close()
"""
ROWS = 600
COLLECTION = "test_text-embedding-3-small_hybrid"


def claims(conn: psycopg.Connection, schema: str) -> int:
    claim_table = sql.Identifier(schema, "vector_pipeline_claim")
    return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(claim_table)).fetchone()[0]


def marked(conn: psycopg.Connection, schema: str) -> int:
    return marked_count(conn, schema, COLLECTION, exactly=True)


def test_workers_share_the_rows_and_embed_each_exactly_once(
    conn, schema, tmp_path, database_url, monkeypatch
):
    monkeypatch.setenv(API_KEY_VARIABLE, "k")
    create_doc_table(conn, schema, ROWS)
    with FakeOpenAIServer(api_key="k", dimensions=8, latency=0.02) as server:
        server.gate(WORKERS)
        config = api_project(conn, schema, tmp_path, server.url, max_concurrent_requests=1)
        stores = [str(tmp_path / f"qdrant-{n}") for n in range(WORKERS)]
        env = {**os.environ, "DATABASE_URL": database_url}
        env["VECTOR_PIPELINE_CONFIG_DIR"] = str(config.config_dir)
        env.pop("QDRANT_URL", None)
        workers = [
            subprocess.Popen(
                [sys.executable, "-c", WORKER],
                env={**env, "QDRANT_PATH": store},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for store in stores
        ]
        outcomes = [worker.communicate(timeout=300) for worker in workers]
        texts = Counter(text for request in server.requests for text in request.inputs)

    for worker, (_, stderr) in zip(workers, outcomes, strict=True):
        assert worker.returncode == 0, stderr
    per_store: list[list[int]] = []
    for store in stores:
        with open_qdrant(QdrantLocation(path=store)) as qdrant:
            points, _ = qdrant.scroll(COLLECTION, limit=ROWS + 1, with_payload=True)
            per_store.append([point.payload["meta_data"]["row_id"] for point in points])

    # Every worker did a share, and the shares are disjoint and complete.
    assert all(per_store), [len(rows) for rows in per_store]
    union = Counter(row for rows in per_store for row in rows)
    assert sorted(union) == list(range(1, ROWS + 1))
    assert max(union.values()) == 1
    # The API embedded each text once: nothing was paid for twice.
    assert len(texts) == ROWS and max(texts.values()) == 1
    assert marked(conn, schema) == ROWS
    assert claims(conn, schema) == 0


def test_rows_claimed_by_a_dead_worker_are_taken_over(project, conn, schema, qdrant):
    table = project.tables.tables[0]
    source = SourceTable.for_config(conn, project, table)
    # What a worker killed mid-batch leaves: claims of a session that no longer exists.
    gone = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    claim_table = sql.Identifier(schema, "vector_pipeline_claim")
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (table_name, collection, row_key, pid, backend_start) "
            "SELECT %s, %s, k::text, 1, %s FROM generate_series(1, 30) AS k"
        ).format(claim_table),
        (table.name, "test_det-a_hybrid", gone),
    )
    assert source.claims.free_dead("test_det-b_hybrid") == 0  # another collection's claims

    result = sync_model(project, conn, qdrant)

    assert (result.embedded, result.pending_after) == (project_rows(conn, schema), 0)
    assert claims(conn, schema) == 0


def test_rows_a_live_worker_holds_are_left_to_it(project, conn, schema, qdrant, database_url):
    table = project.tables.tables[0]
    rows = project_rows(conn, schema)
    with psycopg.connect(database_url, autocommit=True) as other:
        holder = SourceTable.for_config(other, project, table)
        held = [str(key) for key in range(1, 21)]
        assert holder.claims.claim_keys("test_det-a_hybrid", held) == held
        result = sync_model(project, conn, qdrant)
        # The holder is alive: its rows are its own, still pending, and its claims stand.
        assert (result.embedded, result.pending_after) == (rows - 20, 20)
        assert claims(conn, schema) == 20
        # A drain cannot claim them either (the key of a row being embedded is off limits).
        source = SourceTable.for_config(conn, project, table)
        assert source.claims.claim_keys("test_det-a_hybrid", ["5", "40"]) == ["40"]
        source.claims.release("test_det-a_hybrid", ["40"])
    # The holder's session ended without releasing: the next sync takes the rows over.
    result = sync_model(project, conn, qdrant)
    assert (result.embedded, result.pending_after) == (20, 0)
    assert claims(conn, schema) == 0


def project_rows(conn: psycopg.Connection, schema: str) -> int:
    doc = sql.Identifier(schema, "doc")
    return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(doc)).fetchone()[0]
