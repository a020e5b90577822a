"""The seven measurements (a-g) of the benchmark; each returns rows for the results table.

Every part creates its own tables in the run's throwaway schema and drives the engine only
through `sync_configured_table` (plus `SourceTable` for PostgreSQL-only probes), so it measures
whatever the engine does today. See benchmarks/README.md for what each part measures and why.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from psycopg import sql

from benchmarks.common import (
    QDRANT_LABELS,
    REPO_ROOT,
    Result,
    Target,
    Workspace,
    deterministic_model,
    engine_supports,
    fmt_rate,
    fmt_seconds,
    local_model,
    openai_model,
    point_payload,
    qdrant_store,
    timed,
    trust_generated_marks,
)
from benchmarks.fake_api import FakeApiProcess
from benchmarks.reference_loop import run_reference
from vector_pipeline import sync as engine
from vector_pipeline.config import TableConfig, collection_name_for
from vector_pipeline.database_setup import pending_condition
from vector_pipeline.embedders import Embedder, build_embedder
from vector_pipeline.points import point_id
from vector_pipeline.sessions import SessionStore
from vector_pipeline.source import SourceTable, connect
from vector_pipeline.sparse import Bm25
from vector_pipeline.store_state import StoreState
from vector_pipeline.vector_store import PointData, ensure_collection, upsert_points

BATCH_SIZE = getattr(engine, "DEFAULT_BATCH_SIZE", 256)


@dataclass
class Sizes:
    reference_rows: int = 1_000
    engine_rows: int = 10_000
    a_modes: tuple[str, ...] = ("path", "memory")
    api_dimensions: int = 1536
    api_latency: float = 0.1
    a_concurrency: int | None = None
    local_rows: int = 2_000
    zero_cost_rows: int = 100_000
    big_rows: int = 1_000_000
    control_rows: int = 10_000
    ks: tuple[int, ...] = (10, 100, 1000)
    checks: int = 50
    rss_small: int = 100_000
    rss_big: int = 1_000_000
    concurrency_rows: int = 800
    concurrency: tuple[int, ...] = (4, 8)
    e_dimensions: tuple[int, ...] = (1536, 64)
    inputs_per_request: int = 4
    incremental_rows: int = 100_000
    edit_percent: float = 1.0
    workers: tuple[int, ...] = (1, 2, 4)
    workers_rows: int = 2_000
    workers_batch: int = 8
    workers_dimensions: int = 64

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            reference_rows=30,
            engine_rows=300,
            local_rows=200,
            zero_cost_rows=5_000,
            big_rows=50_000,
            control_rows=5_000,
            checks=20,
            rss_small=5_000,
            rss_big=50_000,
            concurrency_rows=100,
            incremental_rows=5_000,
            workers_rows=200,
        )


def _n(count: int) -> str:
    return f"{count:,}"


def _sync(
    target: Target,
    conn: Any,
    qdrant: Any,
    embedder: Embedder,
    on_batch: Callable[[Any], None] | None = None,
    batch_size: int | None = None,
) -> tuple[float, engine.SyncResult]:
    """One `sync_configured_table` call, timed; the engine's default batch size unless given."""
    options: dict[str, Any] = {} if batch_size is None else {"batch_size": batch_size}
    return timed(
        lambda: engine.sync_configured_table(
            conn=conn,
            qdrant=qdrant,
            embedder=embedder,
            project=target.project,
            table=target.table,
            on_batch=on_batch,
            **options,
        )
    )


def _concurrency_label(target: Target, configured: bool) -> str:
    value = getattr(target.model, "max_concurrent_requests", None)
    if value is None:
        return "no max_concurrent_requests in the engine"
    return f"max_concurrent_requests {value}" + ("" if configured else " (the default)")


def _reset(ws: Workspace, table: str) -> None:
    """Every row pending again (not a text column: the reset trigger does not fire)."""
    ws.conn.execute(
        sql.SQL("UPDATE {} SET embedded_in = '[]'::jsonb").format(sql.Identifier(ws.schema, table))
    )
    ws.vacuum(table)


# -- (a) end-to-end against the reference loop -------------------------------------------------


