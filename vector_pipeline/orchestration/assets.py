"""The table asset factory: one asset per configured table, one partition per embedding model."""

import dagster as dg

from vector_pipeline.config import ProjectConfig, TableConfig, collection_name_for
from vector_pipeline.orchestration.resources import (
    EmbeddingsResource,
    PostgresResource,
    QdrantResource,
)
from vector_pipeline.sync import DEFAULT_BATCH_SIZE, sync_table

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
        # The embedder first: a missing API key fails before any row is read.
        with (
            embeddings.embedder(context.partition_key) as embedder,
            postgres.connect() as conn,
            qdrant.client() as client,
        ):
            result = sync_table(
                conn=conn,
                qdrant=client,
                embedder=embedder,
                table=table,
                schema=schema,
                batch_size=config.batch_size,
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
