"""Hybrid search over a model's collection, the way the collection's readers query it.

Dense candidates (the model, with its query form: e5's "query: " prefix) and sparse ones (BM25
under the settings the collection records, encoding.py) are fused by reciprocal rank, as
Agno's hybrid search does. A long row is stored as several chunks; each row is returned once,
at the rank of its best chunk.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qdrant_client import QdrantClient, models

from vector_pipeline import encoding
from vector_pipeline.embedders import Embedder
from vector_pipeline.sparse import LANGUAGES, NORMALISATION_VERSION, SparseSettings
from vector_pipeline.sync import DEFAULT_SPARSE, bm25
from vector_pipeline.vector_store import Hit, hybrid_query

# Chunks fetched per row wanted before giving up on filling `limit` distinct rows.
_OVERFETCH = 4


@dataclass(frozen=True)
class RowHit:
    """One row found: its best chunk's score and payload."""

    rank: int
    score: float
    table: str | None
    row_id: Any
    payload: dict[str, Any]

    def as_json(self, collection: str) -> dict[str, Any]:
        meta = self.payload.get("meta_data") or {}
        return {
            "rank": self.rank,
            "score": self.score,
            "collection": collection,
            "table": self.table,
            "row_id": self.row_id,
            "data_type": meta.get("data_type"),
            "name": self.payload.get("name"),
            "chunk": meta.get("chunk", 0),
            "content": self.payload.get("content"),
            "meta_data": meta,
        }


def search(
    qdrant: QdrantClient,
    embedder: Embedder,
    collection: str,
    text: str,
    limit: int = 5,
    **options: Any,
) -> list[Hit]:
    """The `limit` best rows for `text` as Hits, one per row (`options`: see `search_rows`)."""
    rows = search_rows(qdrant, embedder, collection, text, limit, **options)
    return [Hit(score=row.score, payload=row.payload) for row in rows]


def search_rows(
    qdrant: QdrantClient,
    embedder: Embedder,
    collection: str,
    text: str,
    limit: int = 5,
    *,
    sparse: SparseSettings | None = None,
    tables: Sequence[str] = (),
    where: Mapping[str, str] | None = None,
) -> list[RowHit]:
    """Dense and BM25 candidates fused by RRF; each row once, at its best chunk's rank.

    `sparse` is the model's BM25 settings, used when the collection records none (the
    collection's own record wins: it is how its points were encoded). `tables` keeps points of
    those tables; `where` maps payload fields to values (`meta_data.<field>` unless the name
    has a dot; "5" also matches the number 5, "true" the boolean).

    Raises LookupError when the collection does not exist.
    """
    if not qdrant.collection_exists(collection):
        raise LookupError(
            f"Qdrant has no collection {collection!r} yet; run `vector-pipeline sync` first"
        )
    settings = query_settings(qdrant, collection, sparse)
    dense = embedder.embed_query(text)
    sparse_vector = bm25(settings).embed_query(text)
    query_filter = payload_filter(tables, where or {})
    fetch = limit * _OVERFETCH
    while True:
        hits = hybrid_query(
            qdrant,
            collection,
            dense=dense,
            sparse=sparse_vector,
            limit=fetch,
            query_filter=query_filter,
        )
        rows = _one_per_row(hits)
        if len(rows) >= limit or len(hits) < fetch:
            return rows[:limit]
        fetch *= 4


def query_settings(
    qdrant: QdrantClient, collection: str, fallback: SparseSettings | None
) -> SparseSettings:
    """The BM25 settings to encode queries for `collection` with: its recorded ones, when
    this version can reproduce them; else `fallback` (the model's configured settings)."""
    described = encoding.collection_settings(qdrant, collection)
    if described:
        normalisation = described.get("normalisation")
        try:
            stemmers = described.get("stemmers") or {}
            settings = SparseSettings(
                languages=tuple(described["languages"]),
                unstemmed=tuple(
                    n
                    for n in described["languages"]
                    if stemmers.get(n) is None
                    and LANGUAGES.get(n) is not None
                    and LANGUAGES[n].stemmer
                ),
                k=float(described["k"]),
                b=float(described["b"]),
                avg_len=float(described["avg_len"]),
            )
        except (KeyError, TypeError, ValueError):
            settings = None
        if settings is not None and normalisation in (
            None,
            f"normalise_arabic_script v{NORMALISATION_VERSION}",
        ):
            return settings
    return fallback or DEFAULT_SPARSE


def payload_filter(tables: Sequence[str], where: Mapping[str, str]) -> models.Filter | None:
    """A Qdrant filter keeping points of `tables` whose payload matches every `where` item."""
    must: list[models.Condition] = []
    if tables:
        must.append(
            models.FieldCondition(key="meta_data.table", match=models.MatchAny(any=list(tables)))
        )
    for field, value in where.items():
        key = field if "." in field else f"meta_data.{field}"
        must.append(
            models.Filter(
                should=[
                    models.FieldCondition(key=key, match=models.MatchValue(value=typed))
                    for typed in _typed_values(value)
                ]
            )
        )
    return models.Filter(must=must) if must else None


def _typed_values(value: str) -> list[str | int | bool]:
    """A value typed on a command line, as each JSON type it could be stored as."""
    values: list[str | int | bool] = [value]
    if value.lower() in ("true", "false"):
        values.append(value.lower() == "true")
    elif value.lstrip("-").isdigit() and value.lstrip("-").isascii():
        values.append(int(value))
    return values


def _one_per_row(hits: Sequence[Hit]) -> list[RowHit]:
    seen: set[tuple[Any, str]] = set()
    rows: list[RowHit] = []
    for hit in hits:
        meta = hit.payload.get("meta_data") or {}
        table, row_id = meta.get("table"), meta.get("row_id")
        # A point without our meta_data (another writer's) counts as its own row.
        key = (table, repr(row_id)) if row_id is not None else (None, repr(hit.payload))
        if key in seen:
            continue
        seen.add(key)
        rows.append(RowHit(len(rows) + 1, hit.score, table, row_id, hit.payload))
    return rows
