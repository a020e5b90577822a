"""The active alias: the name readers query, moved to a new model's collection only once it is
complete.

Each collection base has one alias (tables.yaml `active_alias`, by default
`{collection_base}_active`). After a sync of the default model, if no table of that base has a
pending row for the default model's collection and every table's marks were made in that very
collection (store_state.py), the alias is pointed at that collection in one
`update_collection_aliases` call (delete and create together, which Qdrant applies atomically).
Until then it keeps serving the previous collection, so switching `default` in embeddings.yaml
re-embeds everything behind the readers' backs and swaps only when the new collection is full.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from qdrant_client import QdrantClient, models

from vector_pipeline.config import ProjectConfig, collection_name_for
from vector_pipeline.source import SourceTable
from vector_pipeline.store_state import StoreState

log = logging.getLogger(__name__)


def serving(qdrant: QdrantClient, alias: str) -> str | None:
    """The collection `alias` points at, or None."""
    for description in qdrant.get_aliases().aliases:
        if description.alias_name == alias:
            return description.collection_name
    return None


def update_active_alias(
    conn: psycopg.Connection,
    qdrant: QdrantClient,
    project: ProjectConfig,
    collection_base: str,
    logger: Any = log,
) -> str | None:
    """Point the base's alias at the default model's collection if that covers every row;
    return the collection the alias serves afterwards (None: no alias)."""
    alias = project.tables.alias_for(collection_base)
    if alias is None:
        return None
    _, model = project.embeddings.model(None)
    target = collection_name_for(collection_base, model.id)
    current = serving(qdrant, alias)
    if current == target or not qdrant.collection_exists(target):
        return current
    for table in project.tables.tables:
        if table.collection_base != collection_base:
            continue
        if SourceTable.for_config(conn, project, table).has_pending(target):
            return current  # not complete yet: readers stay on what they have
        if not StoreState(conn, qdrant, project.tables.schema_, table, target).matches():
            return current  # its marks were not made in this store: nothing vouches for them
    operations: list[models.AliasOperations] = []
    if current is not None:
        operations.append(
            models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))
        )
    operations.append(
        models.CreateAliasOperation(
            create_alias=models.CreateAlias(collection_name=target, alias_name=alias)
        )
    )
    qdrant.update_collection_aliases(change_aliases_operations=operations)
    logger.info(
        f"alias {alias} now serves {target} (was {current or 'unset'}): every row of "
        f"collection base {collection_base!r} is embedded with {model.id}"
    )
    return target
