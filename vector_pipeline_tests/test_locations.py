"""Where things live: the embedded PostgreSQL the demo uses when DATABASE_URL is unset (and
nothing else starts), and the Qdrant location from the environment."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from click.testing import CliRunner

from vector_pipeline import locations
from vector_pipeline.cli import main
from vector_pipeline.definitions import build_definitions
from vector_pipeline.orchestration.resources import PostgresResource, QdrantResource
from vector_pipeline_tests.conftest import write_config

pytestmark = pytest.mark.e2e  # tier: see pyproject markers

REPO_ROOT = Path(__file__).resolve().parents[1]
SHIPPED_TABLES = REPO_ROOT / "config" / "tables.yaml"

MISSING = (
    "DATABASE_URL is not set: export DATABASE_URL=postgresql://USER:PASSWORD@HOST:5432/DBNAME "
    "(only `vector-pipeline demo`, `seed-demo` and `dev` start an embedded PostgreSQL, under "
)


def test_embedded_postgres_starts_only_when_asked_is_reused_and_stops(tmp_path, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv(locations.STATE_DIR_ENV, str(tmp_path / "state"))
    pgdata = tmp_path / "state" / "postgres"
    with pytest.raises(locations.SettingError) as missing:
        locations.database_url()
    assert str(missing.value) == f"{MISSING}{pgdata})"
    assert not pgdata.exists()  # nothing was started or created

    url = locations.database_url(start_embedded=True)  # what demo, seed-demo and dev do
    try:
        assert str(pgdata) in url
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT 40 + 2").fetchone() == (42,)
        assert locations.database_url() == url  # once created, every command reuses it
    finally:
        assert locations.stop_embedded_database() is True
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)
    assert locations.stop_embedded_database() is False
    monkeypatch.setenv("DATABASE_URL", "postgresql://app@db.internal:5432/kb")
    assert locations.database_url(start_embedded=True) == "postgresql://app@db.internal:5432/kb"


def test_dagster_run_without_database_url_fails_naming_it(
    project, qdrant_path, tmp_path, monkeypatch
):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv(locations.STATE_DIR_ENV, str(tmp_path / "worker"))
    defs = build_definitions(
        project, postgres=PostgresResource(), qdrant=QdrantResource(path=qdrant_path)
    )
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [defs.resolve_assets_def("doc")],
            partition_key="det_a",
            instance=instance,
            raise_on_error=False,
        )
    assert not result.success
    (failure,) = [event for event in result.all_events if event.is_step_failure]
    error = failure.step_failure_data.error.cause  # Dagster wraps what the step raised
    assert error.cls_name == "SettingError"
    worker_pgdata = tmp_path / "worker" / "postgres"
    assert error.message.strip() == (
        f"vector_pipeline.locations.SettingError: {MISSING}{worker_pgdata})"
    )
    assert not (tmp_path / "worker").exists()  # no private, empty database was started


def test_cli_without_database_url_fails_in_one_line(project, tmp_path, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv(locations.STATE_DIR_ENV, str(tmp_path / "state"))
    for command in ("status", "sync", "init-db"):
        result = CliRunner().invoke(main, ["--config-dir", str(project.config_dir), command])
        assert result.exit_code == 1, result.output
        assert result.output == f"Error: {MISSING}{tmp_path / 'state' / 'postgres'})\n"
    assert not (tmp_path / "state" / "postgres").exists()


def test_qdrant_location_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("QDRANT_URL", raising=False)
    monkeypatch.delenv("QDRANT_PATH", raising=False)
    monkeypatch.setenv(locations.STATE_DIR_ENV, str(tmp_path))
    assert locations.qdrant_location() == locations.QdrantLocation(path=str(tmp_path / "qdrant"))
    monkeypatch.setenv("QDRANT_PATH", str(tmp_path / "elsewhere"))
    assert locations.qdrant_location().path == str(tmp_path / "elsewhere")
    monkeypatch.setenv("QDRANT_URL", "http://qdrant.internal:6333")
    monkeypatch.setenv("QDRANT_API_KEY", "secret-qdrant-key")
    remote = locations.qdrant_location()
    assert (remote.url, remote.api_key, remote.path) == (
        "http://qdrant.internal:6333",
        "secret-qdrant-key",
        None,
    )
    assert "secret-qdrant-key" not in repr(remote) + remote.describe()


def test_seed_demo_starts_the_embedded_server_and_later_commands_reuse_it(tmp_path, monkeypatch):
    # The README's quick start: `make demo` (seed-demo, then sync...), then any command.
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv(locations.STATE_DIR_ENV, str(tmp_path / "state"))
    config_dir = write_config(tmp_path / "config", "public", tables=SHIPPED_TABLES.read_text())
    runner = CliRunner()
    try:
        seeded = runner.invoke(
            main,
            ["--config-dir", str(config_dir), "seed-demo", "--articles", "3", "--hadiths", "2"],
        )
        assert seeded.exit_code == 0, seeded.output
        status = runner.invoke(main, ["--config-dir", str(config_dir), "status", "--json"])
        assert status.exit_code == 0, status.output
        totals = {(row["table"], row["model"]): row["total"] for row in json.loads(status.output)}
        assert totals[("article", "det_a")] == 3
        assert totals[("hadith", "det_a")] == 2
    finally:
        assert locations.stop_embedded_database() is True


def test_dev_starts_the_embedded_server_and_hands_dagster_its_url(tmp_path, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("DAGSTER_PG_URL", raising=False)
    monkeypatch.setenv(locations.STATE_DIR_ENV, str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)  # dev changes into DAGSTER_HOME; monkeypatch changes back
    launched: list[dict[str, str]] = []

    class Exec(Exception):
        pass

    def execve(path: str, argv: list[str], env: dict[str, str]) -> None:
        launched.append(dict(env))
        raise Exec  # where the real one would become dagster dev

    monkeypatch.setattr(os, "execve", execve)
    try:
        result = CliRunner().invoke(main, ["--config-dir", str(REPO_ROOT / "config"), "dev"])
        assert isinstance(result.exception, Exec), result.output
        (env,) = launched
        assert str(tmp_path / "state" / "postgres") in env["DATABASE_URL"]
        with psycopg.connect(env["DATABASE_URL"]) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        # Dagster's storage: a `dagster` database on that same embedded server.
        assert env["DAGSTER_PG_URL"].startswith("postgresql+psycopg2://postgres:@/dagster?host=")
        assert str(tmp_path / "state" / "postgres").replace("/", "%2F") in env["DAGSTER_PG_URL"]
    finally:
        assert locations.stop_embedded_database() is True
