"""Adoption: take over a collection another writer filled, without embedding anything again.

The reference design wrote its points through Agno's Qdrant store, which never uses the
reference formula as the point id (Agno 2.x: md5 of the content; 3.x: md5 of the document id
and `content_hash`); the formula lands in `payload.content_hash`. A sync addresses a row's point
by the formula, so until those points are moved it cannot find, replace or delete them.
Adoption moves them: vectors and all, with no embedding request.

How a point is traced to its row. Every trace is proven by recomputing the formula, never
guessed:
1. its id is the formula of a row the table has now (already where the sync looks);
2. its `content_hash` is (what the reference passed to Agno);
3. a payload field holds a key (our `meta_data.row_id`, any scalar of the reference's own
   `meta_data`, a `name` of the form `{DATA_TYPE}_{key}`) whose formula is the point's id or
   its `content_hash`. If no row has that key now, the row is gone.
A point none of these trace is left in place and counted as unattributed.

What happens to a point of a row that exists:
- One point per row survives: one holding the row's current text, else the one already at the
  formula id, else the first found. The others are deleted.
- It is written at the formula id with its own dense vector, its sparse vector encoded from its
  `content` under the model's BM25 settings (sparse.py), and the product's payload
  (points.py) built from the row. `content` stays the text its vectors were made from; fields
  of the old payload the product does not write (Agno's `user_id`, the reference's own
  `meta_data` keys, `usage`, `content_id`) are kept, so Agno's readers load it as before.
- The row is marked when that text is the row's current text in the one chunk the sync would
  write. Otherwise it is left pending, and only it is embedded by the next sync: it was edited
  since, renders NULL another way (see `null_as`), or is longer than the model reads.
A point already in the product's layout at its formula id is left as it is, and its row is
judged exactly as a sync would judge it (so adopting a collection this product wrote changes
nothing). Points of rows that are gone are deleted; marks of rows left without a point that
holds their text are removed.

Order and crashes. Per page of points: write the kept points at their formula ids, then delete
the old ids, then mark. A crash anywhere leaves either two copies (the next run deletes the
old one: it traces to the same row, whose formula id then holds the kept one) or a mark
missing (the next run sets it); nothing is marked before its point is written. A second run
finds every point in place and changes nothing. Until a run completes, the collection has no
store record (store_state.py), so a sync refuses it rather than paying for every row
(`foreign_point`). A run ends by setting the IDF modifier Agno leaves off, recording the
sparse settings (encoding.py) and starting each table's store record, so the next sync
trusts the marks.

The whole collection is read once; the formula ids of every row of its tables are held in
memory meanwhile (about 200 bytes per row).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from qdrant_client import QdrantClient, models

from vector_pipeline import encoding
from vector_pipeline.chunks import Chunker
from vector_pipeline.config import EmbeddingModel, ProjectConfig, TableConfig
from vector_pipeline.deletes import collection_lock
from vector_pipeline.failpoints import failpoint
from vector_pipeline.plan import input_limit, price, row_chunks, token_counter
from vector_pipeline.points import (
    chunk_layout,
    chunk_point_id,
    content_hash,
    holds,
    key_text_of_row_id,
    point_id,
    point_payload,
    row_hash,
)
from vector_pipeline.source import SourceRow, SourceTable
from vector_pipeline.sparse import SparseVector
from vector_pipeline.store_state import StoreState
from vector_pipeline.sync import bm25, lookup_points, payload_args, writable
from vector_pipeline.vector_store import (
    DENSE,
    SPARSE,
    PointData,
    delete_points,
    layout_problem,
    upsert_points,
)

log = logging.getLogger(__name__)

PAGE = 1000  # points read per scroll request
COUNT_SAMPLE = 10_000  # pending rows whose tokens a report counts; beyond, scaled
SAMPLE_IDS = 10  # ids kept as examples of unattributed points
# What the reference design's f-strings printed for NULL (see TableConfig.null_as).
REFERENCE_NULL = "None"
# Scalars of a payload tried as a row's key text when tracing a point (longer ones are not keys).
_MAX_KEY_CHARS = 512


class AdoptionError(RuntimeError):
    """The collection cannot be adopted as it is; the message says why and what to do."""


@dataclass
class TableAdoption:
    """What adoption did (or, in a dry run, would do) for one table."""

    table: str
    points_in_place: int = 0  # already at the formula id in the product's layout
    points_moved: int = 0  # written at the formula id with their own vectors
    payloads_rewritten: int = 0  # at the formula id already; payload put in the product's layout
    duplicates_deleted: int = 0  # second points of one row
    gone_deleted: int = 0  # points of rows that are gone
    rows_held: int = 0  # rows whose point holds their current text: marked, never embedded
    marks_added: int = 0
    marks_removed: int = 0
    rows_to_embed: int = 0  # rows with text that the next sync embeds
    stale: int = 0  # of those, rows whose point holds another text (edited since)
    chunked: int = 0  # rows whose point holds their text whole, which the sync would split
    without_point: int = 0  # rows with no point at all
    no_vector: int = 0  # rows whose point had no dense vector to move (it is deleted)
    no_text: int = 0  # rows with no text or an unreadable payload (skipped by syncs)
    # Of the stale rows, those whose point holds the text NULL rendered as "None" gives.
    null_as_reference: int = 0
    tokens: int = 0  # to embed the rows to embed (scaled from COUNT_SAMPLE rows when more)
    tokens_exact: bool = True
    cost: float | None = None  # US dollars (None: the model has no price)


@dataclass
class AdoptionReport:
    collection: str
    model: str
    dry_run: bool
    tables: list[TableAdoption]
    points_scanned: int = 0
    unattributed: int = 0  # points traced to no configured table's row: left in place
    unattributed_ids: list[str] = field(default_factory=list)
    other_tables: int = 0  # points of configured tables not being adopted: left as they are
    idf: str = ""  # the sparse vector's IDF modifier: "present", "set", or "missing" (dry run)
    sparse_reencoded: int = 0
    seconds: float = 0.0

    @property
    def points_written(self) -> int:
        return sum(t.points_moved + t.payloads_rewritten for t in self.tables)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "points_written": self.points_written}


def adopt(
    conn: psycopg.Connection,
    qdrant: QdrantClient,
    config: ProjectConfig,
    model_key: str | None = None,
    tables: Sequence[str] = (),
    *,
    dry_run: bool = False,
    logger: Any = log,
    page: int = PAGE,
) -> list[AdoptionReport]:
    """Adopt the collections of `model_key` (default: the default model) for `tables`
    (default: all), one report per collection; see the module docstring.

    Raises AdoptionError when a collection is missing or its layout does not fit the model,
    before anything is written."""
    key, model = config.embeddings.model(model_key)
    chosen = [t for t in config.tables.tables if not tables or t.name in tables]
    unknown = sorted(set(tables) - {t.name for t in config.tables.tables})
    if unknown:
        raise AdoptionError(f"no table {unknown[0]!r} in tables.yaml")
    by_collection: dict[str, list[TableConfig]] = {}
    for table in chosen:
        by_collection.setdefault(config.collection_for(table, key), []).append(table)
    for collection in by_collection:
        _check_layout(qdrant, collection, model, key)
    return [
        _Adoption(conn, qdrant, config, key, model, collection, group, dry_run, logger).run(page)
        for collection, group in by_collection.items()
    ]


def _check_layout(qdrant: QdrantClient, collection: str, model: EmbeddingModel, key: str) -> None:
    if not qdrant.collection_exists(collection):
        raise AdoptionError(
            f"Qdrant has no collection {collection!r} to adopt (model {key!r}); check "
            "collection_base in tables.yaml and the model's id in embeddings.yaml"
        )
    problem = layout_problem(qdrant, collection, model.dimensions)
    if problem is not None:
        raise AdoptionError(
            f"collection {collection!r} {problem} (model {key!r}); only a hybrid collection "
            "(Agno's `search_type=hybrid`) of the model that wrote it can be adopted without "
            "embedding again"
        )


def ensure_idf(qdrant: QdrantClient, collection: str, *, dry_run: bool = False) -> str:
    """Give the collection's sparse vector the IDF modifier (Qdrant >= 1.10 applies it at
    query time, so no point is rewritten): "present", "set", or "missing" in a dry run.

    Agno creates hybrid collections without it, so their BM25 scores lack IDF and rank
    keyword matches unlike the collections this pipeline creates."""
    current = (qdrant.get_collection(collection).config.params.sparse_vectors or {})[SPARSE]
    if current.modifier == models.Modifier.IDF:
        return "present"
    if dry_run:
        return "missing"
    fix = (
        f"recreate {collection!r} with sparse_vectors_config={{'{SPARSE}': "
        "SparseVectorParams(modifier=Modifier.IDF)}} (or upgrade Qdrant to >= 1.10) and run "
        "adopt again"
    )
    try:
        qdrant.update_collection(
            collection,
            sparse_vectors_config={SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)},
        )
    except Exception as exc:  # noqa: BLE001 - the server's refusal, reported as one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AdoptionError(f"Qdrant refused the IDF modifier ({first}); {fix}") from None
    after = (qdrant.get_collection(collection).config.params.sparse_vectors or {})[SPARSE]
    if after.modifier != models.Modifier.IDF:
        raise AdoptionError(f"Qdrant accepted but did not apply the IDF modifier; {fix}")
    return "set"


@dataclass
class _Candidate:
    """A point that traces to a row that exists."""

    id: str
    payload: dict[str, Any]
    at_target: bool


@dataclass(frozen=True)
class _Traced:
    """What a point was traced to: a row of `table` with key text `key` (`claimed`: a key as
    another writer printed it, to be looked up by value), and which chunk it is."""

    table: str
    key: str
    chunk: int = 0
    claimed: bool = False


# What became of a row whose point adoption judged (the report counts these at the end, so a
# row whose copies were spread over several pages is counted once).
HELD, STALE, STALE_NULL, CHUNKED, NO_VECTOR = "held", "stale", "stale_null", "chunked", "no_vector"
MOVED, REWRITTEN, IN_PLACE = "moved", "rewritten", "in_place"


class _Adoption:
    def __init__(
        self,
        conn: psycopg.Connection,
        qdrant: QdrantClient,
        config: ProjectConfig,
        model_key: str,
        model: EmbeddingModel,
        collection: str,
        tables: list[TableConfig],
        dry_run: bool,
        logger: Any,
    ) -> None:
        self.conn, self.qdrant, self.config = conn, qdrant, config
        self.model_key, self.model, self.collection = model_key, model, collection
        self.dry_run, self.log = dry_run, logger
        self.tables = {t.name: t for t in tables}
        # Every configured table writing to this collection: their points are traced too, so
        # adopting one table never takes another's points for unknown ones.
        self.sharing = {
            t.name: t
            for t in config.tables.tables
            if config.collection_for(t, model_key) == collection
        }
        self.sources = {
            name: SourceTable.for_config(conn, config, t) for name, t in self.sharing.items()
        }
        self.counter, self.exact_tokenizer = token_counter(model)
        cap = input_limit(model)
        self.cap = cap
        self.chunkers = {
            t.name: Chunker(t, lambda text, c=self.counter: c.count([text])[0], cap, model_key)
            for t in tables
        }
        self.sparse = config.embeddings.sparse_settings(model_key)
        self.report = AdoptionReport(
            collection, model_key, dry_run, [TableAdoption(t.name) for t in tables]
        )
        self.stats = {t.table: t for t in self.report.tables}
        # Formula id -> (table, key text) of every row now: what traces 1 and 2 look up.
        self.formulas: dict[str, tuple[str, str]] = {}
        # Ids this run wrote: the scroll may reach them again (they sort anywhere).
        self.written: set[str] = set()
        # Per row judged: what became of it (HELD, STALE, ...) and of its point (MOVED, ...).
        self.outcome: dict[tuple[str, str], str] = {}
        self.action: dict[tuple[str, str], str] = {}
        # A dry run writes nothing, so what it would have put at a formula id stands in for
        # it when a later page holds another copy of the same row.
        self.placed: dict[str, _Candidate] = {}
        self.tenant_points = 0  # points carrying a non-null Agno `user_id`

    def run(self, page: int) -> AdoptionReport:
        started = time.perf_counter()
        for name in self.tables:
            self.sources[name].check_triggers()
        with self._locks():
            for name, source in self.sources.items():
                data_type = self.sharing[name].data_type
                for rows in source.scan():
                    for row in rows:
                        self.formulas[point_id(data_type, row.key, self.collection)] = (
                            name,
                            row.key,
                        )
            for points in self._pages(page):
                self._adopt_page(points)
            self._settle_marks()
            self.report.idf = ensure_idf(self.qdrant, self.collection, dry_run=self.dry_run)
            if not self.dry_run:
                for name, table in self.tables.items():
                    # The points written here are encoded already; points left in place were
                    # written by syncs under the settings they recorded, which may be older.
                    stale = encoding.needs_reencoding(
                        self.qdrant, self.collection, name, self.sparse
                    )
                    if stale and self.stats[name].points_in_place:
                        self.report.sparse_reencoded += encoding.reencode(
                            self.qdrant, self.collection, name, self.sparse
                        )
                    elif stale:  # every point of the table was written by this run
                        encoding.record(self.qdrant, self.collection, name, self.sparse)
                    state = StoreState(
                        self.conn, self.qdrant, self.config.tables.schema_, table, self.collection
                    )
                    if not state.matches():
                        state.start()
        self.report.seconds = time.perf_counter() - started
        self._summarise()
        return self.report

    @contextlib.contextmanager
    def _locks(self) -> Iterator[None]:
        """Every table's collection lock, exclusively (a dry run takes none: it writes
        nothing): no sync writes or marks while points move under it."""
        with contextlib.ExitStack() as stack:
            if not self.dry_run:
                for name in sorted(self.tables):
                    table = self.tables[name]
                    stack.enter_context(
                        collection_lock(
                            self.conn,
                            self.config.tables.schema_for(table),
                            table,
                            self.collection,
                            self.log,
                        )
                    )
            yield

    def _pages(self, size: int) -> Iterator[list[models.Record]]:
        offset = None
        while True:
            records, offset = self.qdrant.scroll(
                self.collection, limit=size, offset=offset, with_payload=True, with_vectors=False
            )
            fresh = [r for r in records if str(r.id) not in self.written]
            self.report.points_scanned += len(fresh)
            if fresh:
                yield fresh
            if offset is None:
                return

    # -- tracing ---------------------------------------------------------------------------

    def _trace(self, record: models.Record) -> _Traced | None:
        """The row the point belongs to, proven by the formula (see the module docstring)."""
        pid = str(record.id)
        payload = record.payload or {}
        stored = payload.get("content_hash")
        for candidate in (pid, stored):
            if isinstance(candidate, str) and candidate in self.formulas:
                return _Traced(*self.formulas[candidate])
        meta = payload.get("meta_data")
        meta = meta if isinstance(meta, dict) else {}
        chunk = meta.get("chunk")
        chunk = chunk if isinstance(chunk, int) and not isinstance(chunk, bool) else 0
        for name, table in self.sharing.items():
            data_type = table.data_type
            for key in self._keys_in(payload, meta, data_type):
                if chunk > 0 and chunk_point_id(data_type, key, self.collection, chunk) == pid:
                    # Our own chunk: its key text is ours, so a row without it is gone.
                    return _Traced(name, key, chunk)
                if point_id(data_type, key, self.collection) in (pid, stored):
                    return _Traced(name, key, claimed=True)
        return None

    @staticmethod
    def _keys_in(payload: dict[str, Any], meta: dict[str, Any], data_type: str) -> Iterator[str]:
        """Key texts a payload may name: our row_id, the scalars of `meta_data`, the tail of
        a `{DATA_TYPE}_{key}` name."""
        seen: set[str] = set()
        values = [meta.get("row_id"), *meta.values()]
        name = payload.get("name")
        if isinstance(name, str) and name.startswith(f"{data_type}_"):
            values.append(name[len(data_type) + 1 :])
        for value in values:
            key = key_text_of_row_id(value)
            if key is not None and len(key) <= _MAX_KEY_CHARS and key not in seen:
                seen.add(key)
                yield key

    def _resolve_claims(
        self, traced: list[tuple[models.Record, _Traced | None]]
    ) -> list[tuple[models.Record, _Traced | None]]:
        """Keys as another writer printed them, looked up by value: the row they name, with
        its key text as this pipeline prints it; a key no row has now marks its row gone; a
        text that is no value of the key's type (a Python tuple for a composite key) proves
        nothing, so its point is left unattributed."""
        claims: dict[str, set[str]] = {}
        for _, found in traced:
            if found is not None and found.claimed:
                claims.setdefault(found.table, set()).add(found.key)
        resolved = {
            name: self.sources[name].keys_equal_to(sorted(keys)) for name, keys in claims.items()
        }
        result = []
        for record, found in traced:
            if found is not None and found.claimed:
                texts = resolved[found.table]
                if found.key not in texts:
                    found = None
                elif texts[found.key] is None:
                    found = _Traced(found.table, found.key, claimed=True)  # gone
                else:
                    found = _Traced(found.table, texts[found.key])
            result.append((record, found))
        return result

    # -- one page --------------------------------------------------------------------------

    def _adopt_page(self, records: list[models.Record]) -> None:
        by_row: dict[tuple[str, str], list[_Candidate]] = {}
        doomed: list[str] = []
        traced = self._resolve_claims([(record, self._trace(record)) for record in records])
        for record, found in traced:
            pid = str(record.id)
            if found is None:
                self.report.unattributed += 1
                if len(self.report.unattributed_ids) < SAMPLE_IDS:
                    self.report.unattributed_ids.append(pid)
                continue
            if found.table not in self.tables:
                self.report.other_tables += 1  # another table's: its own adoption's business
                continue
            stats = self.stats[found.table]
            target = point_id(self.tables[found.table].data_type, found.key, self.collection)
            if found.claimed or target not in self.formulas:
                doomed.append(pid)
                stats.gone_deleted += 1
            elif found.chunk > 0:
                # A chunk of a row a sync wrote: the row's chunk 0 decides about it.
                stats.points_in_place += 1
            else:
                payload = record.payload or {}
                if payload.get("user_id") is not None:
                    self.tenant_points += 1
                by_row.setdefault((found.table, found.key), []).append(
                    _Candidate(pid, payload, pid == target)
                )
        self._add_targets(by_row)

        writes: list[tuple[str, str, SourceRow, _Candidate]] = []  # table, target, row, kept
        judged_by_sync: dict[str, list[SourceRow]] = {}
        for name in self.tables:
            keys = [key for (t, key) in by_row if t == name]
            rows = self.sources[name].rows(keys)
            table, stats = self.tables[name], self.stats[name]
            for key in keys:
                candidates = by_row[(name, key)]
                row = rows.get(key)
                if row is None:  # deleted since the formulas were read
                    doomed += [c.id for c in candidates]
                    stats.gone_deleted += len(candidates)
                    continue
                kept = self._keep(table, row, candidates)
                # Every other copy goes: deleted, or overwritten at the formula id.
                doomed += [c.id for c in candidates if c is not kept and not c.at_target]
                stats.duplicates_deleted += len(candidates) - 1
                target = point_id(table.data_type, key, self.collection)
                if kept.at_target and _is_ours(kept.payload, table, key):
                    self.action.setdefault((name, key), IN_PLACE)
                    judged_by_sync.setdefault(name, []).append(row)
                    continue
                writes.append((name, target, row, kept))
                self.action[(name, key)] = REWRITTEN if kept.at_target else MOVED
                if not kept.at_target:
                    doomed.append(kept.id)
                self.outcome[(name, key)] = self._judge(table, row, kept)

        for name, rows in judged_by_sync.items():
            self._judge_as_sync(name, rows)
        doomed += self._write(writes)
        held = [
            (name, row) for name, _, row, _ in writes if self.outcome[(name, row.key)] == HELD
        ] + [
            (name, row)
            for name, rows in judged_by_sync.items()
            for row in rows
            if self.outcome[(name, row.key)] == HELD
        ]
        if self.dry_run:
            return
        failpoint("adopt_after_write")
        delete_points(self.qdrant, self.collection, doomed)
        failpoint("adopt_after_delete")
        for name in self.tables:
            rows = [row for t, row in held if t == name]
            if rows:
                self.stats[name].marks_added += self.sources[name].mark_embedded(
                    self.collection, rows
                )

    def _add_targets(self, by_row: dict[tuple[str, str], list[_Candidate]]) -> None:
        """Add the point already at each row's formula id when the page did not hold it."""
        wanted: dict[str, tuple[str, str]] = {}
        for (name, key), candidates in by_row.items():
            if not any(c.at_target for c in candidates):
                target = point_id(self.tables[name].data_type, key, self.collection)
                if target in self.placed:
                    candidates.append(self.placed[target])
                else:
                    wanted[target] = (name, key)
        if not wanted:
            return
        for record in self.qdrant.retrieve(
            self.collection, ids=list(wanted), with_payload=True, with_vectors=False
        ):
            by_row[wanted[str(record.id)]].append(
                _Candidate(str(record.id), record.payload or {}, True)
            )

    def _keep(self, table: TableConfig, row: SourceRow, candidates: list[_Candidate]) -> _Candidate:
        """The copy that survives: one holding the row's current text, preferring one a sync
        wrote at the formula id (it stands for the row's chunks, if any), then the one at the
        formula id; else the same without the text."""
        text_hash = content_hash(table.render_text(row.values)) if writable(table, row) else None

        def rank(c: _Candidate) -> tuple[bool, bool, bool]:
            ours = c.at_target and _is_ours(c.payload, table, row.key)
            current = (row_hash(c.payload) if ours else _content_hash(c.payload)) == text_hash
            return (not current, not ours, not c.at_target)

        return min(candidates, key=rank)

    def _judge(self, table: TableConfig, row: SourceRow, kept: _Candidate) -> str:
        """What becomes of a row whose kept point holds one whole text: HELD when that is
        what a sync would write now, else why it is embedded again."""
        content = kept.payload.get("content")
        if not writable(table, row):
            return STALE
        chunks = self.chunkers[table.name].split(row.values)
        if len(chunks) == 1 and content == chunks[0]:
            return HELD
        if content == table.render_text(row.values):
            return CHUNKED
        if not table.null_as:
            reference = table.model_copy(update={"null_as": REFERENCE_NULL})
            if content == reference.render_text(row.values):
                return STALE_NULL
        return STALE

    def _judge_as_sync(self, name: str, rows: list[SourceRow]) -> None:
        """Judge rows whose points a sync wrote (the product's layout), as a sync would."""
        table = self.tables[name]
        stored = lookup_points(self.qdrant, table, self.collection, rows)
        for row in rows:
            before = stored.get(row.key)
            if before is None or not writable(table, row):
                self.outcome[(name, row.key)] = STALE
                continue
            chunks = self.chunkers[name].split(row.values)
            text_hash = content_hash(table.render_text(row.values))
            if holds(before, text_hash, len(chunks), chunk_layout(chunks)):
                self.outcome[(name, row.key)] = HELD
            elif before.text_hash == text_hash:
                self.outcome[(name, row.key)] = CHUNKED  # split otherwise, or a chunk missing
            else:
                self.outcome[(name, row.key)] = STALE

    def _write(self, writes: list[tuple[str, str, SourceRow, _Candidate]]) -> list[str]:
        """Write each kept point at its formula id: its own dense vector, a sparse vector
        encoded from its content, the product's payload. A point without a dense vector cannot
        be moved without embedding: its id is returned for deletion and its row left pending.
        A dry run reads the vectors and writes nothing."""
        if not writes:
            return []
        vectors = {
            str(record.id): record.vector
            for record in self.qdrant.retrieve(
                self.collection,
                ids=[kept.id for _, _, _, kept in writes],
                with_payload=False,
                with_vectors=[DENSE],
            )
        }
        unusable: list[str] = []
        movable = []
        for write in writes:
            name, _, row, kept = write
            vector = vectors.get(kept.id)
            if isinstance(vector, dict) and vector.get(DENSE) is not None:
                movable.append(write)
            else:
                unusable.append(kept.id)
                self.outcome[(name, row.key)] = NO_VECTOR
        contents = [_content(kept.payload) for _, _, _, kept in movable]
        sparse = bm25(self.sparse).embed_documents(contents) if not self.dry_run else []
        points = []
        for index, (name, target, row, kept) in enumerate(movable):
            text = contents[index]
            payload = _adopted_payload(self.tables[name], row, kept.payload, text)
            payload["meta_data"]["truncated"] = self._truncated(self.tables[name], text)
            if self.dry_run:
                self.placed[target] = _Candidate(target, payload, True)
                continue
            encoded = sparse[index]
            points.append(
                PointData(
                    id=target,
                    dense=vectors[kept.id][DENSE],  # type: ignore[index]
                    sparse=SparseVector(indices=encoded.indices, values=encoded.values),
                    payload=payload,
                )
            )
        upsert_points(self.qdrant, self.collection, points)
        self.written.update(point.id for point in points)
        return unusable

    def _truncated(self, table: TableConfig, text: str) -> bool:
        """Whether the model reads only part of `text` (a table whose chunking is off, as
        the sync flags it); with chunking on, a text that long is never held."""
        chunker = self.chunkers[table.name]
        return bool(not chunker.enabled and self.cap and self.counter.count([text])[0] > self.cap)

    # -- after every page ------------------------------------------------------------------

    def _settle_marks(self) -> None:
        """Remove the marks of rows no point holds; count what the next sync embeds."""
        for name in self.tables:
            source, table, stats = self.sources[name], self.tables[name], self.stats[name]
            held = {key for (t, key), what in self.outcome.items() if t == name and what == HELD}
            stats.rows_held = len(held)
            for (t, _), what in self.action.items():
                if t == name:
                    if what == MOVED:
                        stats.points_moved += 1
                    elif what == REWRITTEN:
                        stats.payloads_rewritten += 1
                    else:
                        stats.points_in_place += 1
            if not self.dry_run:
                for rows in source.scan(marked_in=self.collection):
                    unheld = [row.key for row in rows if row.key not in held]
                    if unheld:
                        stats.marks_removed += source.mark_pending(self.collection, unheld)
            counted = tokens = 0
            for rows in source.scan(with_values=True):
                for row in rows:
                    if row.key in held:
                        continue
                    if not writable(table, row):
                        stats.no_text += 1
                        continue
                    stats.rows_to_embed += 1
                    what = self.outcome.get((name, row.key))
                    if what in (STALE, STALE_NULL):
                        stats.stale += 1
                        stats.null_as_reference += what == STALE_NULL
                    elif what == CHUNKED:
                        stats.chunked += 1
                    elif what == NO_VECTOR:
                        stats.no_vector += 1
                    else:
                        stats.without_point += 1
                    if counted < COUNT_SAMPLE:
                        counted += 1
                        tokens += row_chunks(
                            self.counter, self.cap, self.chunkers[name], table, row.values
                        )[2]
            scale = stats.rows_to_embed / counted if counted else 0
            stats.tokens = round(tokens * scale)
            stats.tokens_exact = self.exact_tokenizer and counted == stats.rows_to_embed
            per_million = price(self.model)
            stats.cost = None if per_million is None else stats.tokens * per_million / 1e6

    def _summarise(self) -> None:
        r = self.report
        verb = "would" if r.dry_run else "did"
        for t in r.tables:
            self.log.info(
                f"{t.table} in {r.collection}: {verb} move {t.points_moved} points, rewrite "
                f"{t.payloads_rewritten} payloads, delete {t.duplicates_deleted} duplicates and "
                f"{t.gone_deleted} points of gone rows; {t.points_in_place} in place; "
                f"{t.rows_held} rows kept without embedding, {t.rows_to_embed} to embed"
            )
            if t.null_as_reference:
                self.log.warning(
                    f"{t.table}: {t.null_as_reference} of the {t.stale} rows whose point holds "
                    "another text differ only in NULL printed as 'None' (the reference "
                    f'design\'s f-strings); set `null_as: "None"` under tables.{t.table} in '
                    "tables.yaml and adopt again (before syncing) to keep them without paying"
                )
            if t.no_vector:
                self.log.warning(
                    f"{t.table}: {t.no_vector} points have no {DENSE!r} vector to move; they "
                    f"{'would be' if r.dry_run else 'were'} deleted and their rows embedded again"
                )
        if r.unattributed:
            self.log.warning(
                f"{r.collection}: {r.unattributed} points trace to no row of "
                f"{', '.join(self.sharing)} and were left in place (e.g. "
                f"{', '.join(r.unattributed_ids[:3])})"
            )
        if self.tenant_points:
            self.log.warning(
                f"{r.collection}: {self.tenant_points} points carry an Agno user_id (tenant); "
                "adoption keeps it, but a row whose text changes is written again without it, "
                "which Agno's scoped readers treat as shared"
            )


