"""Which BM25 settings a collection's sparse vectors were made with, and re-encoding them.

A reader must encode queries exactly as the documents were encoded, so each collection
records its model's settings (`SparseSettings.describe()`) under the metadata key
`vector_pipeline.sparse`, where any client reads them (Qdrant's `GET /collections/<name>`,
`client.get_collection(name).config.metadata`).

When the settings change (a model's `sparse.languages`, or a new normalisation version),
the points already written hold vectors the new queries no longer match. Re-encoding them is
free: the text is in each point's `content`, and BM25 runs locally at thousands of texts per
second. So nothing is re-embedded: each table's points are read with their sparse vectors,
encoded again, and only those that differ are rewritten (`update_vectors`, the dense vector
stays). Each table records which settings its points now have (metadata key
`vector_pipeline:sparse:<table>`), written only after its last point is re-encoded: a crash
midway leaves the old record, and the next sync re-encodes again (idempotent).
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from qdrant_client import QdrantClient, models

from vector_pipeline.points import table_filter
from vector_pipeline.qdrant_retry import retry_write
from vector_pipeline.sparse import Bm25, SparseSettings
from vector_pipeline.vector_store import SPARSE

COLLECTION_KEY = "vector_pipeline.sparse"
# ":" cannot start a table record's key (store_state.py uses "vector_pipeline.<table>").
TABLE_KEY_PREFIX = "vector_pipeline:sparse:"
_PAGE = 256


def fingerprint(settings: SparseSettings) -> str:
    """A short digest of everything that changes a vector (`describe()`, canonical JSON)."""
    text = json.dumps(settings.describe(), sort_keys=True, separators=(",", ":"))
    return hashlib.md5(text.encode()).hexdigest()


def collection_settings(qdrant: QdrantClient, collection: str) -> dict[str, Any] | None:
    """The settings recorded in `collection` (None: none recorded, or no collection)."""
    if not qdrant.collection_exists(collection):
        return None
    value = (qdrant.get_collection(collection).config.metadata or {}).get(COLLECTION_KEY)
    return value if isinstance(value, dict) else None


def table_encoded_with(qdrant: QdrantClient, collection: str, table: str) -> str | None:
    """The fingerprint `table`'s points were last (re-)encoded with, if recorded."""
    metadata = qdrant.get_collection(collection).config.metadata or {}
    value = metadata.get(TABLE_KEY_PREFIX + table)
    return value if isinstance(value, str) else None


def record(qdrant: QdrantClient, collection: str, table: str, settings: SparseSettings) -> None:
    """Record that `table`'s points in `collection` are encoded with `settings`."""
    qdrant.update_collection(
        collection,
        metadata={
            COLLECTION_KEY: settings.describe(),
            TABLE_KEY_PREFIX + table: fingerprint(settings),
        },
    )


def needs_reencoding(
    qdrant: QdrantClient, collection: str, table: str, settings: SparseSettings
) -> bool:
    return table_encoded_with(qdrant, collection, table) != fingerprint(settings)


def has_points(qdrant: QdrantClient, collection: str, table: str) -> bool:
    """Whether `table` has any point in `collection` (one scrolled id, no count)."""
    page, _ = qdrant.scroll(
        collection, scroll_filter=table_filter(table), limit=1, with_payload=False
    )
    return bool(page)


def reencode(qdrant: QdrantClient, collection: str, table: str, settings: SparseSettings) -> int:
    """Re-encode the sparse vector of each of `table`'s points from its `content` under
    `settings`, rewrite those that changed, then record the settings; returns how many
    changed. The caller holds the table's collection lock exclusively, so no sync writes a
    point between its read here and its rewrite."""
    bm25 = Bm25(settings=settings)
    changed = 0
    offset = None
    while True:
        page, offset = qdrant.scroll(
            collection,
            scroll_filter=table_filter(table),
            limit=_PAGE,
            offset=offset,
            with_payload=["content"],
            with_vectors=[SPARSE],
        )
        # A point without text is not one of ours: nothing to encode it from.
        ours = [p for p in page if isinstance((p.payload or {}).get("content"), str)]
        encoded = bm25.embed_documents([p.payload["content"] for p in ours])  # type: ignore[index]
        updates = []
        for point, new in zip(ours, encoded, strict=True):
            old = point.vector.get(SPARSE) if isinstance(point.vector, dict) else None
            if isinstance(old, models.SparseVector) and _same(old, new.indices, new.values):
                continue
            updates.append(
                models.PointVectors(
                    id=point.id,
                    vector={SPARSE: models.SparseVector(indices=new.indices, values=new.values)},
                )
            )
        if updates:
            retry_write(  # the same vectors again: safe to resend
                f"sparse vector update of {len(updates)} points in {collection}",
                lambda updates=updates: qdrant.update_vectors(
                    collection, points=updates, wait=True
                ),
            )
            changed += len(updates)
        if offset is None:
            break
    record(qdrant, collection, table, settings)
    return changed


def _same(old: models.SparseVector, indices: list[int], values: list[float]) -> bool:
    # Qdrant may return the entries in another order than written, and a server keeps the
    # values as 32-bit floats.
    stored = dict(zip(old.indices, old.values, strict=True))
    return stored.keys() == set(indices) and all(
        math.isclose(stored[i], v, rel_tol=1e-6) for i, v in zip(indices, values, strict=True)
    )
