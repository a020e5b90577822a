"""The sync engine: bring one table's collection for one model up to date.

Plain Python with no Dagster import: the Dagster asset and the CLI both call `sync_table`, so
they run the same code. Under the table-and-collection lock it first drains the tombstones of
deleted rows, then runs a pipeline: read a batch -> embed (dense and sparse, on worker threads)
-> upsert and wait -> mark, with a commit per batch. A row is marked only after its point is
written and only if its text is unchanged since it was read, so a crash at any point loses
nothing (the row stays pending and its deterministic point id is overwritten on the next run)
and never marks stale text.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Protocol

import psycopg
from qdrant_client import QdrantClient

from vector_pipeline import encoding
from vector_pipeline.aliases import update_active_alias
from vector_pipeline.chunks import Chunker
from vector_pipeline.config import (
    DEFAULT_SPARSE_LANGUAGES,
    DEFAULT_UNSTEMMED,
    ProjectConfig,
    TableConfig,
    collection_name_for,
)
from vector_pipeline.deletes import collection_lock, delete_points_of_gone_rows, drain_tombstones
from vector_pipeline.embedders import Embedder
from vector_pipeline.embedders.base import DenseEmbeddings
from vector_pipeline.failpoints import failpoint
from vector_pipeline.points import (
    StoredRow,
    chunk_layout,
    chunk_point_id,
    content_hash,
    holds,
    point_id,
    point_payload,
    row_point_ids,
    scroll_table_points,
    stored_rows,
)
from vector_pipeline.source import SourceRow, SourceTable
from vector_pipeline.sparse import Bm25, SparseSettings
from vector_pipeline.store_state import StoreState
from vector_pipeline.vector_store import (
    PointData,
    delete_points,
    ensure_collection,
    refuse_foreign_points,
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
    adopted: int  # marked without embedding: their point already held their current text
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
    adopted: int = 0
    skipped: int = 0
    truncated: int = 0
    left_pending: int = 0
    tokens: int = 0
    batches: int = 0
    seconds: float = 0.0
    pending_after: int = 0
    total_rows: int = 0
    deleted: int = 0
    payloads_refreshed: int = 0  # rows whose payload columns changed (no embedding)
    created_collection: bool = False
    marks_voided: int = 0  # marks removed because the store was not the one they were made in
    sparse_reencoded: int = 0  # points whose sparse vector was re-encoded for new BM25 settings
    chunked: int = 0  # rows embedded as several chunks (their text is over the model's limit)
    points_written: int = 0  # points upserted: one per chunk
    skipped_ids: list[Any] = field(default_factory=list)
    truncated_ids: list[Any] = field(default_factory=list)
    alias: str | None = None  # the active alias of the table's collections, if any
    alias_serves: str | None = None  # the collection it serves after this sync

    def add(self, report: BatchReport) -> None:
        self.batches += 1
        self.embedded += report.embedded
        self.adopted += report.adopted
        self.skipped += report.skipped
        self.truncated += report.truncated
        self.left_pending += report.left_pending
        self.tokens += report.tokens


# The BM25 settings of a sync that is not given a model's own (sync_configured_table passes
# them): the same default every configured model gets.
DEFAULT_SPARSE = SparseSettings(languages=DEFAULT_SPARSE_LANGUAGES, unstemmed=DEFAULT_UNSTEMMED)


@cache
def bm25(settings: SparseSettings = DEFAULT_SPARSE) -> Bm25:
    """One BM25 encoder per process and settings: its stopwords and stemmers load once."""
    return Bm25(settings=settings)


def payload_args(table: TableConfig, row: SourceRow, text: str, truncated: bool) -> dict[str, Any]:
    """`points.point_payload`'s arguments for `row`'s point holding `text`."""
    return {
        "table": table.name,
        "data_type": table.data_type,
        "row_id": row.row_id,
        "key_text": row.key,
        "name": row.values.get(table.name_column) if table.name_column else None,
        "text": text,
        "truncated": truncated,
        "payload_values": row.payload,
    }


def writable(table: TableConfig, row: SourceRow) -> bool:
    """Whether the row gets points: it has text and was read whole (else it is skipped, with
    `skip_reason`)."""
    return row.problem is None and table.has_text(row.values)


def skip_reason(row: SourceRow) -> str:
    return row.problem or NO_TEXT


class BudgetExceeded(RuntimeError):
    """The next batch would spend more than the session's budget allows; nothing more is sent.

    Raised after the batches already sent are written and marked, so their progress is kept.
    """


class _PipelineStopped(Exception):
    """A batch not embedded because an earlier one failed; that failure is what is raised."""


@dataclass
class EmbeddedBatch:
    """One batch after embedding, ready to write: everything but the I/O."""

    rows: list[SourceRow]
    wanted: list[SourceRow]
    skipped: list[SourceRow]
    adopted: list[SourceRow]
    points: list[PointData]  # every chunk 0 first, then the other chunks
    truncated: tuple[int, ...]  # indexes into `wanted` of rows the model read only part of
    tokens: int
    started: float
    # Chunk ids to delete once the points are written: chunks beyond a row's new count (it
    # shrank, or a crashed write left them), every chunk of a skipped row.
    stale_ids: list[str] = field(default_factory=list)
    skipped_ids: list[str] = field(default_factory=list)
    chunked: int = 0  # rows of `wanted` split into several chunks
    # Why rows of `skipped` were skipped, by row key, when not NO_TEXT: the provider's reason.
    skip_reasons: dict[str, str] = field(default_factory=dict)


def embed_batch(
    rows: list[SourceRow],
    table: TableConfig,
    embedder: Embedder,
    collection: str,
    stored: Mapping[str, StoredRow] | None = None,
    sparse_settings: SparseSettings = DEFAULT_SPARSE,
    chunker: Chunker | None = None,
) -> EmbeddedBatch:
    """Render and chunk each row, embed (dense and sparse) and build the points of one batch.

    `stored` (lookup_points) says what each row's points hold now: a row whose points already
    hold its current text, in the chunks it would be written as, is adopted (marked, not
    embedded). No database or Qdrant access, so batches can be embedded on worker threads
    while the main thread reads the next batch and writes the previous one.
    """
    started = time.perf_counter()
    stored = stored or {}
    chunker = chunker or Chunker.for_embedder(table, embedder)
    data_type = table.data_type
    skipped, adopted, wanted = [], [], []
    stale_ids: list[str] = []
    skipped_ids: list[str] = []
    # row, its chunks, its text hash, the chunk ids it may have had, its chunk layout
    planned: list[tuple[SourceRow, list[str], str, int, str]] = []
    for row in rows:
        before = stored.get(row.key)
        if not writable(table, row):
            skipped.append(row)
            skipped_ids += (
                before.ids(data_type, row.key, collection)
                if before
                else [point_id(data_type, row.key, collection)]
            )
            continue
        chunks = chunker.split(row.values)
        text_hash = content_hash(table.render_text(row.values))
        layout = chunk_layout(chunks)
        ids_before = max(before.chunks, before.chunk_ids) if before else 1
        if before is not None and holds(before, text_hash, len(chunks), layout):
            adopted.append(row)
        else:
            wanted.append(row)
            planned.append((row, chunks, text_hash, ids_before, layout))
        if before and ids_before > len(chunks):
            stale_ids += before.ids(data_type, row.key, collection, start=len(chunks))
    if not wanted:
        return EmbeddedBatch(
            rows, wanted, skipped, adopted, [], (), 0, started, stale_ids, skipped_ids
        )
    texts = [chunk for _, chunks, _, _, _ in planned for chunk in chunks]
    dense = embedder.embed_documents(texts)
    failpoint("after_embed")
    skip_reasons: dict[str, str] = {}
    if dense.rejected:
        # A row with a chunk the provider will not embed is skipped whole, with its reason,
        # and its old points go: they hold a text the row no longer has.
        planned, texts, dense, refused = _drop_rejected(planned, texts, dense)
        for row, reason in refused:
            skipped.append(row)
            wanted.remove(row)
            skip_reasons[row.key] = reason
            before = stored.get(row.key)
            skipped_ids += (
                before.ids(data_type, row.key, collection)
                if before
                else [point_id(data_type, row.key, collection)]
            )
    sparse = bm25(sparse_settings).embed_documents(texts)
    cut = set(dense.truncated)
    firsts: list[PointData] = []
    others: list[PointData] = []
    truncated: list[int] = []
    index = 0
    for position, (row, chunks, text_hash, ids_before, layout) in enumerate(planned):
        if any(index + k in cut for k in range(len(chunks))):
            truncated.append(position)
        for k, chunk in enumerate(chunks):
            payload = point_payload(
                **payload_args(table, row, chunk, index + k in cut),
                chunk=k,
                chunks=len(chunks),
                text_hash=text_hash,
                chunk_ids=max(ids_before, len(chunks)),
                layout=layout,
            )
            point = PointData(
                id=chunk_point_id(data_type, row.key, collection, k),
                dense=dense.vectors[index + k],
                sparse=sparse[index + k],
                payload=payload,
            )
            # Chunk 0 first: it counts the row's chunk ids, so whatever a crash leaves behind
            # is within what it says (points.py).
            (firsts if k == 0 else others).append(point)
        index += len(chunks)
    return EmbeddedBatch(
        rows,
        wanted,
        skipped,
        adopted,
        firsts + others,
        tuple(truncated),
        dense.tokens,
        started,
        stale_ids,
        skipped_ids,
        chunked=sum(1 for _, chunks, _, _, _ in planned if len(chunks) > 1),
        skip_reasons=skip_reasons,
    )


def _drop_rejected(
    planned: list[tuple[SourceRow, list[str], str, int, str]],
    texts: list[str],
    dense: DenseEmbeddings,
) -> tuple[
    list[tuple[SourceRow, list[str], str, int, str]],
    list[str],
    DenseEmbeddings,
    list[tuple[SourceRow, str]],
]:
    """`planned`, the chunk texts and their embeddings without the rows that have a rejected
    chunk, and those rows with the provider's reason (the first rejected chunk's)."""
    kept: list[tuple[SourceRow, list[str], str, int, str]] = []
    keep: list[int] = []  # indexes into `texts` of the chunks kept
    refused: list[tuple[SourceRow, str]] = []
    index = 0
    for plan in planned:
        chunks = range(index, index + len(plan[1]))
        reasons = [dense.rejected[i] for i in chunks if i in dense.rejected]
        if reasons:
            refused.append((plan[0], reasons[0]))
        else:
            kept.append(plan)
            keep.extend(chunks)
        index += len(plan[1])
    position = {old: new for new, old in enumerate(keep)}
    kept_dense = DenseEmbeddings(
        vectors=[dense.vectors[i] for i in keep],
        truncated=tuple(position[i] for i in dense.truncated if i in position),
        tokens=dense.tokens,
    )
    return kept, [texts[i] for i in keep], kept_dense, refused


def lookup_points(
    qdrant: QdrantClient, table: TableConfig, collection: str, rows: Sequence[SourceRow]
) -> dict[str, StoredRow]:
    """What the points of `rows` hold now (points.stored_rows), chunks verified for rows
    whose chunk 0 holds their current text.

    A row whose points already hold its text was embedded into this collection before and
    lost only its mark (a restore, a store check, a mark removed by hand): it is marked again
    without paying for it.
    """
    verify = {
        row.key: content_hash(table.render_text(row.values)) for row in rows if writable(table, row)
    }
    return stored_rows(
        qdrant, table.data_type, collection, [row.key for row in rows], verify=verify
    )


def write_batch(
    batch: EmbeddedBatch,
    *,
    source: SourceTable,
    qdrant: QdrantClient,
    collection: str,
    result: SyncResult,
) -> BatchReport:
    """Upsert the batch's points and wait, delete the chunks no row has any more, then mark
    its rows; return what happened."""
    if batch.skipped:
        # A row whose text is gone must not stay findable by its old text.
        delete_points(qdrant, collection, batch.skipped_ids)
        source.record_skips(
            collection,
            [(row, batch.skip_reasons.get(row.key) or skip_reason(row)) for row in batch.skipped],
        )
    upsert_points(qdrant, collection, batch.points)
    failpoint("after_upsert")
    # After the new chunks are written, so a row is never without points; before the marks,
    # so a crash here leaves the row pending and the next sync deletes them (chunk_ids).
    delete_points(qdrant, collection, batch.stale_ids)
    failpoint("after_stale_chunks")
    adopted = source.mark_embedded(collection, batch.adopted) if batch.adopted else 0
    marked = source.mark_embedded(collection, batch.wanted, release=batch.rows)
    failpoint("after_mark")

    for samples, found in (
        (result.skipped_ids, [row.row_id for row in batch.skipped]),
        (result.truncated_ids, [batch.wanted[i].row_id for i in batch.truncated]),
    ):
        samples.extend(found[: max(0, SAMPLE_IDS - len(samples))])
    result.chunked += batch.chunked
    result.points_written += len(batch.points)
    return BatchReport(
        rows=len(batch.rows),
        embedded=marked,
        adopted=adopted,
        skipped=len(batch.skipped),
        truncated=len(batch.truncated),
        left_pending=len(batch.wanted) + len(batch.adopted) - marked - adopted,
        tokens=batch.tokens,
        seconds=time.perf_counter() - batch.started,
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
    admit: Callable[[Sequence[str]], bool] | None = None,
    log: Logger | None = None,
    check_store: bool = True,
    sparse: SparseSettings = DEFAULT_SPARSE,
) -> SyncResult:
    """Sync every pending row of `table` into the model's collection; see the module docstring.

    `sparse` are the model's BM25 settings; points encoded under other settings are re-encoded
    first (encoding.py), without embedding.

    `state_schema` holds the pipeline's own tables (default: `schema`); `collections` are the
    table's other collections, which the drain of deleted rows also cleans. `admit`, given the
    texts of the next batch before they are sent, says whether the budget allows them; once it
    says no, the sync finishes the batches in flight and raises BudgetExceeded.

    `check_store=False` skips the store record (store_state.py) altogether. Only for stand-ins:
    worker processes that each hold their own local store in place of one shared server (the
    scale-out test and benchmark), where one worker's record never reaches the others' stores.
    """
    log = log or logging.getLogger(__name__)
    started = time.perf_counter()
    collection = collection_name_for(table.collection_base, embedder.model_id)
    state_schema = state_schema or schema
    source = SourceTable(conn, schema, table, state_schema)
    source.check_triggers()
    # Refuses an input limit too small to chunk by, before any row is read.
    chunker = Chunker.for_embedder(table, embedder)
    result = SyncResult(table=table.name, model=embedder.model_key, collection=collection)
    result.created_collection = ensure_collection(qdrant, collection, embedder.dimensions)
    failpoint("after_ensure_collection")
    store = StoreState(conn, qdrant, state_schema, table, collection)
    if check_store and store.mismatch() is not None:
        with collection_lock(conn, schema, table, collection, log):
            why = store.mismatch()  # another worker may have just dealt with it
            if why is not None and store.recorded() is None:
                refuse_foreign_points(qdrant, collection, table.name)
            if why is not None:
                result.marks_voided = void_marks(source, qdrant, store, why, log)
    result.sparse_reencoded = _reencode_sparse(conn, schema, qdrant, table, collection, sparse, log)
    # Shared: any number of workers sync this table into this collection together, sharing
    # the rows through claims; `repair` takes the lock exclusively and waits for them.
    with collection_lock(conn, schema, table, collection, log, shared=True):
        # Before anything is written: a snapshot taken before this sync, restored after it
        # crashed, shows an older generation than PostgreSQL's (store_state.py).
        if check_store:
            store.advance()
        _drain(source, qdrant, state_schema, collection, collections, log, result)
        failpoint("after_drain")
        try:
            # Claims this session still holds are leftovers of a read that never finished (a
            # connection runs one sync at a time); dead sessions' claims are free for anyone.
            source.claims.release_all(collection)
            freed = source.claims.free_dead(collection)
            while True:
                if freed:
                    log.info(f"{table.name}: {freed} rows claimed by workers that died are free")
                _sync_pending(
                    source,
                    qdrant,
                    embedder,
                    collection,
                    batch_size,
                    on_batch,
                    admit,
                    log,
                    result,
                    sparse,
                    chunker,
                )
                # A worker that died during this pass left rows claimed: take them over.
                freed = source.claims.free_dead(collection)
                if not freed:
                    break
        finally:
            if not conn.closed and not conn.broken:
                # A pipeline that stopped early gives back the batches it had not written.
                source.claims.release_all(collection)
        # Rows deleted while this sync ran: their points go now, not at the next sync.
        _drain(source, qdrant, state_schema, collection, collections, log, result)
        changed = result.embedded + result.skipped + result.deleted + result.payloads_refreshed
        if check_store and (changed or result.adopted):
            store.advance()  # and after: a snapshot taken while it wrote is older too

    failpoint("before_final_count")
    counts = source.counts(collection)
    result.pending_after, result.total_rows = counts.pending, counts.total
    result.seconds = time.perf_counter() - started
    _summarise(result, embedder, log)
    return result


def _reencode_sparse(
    conn: psycopg.Connection,
    schema: str,
    qdrant: QdrantClient,
    table: TableConfig,
    collection: str,
    sparse: SparseSettings,
    log: Logger,
) -> int:
    """Bring the table's sparse vectors to the model's BM25 settings (encoding.py); returns
    how many points were re-encoded."""
    if not encoding.needs_reencoding(qdrant, collection, table.name, sparse):
        return 0
    if not encoding.has_points(qdrant, collection, table.name):
        # Nothing to re-encode, so nothing to lock: workers starting together on a new
        # collection must not queue behind each other's exclusive lock.
        encoding.record(qdrant, collection, table.name, sparse)
        return 0
    with collection_lock(conn, schema, table, collection, log):
        # Another worker may have re-encoded them while this one waited for the lock.
        if not encoding.needs_reencoding(qdrant, collection, table.name, sparse):
            return 0
        reencoded = encoding.reencode(qdrant, collection, table.name, sparse)
    if reencoded:
        log.info(
            f"{table.name}: re-encoded the sparse vectors of {reencoded} points in "
            f"{collection} for its BM25 settings (languages {', '.join(sparse.languages)}); "
            "nothing was re-embedded"
        )
    return reencoded


def void_marks(
    source: SourceTable, qdrant: QdrantClient, store: StoreState, why: str, log: Logger
) -> int:
    """The store is not the one the marks were made in (store_state.py): remove every mark
    of the table for the collection, delete the points of rows that are gone or skipped (a
    restored snapshot may hold the text a row had before it lost it), start a new record.

    The caller holds the collection lock exclusively; `why` is `StoreState.mismatch()`. Rows
    whose point still holds their text are marked again by the sync that follows, without
    embedding: after a text_template change, exactly the rows whose text changed are paid for.
    """
    table, collection = source.config, store.collection
    recorded = store.recorded()
    voided = source.void_marks(collection)
    for points in scroll_table_points(qdrant, collection, table.name, ["meta_data.row_id"]):
        delete_points_of_gone_rows(source, qdrant, collection, points)
    skipped = [key for _, key, _, _ in source.skipped_rows(collection)]
    chunk_ids = row_point_ids(qdrant, table.data_type, collection, skipped)
    delete_points(qdrant, collection, [point for key in skipped for point in chunk_ids[key]])
    store.start()
    if recorded is None and not voided:
        return 0  # the table's first sync into this collection: nothing to distrust
    log.warning(
        f"{table.name}: collection {collection} {why}: {voided} marks were voided; rows whose "
        "point still holds their text are marked again without embedding"
    )
    return voided


def _drain(
    source: SourceTable,
    qdrant: QdrantClient,
    state_schema: str,
    collection: str,
    collections: Sequence[str],
    log: Logger,
    result: SyncResult,
) -> None:
    deleted, refreshed = drain_tombstones(source, qdrant, state_schema, collection, collections)
    if deleted:
        log.info(f"{source.config.name}: removed the points of {deleted} deleted rows")
    if refreshed:
        log.info(f"{source.config.name}: rewrote the payload of {refreshed} rows")
    result.deleted += deleted
    result.payloads_refreshed += refreshed


def _sync_pending(
    source: SourceTable,
    qdrant: QdrantClient,
    embedder: Embedder,
    collection: str,
    batch_size: int,
    on_batch: Callable[[BatchReport], None] | None,
    admit: Callable[[Sequence[str]], bool] | None,
    log: Logger,
    result: SyncResult,
    sparse: SparseSettings,
    chunker: Chunker,
) -> None:
    """Read, embed and write batches as a pipeline.

    Up to `max_concurrent_requests` batches are embedded on worker threads while this thread
    reads the next batch and writes finished ones in order. Only this thread touches
    PostgreSQL and Qdrant; at most concurrency + 1 batches are held, so memory stays bounded.
    A failure stops the pipeline: batches written before it stay done, later ones stay
    pending.
    """
    table = source.config
    concurrency = max(1, int(getattr(embedder, "max_concurrent_requests", 1)))
    in_flight: deque[tuple[list[SourceRow], Future[EmbeddedBatch]]] = deque()
    failed = threading.Event()

    def embed(rows: list[SourceRow], current: dict[str, StoredRow]) -> EmbeddedBatch:
        # Once one batch has failed, queued batches send nothing: a rejected key or a dead
        # provider costs one failed request per worker, not one per batch read ahead.
        if failed.is_set():
            raise _PipelineStopped
        try:
            return embed_batch(rows, table, embedder, collection, current, sparse, chunker)
        except BaseException:
            failed.set()
            raise

    def write_oldest() -> None:
        rows, future = in_flight.popleft()
        try:
            batch = future.result()
        except _PipelineStopped:
            raise
        except Exception as exc:
            # The error says what went wrong; this line says which rows it concerned.
            log.warning(
                "%s -> %s: batch of %d rows (ids %s..%s) failed: %s",
                table.name,
                collection,
                len(rows),
                rows[0].key,
                rows[-1].key,
                exc,
            )
            raise
        report = write_batch(
            batch, source=source, qdrant=qdrant, collection=collection, result=result
        )
        result.add(report)
        log.info(
            "%s -> %s: batch %d: %d rows, %d embedded, %d already current, %d skipped, "
            "%d truncated, %d tokens, %.2f s",
            table.name,
            collection,
            result.batches,
            report.rows,
            report.embedded,
            report.adopted,
            report.skipped,
            report.truncated,
            report.tokens,
            report.seconds,
        )
        if on_batch is not None:
            on_batch(report)

    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="embed")
    try:
        refused = 0
        for rows in source.pending_batches(collection, batch_size):
            failpoint("after_read")
            current = lookup_points(qdrant, table, collection, rows)
            if admit is not None:
                # Rows whose points hold their text are likely adopted, unpaid; the whole text
                # of the others approximates what their chunks cost.
                texts = [
                    text
                    for row in rows
                    if writable(table, row)
                    and not _holds(current.get(row.key), text := table.render_text(row.values))
                ]
                if texts and not admit(texts):
                    refused = len(rows)
                    break
            in_flight.append((rows, pool.submit(embed, rows, current)))
            while len(in_flight) > concurrency:
                write_oldest()
        while in_flight:
            write_oldest()
        if refused:
            raise BudgetExceeded(
                f"budget exceeded: the next batch of {table.name} ({refused} rows) would go "
                f"over the session's budget, so it was not sent; the {result.embedded} rows "
                "embedded before it are kept and the rest stay pending"
            )
    finally:
        # On failure, batches not yet started are dropped; running ones finish unwritten.
        pool.shutdown(wait=True, cancel_futures=True)


def _holds(stored: StoredRow | None, text: str) -> bool:
    """Whether the points likely hold `text` (budget estimate: the layout is not checked)."""
    return stored is not None and stored.complete and stored.text_hash == content_hash(text)


def _summarise(result: SyncResult, embedder: Embedder, log: Logger) -> None:
    if result.skipped:
        log.warning(
            "%s: %d rows were skipped: no text, or the provider refused them; "
            "`vector-pipeline skipped` lists why (ids, first %d: %s)",
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
    if result.chunked:
        log.info(
            "%s: %d rows longer than %s reads were split into chunks (%d points written)",
            result.table,
            result.chunked,
            embedder.model_id,
            result.points_written,
        )
    if result.adopted:
        log.info(
            "%s: %d rows were marked without embedding: their points already held their text",
            result.table,
            result.adopted,
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
    admit: Callable[[Sequence[str]], bool] | None = None,
    log: Logger | None = None,
    check_store: bool = True,
) -> SyncResult:
    """`sync_table` with the schemas and the table's other collections taken from config;
    after a sync of the default model, the active alias moves to its collection once that is
    complete (see `aliases.py`)."""
    result = sync_table(
        conn=conn,
        qdrant=qdrant,
        embedder=embedder,
        table=table,
        schema=project.tables.schema_for(table),
        state_schema=project.tables.schema_,
        collections=project.collections_for(table),
        batch_size=batch_size,
        on_batch=on_batch,
        admit=admit,
        log=log,
        check_store=check_store,
        sparse=project.embeddings.sparse_settings(embedder.model_key),
    )
    if embedder.model_key == project.embeddings.default:
        result.alias = project.tables.alias_for(table.collection_base)
        result.alias_serves = update_active_alias(
            conn, qdrant, project, table.collection_base, log or logging.getLogger(__name__)
        )
    return result
