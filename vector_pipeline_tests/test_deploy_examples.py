"""The README's deployment examples (deploy/*) load: each orchestration.yaml builds its
executor and the code location with it, and each dagster.yaml is a valid instance whose run
launcher accepts its settings."""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import pytest
from dagster._config import process_config
from dagster._core.instance.config import dagster_instance_config
from dagster._core.launcher import RunLauncher

from vector_pipeline.config import load_config, load_orchestration
from vector_pipeline.definitions import build_definitions
from vector_pipeline.orchestration.executors import build_executor

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
EXAMPLES = {"kubernetes": "k8s", "docker": "docker", "celery": "celery"}


def test_every_example_folder_is_tested():
    assert {path.name for path in DEPLOY.iterdir() if path.is_dir()} == set(EXAMPLES)


@pytest.mark.parametrize(("example", "executor"), EXAMPLES.items())
def test_orchestration_example_builds_the_code_location_with_its_executor(
    example, executor, project
):
    scale_out = load_orchestration(DEPLOY / example / "orchestration.yaml").scale_out
    assert build_executor(scale_out).name == executor

    shutil.copy(DEPLOY / example / "orchestration.yaml", project.config_dir / "orchestration.yaml")
    defs = build_definitions(load_config(project.config_dir))
    job = defs.resolve_job_def("embedding_sync")
    assert job.executor_def.name == executor
    workers = {node.name for node in defs.resolve_assets_def("doc").node_def.node_defs}
    assert workers == {f"doc_worker_{i}" for i in range(scale_out.workers)} | {"doc_record"}


@pytest.mark.parametrize("example", EXAMPLES)
def test_instance_example_is_valid(example, monkeypatch):
    monkeypatch.setenv("DAGSTER_PG_URL", "postgresql+psycopg2://dagster@db:5432/dagster")
    config, _ = dagster_instance_config(str(DEPLOY / example))
    assert "postgres" in config["storage"]
    assert config["run_queue"]["tag_concurrency_limits"][0]["key"] == "dagster/partition"
    launcher = config.get("run_launcher")
    if launcher is None:
        return  # the default launcher: runs start as processes beside the daemon
    launcher_class = getattr(importlib.import_module(launcher["module"]), launcher["class"])
    checked = process_config(launcher_class.config_type(), launcher["config"])
    assert checked.success, checked.errors
    assert issubclass(launcher_class, RunLauncher)
