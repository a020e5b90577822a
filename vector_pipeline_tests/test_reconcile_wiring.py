"""Reconciliation as the operator meets it: Dagster asset checks and `vector-pipeline repair`."""

from __future__ import annotations

import dagster as dg
import pytest
from click.testing import CliRunner
from qdrant_client import models

from vector_pipeline.cli import main
from vector_pipeline.definitions import build_definitions
from vector_pipeline.locations import QdrantLocation
from vector_pipeline.orchestration.assets import table_assets
from vector_pipeline.orchestration.checks import reconciliation_checks
from vector_pipeline.orchestration.resources import (
    EmbeddingsResource,
    PostgresResource,
    QdrantResource,
)
from vector_pipeline.vector_store import open_qdrant
from vector_pipeline_tests.conftest import reference_point_id

pytestmark = pytest.mark.integration

COLLECTION = "test_det-a_hybrid"


def pid(row_id: int) -> str:
    return reference_point_id("DOC", row_id, COLLECTION)


def cli(project, *args: str):
    return CliRunner().invoke(main, ["--config-dir", str(project.config_dir), *args])


def break_collection(qdrant_path: str) -> None:
    """One missing point (row 3) and one stale point (row 4's hash no longer its text)."""
    with open_qdrant(QdrantLocation(path=qdrant_path)) as qdrant:
        qdrant.delete(COLLECTION, points_selector=models.PointIdsList(points=[pid(3)]), wait=True)
        qdrant.set_payload(COLLECTION, {"content_hash": "0" * 32}, points=[pid(4)], wait=True)


def test_asset_checks_report_and_repair_fixes(project, database_url, qdrant_path, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("QDRANT_PATH", qdrant_path)
    assert cli(project, "sync").exit_code == 0
    break_collection(qdrant_path)

    defs = build_definitions(
        project,
        postgres=PostgresResource(database_url=database_url),
        qdrant=QdrantResource(path=qdrant_path),
    )
    checks = {key.name for key in defs.resolve_asset_graph().asset_check_keys}
    assert checks == {"det_a_in_sync", "det_b_in_sync"}
    check = dg.AssetCheckKey(dg.AssetKey("doc"), "det_a_in_sync")
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [*table_assets(project), *reconciliation_checks(project)],
            selection=dg.AssetSelection.checks(check),
            resources={
                "postgres": PostgresResource(database_url=database_url),
                "qdrant": QdrantResource(path=qdrant_path),
                "embeddings": EmbeddingsResource(config_dir=str(project.config_dir)),
            },
            instance=instance,
        )
    (evaluation,) = result.get_asset_check_evaluations()
    assert not evaluation.passed
    assert evaluation.severity == dg.AssetCheckSeverity.ERROR
    metadata = {key: value.value for key, value in evaluation.metadata.items()}
    assert (metadata["missing_points"], metadata["stale_points"], metadata["orphan_points"]) == (
        1,
        1,
        0,
    )
    assert (metadata["missing_row_ids"], metadata["stale_row_ids"]) == ([3], [4])

    dry = cli(project, "repair", "--dry-run")
    assert dry.exit_code == 1
    assert "missing 1, orphan 0, stale 1" in dry.output

    fixed = cli(project, "repair")
    assert fixed.exit_code == 0, fixed.output
    assert "2 rows made pending, 0 payloads rewritten, 0 orphan points deleted" in fixed.output
    assert "doc: embedded 2 into test_det-a_hybrid" in fixed.output

    clean = cli(project, "repair", "--dry-run")
    assert clean.exit_code == 0, clean.output
    assert "missing 0, orphan 0, stale 0" in clean.output
