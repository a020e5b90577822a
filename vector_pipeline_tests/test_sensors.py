"""The sensors and the schedule, evaluated against a real Dagster instance and the test database."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator

import dagster as dg
import pytest
from dagster._core.events import DagsterEvent, DagsterEventType
from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteRepositoryOrigin
from psycopg import sql

from vector_pipeline.config import collection_name_for, load_config
from vector_pipeline.definitions import build_definitions
from vector_pipeline.orchestration.resources import PostgresResource, QdrantResource
from vector_pipeline.orchestration.session_write_back import SESSION_TAG, SESSION_TOKEN_TAG
from vector_pipeline.sessions import COMPLETED, FAILED, PENDING, PROCESSING, SessionStore
from vector_pipeline_tests.conftest import write_config

pytestmark = pytest.mark.integration

JOB = "embedding_sync"


@pytest.fixture
def postgres(database_url) -> PostgresResource:
    return PostgresResource(database_url=database_url)


@pytest.fixture
def defs(project, postgres, qdrant_path) -> dg.Definitions:
    return build_definitions(project, postgres=postgres, qdrant=QdrantResource(path=qdrant_path))


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as test_instance:
        yield test_instance


@pytest.fixture
def store(project, conn) -> SessionStore:
    return SessionStore(conn, project.tables.schema_)


def _tick(defs, name, instance, postgres):
    """Evaluate sensor `name` once, as the daemon would, with the definitions' resources."""
    context = dg.build_sensor_context(
        instance=instance, sensor_name=name, resources={"postgres": postgres}
    )
    return defs.resolve_sensor_def(name)(context)


def _create_run(
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    tags: dict[str, str],
    status: dg.DagsterRunStatus | None = None,
) -> dg.DagsterRun:
    job = defs.resolve_job_def(JOB)
    origin = None
    if status == dg.DagsterRunStatus.QUEUED:  # Dagster insists on an origin for queued runs
        origin = RemoteRepositoryOrigin(
            RegisteredCodeLocationOrigin("vector_pipeline"), "__repository__"
        ).get_job_origin(JOB)
    return instance.create_run_for_job(job, tags=tags, status=status, remote_job_origin=origin)


def _finish(
    instance: dg.DagsterInstance, run: dg.DagsterRun, status: dg.DagsterRunStatus, message: str
) -> tuple[dg.DagsterRun, DagsterEvent]:
    """Record the run's final event in the instance, as the run worker would."""
    if status == dg.DagsterRunStatus.SUCCESS:
        event = DagsterEvent(
            event_type_value=DagsterEventType.RUN_SUCCESS.value, job_name=run.job_name
        )
        instance.report_dagster_event(event, run_id=run.run_id)
    elif status == dg.DagsterRunStatus.FAILURE:
        event = instance.report_run_failed(run, message)
    else:
        event = instance.report_run_canceled(run, message)
    finished = instance.get_run_by_id(run.run_id)
    assert finished.status == status
    return finished, event


def _on_run_status(defs, name, instance, postgres, run, event):
    context = dg.build_run_status_sensor_context(
        sensor_name=name,
        dagster_event=event,
        dagster_instance=instance,
        dagster_run=run,
        resources={"postgres": postgres},
    )
    return defs.resolve_sensor_def(name)(context)


def _mark_all_embedded(conn, schema: str, collection: str) -> None:
    conn.execute(
        sql.SQL("UPDATE {} SET embedded_in = embedded_in || %s::jsonb").format(
            sql.Identifier(schema, "doc")
        ),
        (f'["{collection}"]',),
    )


# --- embedding_sessions ---------------------------------------------------------------------


def _run_key(store: SessionStore, session_id: int) -> str:
    return f"embedding_session_{store.get(session_id).run_token}"


def _tags(store: SessionStore, session_id: int) -> dict[str, str]:
    """The tags the launcher gives a session's run."""
    return {SESSION_TAG: str(session_id), SESSION_TOKEN_TAG: str(store.get(session_id).run_token)}


def test_pending_sessions_become_one_run_request_each(defs, instance, postgres, store):
    named = store.create(model="det_b", tables=["doc"])
    defaults = store.create()

    result = _tick(defs, "embedding_sessions", instance, postgres)

    assert isinstance(result, dg.SensorResult)
    requests = {request.run_key: request for request in result.run_requests}
    assert set(requests) == {_run_key(store, named), _run_key(store, defaults)}
    first = requests[_run_key(store, named)]
    second = requests[_run_key(store, defaults)]
    assert (first.partition_key, second.partition_key) == ("det_b", "det_a")
    for request, session_id in ((first, named), (second, defaults)):
        assert request.asset_selection == [dg.AssetKey("doc")]
        assert request.tags == _tags(store, session_id)
    # Launching is the run's business: the sensor leaves the sessions PENDING, and the run keys
    # make the next tick's identical requests no-ops.
    assert store.get(named).status == store.get(defaults).status == PENDING
    again = _tick(defs, "embedding_sessions", instance, postgres)
    assert [r.run_key for r in again.run_requests] == [r.run_key for r in result.run_requests]


