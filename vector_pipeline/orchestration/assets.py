"""The table asset factory: one asset per configured table, one partition per embedding model.

With `scale_out.workers: 1` (the default) an asset is one op that runs the sync. With N > 1 it
is a graph: N worker steps sync the same table into the same collection at once (the engine's
claims give each row to exactly one of them) and a last step records the materialization. The
executor decides where the steps run: processes, Kubernetes pods, Docker containers, Celery
tasks. No data passes between the steps, so no shared I/O manager is needed: the last step
reads the workers' results from the run's event log.
"""

import time
from typing import TYPE_CHECKING, Any

import dagster as dg

from vector_pipeline.aliases import update_active_alias
from vector_pipeline.config import ProjectConfig, TableConfig, collection_name_for
from vector_pipeline.orchestration.resources import (
    EmbeddingsResource,
    PostgresResource,
    QdrantResource,
)
from vector_pipeline.orchestration.session_write_back import session_write_back
from vector_pipeline.source import SourceTable
from vector_pipeline.sync import DEFAULT_BATCH_SIZE, SyncResult, sync_configured_table

if TYPE_CHECKING:  # what define_asset_job returns; Dagster does not export the name
    from dagster._core.definitions.unresolved_asset_job_definition import (
        UnresolvedAssetJobDefinition as AssetJob,
    )

GROUP = "vector_sync"
# The kind (icon and tag in the UI) of each embedding provider.
PROVIDER_KINDS = {"openai": "openai", "jinaai": "jina", "local": "onnx", "deterministic": "python"}
# Summed over a run's workers; the rest of the materialization's metadata is read afresh.
SUMMED = (
    "rows_embedded",
    "rows_adopted",
    "rows_skipped",
    "rows_truncated",
    "rows_chunked",
    "points_written",
    "sparse_reencoded",
    "tokens",
    "rows_deleted",
    "rows_payload_refreshed",
    "marks_voided",
)


class SyncConfig(dg.Config):
    batch_size: int = DEFAULT_BATCH_SIZE


def model_partitions(config: ProjectConfig) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition(list(config.embeddings.models))


def _run_sync(
    context: dg.OpExecutionContext,
    step: str,
    table: TableConfig,
    batch_size: int,
    postgres: PostgresResource,
    qdrant: QdrantResource,
    embeddings: EmbeddingsResource,
) -> SyncResult:
    # The embedder before any row is read, so a missing API key fails first; the Qdrant
    # client last, since in local mode it may wait for another run to release the folder.
    with (
        session_write_back(context, postgres, embeddings.project, step) as session,
        embeddings.embedder(context.partition_key) as embedder,
        postgres.connect() as conn,
        qdrant.client() as client,
    ):
        return sync_configured_table(
            conn=conn,
            qdrant=client,
            embedder=embedder,
            project=embeddings.project,
            table=table,
            batch_size=batch_size,
            on_batch=session.on_batch,
            admit=session.admit,
            log=context.log,
        )


def _work_done(result: SyncResult) -> dict[str, Any]:
    return {
        "rows_embedded": result.embedded,
        # Marked without embedding: their point already held their current text.
        "rows_adopted": result.adopted,
        "rows_skipped": result.skipped,
        "rows_truncated": result.truncated,
        # Rows over the model's input limit, embedded as several points (chunks).
        "rows_chunked": result.chunked,
        "points_written": result.points_written,
        # Points whose BM25 vector was re-encoded for changed sparse settings (no embedding).
        "sparse_reencoded": result.sparse_reencoded,
        "tokens": result.tokens,
        "rows_deleted": result.deleted,
        # Rows whose payload or name columns changed: payload rewritten, nothing embedded.
        "rows_payload_refreshed": result.payloads_refreshed,
        # Marks removed because the collection was not the store they were made in.
        "marks_voided": result.marks_voided,
    }


def _state(result: SyncResult, seconds: float) -> dict[str, Any]:
    state: dict[str, Any] = {
        "rows_pending": result.pending_after,
        "rows_total": result.total_rows,
        "collection": result.collection,
        "model": result.model,
        "seconds": round(seconds, 3),
    }
    if result.alias:
        state["active_alias"] = f"{result.alias} -> {result.alias_serves or '(not yet)'}"
    return state


