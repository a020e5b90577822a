"""Reconciliation: check, and repair, the promise between a table and a collection.

The promise: a row holds a point with its current text in a collection if, and only if, that
collection is in the row's `embedded_in`. Rows whose `embedded_in` lacks the collection are
pending and never an error, whatever their point says (the next sync overwrites it). For the
rows marked embedded, `reconcile` finds three kinds of breakage:

- missing: the row's point is absent;
- stale: the point's `content_hash` is not the md5 of the row's current rendered text (or the
  row has no text at all, so a sync would skip it, yet a point remains); for a row stored as
  chunks (points.py), chunk 0's `meta_data.text_hash` is compared, and a chunk that is absent
  or holds another text makes the row stale too;
- orphan: a point of the table (`meta_data.table`) whose id is no current row's point id nor
  one of its chunks' (chunk 0 counts them): left by a deleted row, a row that shrank, or
  written under another `data_type` or collection formula;
- payload drift: the point holds the row's text, but an old `name` or payload column (a change
  the payload trigger did not get to Qdrant).

`repair` marks the missing and stale rows pending again (it removes only this collection from
`embedded_in`), rewrites the payload of drifted points in place, and deletes the orphan points;
a normal sync then re-embeds the rows.

Keys are the canonical key texts of points.py; a report gives an integer key as a number.

Memory. The table's points are scrolled first into a dict of point id -> (content hash, payload
digest), each 16 raw bytes (about 200 bytes a point: ~200 MB for a million points; only the
hash, the name and `meta_data` are fetched, never vectors or texts). The rows are then streamed
through a server-side cursor, a page of `FETCH_ROWS` at a time; each row's text is rendered,
hashed and dropped, and its point is popped from the dict, so what is left at the end are the
orphans. Reports hold exact counts and
at most `sample_limit` keys of each kind.

Concurrency. Points are read before the rows' snapshot, so a row inserted or edited and synced
while the points were read would look missing or stale; such candidates are looked up again in
Qdrant before they are reported, which removes those false alarms. `repair` re-checks orphans
just before deleting them and keeps a point whose row has come back (deleted, re-inserted with
the same key and synced meanwhile). Plain Python with no Dagster import.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from qdrant_client import QdrantClient

from vector_pipeline.config import TableConfig
from vector_pipeline.database_setup import pending_condition
from vector_pipeline.payloads import refresh_payloads
from vector_pipeline.points import (
    chunk_point_id,
    content_hash,
    key_text_of_row_id,
    payload_digest,
    payload_fields,
    point_id,
    row_hash,
    scroll_table_points,
    stored_row,
    stored_rows,
)
from vector_pipeline.source import KEY_TEXT, SourceRow, SourceTable
from vector_pipeline.store_state import StoreState
from vector_pipeline.vector_store import delete_points, refuse_foreign_points

SAMPLE_LIMIT = 1000  # keys kept per kind in a report; the counts are always exact
FETCH_ROWS = 2000  # rows per round trip of the server-side cursor
_EMBEDDED = "__vector_pipeline_embedded"
CHECK_BATCH = 1000  # candidates looked up again in Qdrant per request
REPAIR_BATCH = 1000  # keys per UPDATE, point ids per delete

# A point id as stored while reconciling: a UUID's 16 bytes, or an unsigned integer id.
PointKey = bytes | int
_NO_HASH = b""  # a payload without a usable content_hash; equals no row's digest


@dataclass(frozen=True)
class ReconcileReport:
    """What `reconcile` found for one table and collection.

    The `*_count` fields are exact; `missing`, `stale` (row keys) and `orphans` (point ids) are
    samples of at most the `sample_limit` given to `reconcile`, sorted. Row keys are key texts
    (points.py), or numbers for a single integer key column.
    """

    table: str
    collection: str
    rows: int  # rows in the table
    embedded: int  # rows whose embedded_in holds the collection
    points: int  # points of this table in the collection (meta_data.table == table)
    missing_count: int
    stale_count: int
    orphan_count: int
    missing: list[Any] = field(default_factory=list)
    stale: list[Any] = field(default_factory=list)
    orphans: list[str | int] = field(default_factory=list)
    # Rows whose point holds their text but an old name or payload column (row keys).
    payload_drift_count: int = 0
    payload_drift: list[Any] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        counts = (self.missing_count, self.stale_count, self.orphan_count)
        return counts == (0, 0, 0) and self.payload_drift_count == 0

    @property
    def complete(self) -> bool:
        """Whether the lists hold every problem, not just samples."""
        return (len(self.missing), len(self.stale), len(self.orphans), len(self.payload_drift)) == (
            self.missing_count,
            self.stale_count,
            self.orphan_count,
            self.payload_drift_count,
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


@dataclass(frozen=True)
class RepairResult:
    table: str
    collection: str
    marked_pending: int  # missing and stale rows whose embedded_in lost the collection
    payloads_refreshed: int  # rows whose point got their current name and payload columns
    orphans_deleted: int
    orphans_kept: int  # orphans whose row came back since the reconcile; their point stays
    rescanned: bool  # the report held samples only, so repair scanned again for every key

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def reconcile(
    conn: psycopg.Connection,
    qdrant: QdrantClient,
    table: TableConfig,
    schema: str,
    collection: str,
    *,
    sample_limit: int = SAMPLE_LIMIT,
    state_schema: str | None = None,
) -> ReconcileReport:
    """Check the promise for `table` in `collection`; see the module docstring.

    `state_schema` holds the pipeline's own tables (default: `schema`)."""
    source = SourceTable(conn, schema, table, state_schema)
    return source.read_safely(lambda: _scan(source, qdrant, collection, sample_limit))


