"""The Dagster definitions load, and materializing one partition syncs that model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
from psycopg import sql

from vector_pipeline.config import collection_name_for
from vector_pipeline.definitions import build_definitions
from vector_pipeline.orchestration.resources import PostgresResource, QdrantResource

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
    (untouched,) = conn.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE embedded_in @> %s::jsonb").format(
            sql.Identifier(project.tables.schema_, "doc")
        ),
        (f'["{other}"]',),
    ).fetchone()
    assert untouched == 0


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
