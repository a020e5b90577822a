"""The shipped Django model of `embedding_session` (integrations/django) on the real table: a
session created as an admin form would is filled in by PostgreSQL and launched by the
pipeline, and the progress the pipeline writes reads back through Django. inspectdb's model
of the same table cannot insert at all, which is why the shipped one exists."""

from __future__ import annotations

import io
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import psycopg
import pytest
from psycopg import sql

from vector_pipeline.config import ProjectConfig, load_config
from vector_pipeline.database_setup import setup_database
from vector_pipeline.sessions import (
    COMPLETED,
    PENDING,
    PROCESSING,
    SessionStore,
    pending_total,
    resolve_request,
)
from vector_pipeline.source import connect
from vector_pipeline_tests.conftest import create_doc_table, write_config

pytestmark = pytest.mark.integration

MODEL_FILE = Path(__file__).resolve().parents[1] / "integrations/django/embedding_session_model.py"
# The installed app the models below belong to, as if copied into its models.py.
APP = "vector_pipeline_tests"
ROWS = 5


def load_models(name: str, source: str) -> ModuleType:
    """Run a models module's `source` as `APP.name`, as Django would import it."""
    module = ModuleType(f"{APP}.{name}")
    sys.modules[module.__name__] = module
    exec(compile(source, f"<{module.__name__}>", "exec"), module.__dict__)
    return module


@pytest.fixture(scope="module")
def django_project(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProjectConfig]:
    """A schema set up by init-db (one `doc` table), with Django configured to use it."""
    import django
    from django.conf import settings

    if settings.configured:  # settings can be configured once per process
        pytest.fail("Django was configured before this module; it needs its own settings")
    schema = f"dj_{uuid.uuid4().hex[:10]}"
    config = load_config(write_config(tmp_path_factory.mktemp("django") / "config", schema))
    with connect(database_url) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        create_doc_table(conn, schema, ROWS)
        setup_database(conn, config)
    server = psycopg.conninfo.conninfo_to_dict(database_url)
    settings.configure(
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": server["dbname"],
                "USER": server.get("user", ""),
                "PASSWORD": server.get("password", ""),
                "HOST": server.get("host", ""),
                "PORT": server.get("port", ""),
                "OPTIONS": {"options": f"-c search_path={schema}"},
            }
        },
        INSTALLED_APPS=[APP],
        USE_TZ=True,
    )
    django.setup()
    try:
        yield config
    finally:
        from django.db import connections

        connections.close_all()
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture(scope="module")
def session_model(django_project: ProjectConfig) -> type:
    return load_models("embedding_session", MODEL_FILE.read_text()).EmbeddingSession


def test_admin_created_session_is_launched_and_shows_progress(
    django_project: ProjectConfig, session_model: type, conn: psycopg.Connection
):
    config = django_project
    schema = config.tables.schema_
    # Only what an admin form sets; PostgreSQL fills in the rest, and Django reads it back.
    created = session_model.objects.create(model="det_b", tables=["doc"], token_budget=10_000)
    assert (created.status, created.progress, created.total_items) == (PENDING, 0, 0)
    assert isinstance(created.run_token, uuid.UUID) and created.created_at is not None

    # The pipeline's launcher finds it, with the token its run will carry, and can serve it.
    store = SessionStore(conn, schema)
    (session,) = [s for s in store.pending() if s.id == created.pk]
    assert (session.run_token, session.token_budget) == (created.run_token, 10_000)
    model, tables = resolve_request(config, session)
    assert (model, [table.name for table in tables]) == ("det_b", ["doc"])

    # The run reports on the session as it goes; an admin page reads it through Django.
    run = SessionStore(conn, schema, str(session.run_token))
    assert run.start(session.id, "run-1", pending_total(conn, config, model, tables))
    run.add_progress(session.id, 2)
    created.refresh_from_db()
    assert (created.status, created.total_items, created.processed_items, created.progress) == (
        PROCESSING,
        ROWS,
        2,
        40,
    )
    assert created.run_id == "run-1" and created.started_at is not None
    assert not created.finished

    # A save of the instance, which still holds that progress, writes only the request
    # columns and leaves what the run wrote since then alone.
    run.add_progress(session.id, 3)
    assert run.complete(session.id)
    created.token_budget = 1000
    created.save()
    row = store.get(session.id)
    assert (row.status, row.processed_items, row.progress) == (COMPLETED, ROWS, 100)
    assert row.token_budget == 1000
    created.refresh_from_db()
    assert created.finished and created.progress == 100 and created.finished_at is not None


def test_inspectdb_model_cannot_insert_a_session(
    django_project: ProjectConfig, session_model: type
):
    from django.core.management import call_command
    from django.db import IntegrityError

    printed = io.StringIO()
    call_command("inspectdb", "embedding_session", stdout=printed)
    source = printed.getvalue()
    assert "db_default" not in source
    # Renamed only so that both models can live in one app.
    inspected = load_models(
        "inspected_embedding_session",
        source.replace("class EmbeddingSession(", "class InspectedEmbeddingSession("),
    ).InspectedEmbeddingSession
    before = session_model.objects.count()
    with pytest.raises(IntegrityError):
        inspected.objects.create(model="det_a")
    assert session_model.objects.count() == before