def repair(
    conn: psycopg.Connection,
    qdrant: QdrantClient,
    report: ReconcileReport,
    table: TableConfig,
    schema: str,
    collection: str,
    *,
    state_schema: str | None = None,
) -> RepairResult:
    """Mark the report's missing and stale rows pending and delete its orphan points.

    Run a normal sync afterwards to re-embed the rows. A report that holds only samples is
    not trusted to be the whole story: the table is scanned again for every key.
    """
    if (report.table, report.collection) != (table.name, collection):
        raise ValueError(
            f"the report is for {report.table} in {report.collection}, "
            f"not {table.name} in {collection}"
        )
    if StoreState(conn, None, state_schema or schema, table, collection).recorded() is None:
        # Never synced into: points another writer left (the reference design's) are not
        # missing rows' points; adopting them keeps the rows, repairing would pay for them.
        refuse_foreign_points(qdrant, collection, table.name)
    source = SourceTable(conn, schema, table, state_schema)
    rescanned = not report.complete
    if rescanned:
        report = source.read_safely(lambda: _scan(source, qdrant, collection, None))
    marked = source.mark_pending(collection, [str(key) for key in report.missing + report.stale])
    drifted = [str(key) for key in report.payload_drift]
    held = refresh_payloads(source, qdrant, collection, drifted) if drifted else set()
    deleted, kept = _delete_orphans(source, qdrant, collection, report)
    return RepairResult(
        table=table.name,
        collection=collection,
        marked_pending=marked,
        payloads_refreshed=len(drifted) - len(held),
        orphans_deleted=deleted,
        orphans_kept=kept,
        rescanned=rescanned,
    )


# --- the scan ------------------------------------------------------------------------------