def part_a(ws: Workspace, sizes: Sizes, api: FakeApiProcess) -> list[Result]:
    results: list[Result] = []
    extra: dict[str, Any] = {}
    if sizes.a_concurrency is not None:
        extra["max_concurrent_requests"] = sizes.a_concurrency
    for mode in sizes.a_modes:
        label = QDRANT_LABELS[mode]
        model, notes = openai_model(api.url, sizes.api_dimensions, **extra)
        setup = (
            f"openai model, {sizes.api_dimensions}-d, loopback API {sizes.api_latency * 1000:.0f} "
            f"ms/request; {label}"
        )

        ref_table, our_table = f"a_ref_{mode}", f"a_ours_{mode}"
        ws.create_table(ref_table, sizes.reference_rows)
        ws.create_table(our_table, sizes.engine_rows)
        ref = Target(ws.project(ref_table, {"api": model}), "api")
        ours = Target(ws.project(our_table, {"api": model}), "api")
        concurrency = _concurrency_label(ours, "max_concurrent_requests" in model)

        embedder = build_embedder("api", ref.model)
        api.reset()
        with qdrant_store(mode, ws.tmp / f"qdrant_{ref_table}") as qdrant:
            reference = run_reference(ws.url, ref.project, ref.table, qdrant, embedder)
        ref_requests = api.stats()["requests"]
        embedder.close()

        embedder = build_embedder("api", ours.model)
        api.reset()
        with (
            session_progress(ws, ours) as on_batch,
            qdrant_store(mode, ws.tmp / f"qdrant_{our_table}") as qdrant,
        ):
            seconds, result = _sync(ours, ws.conn, qdrant, embedder, on_batch)
        stats = api.stats()
        embedder.close()

        ref_rate = reference.rows_per_second
        our_rate = result.embedded / seconds
        ratio = our_rate / ref_rate if ref_rate else 0.0
        results.append(
            Result(
                "a",
                f"reference loop (row at a time), {_n(reference.rows)} rows",
                setup,
                "baseline",
                f"{fmt_rate(ref_rate)} ({fmt_seconds(reference.seconds)}, "
                f"{_n(ref_requests)} requests)",
                None,
            )
        )
        # What the store alone accepts, in the same mode: the ceiling for any writer here.
        store_rate = _upsert_rate(mode, ws, ours.table, sizes.api_dimensions)
        notes = [
            *notes,
            f"Qdrant alone ({label}) accepts {fmt_rate(store_rate)} of these points here "
            f"(`upsert_points`, batches of {BATCH_SIZE}, nothing else running), so no sync "
            f"into it can exceed {store_rate / ref_rate:.0f}x the reference; the engine "
            f"reached {our_rate / store_rate:.0%} of that ceiling",
        ]
        met = ratio >= 100 and result.embedded == sizes.engine_rows
        results.append(
            Result(
                "a",
                f"engine sync, {_n(result.embedded)} rows",
                f"{setup}; {concurrency}",
                f">= 100x reference ({fmt_rate(100 * ref_rate)})",
                f"{fmt_rate(our_rate)} = {ratio:.0f}x ({fmt_seconds(seconds)}, "
                f"{_n(stats['requests'])} requests, max {stats['max_in_flight']} in flight)",
                met,
                "" if met else f"{ratio:.0f}x of 100x: {100 / max(ratio, 1e-9):.1f}x too slow",
                notes,
            )
        )
    return results


def _upsert_rate(
    mode: str, ws: Workspace, table: TableConfig, dimensions: int, count: int = 2_000
) -> float:
    """Points per second `upsert_points` writes into a fresh store of `mode`, alone, with the
    engine's point layout (a ~380-character text, its payload, 1536 floats, BM25)."""
    rng = np.random.default_rng(0)
    sentence = "A sentence of about the benchmark's length, about a topic of some kind. "
    texts = [f"TITLE: Title {i}\nCONTENT: " + sentence * 5 for i in range(count)]
    sparse = Bm25().embed_documents(texts)
    points = []
    for i, text in enumerate(texts):
        values = {column: f"value {i}" for column in table.selected_columns}
        values[table.primary_key[0]] = i
        points.append(
            PointData(
                id=point_id(table.data_type, str(i), "ceiling"),
                dense=rng.standard_normal(dimensions).tolist(),
                sparse=sparse[i],
                payload=point_payload(table, i, values, text),
            )
        )
    with qdrant_store(mode, ws.tmp / f"qdrant_ceiling_{mode}") as qdrant:
        ensure_collection(qdrant, "ceiling", dimensions)
        seconds = timed(
            lambda: [
                upsert_points(qdrant, "ceiling", points[i : i + BATCH_SIZE])
                for i in range(0, count, BATCH_SIZE)
            ]
        )[0]
    return count / seconds


@contextmanager
def session_progress(ws: Workspace, target: Target) -> Iterator[Callable[[Any], None]]:
    """An embedding_session for the sync, started and given progress per batch as a run does."""
    with connect(ws.url) as conn:
        store = SessionStore(conn, target.project.tables.schema_)
        source = SourceTable.for_config(ws.conn, target.project, target.table)
        session_id = store.create(target.model_key, [target.table.name])
        store.start(session_id, "benchmark", source.pending_count(target.collection))
        yield lambda report: store.add_progress(session_id, report.rows)
        store.complete(session_id)


# -- (b) efficiency against the pipeline's own limit -------------------------------------------

STAGES = ("PostgreSQL read", "embedder", "BM25 sparse", "Qdrant upsert", "PostgreSQL mark")


