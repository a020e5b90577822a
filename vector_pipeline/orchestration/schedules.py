"""The incremental sync schedule: every table, the default model, on a configurable cron."""

from typing import TYPE_CHECKING

import dagster as dg

from vector_pipeline.config import ProjectConfig

if TYPE_CHECKING:  # what define_asset_job returns; Dagster does not export the name
    from dagster._core.definitions.unresolved_asset_job_definition import (
        UnresolvedAssetJobDefinition as AssetJob,
    )


def incremental_sync_schedule(project: ProjectConfig, job: "AssetJob") -> dg.ScheduleDefinition:
    settings = project.orchestration.schedule

    @dg.schedule(
        name="incremental_sync",
        job=job,
        cron_schedule=settings.cron,
        default_status=(
            dg.DefaultScheduleStatus.RUNNING
            if settings.enabled
            else dg.DefaultScheduleStatus.STOPPED
        ),
        description="Syncs every table into the default model's collection "
        "(config/orchestration.yaml: schedule).",
    )
    def incremental_sync(context: dg.ScheduleEvaluationContext):
        # The model is read from config when the code location loads, so switching the
        # default takes effect on the next reload.
        return dg.RunRequest(partition_key=project.embeddings.default)

    return incremental_sync