@pytest.mark.slow
def test_sessions_whose_runs_wait_in_the_queue_do_not_hide_newer_ones(
    defs, instance, postgres, store
):
    from vector_pipeline.orchestration.sensors import SESSIONS_PER_TICK

    queued = [store.create() for _ in range(SESSIONS_PER_TICK + 5)]
    for session_id in queued:  # launched: still PENDING in the table, a run in the queue
        _create_run(instance, defs, _tags(store, session_id), dg.DagsterRunStatus.QUEUED)
    newest = store.create(model="det_b")

    result = _tick(defs, "embedding_sessions", instance, postgres)

    assert [request.run_key for request in result.run_requests] == [_run_key(store, newest)]


def test_sessions_naming_unknown_models_or_tables_fail_without_a_run(
    defs, instance, postgres, store
):
    bad_model = store.create(model="no_such_model")
    bad_table = store.create(tables=["doc", "no_such_table"])
    good = store.create(model="det_b")

    result = _tick(defs, "embedding_sessions", instance, postgres)

    assert [request.run_key for request in result.run_requests] == [_run_key(store, good)]
    for session_id, name in ((bad_model, "no_such_model"), (bad_table, "no_such_table")):
        session = store.get(session_id)
        assert session.status == FAILED
        assert repr(name) in session.error_message
        assert session.finished_at is not None
    assert store.get(good).status == PENDING

    # Once failed they are not looked at again.
    store.fail(good, "handled elsewhere")
    skipped = _tick(defs, "embedding_sessions", instance, postgres)
    assert isinstance(skipped, dg.SkipReason)


def test_no_pending_sessions_is_a_skip(defs, instance, postgres, store):
    finished = store.create()
    store.complete(finished)
    result = _tick(defs, "embedding_sessions", instance, postgres)
    assert isinstance(result, dg.SkipReason)
    assert "no PENDING sessions" in result.skip_message


def test_a_reused_session_id_is_launched_and_never_written_by_the_old_run(
    defs, instance, postgres, store, conn, project
):
    """After `TRUNCATE ... RESTART IDENTITY` (or a second source database on the same Dagster
    instance) a new session gets an id an old run already carries: it is launched all the
    same, and the old run's outcome never lands on it."""
    first = store.create()
    (request,) = _tick(defs, "embedding_sessions", instance, postgres).run_requests
    old_key, old_run = request.run_key, _create_run(instance, defs, dict(request.tags))
    table = sql.Identifier(project.tables.schema_, "embedding_session")
    conn.execute(sql.SQL("TRUNCATE {} RESTART IDENTITY").format(table))
    again = store.create()
    assert again == first

    (request,) = _tick(defs, "embedding_sessions", instance, postgres).run_requests
    assert request.run_key == _run_key(store, again) != old_key
    assert request.tags == _tags(store, again)
    # The old run finishes: its outcome is for a session that no longer exists.
    old_run, event = _finish(instance, old_run, dg.DagsterRunStatus.SUCCESS, "")
    _on_run_status(defs, "embedding_session_completed", instance, postgres, old_run, event)
    assert store.get(again).status == PENDING


def test_sessions_with_zero_and_negative_ids_are_launched(
    defs, instance, postgres, store, conn, project
):
    table = sql.Identifier(project.tables.schema_, "embedding_session")
    ids = [
        row[0]
        for row in conn.execute(
            sql.SQL("INSERT INTO {} (id) VALUES (0), (-5) RETURNING id").format(table)
        )
    ]
    assert ids == [0, -5]
    result = _tick(defs, "embedding_sessions", instance, postgres)
    assert sorted(request.run_key for request in result.run_requests) == sorted(
        _run_key(store, session_id) for session_id in ids
    )


# --- run-status sensors ---------------------------------------------------------------------


