"""Every failure is one line naming the component, with no traceback unless `--debug` is given,
and never holds a secret: the CLI, the logs, Dagster's event log and the session rows are
searched for a sentinel password and API key."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from psycopg import sql

from vector_pipeline.database_setup import FINITE_BUDGET, setup_database
from vector_pipeline.definitions import build_definitions
from vector_pipeline.orchestration.resources import PostgresResource, QdrantResource
from vector_pipeline.orchestration.session_write_back import SESSION_TAG
from vector_pipeline.sessions import SessionStore
from vector_pipeline_tests.conftest import (
    API_KEY_VARIABLE,
    api_project,
    create_doc_table,
    write_config,
)
from vector_pipeline_tests.openai_server import FakeOpenAIServer, Fault

pytestmark = pytest.mark.e2e

PASSWORD = "Sentinel-Passw0rd-7f3a"
API_KEY = "sk-sentinel-apikey-91c2e"


def cli(config_dir: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """The CLI in a process of its own, as a user runs it: exit code and stdout + stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "vector_pipeline.cli", "--config-dir", str(config_dir), *args],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout + done.stderr


def assert_one_line_error(code: int, output: str, *expected: str) -> str:
    assert code == 1, output
    assert "Traceback" not in output
    assert PASSWORD not in output and API_KEY not in output
    lines = [line for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and len(errors[0]) < 1000, output
    for text in expected:
        assert text in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def env(database_url: str, qdrant_path: str) -> dict[str, str]:
    return {"DATABASE_URL": database_url, "QDRANT_PATH": qdrant_path, "QDRANT_URL": ""}


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql//postgres:{PASSWORD}@127.0.0.1/test",  # no ':' after the scheme
        f"postgresql://postgres:{PASSWORD}%zz@127.0.0.1/test",  # bad percent-encoding
        f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/test?nonsense=1",
    ],
    ids=["not-a-url", "bad-escape", "unknown-parameter"],
)
def test_a_malformed_database_url_never_shows_its_password(project, env, url):
    code, output = cli(project.config_dir, "status", env={**env, "DATABASE_URL": url})
    assert_one_line_error(code, output, "PostgreSQL: DATABASE_URL is not a valid connection URL")
    # --debug shows the traceback, still without the password.
    code, output = cli(project.config_dir, "--debug", "status", env={**env, "DATABASE_URL": url})
    assert code == 1 and "Traceback" in output
    assert PASSWORD not in output


def test_an_unreachable_database_is_one_line_naming_it(project, env):
    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/test"
    code, output = cli(project.config_dir, "sync", env={**env, "DATABASE_URL": url})
    assert_one_line_error(code, output, "PostgreSQL at host=127.0.0.1 port=1", "could not connect")


def test_a_yaml_syntax_error_names_file_line_and_column_not_the_line(tmp_path, schema, env):
    config = write_config(tmp_path / "config", schema)
    embeddings = config / "embeddings.yaml"
    embeddings.write_text(embeddings.read_text() + f"    api_key: {API_KEY}: oops\n")
    code, output = cli(config, "status", env=env)
    lines = len(embeddings.read_text().splitlines())
    assert_one_line_error(code, output, f"{embeddings}: not valid YAML at line {lines}, column")


def test_a_qdrant_path_that_is_a_file_is_one_line(project, env, tmp_path):
    path = tmp_path / "not-a-folder"
    path.write_text("")
    code, output = cli(project.config_dir, "sync", env={**env, "QDRANT_PATH": str(path)})
    assert_one_line_error(code, output, f"Qdrant local storage {path}: cannot use it", "a file")


def test_a_qdrant_folder_that_cannot_be_written_is_one_line(project, env):
    # /proc refuses new entries even to root, as a read-only mount does.
    code, output = cli(project.config_dir, "sync", env={**env, "QDRANT_PATH": "/proc/qdrant"})
    assert_one_line_error(code, output, "Qdrant local storage /proc/qdrant: cannot use it")


def test_a_view_configured_as_a_table_is_one_line(tmp_path, schema, conn, env):
    create_doc_table(conn, schema, 3)
    conn.execute(
        sql.SQL("CREATE VIEW {} AS SELECT * FROM {}").format(
            sql.Identifier(schema, "docs"), sql.Identifier(schema, "doc")
        )
    )
    config = write_config(
        tmp_path / "config",
        schema,
        tables=f"schema: {schema}\ncollection_base: test\ntables:\n  doc:\n    table: docs\n"
        "    data_type: DOC\n    primary_key: id\n    text_template: '{title}'\n",
    )
    code, output = cli(config, "sync", env=env)
    assert_one_line_error(code, output, f"{schema}.docs is a view")


