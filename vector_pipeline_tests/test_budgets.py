"""Session budgets: a run stops before the batch that would overspend, the session ends FAILED
with 'budget exceeded', and everything embedded before that stays done."""

from __future__ import annotations

import dagster as dg
import pytest
from psycopg import sql

from vector_pipeline.definitions import build_definitions
from vector_pipeline.orchestration.resources import PostgresResource, QdrantResource
from vector_pipeline.orchestration.session_write_back import SESSION_TAG
from vector_pipeline.sessions import SessionStore
from vector_pipeline_tests.conftest import API_KEY_VARIABLE, api_project, create_doc_table
from vector_pipeline_tests.openai_server import FakeOpenAIServer, count_cl100k

pytestmark = pytest.mark.integration

PRICE = 0.02  # dollars per million tokens
BATCH = 20


def run_session(conn, schema, tmp_path, qdrant_path, database_url, priced=True, **budget):
    """Create a session for the `api` model with `budget` and run it as Dagster would."""
    price = {"price_per_million_tokens": PRICE} if priced else {}
    with FakeOpenAIServer(api_key="k", dimensions=8) as server:
        config = api_project(conn, schema, tmp_path, server.url, **price)
        store = SessionStore(conn, schema)
        session_id = store.create("api", **budget)
        defs = build_definitions(
            config,
            postgres=PostgresResource(database_url=database_url),
            qdrant=QdrantResource(path=qdrant_path),
        )
        with dg.instance_for_test() as instance:
            dg.materialize(
                [defs.resolve_assets_def("doc")],
                partition_key="api",
                instance=instance,
                tags={SESSION_TAG: str(session_id)},
                run_config={"ops": {"doc": {"config": {"batch_size": BATCH}}}},
                raise_on_error=False,
            )
        billed = [sum(count_cl100k(text) for text in r.inputs) for r in server.requests]
    return store.get(session_id), billed


def marked(conn, schema) -> int:
    return conn.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE embedded_in <> '[]'::jsonb").format(
            sql.Identifier(schema, "doc")
        )
    ).fetchone()[0]


@pytest.mark.parametrize(
    "budget",
    [{"token_budget": 1000}, {"cost_budget": 1000 * PRICE / 1_000_000}],
    ids=["tokens", "dollars"],
)
def test_a_budget_stops_the_run_before_it_overspends_and_keeps_the_progress(
    conn, schema, tmp_path, qdrant_path, database_url, monkeypatch, budget
):
    monkeypatch.setenv(API_KEY_VARIABLE, "k")
    create_doc_table(conn, schema, 200)
    session, billed = run_session(conn, schema, tmp_path, qdrant_path, database_url, **budget)

    assert session.status == "FAILED"
    assert "BudgetExceeded: budget exceeded" in session.error_message
    # Whole batches only, never past the limit, and the next one would not have fit.
    done = len(billed) * BATCH
    following = sum(
        count_cl100k(f"TITLE: Title {i}\nCONTENT: Body of document {i} about topic {i % 7}")
        for i in range(done + 1, done + BATCH + 1)
    )
    assert billed and sum(billed) <= 1000 < sum(billed) + following
    assert session.tokens_used == sum(billed)
    assert marked(conn, schema) == session.processed_items == done
    assert session.total_items == 200 and done < 200


def test_a_cost_budget_needs_a_price(
    conn, schema, tmp_path, qdrant_path, database_url, monkeypatch
):
    monkeypatch.setenv(API_KEY_VARIABLE, "k")
    create_doc_table(conn, schema, 30)
    session, billed = run_session(
        conn, schema, tmp_path, qdrant_path, database_url, priced=False, cost_budget=1
    )
    assert session.status == "FAILED"
    assert "no price_per_million_tokens" in session.error_message
    assert billed == [] and marked(conn, schema) == 0


def test_a_budget_that_covers_everything_changes_nothing(
    conn, schema, tmp_path, qdrant_path, database_url, monkeypatch
):
    monkeypatch.setenv(API_KEY_VARIABLE, "k")
    create_doc_table(conn, schema, 50)
    session, billed = run_session(
        conn, schema, tmp_path, qdrant_path, database_url, token_budget=10**6
    )
    # The run succeeded; COMPLETED is the run-status sensor's to write (test_sensors.py).
    assert session.status == "PROCESSING" and session.error_message is None
    assert session.tokens_used == sum(billed) and marked(conn, schema) == 50
