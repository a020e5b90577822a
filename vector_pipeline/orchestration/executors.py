"""The executor every job of the code location runs its steps with (`scale_out` in
config/orchestration.yaml): local processes, or Kubernetes, Docker or Celery workers."""

from __future__ import annotations

import importlib
import os

import dagster as dg

from vector_pipeline.config import EXECUTORS, ORCHESTRATION_FILE, ConfigError, ScaleOutConfig

# The optional package each executor comes from, as pip names it.
PACKAGES = {
    "dagster_k8s": "dagster-k8s",
    "dagster_docker": "dagster-docker",
    "dagster_celery": "dagster-celery",
    "dagster_celery_k8s": "dagster-celery-k8s",
}


def build_executor(scale_out: ScaleOutConfig) -> dg.ExecutorDefinition:
    """The configured executor; a clear ConfigError when its package or settings are wrong."""
    module_name, attribute = EXECUTORS[scale_out.executor]
    key = f"{ORCHESTRATION_FILE}: scale_out.executor"
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        package = PACKAGES.get(module_name, module_name)
        raise ConfigError(
            f"{key}: {scale_out.executor!r} needs the package {package}; install it with "
            "`pip install 'vector-pipeline[distributed]'` or choose another executor"
        ) from None
    executor: dg.ExecutorDefinition = getattr(module, attribute)
    settings = dict(scale_out.executor_config)
    if scale_out.executor == "multiprocess" and "max_concurrent" not in settings:
        # Workers mostly wait on the embedding API, so all of them run at once even on a
        # machine with fewer cores (Dagster's default is one process per core).
        settings["max_concurrent"] = max(scale_out.workers, os.cpu_count() or 1)
    if not settings:
        return executor
    _check(executor, settings, scale_out.executor)
    return executor.configured(settings, name=executor.name)


def _check(executor: dg.ExecutorDefinition, settings: dict[str, object], name: str) -> None:
    # `configured` does not validate; running the settings through a job's run config does.
    @dg.job(executor_def=executor, name="vector_pipeline_executor_probe")
    def probe() -> None:
        pass

    try:
        dg.validate_run_config(probe, {"execution": {"config": settings}})
    except dg.DagsterInvalidConfigError as exc:
        problems = "; ".join(error.message for error in exc.errors)
        raise ConfigError(
            f"{ORCHESTRATION_FILE}: scale_out.executor_config does not fit the {name} "
            f"executor: {problems}"
        ) from None
