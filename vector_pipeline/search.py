"""Hybrid search over a model's collection, the way the collection's readers query it."""

from __future__ import annotations

from qdrant_client import QdrantClient

from vector_pipeline.embedders import Embedder
from vector_pipeline.sync import bm25
from vector_pipeline.vector_store import Hit, hybrid_query


def search(
    qdrant: QdrantClient, embedder: Embedder, collection: str, text: str, limit: int = 5
) -> list[Hit]:
    """Dense (the model) and sparse (BM25) candidates fused with reciprocal rank fusion."""
    if not qdrant.collection_exists(collection):
        raise LookupError(
            f"Qdrant has no collection {collection!r} yet; run `vector-pipeline sync` first"
        )
    return hybrid_query(
        qdrant,
        collection,
        dense=embedder.embed_query(text),
        sparse=bm25().embed_query(text),
        limit=limit,
    )