def test_a_successful_session_run_completes_the_session(defs, instance, postgres, store):
    session_id = store.create()
    run = _create_run(instance, defs, {SESSION_TAG: str(session_id)})
    store.start(session_id, run.run_id, 40)
    store.add_progress(session_id, 40)
    assert store.get(session_id).progress == 99
    run, event = _finish(instance, run, dg.DagsterRunStatus.SUCCESS, "")

    result = _on_run_status(defs, "embedding_session_completed", instance, postgres, run, event)

    assert result is None
    session = store.get(session_id)
    assert (session.status, session.progress, session.processed_items) == (COMPLETED, 100, 40)
    assert session.finished_at is not None
    assert session.error_message is None


def test_a_failed_session_run_fails_the_session_with_the_failure_message(
    defs, instance, postgres, store, monkeypatch
):
    monkeypatch.setenv("QDRANT_API_KEY", "qdrant-secret-value")
    session_id = store.create()
    run = _create_run(instance, defs, {SESSION_TAG: str(session_id)})
    store.start(session_id, run.run_id, 10)
    run, event = _finish(
        instance, run, dg.DagsterRunStatus.FAILURE, "step doc blew up (key qdrant-secret-value)"
    )

    result = _on_run_status(defs, "embedding_session_failed", instance, postgres, run, event)

    assert result is None
    session = store.get(session_id)
    assert session.status == FAILED
    assert session.error_message == f"run {run.run_id}: step doc blew up (key ***)"
    assert session.run_id == run.run_id
    assert session.finished_at is not None


def test_a_step_message_already_written_is_kept_by_the_failure_sensor(
    defs, instance, postgres, store
):
    session_id = store.create()
    run = _create_run(instance, defs, {SESSION_TAG: str(session_id)})
    store.start(session_id, run.run_id, 10)
    store.fail(session_id, "doc: RuntimeError: precise cause", run.run_id)
    run, event = _finish(instance, run, dg.DagsterRunStatus.FAILURE, "generic run failure")

    _on_run_status(defs, "embedding_session_failed", instance, postgres, run, event)

    assert store.get(session_id).error_message == "doc: RuntimeError: precise cause"
    # Nor does a late success move it.
    _on_run_status(defs, "embedding_session_completed", instance, postgres, run, event)
    assert store.get(session_id).status == FAILED


def test_a_canceled_session_run_fails_the_session(defs, instance, postgres, store):
    session_id = store.create()
    run = _create_run(instance, defs, {SESSION_TAG: str(session_id)})
    store.start(session_id, run.run_id, 10)
    store.add_progress(session_id, 3)
    run, event = _finish(instance, run, dg.DagsterRunStatus.CANCELED, "stopped by an operator")

    result = _on_run_status(defs, "embedding_session_canceled", instance, postgres, run, event)

    assert result is None
    session = store.get(session_id)
    assert session.status == FAILED
    assert session.error_message == f"run {run.run_id} was canceled"
    assert "canceled" in session.error_message
    assert session.run_id == run.run_id
    assert session.processed_items == 3


@pytest.mark.parametrize(
    ("sensor", "status"),
    [
        ("embedding_session_completed", dg.DagsterRunStatus.SUCCESS),
        ("embedding_session_failed", dg.DagsterRunStatus.FAILURE),
        ("embedding_session_canceled", dg.DagsterRunStatus.CANCELED),
    ],
)
def test_runs_without_a_session_are_skipped_and_touch_nothing(
    defs, instance, postgres, store, sensor, status
):
    pending = store.create()
    processing = store.create()
    store.start(processing, "some-other-run", 10)
    before = (store.get(pending), store.get(processing))
    run = _create_run(instance, defs, {"dagster/partition": "det_a"})
    run, event = _finish(instance, run, status, "no session here")

    result = _on_run_status(defs, sensor, instance, postgres, run, event)

    assert isinstance(result, dg.SkipReason)
    assert result.skip_message == "not a session run"
    assert (store.get(pending), store.get(processing)) == before
    assert before[1].status == PROCESSING


# --- pending_rows ---------------------------------------------------------------------------


def test_pending_rows_request_a_sync_of_the_default_model(defs, instance, postgres):
    result = _tick(defs, "pending_rows", instance, postgres)
    assert isinstance(result, dg.RunRequest)
    assert result.partition_key == "det_a"
    assert result.asset_selection == [dg.AssetKey("doc")]
    assert result.tags == {"vector_pipeline/trigger": "pending_rows"}


