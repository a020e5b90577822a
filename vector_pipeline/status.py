"""How far each table is synced into each model's collection, and what readers' aliases serve."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import psycopg
from qdrant_client import QdrantClient

from vector_pipeline.aliases import serving
from vector_pipeline.config import ProjectConfig, collection_name_for
from vector_pipeline.source import SourceTable
from vector_pipeline.store_state import StoreState


@dataclass(frozen=True)
class TableStatus:
    table: str
    model: str
    collection: str
    total: int
    embedded: int
    pending: int
    skipped: int
    # The active alias of the table's collections, and whether it serves this one (None:
    # aliases off, or Qdrant not consulted).
    alias: str | None = None
    alias_serves_this: bool | None = None
    # Whether the collection is the store the marks were made in (store_state.py); False: the
    # next sync voids them and re-checks every row. None: Qdrant not consulted.
    verified: bool | None = None
    # What is wrong with the table's triggers (a sync refuses to run until init-db fixes it);
    # empty when nothing is.
    trigger_problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def sync_status(
    conn: psycopg.Connection,
    config: ProjectConfig,
    models: list[str] | None = None,
    tables: list[str] | None = None,
    qdrant: QdrantClient | None = None,
) -> list[TableStatus]:
    """One entry per table and model, tables in config order, the default model first; with
    `qdrant`, which collection each active alias serves."""
    embeddings = config.embeddings
    model_keys = models or [
        embeddings.default,
        *(key for key in embeddings.models if key != embeddings.default),
    ]
    statuses = []
    served: dict[str, str | None] = {}  # alias -> the collection it serves
    for table_config in config.tables.tables:
        if tables and table_config.name not in tables:
            continue
        source = SourceTable.for_config(conn, config, table_config)
        problems = source.trigger_problems()
        for key in model_keys:
            _, model = embeddings.model(key)
            collection = collection_name_for(table_config.collection_base, model.id)
            counts = source.counts(collection)
            alias = config.tables.alias_for(table_config.collection_base)
            serves = verified = None
            if qdrant is not None:
                verified = StoreState(
                    conn, qdrant, config.tables.schema_, table_config, collection
                ).matches()
            if alias is not None and qdrant is not None:
                if alias not in served:  # one lookup per alias, not per table and model
                    served[alias] = serving(qdrant, alias)
                serves = served[alias] == collection
            statuses.append(
                TableStatus(
                    table=table_config.name,
                    model=key,
                    collection=collection,
                    total=counts.total,
                    embedded=counts.embedded,
                    pending=counts.pending,
                    skipped=counts.skipped,
                    alias=alias,
                    alias_serves_this=serves,
                    verified=verified,
                    trigger_problems=problems,
                )
            )
    return statuses
