"""The point layout: how a row becomes a point, and how a point leads back to its row.

One owner for every fact that ties PostgreSQL rows to Qdrant points, so the upsert, the delete
and truncate drains, claims, skips, reconcile and repair cannot drift apart:

- **Key text.** Every row has one canonical text for its primary key, computed by PostgreSQL
  (never by Python's `str()` of a driver value, which differs for numeric, timestamps and the
  like): a single-column key is the column's text output, `key::text`; a composite key is a
  JSON array of its columns' text outputs in key order, as PostgreSQL prints jsonb, e.g.
  `["eu", "42"]`. Output that depends on session settings (time zones, date styles, float
  digits) is pinned by `KEY_SETTINGS`, which every connection of ours and every trigger of ours
  runs under: a timestamptz key is always printed in UTC, e.g. `2024-05-01 09:30:00+00`.
  For integer, text and uuid keys this is exactly what the reference design hashed (`str()` of
  the value), so existing deployments keep their point ids.
- **Point id.** The reference design's formula, `uuid(md5(f"{data_type}_{key_text}_{collection}"))`.
- **Payload.** Agno's hybrid layout (`name`, `meta_data`, `content`, `content_hash`, `usage`,
  `content_id`); `meta_data.table` and `meta_data.row_id` lead back to the row. `row_id` is the
  key text, or the integer itself for a single integer column (as the reference stored it).
- **Chunks.** A row whose text is longer than the model reads is split (chunks.py); each chunk
  is a point. Chunk 0 has the reference id, so a row that fits is exactly one point as before;
  chunk k >= 1 has `chunk_point_id` (the formula with "\\0k" appended, which no row's formula
  string can equal: PostgreSQL text holds no NUL). The points of a chunked row carry
  `meta_data.chunk` (k), `meta_data.chunks` (n), `meta_data.text_hash` (md5 of the row's
  whole text; each point's `content_hash` is its own chunk's) and `meta_data.chunk_layout`
  (`chunk_layout`: which chunks the text was split into); chunk 0 also carries
  `meta_data.chunk_ids`: every chunk id below it may exist (a row that shrank, a write that
  crashed), so deletes and rewrites clean them all.
- **Filters and scrolling** over one table's points.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from qdrant_client import QdrantClient, models

# Session settings under which a key's text output is the same whoever computes it: our own
# connections set them (`apply_key_settings`) and our trigger functions declare them, so a
# writer in Asia/Tokyo and a sync in UTC agree on a timestamptz key's text.
KEY_SETTINGS: tuple[tuple[str, str], ...] = (
    ("TimeZone", "UTC"),
    ("DateStyle", "ISO, YMD"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "1"),
    ("bytea_output", "hex"),
)

# Types whose key text is the integer itself; the payload stores such keys as JSON numbers.
_INTEGER_TYPES = frozenset({"smallint", "integer", "bigint"})


def apply_key_settings(conn: psycopg.Connection) -> None:
    """Pin the session settings key texts depend on (see `KEY_SETTINGS`) on `conn`, in one
    round trip."""
    conn.execute(
        sql.SQL("SELECT {}").format(
            sql.SQL(", ").join(
                sql.SQL("set_config({}, {}, false)").format(sql.Literal(n), sql.Literal(v))
                for n, v in KEY_SETTINGS
            )
        )
    )


def key_settings_clause() -> sql.Composable:
    """`SET name = value ...` for a function definition: the trigger functions that compute
    key texts run under `KEY_SETTINGS` whatever the writing session has set."""
    return sql.SQL(" ").join(
        sql.SQL("SET {} = {}").format(sql.Identifier(name.lower()), sql.Literal(value))
        for name, value in KEY_SETTINGS
    )


@dataclass(frozen=True)
class KeyLayout:
    """A table's primary key: its columns and their SQL types (as `format_type` prints them)."""

    columns: tuple[str, ...]
    types: tuple[str, ...]

    @property
    def composite(self) -> bool:
        return len(self.columns) > 1

    @property
    def integer(self) -> bool:
        """A single integer column: its key text is the integer's decimal form."""
        return not self.composite and self.types[0] in _INTEGER_TYPES

    def text(self, alias: str) -> sql.Composable:
        """The canonical key text of row `alias` (see the module docstring)."""
        parts = [
            sql.SQL("{}.{}::text").format(sql.Identifier(alias), sql.Identifier(c))
            for c in self.columns
        ]
        # Compared byte for byte wherever it is compared: under a column's case-insensitive
        # collation 'Alice' and 'ALICE' would be one key, yet they hash two point ids.
        if not self.composite:
            return sql.SQL('({}) COLLATE "C"').format(parts[0])
        return sql.SQL('jsonb_build_array({})::text COLLATE "C"').format(sql.SQL(", ").join(parts))

    def typed(self, key_text: sql.Composable) -> list[sql.Composable]:
        """The key's column values, of the columns' own types, parsed from a key text."""
        if not self.composite:
            return [sql.SQL("({})::{}").format(key_text, sql.SQL(self.types[0]))]
        return [
            sql.SQL("(({})::jsonb ->> {})::{}").format(key_text, sql.Literal(i), sql.SQL(type_))
            for i, type_ in enumerate(self.types)
        ]

    def columns_of(self, alias: str) -> sql.Composable:
        """`alias.c1, alias.c2`: the key columns, for ORDER BY and row comparisons."""
        return sql.SQL(", ").join(
            sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(c)) for c in self.columns
        )

    def match(self, alias: str, key_text: sql.Composable) -> sql.Composable:
        """True for the row `alias` whose key text is exactly `key_text`. The key columns are
        compared with typed values, so the primary-key index finds the row; the text is then
        compared too, since an equal key may print differently (numeric `1.50` and `1.5`
        are one key, yet two point ids)."""
        return sql.SQL("({}) = ({}) AND {} = {}").format(
            self.columns_of(alias),
            sql.SQL(", ").join(self.typed(key_text)),
            self.text(alias),
            key_text,
        )

    def after(self, alias: str, key_text: sql.Composable) -> sql.Composable:
        """True for rows whose key sorts after the key whose text is `key_text` (keyset
        pagination); a row comparison on the key columns, so the index serves it."""
        return sql.SQL("({}) > ({})").format(
            self.columns_of(alias), sql.SQL(", ").join(self.typed(key_text))
        )

    def row_id(self, key_text: str) -> str | int:
        """The payload's `meta_data.row_id`: the key text, or the integer of an integer key."""
        return int(key_text) if self.integer else key_text