def test_nothing_pending_for_the_default_model_is_a_skip(defs, instance, postgres, project, conn):
    schema = project.tables.schema_
    # Embedded for the other model only: still pending for the default one.
    _mark_all_embedded(conn, schema, collection_name_for("test", "det-b"))
    assert isinstance(_tick(defs, "pending_rows", instance, postgres), dg.RunRequest)

    _mark_all_embedded(conn, schema, collection_name_for("test", "det-a"))
    result = _tick(defs, "pending_rows", instance, postgres)
    assert isinstance(result, dg.SkipReason)
    assert "det_a" in result.skip_message

    # One edited row makes it pending again (the trigger clears embedded_in).
    conn.execute(
        sql.SQL("UPDATE {} SET title = 'edited' WHERE id = 7").format(sql.Identifier(schema, "doc"))
    )
    assert isinstance(_tick(defs, "pending_rows", instance, postgres), dg.RunRequest)


@pytest.mark.parametrize("status", [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTED])
def test_an_active_sync_of_the_default_model_is_a_skip(defs, instance, postgres, status):
    _create_run(instance, defs, {"dagster/partition": "det_a"}, status)
    result = _tick(defs, "pending_rows", instance, postgres)
    assert isinstance(result, dg.SkipReason)
    assert result.skip_message == "a sync of det_a is already queued or running"


def test_finished_or_other_model_runs_do_not_block_pending_rows(defs, instance, postgres):
    _create_run(instance, defs, {"dagster/partition": "det_b"}, dg.DagsterRunStatus.STARTED)
    done = _create_run(instance, defs, {"dagster/partition": "det_a"}, dg.DagsterRunStatus.STARTED)
    _finish(instance, done, dg.DagsterRunStatus.FAILURE, "earlier failure")
    result = _tick(defs, "pending_rows", instance, postgres)
    assert isinstance(result, dg.RunRequest)
    assert result.partition_key == "det_a"


# --- default statuses and the schedule ------------------------------------------------------


def test_incremental_sync_schedule_requests_the_default_partition(defs, instance):
    schedule = defs.resolve_schedule_def("incremental_sync")
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    assert schedule.cron_schedule == "*/30 * * * *"
    request = schedule(dg.build_schedule_context(instance=instance))
    assert isinstance(request, dg.RunRequest)
    assert request.partition_key == "det_a"
    # Session sensors are on out of the box; the pending-rows sensor is opt-in.
    assert defs.resolve_sensor_def("embedding_sessions").default_status == (
        dg.DefaultSensorStatus.RUNNING
    )
    assert defs.resolve_sensor_def("pending_rows").default_status == dg.DefaultSensorStatus.STOPPED


def test_orchestration_yaml_enables_and_times_the_schedule(project, postgres, instance, schema):
    config_dir = project.config_dir
    (config_dir / "orchestration.yaml").write_text(
        textwrap.dedent(
            """\
            schedule:
              enabled: true
              cron: "0 * * * *"
            sensors:
              pending_rows_enabled: true
              pending_rows_interval_seconds: 17
            """
        )
    )
    reloaded = build_definitions(load_config(config_dir), postgres=postgres)
    schedule = reloaded.resolve_schedule_def("incremental_sync")
    assert schedule.cron_schedule == "0 * * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    pending_rows = reloaded.resolve_sensor_def("pending_rows")
    assert pending_rows.default_status == dg.DefaultSensorStatus.RUNNING
    assert pending_rows.minimum_interval_seconds == 17


def test_the_schedule_follows_the_configured_default_model(tmp_path, schema, instance):
    config = load_config(write_config(tmp_path / "other", schema, default="det_b"))
    schedule = build_definitions(config).resolve_schedule_def("incremental_sync")
    request = schedule(dg.build_schedule_context(instance=instance))
    assert request.partition_key == "det_b"


# --- pending_rows_observer ------------------------------------------------------------------


def test_pending_rows_are_observed_per_partition_and_only_when_they_change(
    defs, instance, postgres, project, conn
):
    def tick(cursor: str | None):
        context = dg.build_sensor_context(
            instance=instance,
            sensor_name="pending_rows_observer",
            resources={"postgres": postgres},
            cursor=cursor,
        )
        return defs.resolve_sensor_def("pending_rows_observer")(context)

    first = tick(None)
    assert isinstance(first, dg.SensorResult)
    seen = {
        (event.asset_key.to_user_string(), event.partition): event.metadata["rows_pending"].value
        for event in first.asset_events
    }
    assert seen == {("doc", "det_a"): 120, ("doc", "det_b"): 120}
    assert isinstance(tick(first.cursor), dg.SkipReason)  # nothing changed: nothing recorded

    _mark_all_embedded(conn, project.tables.schema_, collection_name_for("test", "det-b"))
    changed = tick(first.cursor)
    assert [(e.partition, e.metadata["rows_pending"].value) for e in changed.asset_events] == [
        ("det_b", 0)
    ]
