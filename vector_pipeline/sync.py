"""The sync engine: bring one table's collection for one model up to date.

Plain Python with no Dagster import: the Dagster asset and the CLI both call `sync_table`, so
they run the same code. The loop is read a batch -> embed (dense and sparse) -> upsert and wait
-> mark, with a commit per batch. A row is marked only after its point is written and only if
its text is unchanged since it was read, so a crash at any point loses nothing (the row stays
pending and its deterministic point id is overwritten on the next run) and never marks stale text.
"""

from __future__ import annotations

import datetime as dt
import decimal
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Protocol

import psycopg
from qdrant_client import QdrantClient

from vector_pipeline.config import ProjectConfig, TableConfig, collection_name_for
from vector_pipeline.deletes import collection_lock, drain_tombstones
from vector_pipeline.embedders import Embedder
from vector_pipeline.failpoints import failpoint
from vector_pipeline.source import SourceRow, SourceTable
from vector_pipeline.sparse import Bm25
from vector_pipeline.vector_store import (
    PointData,
    content_hash,
    delete_points,
    ensure_collection,
    point_id,
    upsert_points,
)

DEFAULT_BATCH_SIZE = 256
NO_TEXT = "no text: every column of the text template is NULL or blank"
# Row ids kept for the summary; the counts are exact, the lists are samples for the log.
SAMPLE_IDS = 20


class Logger(Protocol):
    def info(self, msg: str, *args: Any) -> None: ...
    def warning(self, msg: str, *args: Any) -> None: ...


@dataclass(frozen=True)
class BatchReport:
    rows: int
    embedded: int
    skipped: int
    truncated: int
    left_pending: int
    tokens: int
    seconds: float


@dataclass
class SyncResult:
    table: str
    model: str
    collection: str
    embedded: int = 0
    skipped: int = 0
    truncated: int = 0
    left_pending: int = 0
    tokens: int = 0
    batches: int = 0
    seconds: float = 0.0
    pending_after: int = 0
    total_rows: int = 0
    deleted: int = 0
    created_collection: bool = False
    skipped_ids: list[Any] = field(default_factory=list)
    truncated_ids: list[Any] = field(default_factory=list)

    def add(self, report: BatchReport) -> None:
        self.batches += 1
        self.embedded += report.embedded
        self.skipped += report.skipped
        self.truncated += report.truncated
        self.left_pending += report.left_pending
        self.tokens += report.tokens


@cache
def bm25() -> Bm25:
    """One BM25 encoder per process: its stopwords and stemmer load once."""
    return Bm25()