def key_text_of_row_id(row_id: Any) -> str | None:
    """The key text a payload's `meta_data.row_id` stands for (None: not one we wrote)."""
    if isinstance(row_id, bool):
        return None
    if isinstance(row_id, int):
        return str(row_id)
    if isinstance(row_id, str):
        return row_id
    return None


def point_id(data_type: str, key_text: str, collection: str) -> str:
    """The reference design's deterministic id: a re-run overwrites instead of duplicating."""
    digest = hashlib.md5(f"{data_type}_{key_text}_{collection}".encode()).hexdigest()
    return str(uuid.UUID(digest))


def chunk_point_id(data_type: str, key_text: str, collection: str, chunk: int) -> str:
    """The id of chunk `chunk` of a row: `point_id` for chunk 0 (so rows that fit keep the
    reference id), else the same formula with a NUL and the chunk number appended."""
    if chunk == 0:
        return point_id(data_type, key_text, collection)
    text = f"{data_type}_{key_text}_{collection}\0{chunk}"
    return str(uuid.UUID(hashlib.md5(text.encode()).hexdigest()))


@dataclass(frozen=True)
class StoredRow:
    """What a row's chunk 0 says about the row's points in a collection.

    `text_hash`: md5 of the whole text they hold (None: not a hash we wrote); `chunks`: how
    many chunks the text has; `chunk_ids`: how many chunk ids may hold points (>= chunks);
    `complete`: every chunk 1..chunks-1 exists and holds the same text split the same way
    (checked by `stored_rows(..., verify=...)`; True for a one-chunk row).
    """

    text_hash: str | None
    chunks: int
    chunk_ids: int
    complete: bool = True
    layout: str | None = None  # chunk_layout of a chunked row's chunks

    def ids(self, data_type: str, key_text: str, collection: str, start: int = 0) -> list[str]:
        """The ids of every chunk from `start` that may exist, chunk 0 last (deleting in this
        order never leaves chunks without the chunk 0 that counts them)."""
        chunk_ids = [
            chunk_point_id(data_type, key_text, collection, k)
            for k in range(max(start, 1), max(self.chunks, self.chunk_ids))
        ]
        return chunk_ids + ([point_id(data_type, key_text, collection)] if start == 0 else [])


def stored_row(payload: dict[str, Any] | None) -> StoredRow:
    """The StoredRow a chunk-0 point's payload describes (a point of another writer, or from
    before chunks, is one chunk holding its `content_hash`)."""
    meta = (payload or {}).get("meta_data")
    meta = meta if isinstance(meta, dict) else {}
    chunks = _positive_int(meta.get("chunks"))
    if chunks is None:
        return StoredRow(stored_hash(payload), 1, 1)
    text_hash = stored_hash({"content_hash": meta.get("text_hash")})
    layout = meta.get("chunk_layout")
    return StoredRow(
        text_hash,
        chunks,
        max(chunks, _positive_int(meta.get("chunk_ids")) or 1),
        layout=layout if isinstance(layout, str) else None,
    )