def stage_times(
    ws: Workspace, target: Target, embedder: Embedder, qdrant: Any
) -> tuple[int, dict[str, float]]:
    """Each stage of a sync timed on its own, batch by batch, over every pending row.

    One stage runs at a time (read a batch, then embed it, then BM25, then build the points and
    upsert them into a collection of their own, then mark), so each time is that stage alone.
    """
    source = SourceTable.for_config(ws.conn, target.project, target.table)
    table = target.table
    collection = target.collection
    stage_collection = f"{collection}_stages"
    ensure_collection(qdrant, stage_collection, embedder.dimensions)
    bm25 = Bm25()
    times = dict.fromkeys(STAGES, 0.0)
    rows_done = 0
    batches = iter(source.pending_batches(collection, BATCH_SIZE))
    while True:
        started = time.perf_counter()
        rows = next(batches, None)
        if rows is None:
            times["PostgreSQL read"] += time.perf_counter() - started
            break
        texts = [table.render_text(row.values) for row in rows]
        times["PostgreSQL read"] += time.perf_counter() - started

        seconds, dense = timed(lambda texts=texts: embedder.embed_documents(texts))
        times["embedder"] += seconds
        seconds, sparse = timed(lambda texts=texts: bm25.embed_documents(texts))
        times["BM25 sparse"] += seconds

        def upsert(rows=rows, texts=texts, dense=dense, sparse=sparse) -> None:
            points = [
                PointData(
                    id=point_id(table.data_type, row.key, stage_collection),
                    dense=vector,
                    sparse=sparse_vector,
                    payload=point_payload(table, row.key, row.values, text),
                )
                for row, text, vector, sparse_vector in zip(
                    rows, texts, dense.vectors, sparse, strict=True
                )
            ]
            upsert_points(qdrant, stage_collection, points)

        times["Qdrant upsert"] += timed(upsert)[0]
        seconds, marked = timed(
            lambda rows=rows: source.mark_embedded(collection, rows, release=rows)
        )
        times["PostgreSQL mark"] += seconds
        rows_done += marked
    return rows_done, times


def _stage_rows(
    part: str, what: str, setup: str, rows: int, times: dict[str, float], wall: float
) -> list[Result]:
    results = []
    for stage in STAGES:
        seconds = times[stage]
        results.append(
            Result(
                part,
                f"{what}: {stage} alone",
                setup,
                "-",
                f"{fmt_rate(rows / seconds)} ({fmt_seconds(seconds)} = "
                f"{100 * seconds / wall:.0f}% of the sync's wall time)",
                None,
            )
        )
    rest = wall - sum(times.values())
    results.append(
        Result(
            part,
            f"{what}: rest of the sync (wall - sum of stages)",
            setup,
            "-",
            f"{fmt_seconds(rest)} = {100 * rest / wall:.0f}% of the sync's wall time"
            + (" (negative: stages overlap)" if rest < 0 else ""),
            None,
        )
    )
    return results


def part_b(ws: Workspace, sizes: Sizes) -> list[Result]:
    results: list[Result] = []

    # The local model: the embedder should be the bottleneck; the sync should run near it.
    table = "b_local"
    ws.create_table(table, sizes.local_rows)
    target = Target(ws.project(table, {"minilm": local_model()}), "minilm")
    embedder = build_embedder("minilm", target.model)
    # Load the ONNX model and run it on real rows first, so neither measurement pays for that.
    source = SourceTable.for_config(ws.conn, target.project, target.table)
    warm = next(iter(source.pending_batches(target.collection, 64)))
    source.claims.release_all(target.collection)
    embedder.embed_documents([target.table.render_text(row.values) for row in warm])
    setup = (
        f"local MiniLM (int8 ONNX, CPU), {_concurrency_label(target, False)}; "
        f"{QDRANT_LABELS['path']}"
    )
    with qdrant_store("path", ws.tmp / "qdrant_b_stages") as qdrant:
        rows, times = stage_times(ws, target, embedder, qdrant)
    _reset(ws, table)
    with qdrant_store("path", ws.tmp / "qdrant_b_sync") as qdrant:
        wall, result = _sync(target, ws.conn, qdrant, embedder)
    embedder.close()
    slowest = max(times, key=lambda stage: times[stage])
    embed_rate = rows / times["embedder"]
    sync_rate = result.embedded / wall
    efficiency = sync_rate / embed_rate
    results.extend(_stage_rows("b", f"{_n(rows)} rows, local model", setup, rows, times, wall))
    notes = [] if slowest == "embedder" else [f"the slowest stage alone was {slowest}"]
    met = efficiency >= 0.9
    results.append(
        Result(
            "b",
            f"sync vs the embedder alone, {_n(result.embedded)} rows",
            setup,
            ">= 90% of the embedder's throughput",
            f"{100 * efficiency:.0f}% ({fmt_rate(sync_rate)} vs {fmt_rate(embed_rate)}; "
            f"sync {fmt_seconds(wall)})",
            met,
            "" if met else f"{90 - 100 * efficiency:.0f} points short of 90%",
            notes,
        )
    )

    # A zero-cost embedder: where does the time go?
    table = "b_zero"
    ws.create_table(table, sizes.zero_cost_rows)
    target = Target(ws.project(table, {"det": deterministic_model()}), "det")
    embedder = build_embedder("det", target.model)
    setup = f"deterministic embedder, 384-d; {QDRANT_LABELS['memory']}"
    with qdrant_store("memory", ws.tmp / "unused") as qdrant:
        rows, times = stage_times(ws, target, embedder, qdrant)
    _reset(ws, table)
    with qdrant_store("memory", ws.tmp / "unused") as qdrant:
        wall, result = _sync(target, ws.conn, qdrant, embedder)
    what = f"{_n(rows)} rows, zero-cost embedder"
    results.extend(_stage_rows("b", what, setup, rows, times, wall))
    results.append(
        Result(
            "b",
            f"{what}: whole sync",
            setup,
            "-",
            f"{fmt_rate(result.embedded / wall)} ({fmt_seconds(wall)})",
            None,
        )
    )
    return results