def json_safe(value: Any) -> Any:
    """Payload values as JSON types Qdrant accepts."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dt.date | dt.datetime | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return str(value)


def _has_text(table: TableConfig, row: SourceRow) -> bool:
    return any(
        row.values[column] is not None and str(row.values[column]).strip()
        for column in table.text_columns
    )


def _payload(table: TableConfig, row: SourceRow, text: str, truncated: bool) -> dict[str, Any]:
    name = row.values.get(table.name_column) if table.name_column else None
    meta = {
        "table": table.name,
        "data_type": table.data_type,
        "row_id": json_safe(row.key),
        # The model read only a prefix of `content`; readers can tell.
        "truncated": truncated,
        **{column: json_safe(row.values[column]) for column in table.payload_columns},
    }
    return {
        "name": str(name) if name is not None else f"{table.data_type}_{row.key}",
        "meta_data": meta,
        "content": text,
        "content_hash": content_hash(text),
        # Agno's Document fields, kept so Agno-based readers load these points unchanged.
        "usage": None,
        "content_id": None,
    }


def sync_batch(
    rows: list[SourceRow],
    *,
    source: SourceTable,
    qdrant: QdrantClient,
    embedder: Embedder,
    collection: str,
    result: SyncResult,
) -> BatchReport:
    """Embed, upsert and mark one batch; return what happened to it."""
    started = time.perf_counter()
    table = source.config
    wanted = [row for row in rows if _has_text(table, row)]
    skipped = [row for row in rows if not _has_text(table, row)]
    if skipped:
        # A row whose text is gone must not stay findable by its old text.
        delete_points(
            qdrant, collection, [point_id(table.data_type, r.key, collection) for r in skipped]
        )
        source.record_skips(collection, [(row, NO_TEXT) for row in skipped])
    texts = [table.render_text(row.values) for row in wanted]

    truncated: tuple[int, ...] = ()
    tokens = 0
    failpoint("after_read")
    if wanted:
        dense = embedder.embed_documents(texts)
        failpoint("after_embed")
        sparse = bm25().embed_documents(texts)
        truncated, tokens = dense.truncated, dense.tokens
        cut = set(truncated)
        upsert_points(
            qdrant,
            collection,
            [
                PointData(
                    id=point_id(table.data_type, row.key, collection),
                    dense=vector,
                    sparse=sparse_vector,
                    payload=_payload(table, row, text, index in cut),
                )
                for index, (row, text, vector, sparse_vector) in enumerate(
                    zip(wanted, texts, dense.vectors, sparse, strict=True)
                )
            ],
        )
    failpoint("after_upsert")
    marked = source.mark_embedded(collection, wanted)
    failpoint("after_mark")

    for samples, found in (
        (result.skipped_ids, [row.key for row in skipped]),
        (result.truncated_ids, [wanted[i].key for i in truncated]),
    ):
        samples.extend(found[: max(0, SAMPLE_IDS - len(samples))])
    return BatchReport(
        rows=len(rows),
        embedded=marked,
        skipped=len(skipped),
        truncated=len(truncated),
        left_pending=len(wanted) - marked,
        tokens=tokens,
        seconds=time.perf_counter() - started,
    )


def sync_table(
    *,
    conn: psycopg.Connection,
    qdrant: QdrantClient,
    embedder: Embedder,
    table: TableConfig,
    schema: str,
    state_schema: str | None = None,
    collections: Sequence[str] = (),
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_batch: Callable[[BatchReport], None] | None = None,
    log: Logger | None = None,
) -> SyncResult:
    """Sync every pending row of `table` into the model's collection; see the module docstring.

    `state_schema` holds the pipeline's own tables (default: `schema`); `collections` are the
    table's other collections, which the drain of deleted rows also cleans.
    """
    log = log or logging.getLogger(__name__)
    started = time.perf_counter()
    collection = collection_name_for(table.collection_base, embedder.model_id)
    state_schema = state_schema or schema
    source = SourceTable(conn, schema, table, state_schema)
    result = SyncResult(table=table.name, model=embedder.model_key, collection=collection)
    result.created_collection = ensure_collection(qdrant, collection, embedder.dimensions)
    failpoint("after_ensure_collection")
    with collection_lock(conn, schema, table, collection, log):
        result.deleted = drain_tombstones(source, qdrant, state_schema, collection, collections)
        if result.deleted:
            log.info(f"{table.name}: removed the points of {result.deleted} deleted rows")
        failpoint("after_drain")
        _sync_pending(source, qdrant, embedder, collection, batch_size, on_batch, log, result)

    failpoint("before_final_count")
    counts = source.counts(collection)
    result.pending_after, result.total_rows = counts.pending, counts.total
    result.seconds = time.perf_counter() - started
    _summarise(result, embedder, log)
    return result


def _sync_pending(
    source: SourceTable,
    qdrant: QdrantClient,
    embedder: Embedder,
    collection: str,
    batch_size: int,
    on_batch: Callable[[BatchReport], None] | None,
    log: Logger,
    result: SyncResult,
) -> None:
    table = source.config
    for rows in source.pending_batches(collection, batch_size):
        report = sync_batch(
            rows,
            source=source,
            qdrant=qdrant,
            embedder=embedder,
            collection=collection,
            result=result,
        )
        result.add(report)
        log.info(
            "%s -> %s: batch %d: %d rows, %d embedded, %d skipped, %d truncated, %d tokens, %.2f s",
            table.name,
            collection,
            result.batches,
            report.rows,
            report.embedded,
            report.skipped,
            report.truncated,
            report.tokens,
            report.seconds,
        )
        if on_batch is not None:
            on_batch(report)


def _summarise(result: SyncResult, embedder: Embedder, log: Logger) -> None:
    if result.skipped:
        log.warning(
            "%s: %d rows have no text and were skipped (ids, first %d: %s)",
            result.table,
            result.skipped,
            SAMPLE_IDS,
            result.skipped_ids,
        )
    if result.truncated:
        log.warning(
            "%s: %d texts exceeded %s's input limit and were cut (ids, first %d: %s)",
            result.table,
            result.truncated,
            embedder.model_id,
            SAMPLE_IDS,
            result.truncated_ids,
        )
    if result.left_pending:
        log.info(
            "%s: %d rows changed while they were embedded; they stay pending for the next sync",
            result.table,
            result.left_pending,
        )
    log.info(
        "%s -> %s: embedded %d rows in %.1f s (%d skipped, %d still pending of %d)",
        result.table,
        result.collection,
        result.embedded,
        result.seconds,
        result.skipped,
        result.pending_after,
        result.total_rows,
    )


def sync_configured_table(
    *,
    conn: psycopg.Connection,
    qdrant: QdrantClient,
    embedder: Embedder,
    project: ProjectConfig,
    table: TableConfig,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_batch: Callable[[BatchReport], None] | None = None,
    log: Logger | None = None,
) -> SyncResult:
    """`sync_table` with the schemas and the table's other collections taken from config."""
    return sync_table(
        conn=conn,
        qdrant=qdrant,
        embedder=embedder,
        table=table,
        schema=project.tables.schema_for(table),
        state_schema=project.tables.schema_,
        collections=project.collections_for(table),
        batch_size=batch_size,
        on_batch=on_batch,
        log=log,
    )