def holds(stored: StoredRow, text_hash: str, chunks: int, layout: str) -> bool:
    """Whether a row's stored points are exactly what it would be written as now: its whole
    text (`text_hash`), every chunk present, split into the same `chunks` (`layout`; a row of
    one chunk is its text). Such a row is marked, not embedded."""
    same_split = chunks == 1 or stored.layout == layout
    return (stored.text_hash, stored.chunks, stored.complete) == (text_hash, chunks, True) and (
        same_split
    )


def chunk_layout(chunks: Sequence[str]) -> str:
    """md5 over the chunks' own md5s: two splits of one text (another overlap, header or
    limit) differ in it, so a row is adopted only with the very chunks it would be written as."""
    return hashlib.md5("\n".join(content_hash(chunk) for chunk in chunks).encode()).hexdigest()


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def row_hash(payload: dict[str, Any] | None) -> str | None:
    """The md5 of the whole row text a point holds part or all of (any chunk's payload)."""
    return stored_row(payload).text_hash


# The payload fields `stored_row` reads.
_ROW_FIELDS = (
    "content_hash",
    "meta_data.chunks",
    "meta_data.text_hash",
    "meta_data.chunk_ids",
    "meta_data.chunk_layout",
)
# Chunk ids per lookup request when checking that a chunked row's chunks are all there.
_LOOKUP = 1000


def stored_rows(
    qdrant: QdrantClient,
    data_type: str,
    collection: str,
    keys: Sequence[str],
    *,
    verify: dict[str, str] | None = None,
) -> dict[str, StoredRow]:
    """Key text -> StoredRow for the keys whose chunk 0 exists in `collection`.

    With `verify` (key text -> md5 of the row's text now), a chunked row whose chunk 0 holds
    that text has its other chunks looked up too: `complete` says whether they all exist and
    hold it. (Chunk 0 is written first, so a crash mid-row leaves it ahead of the others.)
    """
    if not keys or not qdrant.collection_exists(collection):
        return {}
    ids = {point_id(data_type, key, collection): key for key in keys}
    found = {
        ids[str(record.id)]: stored_row(record.payload)
        for record in _retrieve(qdrant, collection, list(ids), _ROW_FIELDS)
    }
    if verify:
        _verify_chunks(qdrant, data_type, collection, found, verify)
    return found


def _retrieve(
    qdrant: QdrantClient, collection: str, ids: list[str], fields: Sequence[str]
) -> Iterator[models.Record]:
    """The points among `ids` that exist, with `fields` of their payloads (none: no payload),
    `_LOOKUP` ids per request."""
    for start in range(0, len(ids), _LOOKUP):
        yield from qdrant.retrieve(
            collection,
            ids=ids[start : start + _LOOKUP],
            with_payload=list(fields) if fields else False,
            with_vectors=False,
        )


def row_point_ids(
    qdrant: QdrantClient, data_type: str, collection: str, keys: Sequence[str]
) -> dict[str, list[str]]:
    """Key text -> the ids of every point the row may have (chunk 0 last); a key whose chunk 0
    is absent gets just its reference id. For deletes, which need not know which exist."""
    found = stored_rows(qdrant, data_type, collection, keys)
    return {
        key: found[key].ids(data_type, key, collection)
        if key in found
        else [point_id(data_type, key, collection)]
        for key in keys
    }


def existing_row_points(
    qdrant: QdrantClient, data_type: str, collection: str, keys: Sequence[str]
) -> dict[str, list[str]]:
    """Key text -> ids of the points the row has in `collection` (absent keys are left out)."""
    candidates = {
        point: key
        for key, ids in row_point_ids(qdrant, data_type, collection, keys).items()
        for point in ids
    }
    found: dict[str, list[str]] = {}
    if not candidates or not qdrant.collection_exists(collection):
        return found
    for record in _retrieve(qdrant, collection, list(candidates), ()):
        found.setdefault(candidates[str(record.id)], []).append(str(record.id))
    return found


def _verify_chunks(
    qdrant: QdrantClient,
    data_type: str,
    collection: str,
    found: dict[str, StoredRow],
    verify: dict[str, str],
) -> None:
    wanted: dict[str, str] = {}
    for key, row in found.items():
        if row.chunks > 1 and key in verify and row.text_hash == verify[key]:
            for k in range(1, row.chunks):
                wanted[chunk_point_id(data_type, key, collection, k)] = key
    good: dict[str, int] = {}
    for record in _retrieve(qdrant, collection, list(wanted), _ROW_FIELDS):
        key = wanted[str(record.id)]
        chunk = stored_row(record.payload)
        if (chunk.text_hash, chunk.layout) == (verify[key], found[key].layout):
            good[key] = good.get(key, 0) + 1
    for key, row in list(found.items()):
        if row.chunks > 1:
            complete = row.text_hash == verify.get(key) and good.get(key, 0) == row.chunks - 1
            found[key] = StoredRow(row.text_hash, row.chunks, row.chunk_ids, complete, row.layout)


