"""Benchmark adoption against Qdrant's own write speed, in the same mode.

    python -m benchmarks.adoption      # 20,000 points; local mode, or the server at QDRANT_URL
    python -m benchmarks.adoption --rows 2000 --no-write

A table of `--rows` generated rows (marked in `embedded_in`, as the reference design left
them) and a hybrid collection holding one point per row the way Agno's Qdrant store writes it:
id md5(f"{md5(content)}_{formula}") (Agno 3), payload name/meta_data/content/content_hash
(the formula)/usage/content_id/user_id, sparse vector without the IDF modifier. Filling that
collection is the baseline: the same points, upserted by this pipeline's writer (128 per
request, waiting for each), is what Qdrant accepts in this mode. Then `adopt` moves every point
to its formula id and marks every row; its rate (points per second, everything included:
reading the rows and points, writing, deleting the old ids, marking) is compared with it.
Writes its section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import uuid
from pathlib import Path

import numpy as np
from psycopg import sql
from qdrant_client import models

from benchmarks.common import (
    REPO_ROOT,
    SECTIONS,
    Workspace,
    database_url,
    deterministic_model,
    timed,
    write_section,
)
from vector_pipeline.adoption import adopt
from vector_pipeline.locations import qdrant_location
from vector_pipeline.points import point_id
from vector_pipeline.sparse import Bm25
from vector_pipeline.vector_store import (
    DENSE,
    SPARSE,
    PointData,
    delete_points,
    open_qdrant,
    upsert_points,
)

MARK_START, MARK_END = SECTIONS[1]
TABLE = "adopt"
LOCAL_NOTE = (
    "",
    "Local mode commits each point written and each point deleted to SQLite on its own "
    "(qdrant-client's local persistence), so a move costs two commits where an upsert costs "
    "one: adoption cannot reach a plain upsert's speed here, and does better than Qdrant "
    "taking the same writes and deletes. A server deletes a list of ids as one operation; no "
    "Qdrant server can be run on the benchmark machine, so that mode is not measured.",
)


def agno_points(ws: Workspace, collection: str, dimensions: int) -> list[PointData]:
    """One point per row, as Agno 3's store writes it for the reference design's worker."""
    rows = ws.conn.execute(
        sql.SQL("SELECT id, title, body, category FROM {} ORDER BY id").format(
            sql.Identifier(ws.schema, TABLE)
        )
    ).fetchall()
    texts = [f"TITLE: {title}\nCONTENT: {body}" for _, title, body, _ in rows]
    sparse = Bm25().embed_documents(texts)  # fastembed's Qdrant/bm25, which Agno uses
    dense = np.random.default_rng(1).standard_normal((len(rows), dimensions)).astype(np.float32)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    points = []
    for (row_id, title, _, category), text, vector, encoded in zip(
        rows, texts, dense, sparse, strict=True
    ):
        formula = point_id("DOC", str(row_id), collection)
        base = hashlib.md5(text.encode()).hexdigest()
        points.append(
            PointData(
                id=str(uuid.UUID(hashlib.md5(f"{base}_{formula}".encode()).hexdigest())),
                dense=vector.tolist(),
                sparse=encoded,
                payload={
                    "name": title,
                    "meta_data": {"id": row_id, "category": category},
                    "content": text,
                    "usage": None,
                    "content_id": None,
                    "content_hash": formula,
                    "user_id": None,
                },
            )
        )
    return points


def run(rows: int, dimensions: int) -> dict[str, float | int | str]:
    url = database_url()
    location = qdrant_location()
    with Workspace(url) as ws:
        if location.path:  # local mode: a folder of the workspace's own
            location = type(location)(path=str(ws.tmp / "qdrant"))
        model = deterministic_model(dimensions)
        collection = f"{TABLE}_{model['id']}_hybrid"
        ws.create_table(TABLE, rows, embedded_in=[collection])
        project = ws.project(TABLE, {"det": model})
        points = agno_points(ws, collection, dimensions)
        mode = "server" if location.url else "local"
        with open_qdrant(location) as qdrant:
            # Baselines, in a scratch collection: the points upserted, then deleted by id.
            scratch = f"{collection}_baseline"
            for name in (collection, scratch):
                if qdrant.collection_exists(name):
                    qdrant.delete_collection(name)
                qdrant.create_collection(
                    name,
                    vectors_config={
                        DENSE: models.VectorParams(size=dimensions, distance=models.Distance.COSINE)
                    },
                    sparse_vectors_config={SPARSE: models.SparseVectorParams()},
                )
            upsert_seconds, _ = timed(lambda: upsert_points(qdrant, scratch, points))
            delete_seconds, _ = timed(
                lambda: delete_points(qdrant, scratch, [point.id for point in points])
            )
            qdrant.delete_collection(scratch)
            upsert_points(qdrant, collection, points)  # Agno's write
            adopt_seconds, (report,) = timed(lambda: adopt(ws.conn, qdrant, project))
            (stats,) = report.tables
            assert stats.points_moved == rows and stats.rows_held == rows, report
            assert qdrant.count(collection, exact=True).count == rows
            if location.url:
                qdrant.delete_collection(collection)
    return {
        "mode": mode,
        "rows": rows,
        "dimensions": dimensions,
        "upsert_seconds": upsert_seconds,
        "upsert_rate": rows / upsert_seconds,
        "delete_seconds": delete_seconds,
        "move_rate": rows / (upsert_seconds + delete_seconds),
        "adopt_seconds": adopt_seconds,
        "adopt_rate": rows / adopt_seconds,
        "ratio": upsert_seconds / adopt_seconds,
        "move_ratio": (upsert_seconds + delete_seconds) / adopt_seconds,
    }


def section(result: dict[str, float | int | str], command: str) -> str:
    ratio = float(result["ratio"])
    met = "✅" if ratio >= 1.0 else "❌"
    return "\n".join(
        [
            MARK_START,
            "## Adoption: taking over a collection Agno wrote (`make bench-adoption`)",
            "",
            f"{result['rows']:,} rows and an Agno-written hybrid collection of as many "
            f"{result['dimensions']}-d points, Qdrant in {result['mode']} mode. Target: adoption "
            "(read rows and points, write each point at its formula id, delete its old id, "
            "mark its row) at least as fast as Qdrant accepts the same points from a plain "
            "upsert (128 per request, waiting). A move is a write and a delete, so the second "
            "baseline is Qdrant taking both: the same points upserted, then deleted by id. "
            f"Command: `{command}`.",
            "",
            "| | seconds | points/s | adoption's speed relative to it |",
            "|---|---|---|---|",
            f"| upsert of the points | {result['upsert_seconds']:.1f} | "
            f"{result['upsert_rate']:,.0f} | {ratio:.2f} {met} |",
            f"| upsert, then delete, of the points | "
            f"{float(result['upsert_seconds']) + float(result['delete_seconds']):.1f} | "
            f"{result['move_rate']:,.0f} | {float(result['move_ratio']):.2f} |",
            f"| adoption | {result['adopt_seconds']:.1f} | {result['adopt_rate']:,.0f} | |",
            *(LOCAL_NOTE if result["mode"] == "local" else ()),
            MARK_END,
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--dimensions", type=int, default=384)
    parser.add_argument("--output", default=str(REPO_ROOT / "BENCHMARKS.md"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    logging.getLogger("vector_pipeline").setLevel(logging.WARNING)
    result = run(args.rows, args.dimensions)
    command = " ".join(["python -m benchmarks.adoption", *(argv or sys.argv[1:])])
    text = section(result, command)
    print(text)
    if not args.no_write:
        write_section(text, Path(args.output), MARK_START, MARK_END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
