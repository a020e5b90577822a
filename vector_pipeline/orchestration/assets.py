"""The table asset factory: one asset per configured table, one partition per embedding model."""

from typing import TYPE_CHECKING

import dagster as dg

from vector_pipeline.config import ProjectConfig, TableConfig, collection_name_for
from vector_pipeline.orchestration.resources import (
    EmbeddingsResource,
    PostgresResource,
    QdrantResource,
)
from vector_pipeline.orchestration.session_write_back import session_write_back
from vector_pipeline.sync import DEFAULT_BATCH_SIZE, sync_configured_table

if TYPE_CHECKING:  # what define_asset_job returns; Dagster does not export the name
    from dagster._core.definitions.unresolved_asset_job_definition import (
        UnresolvedAssetJobDefinition as AssetJob,
    )

GROUP = "vector_sync"


class SyncConfig(dg.Config):
    batch_size: int = DEFAULT_BATCH_SIZE


def model_partitions(config: ProjectConfig) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition(list(config.embeddings.models))


def table_asset(
    config: ProjectConfig, table: TableConfig, partitions: dg.PartitionsDefinition
) -> dg.AssetsDefinition:
    schema = config.tables.schema_for(table)
    collections = {
        key: collection_name_for(table.collection_base, model.id)
        for key, model in config.embeddings.models.items()
    }

    @dg.asset(
        name=table.name,
        partitions_def=partitions,
        group_name=GROUP,
        kinds={"postgres", "qdrant"},
        description=(
            f"Rows of `{schema}.{table.table}` embedded into Qdrant, one partition per "
            f"embedding model. Materializing a partition embeds the rows whose `embedded_in` "
            f"lacks that model's collection and marks them done.\n\n"
            f"Text: `{table.text_template!r}`"
        ),
        metadata={
            "source_table": f"{schema}.{table.table}",
            "data_type": table.data_type,
            "collections": dg.MetadataValue.json(collections),
        },
    )
    def _sync(
        context: dg.AssetExecutionContext,
        config: SyncConfig,
        postgres: PostgresResource,
        qdrant: QdrantResource,
        embeddings: EmbeddingsResource,
    ) -> dg.MaterializeResult:
        # The embedder before any row is read, so a missing API key fails first; the Qdrant
        # client last, since in local mode it may wait for another run to release the folder.
        with (
            session_write_back(context, postgres, embeddings.project) as on_batch,
            embeddings.embedder(context.partition_key) as embedder,
            postgres.connect() as conn,
            qdrant.client() as client,
        ):
            result = sync_configured_table(
                conn=conn,
                qdrant=client,
                embedder=embedder,
                project=embeddings.project,
                table=table,
                batch_size=config.batch_size,
                on_batch=on_batch,
                log=context.log,
            )
        return dg.MaterializeResult(
            metadata={
                "rows_embedded": result.embedded,
                "rows_skipped": result.skipped,
                "rows_truncated": result.truncated,
                "rows_pending": result.pending_after,
                "rows_total": result.total_rows,
                "tokens": result.tokens,
                "collection": result.collection,
                "model": result.model,
                "seconds": round(result.seconds, 3),
            }
        )

    return _sync


def table_assets(config: ProjectConfig) -> list[dg.AssetsDefinition]:
    partitions = model_partitions(config)
    return [table_asset(config, table, partitions) for table in config.tables.tables]


def sync_job(config: ProjectConfig) -> "AssetJob":
    """The job sessions, the schedule and the pending-rows sensor launch: a subset of the
    table assets, for one model partition."""
    return dg.define_asset_job(
        "embedding_sync",
        # Reconciliation scans whole tables and collections; it runs on its own, not per sync.
        selection=dg.AssetSelection.groups(GROUP).without_checks(),
        description="Incremental sync of the selected tables into one model's collection.",
    )