def content_hash(text: str) -> str:
    """md5 of the embedded text: what `payload.content_hash` holds and reconcile compares."""
    return hashlib.md5(text.encode()).hexdigest()


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


def point_payload(
    *,
    table: str,
    data_type: str,
    row_id: str | int,
    key_text: str,
    name: Any,
    text: str,
    truncated: bool,
    payload_values: dict[str, Any],
    chunk: int = 0,
    chunks: int = 1,
    text_hash: str | None = None,
    chunk_ids: int = 1,
    layout: str | None = None,
) -> dict[str, Any]:
    """The payload of a row's point (Agno's hybrid layout plus `meta_data` for the row).

    `text` is this point's chunk; a chunked row (`chunks` > 1, or a chunk 0 whose
    `chunk_ids` says more ids may exist) also records `chunk`, `chunks`, `text_hash` (md5 of
    the whole text) and, on chunk 0, `chunk_ids`. A row of one chunk with no history gets
    exactly the payload it had before chunks existed."""
    top, shown = payload_fields(
        data_type=data_type, key_text=key_text, name=name, payload_values=payload_values
    )
    meta = {
        "table": table,
        "data_type": data_type,
        "row_id": row_id,
        # The model read only a prefix of `content`; readers can tell.
        "truncated": truncated,
        **shown,
    }
    if chunks > 1 or chunk_ids > 1:
        meta.update(
            chunk=chunk,
            chunks=chunks,
            text_hash=text_hash or content_hash(text),
            chunk_layout=layout or chunk_layout([text]),
        )
        if chunk == 0:
            meta["chunk_ids"] = max(chunks, chunk_ids)
    return {
        **top,
        "meta_data": meta,
        "content": text,
        "content_hash": content_hash(text),
        # Agno's Document fields, kept so Agno-based readers load these points unchanged.
        "usage": None,
        "content_id": None,
    }


def payload_fields(
    *, data_type: str, key_text: str, name: Any, payload_values: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The payload a row's payload and name columns make: (top-level fields, `meta_data`
    fields). What a payload refresh rewrites; the text, its hash and `truncated` stay."""
    top = {"name": str(name) if name is not None else f"{data_type}_{key_text}"}
    return top, {column: json_safe(value) for column, value in payload_values.items()}


def payload_digest(top: dict[str, Any], meta_data: dict[str, Any], columns: Sequence[str]) -> bytes:
    """16 bytes that change when the name or a payload column shown in `meta_data` changes
    (a missing field counts as null: Qdrant may drop null fields on a partial update)."""
    shown = {"name": top.get("name"), **{c: meta_data.get(c) for c in columns}}
    return hashlib.md5(json.dumps(shown, sort_keys=True, default=str).encode()).digest()


def table_filter(table: str) -> models.Filter:
    """The points of one configured table (`meta_data.table`)."""
    return models.Filter(
        must=[models.FieldCondition(key="meta_data.table", match=models.MatchValue(value=table))]
    )


# Points per scroll page. Local mode filters and sorts every point for each page, so small
# pages cost time quadratic in the collection; its points are all in this process's memory
# anyway, so it reads big pages. A server gets pages small enough for one response.
SCROLL_PAGE = 2000
LOCAL_SCROLL_PAGE = 50_000


def scroll_table_points(
    qdrant: QdrantClient, collection: str, table: str, payload: Sequence[str] | bool
) -> Iterator[list[models.Record]]:
    """Every point of `table` in `collection`, a page at a time, with only `payload` fields
    and never vectors."""
    options = qdrant.init_options
    local = bool(options.get("path")) or options.get("location") == ":memory:"
    offset = None
    while True:
        page, offset = qdrant.scroll(
            collection,
            scroll_filter=table_filter(table),
            limit=LOCAL_SCROLL_PAGE if local else SCROLL_PAGE,
            offset=offset,
            with_payload=list(payload) if not isinstance(payload, bool) else payload,
            with_vectors=False,
        )
        if page:
            yield page
        if offset is None:
            return


def stored_hash(payload: dict[str, Any] | None) -> str | None:
    """A point's `content_hash` if it is one we could have written (32 hex digits)."""
    value = (payload or {}).get("content_hash")
    if isinstance(value, str) and len(value) == 32:
        try:
            bytes.fromhex(value)
        except ValueError:
            return None
        return value
    return None
