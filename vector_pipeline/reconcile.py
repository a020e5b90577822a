"""Reconciliation: check, and repair, the promise between a table and a collection.

The promise: a row holds a point with its current text in a collection if, and only if, that
collection is in the row's `embedded_in`. Rows whose `embedded_in` lacks the collection are
pending and never an error, whatever their point says (the next sync overwrites it). For the
rows marked embedded, `reconcile` finds three kinds of breakage:

- missing: the row's point is absent;
- stale: the point's `content_hash` is not the md5 of the row's current rendered text (or the
  row has no text at all, so a sync would skip it, yet a point remains);
- orphan: a point of the table (`meta_data.table`) whose id is no current row's point id: left
  by a deleted row, or written under another `data_type` or collection formula.

`repair` marks the missing and stale rows pending again (it removes only this collection from
`embedded_in`) and deletes the orphan points; a normal sync then re-embeds the rows.

Memory. The table's points are scrolled first into a dict of point id -> content hash, both as
16 raw bytes (about 150 bytes a point: ~150 MB for a million points; only `content_hash` is
fetched, never vectors or texts). The rows are then streamed through a server-side cursor, a
page of `FETCH_ROWS` at a time; each row's text is rendered, hashed and dropped, and its point is
popped from the dict, so what is left at the end are the orphans. Reports hold exact counts and
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
from qdrant_client import QdrantClient, models

from vector_pipeline.config import TableConfig
from vector_pipeline.database_setup import EMBEDDED_IN, check_table, pending_condition
from vector_pipeline.vector_store import content_hash, point_id

SAMPLE_LIMIT = 1000  # keys kept per kind in a report; the counts are always exact
FETCH_ROWS = 2000  # rows per round trip of the server-side cursor
SCROLL_PAGE = 2000  # points per Qdrant scroll page
# Local mode filters and sorts every point for each page, so small pages cost time quadratic in
# the collection; its points are all in this process's memory anyway, so it reads big pages.
LOCAL_SCROLL_PAGE = 50_000
CHECK_BATCH = 1000  # candidates looked up again in Qdrant per request
REPAIR_BATCH = 1000  # keys per UPDATE, point ids per delete

# A point id as stored while reconciling: a UUID's 16 bytes, or an unsigned integer id.
PointKey = bytes | int
_NO_HASH = b""  # a payload without a usable content_hash; equals no row's digest


@dataclass(frozen=True)
class ReconcileReport:
    """What `reconcile` found for one table and collection.

    The `*_count` fields are exact; `missing`, `stale` (row keys) and `orphans` (point ids) are
    samples of at most the `sample_limit` given to `reconcile`, sorted. Row keys are JSON
    values: int and str keys as they are, other key types (uuid, numeric, dates) as PostgreSQL
    text, which casts back to the key's type.
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

    @property
    def ok(self) -> bool:
        return self.missing_count == self.stale_count == self.orphan_count == 0

    @property
    def complete(self) -> bool:
        """Whether the lists hold every problem, not just samples."""
        return (len(self.missing), len(self.stale), len(self.orphans)) == (
            self.missing_count,
            self.stale_count,
            self.orphan_count,
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


@dataclass(frozen=True)
class RepairResult:
    table: str
    collection: str
    marked_pending: int  # missing and stale rows whose embedded_in lost the collection
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
) -> ReconcileReport:
    """Check the promise for `table` in `collection`; see the module docstring."""
    return _scan(conn, qdrant, table, schema, collection, sample_limit)