def _content(payload: dict[str, Any]) -> str:
    content = payload.get("content")
    return content if isinstance(content, str) else ""


def _content_hash(payload: dict[str, Any]) -> str | None:
    """md5 of the whole text a point of another writer holds (None: no text)."""
    content = payload.get("content")
    return content_hash(content) if isinstance(content, str) else None


def _is_ours(payload: dict[str, Any], table: TableConfig, key: str) -> bool:
    """Whether a point at a row's formula id has the product's payload for that row."""
    meta = payload.get("meta_data")
    return (
        isinstance(meta, dict)
        and meta.get("table") == table.name
        and key_text_of_row_id(meta.get("row_id")) == key
        and isinstance(payload.get("content"), str)
        and payload.get("content_hash") == content_hash(payload["content"])
    )


def _adopted_payload(
    table: TableConfig, row: SourceRow, old: dict[str, Any], text: str
) -> dict[str, Any]:
    """The product's payload for `row` holding `text`, keeping what else the old one had."""
    new = point_payload(**payload_args(table, row, text, truncated=False))
    old_meta = old.get("meta_data") if isinstance(old.get("meta_data"), dict) else {}
    merged = {**{k: v for k, v in old.items() if k not in new}, **new}
    merged["meta_data"] = {**old_meta, **new["meta_data"]}
    for kept in ("usage", "content_id"):  # Agno's Document fields; we write them as None
        if old.get(kept) is not None:
            merged[kept] = old[kept]
    return merged