# -- (c) nothing pending, and k pending, among a million rows ----------------------------------


class QueryRecorder:
    """A connection that remembers the last query run through `execute`, to EXPLAIN it."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self.last: tuple[Any, Any] | None = None

    def execute(self, query: Any, params: Any = None, **options: Any) -> Any:
        self.last = (query, params)
        return self._conn.execute(query, params, **options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def explain_last(self) -> str:
        """The scan lines of the last query's plan, with actual times."""
        if self.last is None:
            return "?"
        query, params = self.last
        prefix = "EXPLAIN (ANALYZE, COSTS OFF) "
        explain = prefix + query if isinstance(query, str) else sql.SQL(prefix) + query
        lines = [line for (line,) in self._conn.execute(explain, params).fetchall()]
        scans = [line.strip().removeprefix("->  ") for line in lines if "Scan" in line]
        timing = next((line for line in lines if line.startswith("Execution Time")), "")
        return "; ".join(scans[:2]) + (f" ({timing})" if timing else "")


def _median_time(function: Callable[[], Any], repeat: int) -> tuple[float, float, Any]:
    function()  # warm the plan and the cache
    samples = []
    value = None
    for _ in range(repeat):
        seconds, value = timed(function)
        samples.append(seconds)
    samples.sort()
    return statistics.median(samples), samples[int(0.95 * (len(samples) - 1))], value


def _read_all(source: SourceTable, collection: str) -> int:
    """Read (and claim) every pending row, then give the claims back as a sync's marks do."""
    count = sum(len(batch) for batch in source.pending_batches(collection, BATCH_SIZE))
    source.claims.release_all(collection)
    return count