def test_a_text_embedded_in_at_sync_time_is_one_line(project, conn, env):
    schema = project.tables.schema_
    doc = sql.Identifier(schema, "doc")
    # As an application's migration might leave it: the column recreated as text.
    conn.execute(sql.SQL("ALTER TABLE {} DROP COLUMN embedded_in CASCADE").format(doc))
    conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN embedded_in text").format(doc))
    code, output = cli(project.config_dir, "sync", env=env)
    assert_one_line_error(code, output, f"{schema}.doc.embedded_in is text, not jsonb", "init-db")


def test_a_huge_table_name_makes_a_short_line(tmp_path, schema, env):
    name = "t" * 1_000_000
    config = write_config(
        tmp_path / "config",
        schema,
        tables=f"schema: {schema}\ncollection_base: test\ntables:\n  doc:\n    table: {name}\n"
        "    data_type: DOC\n    primary_key: id\n    text_template: '{title}'\n",
    )
    code, output = cli(config, "status", env=env)
    assert_one_line_error(code, output, "does not exist", "(1,000,000 characters)")


def test_nan_and_infinite_budgets_are_rejected(project, conn, env):
    schema = project.tables.schema_
    table = sql.Identifier(schema, "embedding_session")
    for budget in ("NaN", "Infinity"):
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(
                sql.SQL("INSERT INTO {} (cost_budget) VALUES (%s::numeric)").format(table),
                (budget,),
            )
        code, output = cli(
            project.config_dir, "session", "create", "--cost-budget", budget.lower(), env=env
        )
        assert code == 2 and "is not a finite number" in output, output
    conn.execute(sql.SQL("INSERT INTO {} (cost_budget) VALUES (0.5)").format(table))
    # Added to a table made before the check, and only once.
    conn.execute(
        sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(table, sql.Identifier(FINITE_BUDGET))
    )
    setup_database(conn, project)
    setup_database(conn, project)
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(sql.SQL("INSERT INTO {} (cost_budget) VALUES ('NaN')").format(table))


def test_the_sentinel_secrets_appear_in_no_output(
    conn, schema, tmp_path, qdrant_path, database_url, monkeypatch, caplog
):
    """A password and an API key, each where a user puts them, through every way out: the CLI,
    Python logs, Dagster's event log and the session rows."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(API_KEY_VARIABLE, API_KEY)
    captured: list[str] = []
    create_doc_table(conn, schema, 20)
    with FakeOpenAIServer(api_key="another-key", dimensions=8) as server:
        config = api_project(conn, schema, tmp_path, server.url)
        env = {
            "DATABASE_URL": database_url,
            "QDRANT_PATH": qdrant_path,
            "QDRANT_URL": "",
            API_KEY_VARIABLE: API_KEY,
        }
        # The provider refuses the key (a 401 that quotes it, as OpenAI's does in part).
        server.fail_always(Fault.http_status(401, message=f"Incorrect API key provided: {API_KEY}"))
        captured.append(cli(config.config_dir, "sync", "--model", "api", env=env)[1])
        bad_url = f"postgresql//postgres:{PASSWORD}@127.0.0.1/test"
        captured.append(cli(config.config_dir, "status", env={**env, "DATABASE_URL": bad_url})[1])

        # Dagster: a session run the provider fails, and a run whose resource URL is malformed.
        store = SessionStore(conn, schema)
        session_id = store.create("api")
        for url in (database_url, bad_url):
            defs = build_definitions(
                config,
                postgres=PostgresResource(database_url=url),
                qdrant=QdrantResource(path=qdrant_path),
            )
            with dg.instance_for_test() as instance:
                result = dg.materialize(
                    [defs.resolve_assets_def("doc")],
                    partition_key="api",
                    instance=instance,
                    tags={SESSION_TAG: str(session_id)},
                    raise_on_error=False,
                )
                assert not result.success
                for record in instance.get_event_records(
                    dg.EventRecordsFilter(event_type=dg.DagsterEventType.STEP_FAILURE)
                ):
                    captured.append(str(record.event_log_entry.to_json()))
                events = [entry.to_json() for entry in instance.all_logs(result.run_id)]
                if url == bad_url:
                    assert any("not a valid connection URL" in event for event in events)
                captured.extend(events)
    rows = conn.execute(
        sql.SQL("SELECT * FROM {}").format(sql.Identifier(schema, "embedding_session"))
    ).fetchall()
    assert any("401" in str(row) for row in rows), rows
    captured.append(str(rows))
    captured.extend(record.getMessage() for record in caplog.records)
    joined = "\n".join(captured)
    assert "DATABASE_URL is not a valid connection URL" in joined  # the failure was seen
    assert PASSWORD not in joined
    assert API_KEY not in joined
