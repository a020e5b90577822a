"""The Dagster code location: `dagster dev` loads `defs` through workspace.yaml."""

from __future__ import annotations

import dagster as dg

from vector_pipeline.config import ProjectConfig, load_config
from vector_pipeline.orchestration.assets import table_assets
from vector_pipeline.orchestration.resources import (
    EmbeddingsResource,
    PostgresResource,
    QdrantResource,
)


def build_definitions(
    config: ProjectConfig | None = None,
    *,
    postgres: PostgresResource | None = None,
    qdrant: QdrantResource | None = None,
) -> dg.Definitions:
    config = config or load_config()
    return dg.Definitions(
        assets=table_assets(config),
        resources={
            "postgres": postgres or PostgresResource(),
            "qdrant": qdrant or QdrantResource(),
            "embeddings": EmbeddingsResource(config_dir=str(config.config_dir)),
        },
    )


defs = build_definitions()
