"""One scale-out worker for part (g): a sync in its own process, started on a signal.

It loads everything, connects, prints `ready` and waits for a line on stdin, so the parent can
start all workers at the same instant and time only the syncing. Each worker has its own
in-memory Qdrant (a local-mode store cannot be shared between processes; with a Qdrant server
they would share one) and reports the points it holds, so the parent can check that the
workers' shares add up to every row exactly once. Prints one JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings

from qdrant_client import QdrantClient

from benchmarks.common import quiet_engine_logs
from vector_pipeline import sync as engine
from vector_pipeline.config import load_config
from vector_pipeline.embedders import build_embedder
from vector_pipeline.source import connect


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--config-dir", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Local mode is not recommended")
    quiet_engine_logs()

    project = load_config(args.config_dir)
    key, model = project.embeddings.model(args.model)
    table = project.tables.tables[0]
    embedder = build_embedder(key, model)
    qdrant = QdrantClient(location=":memory:")
    with connect(args.database_url) as conn:
        print("ready", flush=True)
        sys.stdin.readline()
        started = time.time()
        result = engine.sync_configured_table(
            conn=conn,
            qdrant=qdrant,
            embedder=embedder,
            project=project,
            table=table,
            batch_size=args.batch_size,
            # Each worker's own in-memory store stands in for one shared server, so the store
            # record (which one shared store would keep for all of them) is left out.
            check_store=False,
        )
        finished = time.time()
    points = qdrant.count(result.collection, exact=True).count
    embedder.close()
    print(
        json.dumps(
            {
                "embedded": result.embedded,
                "points": points,
                "started": started,
                "finished": finished,
            }
        )
    )


if __name__ == "__main__":
    main()
