"""Inside a run launched for an `embedding_session`: report start, progress and failure."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import dagster as dg

from vector_pipeline.config import ProjectConfig
from vector_pipeline.orchestration.resources import PostgresResource
from vector_pipeline.sessions import SessionStore, pending_total, redact, resolve_request
from vector_pipeline.sync import BatchReport

SESSION_TAG = "vector_pipeline/session_id"


@contextmanager
def session_write_back(
    context: dg.OpExecutionContext | dg.AssetExecutionContext,
    postgres: PostgresResource,
    project: ProjectConfig,
    step: str,
) -> Iterator[Callable[[BatchReport], None] | None]:
    """Yield a per-batch progress callback, or None when the run serves no session.

    `step` names the table (and worker) in an error message. The first step to start moves
    the session to PROCESSING with the rows pending across all of its tables; each batch adds
    its rows atomically; a failing step marks the session FAILED with a redacted message before
    the error propagates. COMPLETED is written when the
    whole run has succeeded, by the run-status sensor, since no single step knows that.
    """
    tag = context.run.tags.get(SESSION_TAG)
    if tag is None:
        yield None
        return
    session_id = int(tag)
    with postgres.connect() as conn:
        store = SessionStore(conn, project.tables.schema_)
        try:
            session = store.get(session_id)
            if session is None:
                raise LookupError(f"embedding_session {session_id} does not exist")
            model, tables = resolve_request(project, session)
            total = pending_total(conn, project, model, tables)
            if store.start(session_id, context.run_id, total):
                context.log.info(f"session {session_id}: PROCESSING, {total} rows pending")

            def report(batch: BatchReport) -> None:
                store.add_progress(session_id, batch.rows)

            yield report
        except Exception as exc:
            message = redact(f"{step}: {type(exc).__name__}: {exc}", project)
            store.fail(session_id, message, context.run_id)
            raise