def table_asset(
    config: ProjectConfig, table: TableConfig, partitions: dg.PartitionsDefinition
) -> dg.AssetsDefinition:
    schema = config.tables.schema_for(table)
    collections = {
        key: collection_name_for(table.collection_base, model.id)
        for key, model in config.embeddings.models.items()
    }
    workers = config.orchestration.scale_out.workers
    spec: dict[str, Any] = {
        "name": table.name,
        "partitions_def": partitions,
        "group_name": GROUP,
        # Where the rows come from, where the points go, and who embeds them.
        "kinds": {"postgres", "qdrant"}
        | {PROVIDER_KINDS[model.provider] for model in config.embeddings.models.values()},
        "description": (
            f"Rows of `{schema}.{table.table}` embedded into Qdrant, one partition per "
            f"embedding model. Materializing a partition embeds the rows whose `embedded_in` "
            f"lacks that model's collection and marks them done"
            + (f", with {workers} workers sharing the rows" if workers > 1 else "")
            + f".\n\nText: `{table.text_template!r}`"
        ),
        "metadata": {
            "source_table": f"{schema}.{table.table}",
            "data_type": table.data_type,
            "collections": dg.MetadataValue.json(collections),
            "workers": workers,
        },
    }
    if workers == 1:
        return _single_step_asset(table, spec)
    return _scaled_out_asset(table, spec, workers)


def _single_step_asset(table: TableConfig, spec: dict[str, Any]) -> dg.AssetsDefinition:
    @dg.asset(**spec)
    def _sync(
        context: dg.AssetExecutionContext,
        config: SyncConfig,
        postgres: PostgresResource,
        qdrant: QdrantResource,
        embeddings: EmbeddingsResource,
    ) -> dg.MaterializeResult:
        result = _run_sync(
            context.op_execution_context,
            table.name,
            table,
            config.batch_size,
            postgres,
            qdrant,
            embeddings,
        )
        return dg.MaterializeResult(
            metadata={**_work_done(result), **_state(result, result.seconds)}
        )

    return _sync


def _scaled_out_asset(
    table: TableConfig, spec: dict[str, Any], workers: int
) -> dg.AssetsDefinition:
    def worker(index: int) -> dg.OpDefinition:
        name = f"{table.name}_worker_{index}"

        @dg.op(
            name=name,
            out=dg.Out(dg.Nothing),
            description=f"Worker {index + 1} of {workers}: syncs rows of {table.name} it claims.",
            tags={"vector_pipeline/worker": str(index)},
        )
        def _work(
            context: dg.OpExecutionContext,
            config: SyncConfig,
            postgres: PostgresResource,
            qdrant: QdrantResource,
            embeddings: EmbeddingsResource,
        ) -> dg.Output[None]:
            result = _run_sync(
                context, name, table, config.batch_size, postgres, qdrant, embeddings
            )
            return dg.Output(None, metadata=_work_done(result))

        return _work

    steps = [worker(index) for index in range(workers)]

    @dg.op(
        name=f"{table.name}_record",
        ins={f"worker_{i}": dg.In(dg.Nothing) for i in range(workers)},
        out=dg.Out(dg.Nothing),
        description=f"Records the materialization of {table.name}: the workers' sums and the "
        "rows still pending.",
    )
    def record(
        context: dg.OpExecutionContext,
        postgres: PostgresResource,
        qdrant: QdrantResource,
        embeddings: EmbeddingsResource,
    ) -> None:
        done = _worker_results(context, {step.name for step in steps})
        project = embeddings.project
        model = project.embeddings.models[context.partition_key]
        collection = collection_name_for(table.collection_base, model.id)
        alias = project.tables.alias_for(table.collection_base)
        with postgres.connect() as conn:
            counts = SourceTable.for_config(conn, project, table).counts(collection)
            if alias is not None and context.partition_key == project.embeddings.default:
                # The workers each tried; the last to finish found the collection complete.
                with qdrant.client() as client:
                    served = update_active_alias(conn, client, project, table.collection_base)
                done["active_alias"] = f"{alias} -> {served or '(not yet)'}"
        started = context.instance.get_run_stats(context.run_id).start_time
        seconds = time.time() - started if started else 0.0
        context.log.info(
            f"{table.name} -> {collection}: {workers} workers embedded {done['rows_embedded']} "
            f"rows; {counts.pending} still pending of {counts.total}"
        )
        context.add_output_metadata(
            {
                **done,
                "rows_pending": counts.pending,
                "rows_total": counts.total,
                "collection": collection,
                "model": context.partition_key,
                "seconds": round(seconds, 3),
            }
        )

    @dg.graph_asset(**spec)
    def _sync() -> Any:
        return record(**{f"worker_{i}": step() for i, step in enumerate(steps)})

    return _sync


def _worker_results(context: dg.OpExecutionContext, worker_steps: set[str]) -> dict[str, Any]:
    """The sums of the workers' output metadata, from this run's event log."""
    totals: dict[str, Any] = dict.fromkeys(SUMMED, 0)
    records = context.instance.get_records_for_run(
        context.run_id, of_type=dg.DagsterEventType.STEP_OUTPUT
    ).records
    for record in records:
        event = record.event_log_entry.dagster_event
        # Step keys inside a graph asset are `<asset>.<op>`.
        if event is None or (event.step_key or "").rsplit(".", 1)[-1] not in worker_steps:
            continue
        for name, value in event.step_output_data.metadata.items():
            if name in totals:
                totals[name] += int(value.value)
    return totals


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