def repair(
    conn: psycopg.Connection,
    qdrant: QdrantClient,
    report: ReconcileReport,
    table: TableConfig,
    schema: str,
    collection: str,
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
    rescanned = not report.complete
    if rescanned:
        report = _scan(conn, qdrant, table, schema, collection, None)
    columns = check_table(conn, schema, table)
    pk_type = sql.SQL(columns[table.primary_key].type)
    marked = _mark_pending(conn, schema, table, pk_type, collection, report.missing + report.stale)
    deleted, kept = _delete_orphans(conn, qdrant, schema, table, pk_type, collection, report)
    return RepairResult(
        table=table.name,
        collection=collection,
        marked_pending=marked,
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
    key: Any  # the row's key as PostgreSQL returned it
    point: PointKey
    digest: bytes | None  # md5 of the row's text; None: the row has no text, wants no point


class _Checker:
    """Looks candidates up again in Qdrant before they count as missing or stale.

    Points were read before the rows, so a row synced in between carries a newer point than the
    one read; the fresh look tells such rows from broken ones.
    """

    def __init__(
        self, qdrant: QdrantClient, collection: str, exists: bool, missing: _Tally, stale: _Tally
    ) -> None:
        self.qdrant, self.collection, self.exists = qdrant, collection, exists
        self.missing, self.stale = missing, stale
        self.pending: list[_Candidate] = []

    def add(self, candidate: _Candidate) -> None:
        self.pending.append(candidate)
        if len(self.pending) >= CHECK_BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        current: dict[PointKey, bytes] = {}
        if self.exists:
            records = self.qdrant.retrieve(
                self.collection,
                ids=[_point_id_text(c.point) for c in self.pending],
                with_payload=["content_hash"],
                with_vectors=False,
            )
            current = {_point_key(r.id): _stored_digest(r.payload) for r in records}
        for candidate in self.pending:
            stored = current.get(candidate.point)
            if candidate.digest is None:
                if stored is not None:
                    self.stale.add(_json_key(candidate.key))
            elif stored is None:
                self.missing.add(_json_key(candidate.key))
            elif stored != candidate.digest:
                self.stale.add(_json_key(candidate.key))
        self.pending = []


def _scan(
    conn: psycopg.Connection,
    qdrant: QdrantClient,
    table: TableConfig,
    schema: str,
    collection: str,
    limit: int | None,
) -> ReconcileReport:
    columns = check_table(conn, schema, table)
    if EMBEDDED_IN not in columns:
        raise RuntimeError(
            f"{schema}.{table.table} has no {EMBEDDED_IN} column; run `vector-pipeline init-db`"
        )
    exists = qdrant.collection_exists(collection)
    points = _read_points(qdrant, table, collection) if exists else {}
    point_count = len(points)

    missing, stale, orphans = _Tally(limit), _Tally(limit), _Tally(limit)
    checker = _Checker(qdrant, collection, exists, missing, stale)
    rows = embedded = 0
    for key, values, is_embedded in _stream_rows(conn, schema, table, collection):
        rows += 1
        point = _point_key(point_id(table.data_type, key, collection))
        # Every row claims its point, pending or not; the points left unclaimed are orphans.
        stored = points.pop(point, None)
        if not is_embedded:
            continue
        embedded += 1
        if not table.has_text(values):
            # A sync skips a row without text: it should hold no point.
            if stored is not None:
                checker.add(_Candidate(key, point, None))
            continue
        digest = bytes.fromhex(content_hash(table.render_text(values)))
        if stored != digest:
            checker.add(_Candidate(key, point, digest))
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
    )


def _table_filter(table: TableConfig) -> models.Filter:
    return models.Filter(
        must=[
            models.FieldCondition(key="meta_data.table", match=models.MatchValue(value=table.name))
        ]
    )


def _read_points(
    qdrant: QdrantClient, table: TableConfig, collection: str
) -> dict[PointKey, bytes]:
    """Point id -> content hash for every point of `table`, without vectors or texts."""
    points: dict[PointKey, bytes] = {}
    options = qdrant.init_options
    local = bool(options.get("path")) or options.get("location") == ":memory:"
    offset = None
    while True:
        page, offset = qdrant.scroll(
            collection,
            scroll_filter=_table_filter(table),
            limit=LOCAL_SCROLL_PAGE if local else SCROLL_PAGE,
            offset=offset,
            with_payload=["content_hash"],
            with_vectors=False,
        )
        for record in page:
            points[_point_key(record.id)] = _stored_digest(record.payload)
        if offset is None:
            return points


def _stream_rows(
    conn: psycopg.Connection, schema: str, table: TableConfig, collection: str
) -> Iterator[tuple[Any, dict[str, Any], bool]]:
    """(key, text column values, embedded?) for every row, through a server-side cursor.

    One statement, so one consistent snapshot; rows come in storage order (no sort).
    """
    text_columns = table.text_columns
    query = sql.SQL("SELECT t.{pk}, {texts}, NOT ({pending}) FROM {relation} AS t").format(
        pk=sql.Identifier(table.primary_key),
        texts=sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in text_columns),
        pending=pending_condition(collection),
        relation=sql.Identifier(schema, table.table),
    )
    # A named cursor lives in a transaction; on an autocommit connection this opens one.
    with conn.transaction(), conn.cursor(name="vector_pipeline_reconcile") as cursor:
        cursor.itersize = FETCH_ROWS
        cursor.execute(query)
        for record in cursor:
            yield record[0], dict(zip(text_columns, record[1:-1], strict=True)), record[-1]


# --- repair --------------------------------------------------------------------------------


