"""Adoption as a Dagster job an operator launches from the UI (Jobs > adopt_collection >
Launchpad): the same engine as `vector-pipeline adopt`, a dry run unless told otherwise."""

from typing import Any

import dagster as dg
from pydantic import Field

from vector_pipeline.adoption import AdoptionError, adopt
from vector_pipeline.config import ConfigError
from vector_pipeline.database_setup import SetupError
from vector_pipeline.orchestration.resources import (
    EmbeddingsResource,
    PostgresResource,
    QdrantResource,
)

JOB_NAME = "adopt_collection"


class AdoptConfig(dg.Config):
    model: str | None = Field(
        default=None, description="Model key whose collections to adopt (default: the default)."
    )
    tables: list[str] = Field(default_factory=list, description="Tables (default: all).")
    dry_run: bool = Field(
        default=True,
        description="Only report what would be moved, deleted and embedded, and its cost; set "
        "false to adopt.",
    )


@dg.op(
    name="adopt",
    description="Move points another writer (the reference design through Agno) left under "
    "its own ids to the formula ids, without embedding; mark the rows they hold.",
)
def _adopt(
    context: dg.OpExecutionContext,
    config: AdoptConfig,
    postgres: PostgresResource,
    qdrant: QdrantResource,
    embeddings: EmbeddingsResource,
) -> dg.Output[list[dict[str, Any]]]:
    try:
        with postgres.connect() as conn, qdrant.client() as client:
            reports = adopt(
                conn,
                client,
                embeddings.project,
                config.model,
                config.tables,
                dry_run=config.dry_run,
                logger=context.log,
            )
    except (AdoptionError, ConfigError, SetupError) as exc:
        # What to fix, as the run's one-line failure rather than a stack trace.
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    metadata: dict[str, Any] = {"dry_run": config.dry_run}
    for report in reports:
        for table in report.tables:
            prefix = f"{table.table}/{report.model}"
            metadata.update(
                {
                    f"{prefix}/collection": report.collection,
                    f"{prefix}/points_moved": table.points_moved,
                    f"{prefix}/payloads_rewritten": table.payloads_rewritten,
                    f"{prefix}/points_deleted": table.duplicates_deleted + table.gone_deleted,
                    f"{prefix}/rows_kept": table.rows_held,
                    f"{prefix}/rows_to_embed": table.rows_to_embed,
                    f"{prefix}/tokens_to_embed": table.tokens,
                }
            )
        metadata[f"{report.collection}/unattributed_points"] = report.unattributed
        metadata[f"{report.collection}/idf_modifier"] = report.idf
    return dg.Output([report.as_dict() for report in reports], metadata=metadata)


@dg.job(name=JOB_NAME, description=__doc__)
def adoption_job() -> None:
    _adopt()