def part_c(ws: Workspace, sizes: Sizes) -> list[Result]:
    results: list[Result] = []
    model = deterministic_model()
    big, small = "c_big", "c_small"
    collections = {name: collection_name_for(name, model["id"]) for name in (big, small)}
    for name, rows in ((big, sizes.big_rows), (small, sizes.control_rows)):
        # As a table looks after a full sync: every row already in the collection.
        ws.create_table(name, rows, embedded_in=[collections[name]])
    targets = {name: Target(ws.project(name, {"det": model}), "det") for name in (big, small)}
    sources = {
        name: SourceTable.for_config(ws.conn, target.project, target.table)
        for name, target in targets.items()
    }
    source, collection = sources[big], collections[big]
    setup = f"{_n(sizes.big_rows)} rows, none pending; PostgreSQL only"

    median, p95, pending = _median_time(lambda: source.has_pending(collection), sizes.checks)
    met = median < 0.005 and not pending
    recorder = QueryRecorder(ws.conn)
    SourceTable.for_config(recorder, targets[big].project, targets[big].table).has_pending(
        collection
    )
    plan = recorder.explain_last()
    results.append(
        Result(
            "c",
            "pending check (SourceTable.has_pending), nothing pending",
            setup,
            "< 5 ms",
            f"{fmt_seconds(median)} median, {fmt_seconds(p95)} p95 of {sizes.checks}",
            met,
            "" if met else f"{median / 0.005:.1f}x the 5 ms budget",
            [f"plan of its query (EXPLAIN ANALYZE): {plan}"],
        )
    )
    median, p95, _ = _median_time(
        lambda: next(iter(source.pending_batches(collection, BATCH_SIZE)), None), sizes.checks
    )
    met = median < 0.005
    results.append(
        Result(
            "c",
            "the sync's own first read of pending rows, nothing pending",
            setup,
            "< 5 ms",
            f"{fmt_seconds(median)} median, {fmt_seconds(p95)} p95 of {sizes.checks}",
            met,
            "" if met else f"{median / 0.005:.1f}x the 5 ms budget",
        )
    )

    embedder = build_embedder("det", targets[big].model)
    with qdrant_store("memory", ws.tmp / "unused") as qdrant:
        trust_generated_marks(ws.conn, qdrant, targets[big])
        _sync(targets[big], ws.conn, qdrant, embedder)
        walls = [_sync(targets[big], ws.conn, qdrant, embedder)[0] for _ in range(3)]
        counts = [timed(lambda: source.counts(collection))[0] for _ in range(3)]
        pending = [timed(lambda: source.pending_count(collection))[0] for _ in range(3)]
    results.append(
        Result(
            "c",
            "whole sync with nothing pending",
            f"{setup}; deterministic embedder; {QDRANT_LABELS['memory']}",
            "-",
            f"{fmt_seconds(statistics.median(walls))} median of 3",
            None,
            notes=[
                f"of which the end-of-sync count of total/embedded/skipped rows "
                f"(SourceTable.counts: count(*) for the total, the partial index for the "
                f"rest) takes {fmt_seconds(statistics.median(counts))}; the pending count "
                f"alone (SourceTable.pending_count) {fmt_seconds(statistics.median(pending))}"
            ],
        )
    )

    plan = ws.conn.execute(
        sql.SQL("EXPLAIN SELECT id FROM {} AS t WHERE {} ORDER BY id LIMIT 256").format(
            sql.Identifier(ws.schema, big), pending_condition(collection)
        )
    ).fetchall()
    access = next((line for (line,) in plan if "Scan" in line), "?").strip()

    sync_times: list[str] = []
    for k in sizes.ks:
        found: dict[str, float] = {}
        for name, rows in ((big, sizes.big_rows), (small, sizes.control_rows)):
            step = max(1, rows // k)
            relation = sql.Identifier(ws.schema, name)
            ws.conn.execute(
                sql.SQL("UPDATE {} SET embedded_in = '[]'::jsonb WHERE id %% %s = 0").format(
                    relation
                ),
                (step,),
            )
            ws.vacuum(name)
            median, _p95, count = _median_time(
                lambda name=name: _read_all(sources[name], collections[name]), 7
            )
            if count != rows // step:
                raise RuntimeError(f"expected {rows // step} pending rows in {name}, read {count}")
            found[name] = median
            if name == big:
                with qdrant_store("memory", ws.tmp / "unused") as qdrant:
                    trust_generated_marks(ws.conn, qdrant, targets[big])
                    seconds, result = _sync(targets[big], ws.conn, qdrant, embedder)
                sync_times.append(f"k={k}: {fmt_seconds(seconds)} ({result.embedded} embedded)")
            else:
                ws.conn.execute(
                    sql.SQL("UPDATE {} SET embedded_in = %s::jsonb WHERE id %% %s = 0").format(
                        relation
                    ),
                    (json.dumps([collections[name]]), step),
                )
        t_big, t_small = found[big], found[small]
        met = t_big <= max(2 * t_small, t_small + 0.002)
        results.append(
            Result(
                "c",
                f"read k={k} pending rows among {_n(sizes.big_rows)}",
                f"PostgreSQL only; control: the same k among {_n(sizes.control_rows)} rows",
                "time in k, not table size: <= 2x (or +2 ms) the control",
                f"{fmt_seconds(t_big)} ({1e6 * t_big / k:.0f} us/row); "
                f"control {fmt_seconds(t_small)}",
                met,
                "" if met else f"{t_big / t_small:.1f}x the control",
                [f"plan for the pending read: {access}"] if k == sizes.ks[0] else [],
            )
        )
    results.append(
        Result(
            "c",
            f"whole sync of k pending rows among {_n(sizes.big_rows)}",
            f"deterministic embedder; {QDRANT_LABELS['memory']}",
            "-",
            "; ".join(sync_times),
            None,
        )
    )
    return results


# -- (d) peak RSS: 100k rows against 1M rows ---------------------------------------------------


def _rss_child(ws: Workspace, target: Target) -> dict[str, Any]:
    # Through `sh`, which forks the child rather than exec-ing it: the child then starts from
    # sh's small address space, not this process's, so its ru_maxrss is its own.
    completed = subprocess.run(
        [
            "/bin/sh",
            "-c",
            '"$@"; exit $?',
            "sh",
            sys.executable,
            "-m",
            "benchmarks.rss_child",
            "--database-url",
            ws.url,
            "--config-dir",
            str(target.project.config_dir),
            "--model",
            target.model_key,
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"the RSS child failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def part_d(ws: Workspace, sizes: Sizes) -> list[Result]:
    measured = {}
    for name, rows in (("d_small", sizes.rss_small), ("d_big", sizes.rss_big)):
        ws.create_table(name, rows)
        target = Target(ws.project(name, {"det": deterministic_model()}), "det")
        report = _rss_child(ws, target)
        if report["embedded"] != rows or report["dropped"] != rows:
            raise RuntimeError(f"the RSS child synced {report} of {rows} rows")
        measured[rows] = report
    setup = (
        f"fresh subprocess each; deterministic embedder, 384-d; {QDRANT_LABELS['discard']} "
        "(points are dropped, not held)"
    )
    small, big = measured[sizes.rss_small], measured[sizes.rss_big]

    def describe(report: dict[str, Any]) -> str:
        return (
            f"{report['peak_rss_mib']:.0f} MiB peak ru_maxrss (VmHWM {report['vm_hwm_mib']:.0f} "
            f"MiB; {report['rss_before_mib']:.0f} MiB before the sync; "
            f"{fmt_rate(report['embedded'] / report['seconds'])})"
        )

    growth = big["peak_rss_mib"] / small["peak_rss_mib"] - 1
    extra_mib = big["peak_rss_mib"] - small["peak_rss_mib"]
    met = growth <= 0.10
    notes = [
        f"BM25 stem cache entries at the end: {_n(small['stem_cache'])} after "
        f"{_n(sizes.rss_small)} rows, {_n(big['stem_cache'])} after {_n(sizes.rss_big)} rows "
        "(each title carries its row id, so every row brings one new token)"
    ]
    if big.get("stem_cache", -1) < 0:
        notes = []
    return [
        Result(
            "d", f"peak RSS syncing {_n(sizes.rss_small)} rows", setup, "-", describe(small), None
        ),
        Result(
            "d",
            f"peak RSS syncing {_n(sizes.rss_big)} rows",
            setup,
            f"<= 110% of the {_n(sizes.rss_small)}-row peak",
            f"{describe(big)}: {100 * (1 + growth):.1f}%",
            met,
            "" if met else f"{100 * growth - 10:.1f} points over (+{extra_mib:.0f} MiB)",
            notes,
        ),
    ]


# -- (e) API-bound throughput with N requests in flight ----------------------------------------


def part_e(ws: Workspace, sizes: Sizes, api: FakeApiProcess) -> list[Result]:
    results: list[Result] = []
    for dimensions in sizes.e_dimensions:
        results.extend(_concurrency_runs(ws, sizes, api, dimensions))
    return results


def _concurrency_runs(
    ws: Workspace, sizes: Sizes, api: FakeApiProcess, dimensions: int
) -> list[Result]:
    """Sequential, then N requests in flight, on identical tables.

    Each sync batch is exactly one request (batch_size = max_inputs_per_request), so however
    the engine overlaps its work, requests in flight can only come from batches embedded at once.
    """
    supported = engine_supports("max_concurrent_requests")
    per_request = sizes.inputs_per_request
    runs: list[tuple[int, float, dict[str, int], list[str]]] = []
    for n in (1, *sizes.concurrency):
        name = f"e_{dimensions}_n{n}"
        model, notes = openai_model(
            api.url,
            dimensions,
            max_inputs_per_request=per_request,
            max_concurrent_requests=n,
        )
        ws.create_table(name, sizes.concurrency_rows)
        target = Target(ws.project(name, {"api": model}), "api")
        embedder = build_embedder("api", target.model)
        api.reset()
        with qdrant_store("memory", ws.tmp / "unused") as qdrant:
            seconds, result = _sync(target, ws.conn, qdrant, embedder, batch_size=per_request)
        embedder.close()
        if result.embedded != sizes.concurrency_rows:
            raise RuntimeError(f"{name}: embedded {result.embedded} of {sizes.concurrency_rows}")
        runs.append((n, result.embedded / seconds, api.stats(), notes))
    setup = (
        f"openai model, {dimensions}-d, {per_request} rows per batch and per request, loopback "
        f"API {sizes.api_latency * 1000:.0f} ms/request; {_n(sizes.concurrency_rows)} rows; "
        f"{QDRANT_LABELS['memory']}"
    )
    results: list[Result] = []
    _, sequential, stats, _ = runs[0]
    results.append(
        Result(
            "e",
            f"{dimensions}-d: sequential (max_concurrent_requests 1)"
            if supported
            else f"{dimensions}-d: sequential (engine without max_concurrent_requests)",
            setup,
            "baseline; max 1 in flight",
            f"{fmt_rate(sequential)}, max {stats['max_in_flight']} in flight, "
            f"{_n(stats['requests'])} requests",
            None if stats["max_in_flight"] <= 1 else False,
            "" if stats["max_in_flight"] <= 1 else f"{stats['max_in_flight']} in flight",
        )
    )
    for n, rate, stats, notes in runs[1:]:
        scale = rate / sequential
        fast = scale >= 0.8 * n
        bounded = stats["max_in_flight"] <= n
        met = fast and bounded
        misses = []
        if not fast:
            misses.append(f"{scale:.2f}x instead of {0.8 * n:.1f}x sequential")
        if not bounded:
            misses.append(f"{stats['max_in_flight']} in flight, over {n}")
        results.append(
            Result(
                "e",
                f"{dimensions}-d: max_concurrent_requests {n}",
                setup,
                f">= {0.8 * n:.1f}x sequential ({fmt_rate(0.8 * n * sequential)}); "
                f"<= {n} in flight",
                f"{fmt_rate(rate)} = {scale:.2f}x, max {stats['max_in_flight']} in flight",
                met,
                "; ".join(misses),
                notes,
            )
        )
    return results


# -- (f) incremental cost ----------------------------------------------------------------------


class CountingEmbedder:
    """Wraps an embedder and counts the texts it is asked to embed (and which rows' titles)."""

    def __init__(self, inner: Embedder) -> None:
        self._inner = inner
        self.model_key = inner.model_key
        self.model_id = inner.model_id
        self.dimensions = inner.dimensions
        self.texts: list[str] = []

    def embed_documents(self, texts: Sequence[str]) -> Any:
        self.texts.extend(texts)
        return self._inner.embed_documents(texts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def part_f(ws: Workspace, sizes: Sizes) -> list[Result]:
    table = "f_inc"
    rows = sizes.incremental_rows
    ws.create_table(table, rows)
    target = Target(ws.project(table, {"det": deterministic_model()}), "det")
    step = round(100 / sizes.edit_percent)
    setup = f"deterministic embedder, 384-d; {QDRANT_LABELS['memory']}"
    with qdrant_store("memory", ws.tmp / "unused") as qdrant:
        full, result = _sync(target, ws.conn, qdrant, build_embedder("det", target.model))
        if result.embedded != rows:
            raise RuntimeError(f"full sync embedded {result.embedded} of {rows}")
        edited = ws.conn.execute(
            sql.SQL(
                "UPDATE {} SET body = body || ' Edited for the benchmark.' WHERE id %% %s = 0 "
                "RETURNING id"
            ).format(sql.Identifier(ws.schema, table)),
            (step,),
        ).fetchall()
        edited_ids = {row[0] for row in edited}
        counting = CountingEmbedder(build_embedder("det", target.model))
        incremental, result = _sync(target, ws.conn, qdrant, counting)
        sample = sorted(edited_ids)[:: max(1, len(edited_ids) // 20)]
        points = qdrant.retrieve(
            target.collection,
            ids=[point_id(target.table.data_type, str(key), target.collection) for key in sample],
            with_payload=True,
        )
    exact = (
        result.embedded == len(edited_ids)
        and len(counting.texts) == len(edited_ids)
        and all("Edited for the benchmark." in text for text in counting.texts)
        and len(points) == len(sample)
        and all("Edited for the benchmark." in (p.payload or {})["content"] for p in points)
    )
    share = incremental / full
    met = exact and share <= 0.05
    misses = []
    if not exact:
        misses.append(f"embedded {len(counting.texts)} texts for {len(edited_ids)} edited rows")
    if share > 0.05:
        misses.append(f"{100 * share:.1f}% of the full sync, {share / 0.05:.1f}x the 5% budget")
    return [
        Result(
            "f",
            f"full sync, {_n(rows)} rows",
            setup,
            "-",
            f"{fmt_seconds(full)} ({fmt_rate(rows / full)})",
            None,
        ),
        Result(
            "f",
            f"sync after editing {sizes.edit_percent:g}% ({_n(len(edited_ids))} rows)",
            setup,
            "embeds exactly the edited rows; <= 5% of the full sync's time",
            f"{_n(len(counting.texts))} texts embedded, all edited; {fmt_seconds(incremental)} "
            f"= {100 * share:.1f}% of the full sync",
            met,
            "; ".join(misses),
        ),
    ]


def part_g(ws: Workspace, sizes: Sizes, api: FakeApiProcess) -> list[Result]:
    """1, 2 and 4 worker processes share one table and model through claims.

    Each worker keeps one request in flight (max_concurrent_requests 1), so one worker is
    bound by the API's latency, as a single sync of a slow or rate-limited API is; workers are
    how that scales past one process or machine. Each has its own in-memory Qdrant; their
    points must add up to every row exactly once.
    """
    rows, batch = sizes.workers_rows, sizes.workers_batch
    runs: list[tuple[int, float, dict[str, int], list[dict[str, Any]]]] = []
    for n in sizes.workers:
        name = f"g_workers_{n}"
        model, notes = openai_model(
            api.url,
            sizes.workers_dimensions,
            max_inputs_per_request=batch,
            max_concurrent_requests=1,
        )
        ws.create_table(name, rows)
        target = Target(ws.project(name, {"api": model}), "api")
        api.reset()
        seconds, reports = _run_workers(ws, target, n, batch)
        stats = api.stats()
        embedded = sum(report["embedded"] for report in reports)
        points = sum(report["points"] for report in reports)
        marked = ws.conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE NOT {}").format(
                sql.Identifier(ws.schema, name),
                pending_condition(collection_name_for(name, target.model.id)),
            )
        ).fetchone()[0]
        if not (embedded == points == marked == stats["inputs"] == rows):
            raise RuntimeError(
                f"{n} workers: embedded {embedded}, points {points}, marked {marked}, "
                f"API inputs {stats['inputs']}, of {rows} rows"
            )
        runs.append((n, rows / seconds, stats, reports))

    setup = (
        f"openai model, {sizes.workers_dimensions}-d, {batch} rows per batch and request, one "
        f"request in flight per worker, loopback API {sizes.api_latency * 1000:.0f} ms/request; "
        f"{_n(rows)} rows; one process per worker, each with its own Qdrant (:memory:)"
    )
    results: list[Result] = []
    single = runs[0][1]
    for n, rate, stats, reports in runs:
        shares = ", ".join(_n(report["embedded"]) for report in reports)
        measured = (
            f"{fmt_rate(rate)}"
            + (f" = {rate / single:.2f}x one worker" if n > 1 else "")
            + f"; rows per worker {shares}; every row embedded once "
            f"({_n(stats['inputs'])} API inputs, max {stats['max_in_flight']} in flight)"
        )
        if n == 1:
            results.append(Result("g", "1 worker", setup, "baseline", measured, None))
            continue
        met = rate >= 0.8 * n * single and stats["max_in_flight"] <= n
        results.append(
            Result(
                "g",
                f"{n} workers",
                setup,
                f">= {0.8 * n:.1f}x one worker ({fmt_rate(0.8 * n * single)}); each row once",
                measured,
                met,
                "" if met else f"{rate / single:.2f}x instead of {0.8 * n:.1f}x",
            )
        )
    return results


def _run_workers(
    ws: Workspace, target: Target, n: int, batch: int
) -> tuple[float, list[dict[str, Any]]]:
    """Start `n` worker processes, release them at once, and time until the last finishes."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.worker_child",
        "--database-url",
        ws.url,
        "--config-dir",
        str(target.project.config_dir),
        "--model",
        target.model_key,
        "--batch-size",
        str(batch),
    ]
    workers = [
        subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]
    try:
        for worker in workers:
            if worker.stdout is None or worker.stdout.readline().strip() != "ready":
                raise RuntimeError("a worker did not start; see its stderr above")
        go = time.time()
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        reports = []
        for worker in workers:
            out, _ = worker.communicate(timeout=1800)
            if worker.returncode != 0:
                raise RuntimeError(f"a worker failed (exit {worker.returncode})")
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    return max(report["finished"] for report in reports) - go, reports


def part_h(ws: Workspace, sizes: Sizes) -> list[Result]:
    """A text_template change: only rows whose text changed are embedded, and noticing that
    nothing changed costs the same on any table size (one record compared, store_state.py)."""
    table = "h_template"
    rows = sizes.incremental_rows
    step = round(100 / sizes.edit_percent)
    ws.create_table(table, rows)
    # Only one row in `step` has a category: a template that appends it changes just those.
    ws.conn.execute(
        sql.SQL("UPDATE {} SET category = NULL WHERE id %% %s <> 0").format(
            sql.Identifier(ws.schema, table)
        ),
        (step,),
    )
    changed_rows = rows // step
    model = {"det": deterministic_model()}
    before = Target(ws.project(table, model), "det")
    setup = f"deterministic embedder, 384-d; {_n(rows)} rows; {QDRANT_LABELS['memory']}"
    with qdrant_store("memory", ws.tmp / "unused") as qdrant:
        full, result = _sync(before, ws.conn, qdrant, build_embedder("det", before.model))
        if result.embedded != rows:
            raise RuntimeError(f"full sync embedded {result.embedded} of {rows}")
        state = StoreState(ws.conn, qdrant, ws.schema, before.table, before.collection)
        check, check_p95, why = _median_time(state.mismatch, sizes.checks)
        if why is not None:
            raise RuntimeError(f"the store check failed after a full sync: {why}")
        noop, _, _ = _median_time(
            lambda: _sync(before, ws.conn, qdrant, build_embedder("det", before.model)), 3
        )
        after = Target(
            ws.project(table, model, "TITLE: {title}\\nCONTENT: {body}{category}"), "det"
        )
        counting = CountingEmbedder(build_embedder("det", after.model))
        seconds, result = _sync(after, ws.conn, qdrant, counting)
    exact = (
        result.embedded == len(counting.texts) == changed_rows
        and result.adopted == rows - changed_rows
    )
    return [
        Result(
            "h",
            "detecting a template change when there is none",
            setup,
            "O(1): one record compared, whatever the table's size",
            f"store check {fmt_seconds(check)} median ({fmt_seconds(check_p95)} p95 of "
            f"{sizes.checks}); whole sync with nothing to do {fmt_seconds(noop)}",
            None,
        ),
        Result(
            "h",
            f"sync after a template change that alters {_n(changed_rows)} of {_n(rows)} texts",
            setup,
            "embeds exactly the rows whose text changed",
            f"{_n(len(counting.texts))} embedded, {_n(result.adopted)} kept (point already "
            f"current), {fmt_seconds(seconds)} = {100 * seconds / full:.0f}% of the full sync "
            f"({fmt_seconds(full)})",
            exact,
            "" if exact else f"embedded {len(counting.texts)} for {changed_rows} changed texts",
        ),
    ]