def _mark_pending(
    conn: psycopg.Connection,
    schema: str,
    table: TableConfig,
    pk_type: sql.Composable,
    collection: str,
    keys: Sequence[Any],
) -> int:
    """Remove `collection` (only it) from `embedded_in` of the rows with these keys."""
    # `jsonb - text` drops the matching string elements of an array; only rows still marked
    # (so their embedded_in is an array holding the collection) are touched. The trigger
    # watches text columns only, so this UPDATE does not fire it.
    query = sql.SQL(
        """
        UPDATE {relation} AS t SET {embedded_in} = t.{embedded_in} - %(collection)s::text
        WHERE t.{pk} = ANY(%(keys)s::{pk_type}[]) AND NOT ({pending})
        """
    ).format(
        relation=sql.Identifier(schema, table.table),
        embedded_in=sql.Identifier(EMBEDDED_IN),
        pk=sql.Identifier(table.primary_key),
        pk_type=pk_type,
        pending=pending_condition(collection),
    )
    marked = 0
    for chunk in _chunks(keys, REPAIR_BATCH):
        with conn.transaction():
            cursor = conn.execute(query, {"collection": collection, "keys": chunk})
        marked += cursor.rowcount
    return marked


def _delete_orphans(
    conn: psycopg.Connection,
    qdrant: QdrantClient,
    schema: str,
    table: TableConfig,
    pk_type: sql.Composable,
    collection: str,
    report: ReconcileReport,
) -> tuple[int, int]:
    """Delete the orphan points, except those whose row exists again; (deleted, kept)."""
    if not report.orphans or not qdrant.collection_exists(collection):
        return 0, 0
    deleted = kept = 0
    for chunk in _chunks(report.orphans, REPAIR_BATCH):
        gone, back = _still_orphans(conn, qdrant, schema, table, pk_type, collection, chunk)
        kept += back
        if gone:
            qdrant.delete(collection, points_selector=models.PointIdsList(points=gone), wait=True)
            deleted += len(gone)
    return deleted, kept


def _still_orphans(
    conn: psycopg.Connection,
    qdrant: QdrantClient,
    schema: str,
    table: TableConfig,
    pk_type: sql.Composable,
    collection: str,
    ids: list[str | int],
) -> tuple[list[str | int], int]:
    """The points among `ids` that still exist and belong to no row, and how many belong to one.

    A point belongs to a row if its payload's row id gives back its own id and a row with that
    key exists: the row was deleted and re-inserted since the reconcile, and a sync may already
    have written its new text under the same id.
    """
    records = qdrant.retrieve(
        collection, ids=ids, with_payload=["meta_data.row_id"], with_vectors=False
    )
    claims: dict[str, Any] = {}
    for record in records:
        row_id = ((record.payload or {}).get("meta_data") or {}).get("row_id")
        if row_id is not None and point_id(table.data_type, row_id, collection) == str(record.id):
            claims[str(record.id)] = row_id
    existing = _existing_keys(conn, schema, table, pk_type, list(claims.values()))
    back = {point for point, row_id in claims.items() if str(row_id) in existing}
    return [record.id for record in records if str(record.id) not in back], len(back)


def _existing_keys(
    conn: psycopg.Connection,
    schema: str,
    table: TableConfig,
    pk_type: sql.Composable,
    keys: list[Any],
) -> set[str]:
    """The keys (as text) among `keys` that some row has."""
    if not keys:
        return set()
    query = sql.SQL(
        "SELECT t.{pk} FROM {relation} AS t WHERE t.{pk} = ANY(%s::{pk_type}[])"
    ).format(
        pk=sql.Identifier(table.primary_key),
        relation=sql.Identifier(schema, table.table),
        pk_type=pk_type,
    )
    try:
        with conn.transaction():
            return {str(row[0]) for row in conn.execute(query, ([str(k) for k in keys],))}
    except psycopg.DataError:
        # Some payload value is not a valid key: such a row cannot exist; check one by one.
        found: set[str] = set()
        for key in keys:
            try:
                with conn.transaction():
                    found |= {str(row[0]) for row in conn.execute(query, ([str(key)],))}
            except psycopg.DataError:
                continue
        return found


# --- small helpers ------------------------------------------------------------------------


def _point_key(point: Any) -> PointKey:
    if isinstance(point, int):
        return point
    return uuid.UUID(str(point)).bytes


def _point_id_text(point: PointKey) -> str | int:
    return str(uuid.UUID(bytes=point)) if isinstance(point, bytes) else point


def _stored_digest(payload: dict[str, Any] | None) -> bytes:
    value = (payload or {}).get("content_hash")
    if isinstance(value, str) and len(value) == 32:
        try:
            return bytes.fromhex(value)
        except ValueError:
            pass
    return _NO_HASH


def _json_key(key: Any) -> Any:
    """int and str keys as they are; others as their PostgreSQL text (it casts back)."""
    return key if isinstance(key, int | str) else str(key)


def _sort_key(item: Any) -> tuple[int, Any]:
    return (0, item) if isinstance(item, int) else (1, str(item))


def _chunks(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
