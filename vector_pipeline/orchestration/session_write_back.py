"""Inside a run launched for an `embedding_session`: report start, progress and failure."""

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import dagster as dg

from vector_pipeline.config import ProjectConfig
from vector_pipeline.orchestration.resources import PostgresResource
from vector_pipeline.plan import text_tokens, token_counter
from vector_pipeline.sessions import (
    SessionStore,
    pending_total,
    redact,
    resolve_request,
    token_limit,
)
from vector_pipeline.sync import BatchReport

SESSION_TAG = "vector_pipeline/session_id"
# The session's run_token: ids repeat (RESTART IDENTITY, two source databases), tokens do not.
SESSION_TOKEN_TAG = "vector_pipeline/session_token"


@dataclass(frozen=True)
class SessionHooks:
    """What a sync calls back into for its session; both None when the run serves none."""

    on_batch: Callable[[BatchReport], None] | None = None
    admit: Callable[[Sequence[str]], bool] | None = None


@contextmanager
def session_write_back(
    context: dg.OpExecutionContext | dg.AssetExecutionContext,
    postgres: PostgresResource,
    project: ProjectConfig,
    step: str,
) -> Iterator[SessionHooks]:
    """Yield the session's hooks: per-batch progress and, with a budget, admission.

    `step` names the table (and worker) in an error message. The first step to start moves
    the session to PROCESSING with the rows pending across all of its tables; each batch adds
    its rows atomically; with a token or cost budget, each batch reserves its tokens from the
    session before it is sent (`SessionStore.reserve_tokens`, shared by every step of the run)
    and a batch the budget cannot cover stops the sync. A failing step marks the session FAILED
    with a redacted message before the error propagates. COMPLETED is written when the whole
    run has succeeded, by the run-status sensor, since no single step knows that.
    """
    tag = context.run.tags.get(SESSION_TAG)
    if tag is None:
        yield SessionHooks()
        return
    session_id = int(tag)
    with postgres.connect() as conn:
        store = SessionStore(conn, project.tables.schema_, context.run.tags.get(SESSION_TOKEN_TAG))
        try:
            session = store.get(session_id)
            if session is None:
                raise LookupError(
                    f"embedding_session {session_id} with this run's token does not exist "
                    "(deleted, or the table was emptied since the run was launched)"
                )
            model_key, tables = resolve_request(project, session)
            model = project.embeddings.models[model_key]
            limit = token_limit(session, model_key, model)
            total = pending_total(conn, project, model_key, tables)
            if store.start(session_id, context.run_id, total):
                budget = f"; budget {limit:,} tokens" if limit is not None else ""
                context.log.info(f"session {session_id}: PROCESSING, {total} rows pending{budget}")

            def report(batch: BatchReport) -> None:
                store.add_progress(session_id, batch.rows)

            admit = None
            if limit is not None:
                counter, _ = token_counter(model)

                def admit(texts: Sequence[str]) -> bool:
                    tokens = text_tokens(counter, texts)
                    return store.reserve_tokens(session_id, tokens, limit)

            yield SessionHooks(on_batch=report, admit=admit)
        except Exception as exc:
            message = redact(f"{step}: {type(exc).__name__}: {exc}", project)
            store.fail(session_id, message, context.run_id)
            raise
