"""Sensors: launch a run per requested session, write session outcomes back, launch a sync
when rows are pending, and record pending rows for the UI."""

import json
from collections.abc import Callable
from typing import TYPE_CHECKING

import dagster as dg

from vector_pipeline.config import ProjectConfig, collection_name_for
from vector_pipeline.orchestration.resources import PostgresResource
from vector_pipeline.orchestration.session_write_back import SESSION_TAG, SESSION_TOKEN_TAG
from vector_pipeline.sessions import (
    Session,
    SessionRequestError,
    SessionStore,
    redact,
    resolve_request,
)
from vector_pipeline.source import SourceTable

if TYPE_CHECKING:  # what define_asset_job returns; Dagster does not export the name
    from dagster._core.definitions.unresolved_asset_job_definition import (
        UnresolvedAssetJobDefinition as AssetJob,
    )

# Sessions launched per tick at most; the rest wait for the next tick.
SESSIONS_PER_TICK = 50
ACTIVE_RUN_STATUSES = [
    dg.DagsterRunStatus.CANCELING,
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def _status(enabled: bool) -> dg.DefaultSensorStatus:
    return dg.DefaultSensorStatus.RUNNING if enabled else dg.DefaultSensorStatus.STOPPED


def session_launcher(project: ProjectConfig, job: "AssetJob"):
    @dg.sensor(
        name="embedding_sessions",
        job=job,
        minimum_interval_seconds=project.orchestration.sensors.sessions_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Launches one run per PENDING row of embedding_session.",
    )
    def embedding_sessions(context: dg.SensorEvaluationContext, postgres: PostgresResource):
        # Every PENDING session is looked at on every tick (an indexed, cheap query) rather than
        # those after a cursor: ids are allocated before commit, so a cursor could step over a
        # session whose insert commits late. The run key (the session's run_token, which unlike
        # its id is never reused) makes a re-request of an already launched session a no-op,
        # across daemon restarts too.
        requests = []
        with postgres.connect() as conn:
            store = SessionStore(conn, project.tables.schema_)
            for session in _unlaunched_pending(context.instance, store):
                try:
                    model, tables = resolve_request(project, session)
                except SessionRequestError as exc:
                    store.fail(session.id, str(exc))
                    context.log.warning(str(exc))
                    continue
                requests.append(
                    dg.RunRequest(
                        run_key=f"embedding_session_{session.run_token}",
                        partition_key=model,
                        asset_selection=[dg.AssetKey(table.name) for table in tables],
                        tags={
                            SESSION_TAG: str(session.id),
                            SESSION_TOKEN_TAG: str(session.run_token),
                        },
                    )
                )
        if not requests:
            return dg.SkipReason("no PENDING sessions")
        return dg.SensorResult(run_requests=requests)

    return embedding_sessions


def _unlaunched_pending(instance: dg.DagsterInstance, store: SessionStore) -> list[Session]:
    """Up to SESSIONS_PER_TICK PENDING sessions that have no run yet, oldest first.

    A launched session stays PENDING while its run waits in the queue; skipping those here keeps
    a long queue from hiding newer sessions behind the page limit.
    """
    found: list[Session] = []
    after: int | None = None
    while len(found) < SESSIONS_PER_TICK:
        page = store.pending(after_id=after, limit=SESSIONS_PER_TICK * 2)
        if not page:
            break
        launched = {
            record.dagster_run.tags[SESSION_TOKEN_TAG]
            for record in instance.get_run_records(
                dg.RunsFilter(
                    tags={SESSION_TOKEN_TAG: [str(session.run_token) for session in page]}
                )
            )
        }
        found.extend(session for session in page if str(session.run_token) not in launched)
        after = page[-1].id
    return found[:SESSIONS_PER_TICK]


def _record_outcome(
    context: dg.RunStatusSensorContext,
    postgres: PostgresResource,
    schema: str,
    write: Callable[[SessionStore, int, str], object],
) -> dg.SkipReason | None:
    """Apply `write(store, session_id, run_id)` if the run serves a session."""
    tags = context.dagster_run.tags
    tag = tags.get(SESSION_TAG)
    if not tag:
        return dg.SkipReason("not a session run")
    with postgres.connect() as conn:
        store = SessionStore(conn, schema, tags.get(SESSION_TOKEN_TAG))
        write(store, int(tag), context.dagster_run.run_id)
    return None


def session_outcomes(project: ProjectConfig, job: "AssetJob") -> list[dg.SensorDefinition]:
    """COMPLETED when a session's run succeeds; FAILED when it fails or is canceled, including
    runs that die before their own steps can say so (a killed worker, a crashed process)."""
    schema = project.tables.schema_
    interval = project.orchestration.sensors.sessions_interval_seconds

    @dg.run_status_sensor(
        name="embedding_session_completed",
        run_status=dg.DagsterRunStatus.SUCCESS,
        monitored_jobs=[job],
        minimum_interval_seconds=interval,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def completed(context: dg.RunStatusSensorContext, postgres: PostgresResource):
        return _record_outcome(
            context, postgres, schema, lambda store, session, _run: store.complete(session)
        )

    @dg.run_failure_sensor(
        name="embedding_session_failed",
        monitored_jobs=[job],
        minimum_interval_seconds=interval,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def failed(context: dg.RunFailureSensorContext, postgres: PostgresResource):
        # A step that failed has already written its own, more precise message; this one only
        # lands when nothing else did (a killed worker, a crash before any step ran).
        reason = context.failure_event.message or "the run failed"
        return _record_outcome(
            context,
            postgres,
            schema,
            lambda store, session, run: store.fail(
                session, redact(f"run {run}: {reason}", project), run
            ),
        )

    @dg.run_status_sensor(
        name="embedding_session_canceled",
        run_status=dg.DagsterRunStatus.CANCELED,
        monitored_jobs=[job],
        minimum_interval_seconds=interval,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def canceled(context: dg.RunStatusSensorContext, postgres: PostgresResource):
        return _record_outcome(
            context,
            postgres,
            schema,
            lambda store, session, run: store.fail(session, f"run {run} was canceled", run),
        )

    return [completed, failed, canceled]


def pending_rows_launcher(project: ProjectConfig, job: "AssetJob"):
    sensors = project.orchestration.sensors

    @dg.sensor(
        name="pending_rows",
        job=job,
        minimum_interval_seconds=sensors.pending_rows_interval_seconds,
        default_status=_status(sensors.pending_rows_enabled),
        description="Launches a sync of the default model when any table has pending rows.",
    )
    def pending_rows(context: dg.SensorEvaluationContext, postgres: PostgresResource):
        model_key, model = project.embeddings.model()
        active = context.instance.get_run_records(
            dg.RunsFilter(statuses=ACTIVE_RUN_STATUSES, tags={"dagster/partition": model_key}),
            limit=1,
        )
        if active:
            return dg.SkipReason(f"a sync of {model_key} is already queued or running")
        with postgres.connect() as conn:
            # One index probe per table (the partial index init-db creates per collection).
            waiting = [
                table
                for table in project.tables.tables
                if SourceTable.for_config(conn, project, table).has_pending(
                    collection_name_for(table.collection_base, model.id)
                )
            ]
        if not waiting:
            return dg.SkipReason(f"nothing pending for {model_key}")
        return dg.RunRequest(
            partition_key=model_key,
            asset_selection=[dg.AssetKey(table.name) for table in waiting],
            tags={"vector_pipeline/trigger": "pending_rows"},
        )

    return pending_rows


def pending_rows_observer(project: ProjectConfig):
    """Records pending rows per table and model as asset observations, so the UI shows what a
    sync would do before anyone launches one. Only changes are recorded: the cursor keeps the
    last counts, so an idle pipeline adds nothing to the event log."""
    interval = project.orchestration.sensors.pending_rows_interval_seconds

    @dg.sensor(
        name="pending_rows_observer",
        minimum_interval_seconds=interval,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Records each table's pending rows per model as an observation (on "
        "change): see an asset's partitions or its Events tab.",
    )
    def observe(context: dg.SensorEvaluationContext, postgres: PostgresResource):
        last = json.loads(context.cursor) if context.cursor else {}
        now: dict[str, int] = {}
        events = []
        with postgres.connect() as conn:
            for table in project.tables.tables:
                source = SourceTable.for_config(conn, project, table)
                for key, model in project.embeddings.models.items():
                    collection = collection_name_for(table.collection_base, model.id)
                    # Served by the partial index: time in the pending rows, not the table.
                    pending = source.pending_count(collection)
                    now[f"{table.name}/{key}"] = pending
                    if last.get(f"{table.name}/{key}") == pending:
                        continue
                    events.append(
                        dg.AssetObservation(
                            asset_key=dg.AssetKey(table.name),
                            partition=key,
                            metadata={"rows_pending": pending, "collection": collection},
                        )
                    )
        if not events:
            return dg.SkipReason("pending rows unchanged")
        return dg.SensorResult(asset_events=events, cursor=json.dumps(now, sort_keys=True))

    return observe
