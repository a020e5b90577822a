"""A faithful implementation of the reference design's sync loop, the baseline of part (a).

The reference design embeds one row at a time: for each pending row it sends one embedding
request, computes the BM25 sparse vector, upserts the one point (waiting for Qdrant, as Agno's
Qdrant store does), adds the collection to the row's `embedded_in` with an UPDATE and commits;
every 5 rows it writes the progress to its `embedding_session` row and commits that too.

Everything it calls is what our engine calls too (the same `Embedder` from `build_embedder`, so
the same HTTP client, the same BM25 encoder, the same point layout and `upsert_points`), so the
comparison measures the loop and nothing else. The pending rows are selected once, up front, as
the reference design did, and the session row is created and closed the way a run does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import psycopg
from psycopg import sql
from qdrant_client import QdrantClient

from benchmarks.common import point_payload
from vector_pipeline.config import ProjectConfig, TableConfig, collection_name_for
from vector_pipeline.database_setup import SESSION_TABLE, pending_condition
from vector_pipeline.embedders import Embedder
from vector_pipeline.points import point_id
from vector_pipeline.sparse import Bm25
from vector_pipeline.vector_store import PointData, ensure_collection, upsert_points

PROGRESS_EVERY = 5


@dataclass(frozen=True)
class ReferenceResult:
    rows: int
    seconds: float
    requests: int

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def run_reference(
    database_url: str,
    project: ProjectConfig,
    table: TableConfig,
    qdrant: QdrantClient,
    embedder: Embedder,
) -> ReferenceResult:
    """Sync every pending row of `table`, one row per request, upsert, UPDATE and commit."""
    started = time.perf_counter()
    schema = project.tables.schema_for(table)
    relation = sql.Identifier(schema, table.table)
    sessions = sql.Identifier(project.tables.schema_, SESSION_TABLE)
    collection = collection_name_for(table.collection_base, embedder.model_id)
    ensure_collection(qdrant, collection, embedder.dimensions)
    bm25 = Bm25()
    requests = 0
    marker = f'["{collection}"]'
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in table.selected_columns)

    with psycopg.connect(database_url) as conn:  # a transaction per commit, as a script does
        rows = conn.execute(
            sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY {}").format(
                columns,
                relation,
                pending_condition(collection),
                sql.Identifier(table.primary_key[0]),
            )
        ).fetchall()
        names = list(table.selected_columns)
        (session_id,) = conn.execute(
            sql.SQL(
                "INSERT INTO {} (model, tables, status, total_items, started_at) "
                "VALUES (%s, %s, 'PROCESSING', %s, now()) RETURNING id"
            ).format(sessions),
            (embedder.model_key, [table.name], len(rows)),
        ).fetchone()
        conn.commit()

        for done, record in enumerate(rows, start=1):
            values = dict(zip(names, record, strict=True))
            key = values[table.primary_key[0]]
            text = table.render_text(values)
            dense = embedder.embed_documents([text])  # one request per row
            requests += 1
            sparse = bm25.embed_documents([text])[0]
            payload = point_payload(table, key, values, text)
            upsert_points(
                qdrant,
                collection,
                [
                    PointData(
                        id=point_id(table.data_type, str(key), collection),
                        dense=dense.vectors[0],
                        sparse=sparse,
                        payload=payload,
                    )
                ],
            )
            conn.execute(
                sql.SQL(
                    "UPDATE {} SET embedded_in = coalesce(embedded_in, '[]'::jsonb) || %s::jsonb "
                    "WHERE {} = %s"
                ).format(relation, sql.Identifier(table.primary_key[0])),
                (marker, key),
            )
            conn.commit()
            if done % PROGRESS_EVERY == 0:
                conn.execute(
                    sql.SQL(
                        "UPDATE {} SET processed_items = %s, progress = %s WHERE id = %s"
                    ).format(sessions),
                    (done, min(99, done * 100 // max(len(rows), 1)), session_id),
                )
                conn.commit()

        conn.execute(
            sql.SQL(
                "UPDATE {} SET status = 'COMPLETED', processed_items = %s, progress = 100, "
                "finished_at = now() WHERE id = %s"
            ).format(sessions),
            (len(rows), session_id),
        )
        conn.commit()
    return ReferenceResult(rows=len(rows), seconds=time.perf_counter() - started, requests=requests)
