"""One sync in a fresh process, for part (d): prints a JSON line with its peak RSS.

The points go to a discarding sink (an in-memory Qdrant client whose upserts drop them), so
what is measured is the sync's own memory, not a local-mode Qdrant holding every point.

Start it through a small intermediate process (see `parts._rss_child`): Linux records the
high-water RSS of the address space a process had before `exec` in its `ru_maxrss`, so a
child forked straight from the (large) benchmark process would report the parent's peak.
VmHWM (the peak of this address space only) is printed too, as a cross-check.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

from benchmarks.common import DiscardingQdrant, max_rss_mib, quiet_engine_logs
from vector_pipeline import sync as engine
from vector_pipeline.config import load_config
from vector_pipeline.embedders import build_embedder
from vector_pipeline.source import connect


def _status_mib(field: str) -> float:
    """A memory line of /proc/self/status (VmRSS: now, VmHWM: this address space's peak)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return -1.0


def current_rss_mib() -> float:
    return _status_mib("VmRSS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--config-dir", required=True)
    parser.add_argument("--model", required=True)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Local mode is not recommended")
    quiet_engine_logs()

    project = load_config(args.config_dir)
    key, model = project.embeddings.model(args.model)
    table = project.tables.tables[0]
    embedder = build_embedder(key, model)
    qdrant = DiscardingQdrant()
    with connect(args.database_url) as conn:
        before = current_rss_mib()
        started = time.perf_counter()
        result = engine.sync_configured_table(
            conn=conn, qdrant=qdrant, embedder=embedder, project=project, table=table
        )
        seconds = time.perf_counter() - started
    bm25 = getattr(engine, "bm25", None)
    stems = getattr(bm25(), "_stems_of", None) if callable(bm25) else None
    print(
        json.dumps(
            {
                "embedded": result.embedded,
                "dropped": qdrant.dropped,
                "seconds": seconds,
                "rss_before_mib": before,
                "peak_rss_mib": max_rss_mib(),
                "vm_hwm_mib": _status_mib("VmHWM"),
                "stem_cache": len(stems) if stems is not None else -1,
            }
        )
    )


if __name__ == "__main__":
    main()
