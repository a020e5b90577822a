"""Reconciliation as Dagster asset checks: one per table and model, an error when PostgreSQL and
Qdrant disagree (missing, orphan or stale points)."""

import dagster as dg

from vector_pipeline.config import ProjectConfig, TableConfig, collection_name_for
from vector_pipeline.orchestration.resources import PostgresResource, QdrantResource
from vector_pipeline.reconcile import reconcile

# Keys shown per kind in the check's metadata; the counts are exact.
SHOWN = 20


def reconciliation_check(
    project: ProjectConfig, table: TableConfig, model_key: str
) -> dg.AssetChecksDefinition:
    collection = collection_name_for(table.collection_base, project.embeddings.models[model_key].id)
    schema = project.tables.schema_for(table)

    @dg.asset_check(
        asset=dg.AssetKey(table.name),
        name=f"{model_key}_in_sync",
        description=(
            f"Rows of {table.name} marked embedded in {collection} all have a point with their "
            "current text, and no point lacks its row. Fix with `vector-pipeline repair "
            f"--model {model_key} --table {table.name}`."
        ),
        blocking=False,
    )
    def _check(postgres: PostgresResource, qdrant: QdrantResource) -> dg.AssetCheckResult:
        with postgres.connect() as conn, qdrant.client() as client:
            report = reconcile(
                conn, client, table, schema, collection, state_schema=project.tables.schema_
            )
        return dg.AssetCheckResult(
            passed=report.ok,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={
                "collection": collection,
                "rows": report.rows,
                "rows_embedded": report.embedded,
                "points": report.points,
                "missing_points": report.missing_count,
                "orphan_points": report.orphan_count,
                "stale_points": report.stale_count,
                "payload_drift": report.payload_drift_count,
                "missing_row_ids": dg.MetadataValue.json(report.missing[:SHOWN]),
                "orphan_point_ids": dg.MetadataValue.json(report.orphans[:SHOWN]),
                "stale_row_ids": dg.MetadataValue.json(report.stale[:SHOWN]),
                "payload_drift_row_ids": dg.MetadataValue.json(report.payload_drift[:SHOWN]),
            },
        )

    return _check


def reconciliation_checks(project: ProjectConfig) -> list[dg.AssetChecksDefinition]:
    return [
        reconciliation_check(project, table, model_key)
        for table in project.tables.tables
        for model_key in project.embeddings.models
    ]
