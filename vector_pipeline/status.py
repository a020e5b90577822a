"""How far each table is synced into each model's collection, from PostgreSQL alone."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import psycopg

from vector_pipeline.config import ProjectConfig, collection_name_for
from vector_pipeline.source import SourceTable


@dataclass(frozen=True)
class TableStatus:
    table: str
    model: str
    collection: str
    total: int
    embedded: int
    pending: int
    skipped: int

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def sync_status(
    conn: psycopg.Connection,
    config: ProjectConfig,
    models: list[str] | None = None,
    tables: list[str] | None = None,
) -> list[TableStatus]:
    """One entry per table and model, tables in config order, the default model first."""
    embeddings = config.embeddings
    model_keys = models or [
        embeddings.default,
        *(key for key in embeddings.models if key != embeddings.default),
    ]
    statuses = []
    for table_config in config.tables.tables:
        if tables and table_config.name not in tables:
            continue
        source = SourceTable.for_config(conn, config, table_config)
        for key in model_keys:
            _, model = embeddings.model(key)
            collection = collection_name_for(table_config.collection_base, model.id)
            counts = source.counts(collection)
            statuses.append(
                TableStatus(
                    table=table_config.name,
                    model=key,
                    collection=collection,
                    total=counts.total,
                    embedded=counts.embedded,
                    pending=counts.pending,
                    skipped=counts.skipped,
                )
            )
    return statuses