class _Tally:
    """An exact count and the first `limit` items (all of them when `limit` is None)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.count = 0
        self.samples: list[Any] = []

    def add(self, item: Any) -> None:
        self.count += 1
        if self.limit is None or len(self.samples) < self.limit:
            self.samples.append(item)

    def sorted_samples(self) -> list[Any]:
        return sorted(self.samples, key=_sort_key)


@dataclass(frozen=True)
class _Candidate:
    key: str | int  # the row's key as reported (KeyLayout.row_id)
    key_text: str
    point: PointKey
    digest: bytes | None  # md5 of the row's text; None: the row has no text, wants no point
    payload: bytes | None = None  # points.payload_digest of the row's name and payload columns


class _Checker:
    """Looks candidates up again in Qdrant before they count as missing or stale.

    Points were read before the rows, so a row synced in between carries a newer point than the
    one read; the fresh look tells such rows from broken ones.
    """

    def __init__(
        self,
        qdrant: QdrantClient,
        table: TableConfig,
        collection: str,
        exists: bool,
        tallies: tuple[_Tally, _Tally, _Tally],
    ) -> None:
        self.qdrant, self.table, self.collection, self.exists = qdrant, table, collection, exists
        self.missing, self.stale, self.drift = tallies
        self.pending: list[_Candidate] = []

    def add(self, candidate: _Candidate) -> None:
        self.pending.append(candidate)
        if len(self.pending) >= CHECK_BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        current: dict[PointKey, _Stored] = {}
        if self.exists:
            records = self.qdrant.retrieve(
                self.collection,
                ids=[_point_id_text(c.point) for c in self.pending],
                with_payload=list(_PAYLOAD_READ),
                with_vectors=False,
            )
            current = {_point_key(r.id): _stored(r.payload, self.table) for r in records}
        # Chunked rows whose chunk 0 holds their text: are the other chunks all there?
        chunked = {
            c.key_text: c.digest.hex()
            for c in self.pending
            if c.digest is not None
            and (stored := current.get(c.point)) is not None
            and stored[2] > 1
            and stored[0] == c.digest
        }
        verified = (
            stored_rows(
                self.qdrant, self.table.data_type, self.collection, list(chunked), verify=chunked
            )
            if chunked
            else {}
        )
        for candidate in self.pending:
            stored = current.get(candidate.point)
            if candidate.digest is None:
                if stored is not None:
                    self.stale.add(candidate.key)
            elif stored is None:
                self.missing.add(candidate.key)
            elif (
                stored[0] != candidate.digest
                or candidate.key_text in chunked
                and not (candidate.key_text in verified and verified[candidate.key_text].complete)
            ):
                self.stale.add(candidate.key)
            elif stored[1] != candidate.payload:
                self.drift.add(candidate.key)
        self.pending = []


def _scan(
    source: SourceTable, qdrant: QdrantClient, collection: str, limit: int | None
) -> ReconcileReport:
    table = source.config
    exists = qdrant.collection_exists(collection)
    points = _read_points(qdrant, table, collection) if exists else {}
    point_count = len(points)

    missing, stale, orphans, drift = (_Tally(limit) for _ in range(4))
    checker = _Checker(qdrant, table, collection, exists, (missing, stale, drift))
    rows = embedded = 0
    for row, is_embedded in _stream_rows(source, collection):
        key, values = row.key, row.values
        rows += 1
        point = _point_key(point_id(table.data_type, key, collection))
        # Every row claims its point and the chunks its chunk 0 counts, pending or not; the
        # points left unclaimed are orphans.
        stored = points.pop(point, None)
        chunks_whole = True
        for k in range(1, stored[2] if stored is not None else 1):
            chunk = points.pop(
                _point_key(chunk_point_id(table.data_type, key, collection, k)), None
            )
            chunks_whole = chunks_whole and chunk is not None and chunk[0] == stored[0]
        if not is_embedded:
            continue
        embedded += 1
        row_id = source.key.row_id(key)
        if row.problem:
            continue  # a sync skips it with that reason; its payload cannot be compared
        if not table.has_text(values):
            # A sync skips a row without text: it should hold no point.
            if stored is not None:
                checker.add(_Candidate(row_id, key, point, None))
            continue
        digest = bytes.fromhex(content_hash(table.render_text(values)))
        top, shown = payload_fields(
            data_type=table.data_type,
            key_text=key,
            name=values.get(table.name_column) if table.name_column else None,
            payload_values=row.payload,
        )
        payload = payload_digest(top, shown, table.payload_columns)
        if stored is None or stored[:2] != (digest, payload) or not chunks_whole:
            checker.add(_Candidate(row_id, key, point, digest, payload))
    checker.flush()
    for point in points:
        orphans.add(_point_id_text(point) if isinstance(point, bytes) else point)

    return ReconcileReport(
        table=table.name,
        collection=collection,
        rows=rows,
        embedded=embedded,
        points=point_count,
        missing_count=missing.count,
        stale_count=stale.count,
        orphan_count=orphans.count,
        missing=missing.sorted_samples(),
        stale=stale.sorted_samples(),
        orphans=orphans.sorted_samples(),
        payload_drift_count=drift.count,
        payload_drift=drift.sorted_samples(),
    )


# A stored point, as reconcile keeps it: the hash of the row text it holds (part of), its
# payload digest, and how many chunks it says the row has (1 unless chunked).
_Stored = tuple[bytes, bytes, int]
_PAYLOAD_READ = ("content_hash", "name", "meta_data")


def _stored(payload: dict[str, Any] | None, table: TableConfig) -> _Stored:
    payload = payload or {}
    meta = payload.get("meta_data")
    meta = meta if isinstance(meta, dict) else {}
    return (
        _digest(payload),
        payload_digest({"name": payload.get("name")}, meta, table.payload_columns),
        stored_row(payload).chunks,
    )


def _read_points(
    qdrant: QdrantClient, table: TableConfig, collection: str
) -> dict[PointKey, _Stored]:
    """Point id -> (content hash, payload digest) for every point of `table`, without vectors
    or texts (32 bytes a point)."""
    return {
        _point_key(record.id): _stored(record.payload, table)
        for page in scroll_table_points(qdrant, collection, table.name, list(_PAYLOAD_READ))
        for record in page
    }


def _stream_rows(source: SourceTable, collection: str) -> Iterator[tuple[SourceRow, bool]]:
    """(the row with its text, payload and name columns, embedded?) for every row, through a
    server-side cursor; read as the sync reads them (source.py).

    One statement, so one consistent snapshot; rows come in storage order (no sort).
    """
    conn, table = source.conn, source.config
    query = sql.SQL(
        "SELECT {key} AS {key_name}, {values}, NOT ({pending}) AS {embedded} FROM {relation} AS t"
    ).format(
        key=source.key.text("t"),
        key_name=sql.Identifier(KEY_TEXT),
        values=source.select_values("t"),
        pending=pending_condition(collection),
        embedded=sql.Identifier(_EMBEDDED),
        relation=sql.Identifier(source.schema, table.table),
    )
    # A named cursor lives in a transaction; on an autocommit connection this opens one.
    with (
        conn.transaction(),
        conn.cursor(name="vector_pipeline_reconcile", row_factory=dict_row) as cursor,
    ):
        cursor.itersize = FETCH_ROWS
        cursor.execute(query)
        for record in cursor:
            embedded = record.pop(_EMBEDDED)
            key = record.pop(KEY_TEXT)
            yield source.read_row(key, "", record), embedded


# --- repair --------------------------------------------------------------------------------


def _delete_orphans(
    source: SourceTable, qdrant: QdrantClient, collection: str, report: ReconcileReport
) -> tuple[int, int]:
    """Delete the orphan points, except those whose row exists again; (deleted, kept)."""
    if not report.orphans or not qdrant.collection_exists(collection):
        return 0, 0
    deleted = kept = 0
    for chunk in _chunks(report.orphans, REPAIR_BATCH):
        gone, back = _still_orphans(source, qdrant, collection, chunk)
        kept += back
        if gone:
            delete_points(qdrant, collection, gone)
            deleted += len(gone)
    return deleted, kept


def _still_orphans(
    source: SourceTable, qdrant: QdrantClient, collection: str, ids: list[str | int]
) -> tuple[list[str | int], int]:
    """The points among `ids` that still exist and belong to no row, and how many belong to one.

    A point belongs to a row if its payload's row id gives back its own id and a row with that
    key exists: the row was deleted and re-inserted since the reconcile, and a sync may already
    have written its new text under the same id.
    """
    records = qdrant.retrieve(
        collection,
        ids=ids,
        with_payload=["meta_data.row_id", "meta_data.chunk"],
        with_vectors=False,
    )
    data_type = source.config.data_type
    claims: dict[str, tuple[str, int]] = {}
    for record in records:
        meta = (record.payload or {}).get("meta_data") or {}
        key = key_text_of_row_id(meta.get("row_id"))
        chunk = meta.get("chunk") if isinstance(meta.get("chunk"), int) else 0
        if key is not None and chunk_point_id(data_type, key, collection, chunk) == str(record.id):
            claims[str(record.id)] = (key, chunk)
    existing = source.existing_keys([key for key, _ in claims.values()])
    # A chunk is back only if the row's chunk 0 counts it now.
    counted = stored_rows(qdrant, data_type, collection, [k for k, _ in claims.values()])
    back = {
        point
        for point, (key, chunk) in claims.items()
        if key in existing and (chunk == 0 or (key in counted and chunk < counted[key].chunks))
    }
    return [record.id for record in records if str(record.id) not in back], len(back)


# --- small helpers ------------------------------------------------------------------------


def _point_key(point: Any) -> PointKey:
    if isinstance(point, int):
        return point
    return uuid.UUID(str(point)).bytes


def _point_id_text(point: PointKey) -> str | int:
    return str(uuid.UUID(bytes=point)) if isinstance(point, bytes) else point


def _digest(payload: dict[str, Any] | None) -> bytes:
    value = row_hash(payload)
    return bytes.fromhex(value) if value is not None else _NO_HASH


def _sort_key(item: Any) -> tuple[int, Any]:
    return (0, item) if isinstance(item, int) else (1, str(item))


def _chunks(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
