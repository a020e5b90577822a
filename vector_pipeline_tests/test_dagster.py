"""The Dagster definitions load, and materializing one partition syncs that model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from psycopg import sql

from vector_pipeline.config import ConfigError, collection_name_for, load_config
from vector_pipeline.definitions import build_definitions
from vector_pipeline.orchestration.resources import PostgresResource, QdrantResource
from vector_pipeline_tests.conftest import marked_count

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_definitions_have_one_asset_per_table_partitioned_by_model(project):
    defs = build_definitions(project)
    asset = defs.resolve_assets_def("doc")
    assert asset.partitions_def.get_partition_keys() == ["det_a", "det_b"]
    assert set(defs.resources) == {"postgres", "qdrant", "embeddings"}
    assert {"postgres", "qdrant"} <= set(asset.specs_by_key[dg.AssetKey("doc")].kinds)


def test_materializing_one_partition_syncs_that_model(project, database_url, qdrant_path, conn):
    defs = build_definitions(
        project,
        postgres=PostgresResource(database_url=database_url),
        qdrant=QdrantResource(path=qdrant_path),
    )
    # The resolved asset carries the definitions' resources, as a run launched from the UI does.
    asset = defs.resolve_assets_def("doc")
    with dg.instance_for_test() as instance:
        result = dg.materialize([asset], partition_key="det_b", instance=instance)
    assert result.success
    (materialization,) = result.asset_materializations_for_node("doc")
    metadata = {key: value.value for key, value in materialization.metadata.items()}
    collection = collection_name_for("test", "det-b")
    assert metadata["rows_embedded"] == 120
    assert metadata["rows_pending"] == 0
    assert metadata["rows_skipped"] == 0
    assert metadata["collection"] == collection
    assert metadata["model"] == "det_b"
    assert metadata["seconds"] > 0

    marked = conn.execute(
        sql.SQL("SELECT count(*) FILTER (WHERE embedded_in @> %s::jsonb), count(*) FROM {}").format(
            sql.Identifier(project.tables.schema_, "doc")
        ),
        (f'["{collection}"]',),
    ).fetchone()
    assert marked == (120, 120)
    # The other partition's collection was not touched.
    other = collection_name_for("test", "det-a")
    assert marked_count(conn, project.tables.schema_, other) == 0


@pytest.mark.slow
def test_the_shipped_workspace_loads_in_dagster(dagster_storage_url):
    """What `dagster dev` loads from the repository root: dagster.yaml (instance on PostgreSQL)
    and workspace.yaml -> vector_pipeline.definitions with the shipped config."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("VECTOR_PIPELINE", "DAGSTER"))},
        "DAGSTER_PG_URL": dagster_storage_url,
    }
    completed = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    assert "Validation successful" in output


# -- scale-out: N worker steps per (table, model) ------------------------------------------


def scaled_out(project, workers: int, executor: str = "", executor_config: str = "") -> Path:
    """The project's config folder with `scale_out` set; returns the folder."""
    lines = [f"  workers: {workers}"]
    if executor:
        lines.append(f"  executor: {executor}")
    if executor_config:
        lines.append(f"  executor_config: {executor_config}")
    (project.config_dir / "orchestration.yaml").write_text("scale_out:\n" + "\n".join(lines))
    return project.config_dir


def scaled_out_job() -> dg.JobDefinition:
    """The sync job of the config folder in $VECTOR_PIPELINE_CONFIG_DIR, rebuilt the same way
    in each step's process (what `dg.reconstructable` needs)."""
    return build_definitions().resolve_job_def("embedding_sync")


def test_workers_are_steps_of_one_materialization(project, database_url, qdrant_path, conn):
    config = load_config(scaled_out(project, 3))
    defs = build_definitions(
        config,
        postgres=PostgresResource(database_url=database_url),
        qdrant=QdrantResource(path=qdrant_path),
    )
    asset = defs.resolve_assets_def("doc")
    assert {node.name for node in asset.node_def.node_defs} == {
        "doc_worker_0",
        "doc_worker_1",
        "doc_worker_2",
        "doc_record",
    }
    with dg.instance_for_test() as instance:
        result = dg.materialize([asset], partition_key="det_a", instance=instance)
        assert result.success
        steps = {
            event.step_key
            for event in result.all_events
            if event.is_step_success and event.step_key
        }
    assert steps == {f"doc.doc_worker_{i}" for i in range(3)} | {"doc.doc_record"}
    (materialization,) = result.asset_materializations_for_node("doc")
    metadata = {key: value.value for key, value in materialization.metadata.items()}
    # Summed over the workers (here they ran one after another, so one did everything).
    assert (metadata["rows_embedded"], metadata["rows_pending"], metadata["rows_total"]) == (
        120,
        0,
        120,
    )
    assert metadata["collection"] == collection_name_for("test", "det-a")


@pytest.mark.slow
def test_workers_run_as_separate_processes_under_the_multiprocess_executor(
    project, database_url, qdrant_path, conn, monkeypatch
):
    scaled_out(project, 2, "multiprocess", "{max_concurrent: 2}")
    monkeypatch.setenv("VECTOR_PIPELINE_CONFIG_DIR", str(project.config_dir))
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("QDRANT_PATH", qdrant_path)  # local mode: the workers take turns
    monkeypatch.delenv("QDRANT_URL", raising=False)
    with dg.instance_for_test() as instance:
        result = dg.execute_job(
            dg.reconstructable(scaled_out_job), instance, tags={"dagster/partition": "det_b"}
        )
        assert result.success
        pids = {
            event.pid
            for event in result.all_events
            if event.is_step_start and event.step_key.startswith("doc.doc_worker_")
        }
        (materialization,) = result.asset_materializations_for_node("doc")
    assert len(pids) == 2 and os.getpid() not in pids  # a process per worker step
    assert materialization.metadata["rows_embedded"].value == 120
    collection = collection_name_for("test", "det-b")
    assert marked_count(conn, project.tables.schema_, collection) == 120


@pytest.mark.parametrize(
    ("executor", "settings", "match"),
    [
        ("multiprocess", "{max_concurent: 4}", 'unexpected config entry "max_concurent"'),
        ("k8s", "{job_namespace: 5}", "job_namespace"),
    ],
)
def test_bad_executor_settings_are_refused_when_the_code_location_loads(
    project, executor, settings, match
):
    config = load_config(scaled_out(project, 2, executor, settings))
    with pytest.raises(
        ConfigError, match=f"orchestration.yaml: scale_out.executor_config.*{match}"
    ):
        build_definitions(config)
