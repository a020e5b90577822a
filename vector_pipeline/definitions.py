"""The Dagster code location: `dagster dev` loads `defs` through workspace.yaml."""

from __future__ import annotations

import dagster as dg

from vector_pipeline.config import ProjectConfig, load_config
from vector_pipeline.orchestration.adoption_job import adoption_job
from vector_pipeline.orchestration.assets import sync_job, table_assets
from vector_pipeline.orchestration.checks import reconciliation_checks
from vector_pipeline.orchestration.executors import build_executor
from vector_pipeline.orchestration.resources import (
    EmbeddingsResource,
    PostgresResource,
    QdrantResource,
)
from vector_pipeline.orchestration.schedules import incremental_sync_schedule
from vector_pipeline.orchestration.sensors import (
    pending_rows_launcher,
    pending_rows_observer,
    session_launcher,
    session_outcomes,
)


def build_definitions(
    config: ProjectConfig | None = None,
    *,
    postgres: PostgresResource | None = None,
    qdrant: QdrantResource | None = None,
) -> dg.Definitions:
    config = config or load_config()
    job = sync_job(config)
    return dg.Definitions(
        assets=table_assets(config),
        asset_checks=reconciliation_checks(config),
        jobs=[job, adoption_job],
        executor=build_executor(config.orchestration.scale_out),
        schedules=[incremental_sync_schedule(config, job)],
        sensors=[
            session_launcher(config, job),
            *session_outcomes(config, job),
            pending_rows_launcher(config, job),
            pending_rows_observer(config),
        ],
        resources={
            "postgres": postgres or PostgresResource(),
            "qdrant": qdrant or QdrantResource(),
            "embeddings": EmbeddingsResource(config_dir=str(config.config_dir)),
        },
    )


defs = build_definitions()
