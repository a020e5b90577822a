"""`plan`: pending rows, tokens and cost before anything is sent, and the estimate holds."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from psycopg import sql

from vector_pipeline.cli import main
from vector_pipeline.locations import QdrantLocation
from vector_pipeline.plan import plan
from vector_pipeline.vector_store import open_qdrant
from vector_pipeline_tests.conftest import (
    API_KEY_VARIABLE,
    api_project,
    create_doc_table,
    sync_model,
)
from vector_pipeline_tests.openai_server import FakeOpenAIServer

pytestmark = pytest.mark.integration

PRICE = 0.02  # dollars per million tokens, text-embedding-3-small's list price


def priced_project(conn, schema, tmp_path, url: str = "http://127.0.0.1:9/v1"):
    """Nothing listens on port 9: a plan must not call the API."""
    return api_project(
        conn, schema, tmp_path, url, price_per_million_tokens=PRICE, max_tokens_per_input=40
    )


def test_the_plan_is_what_the_provider_then_bills(conn, schema, tmp_path, qdrant_path, monkeypatch):
    create_doc_table(conn, schema, 150)
    doc = sql.Identifier(schema, "doc")
    conn.execute(sql.SQL("UPDATE {} SET title = NULL, body = NULL WHERE id <= 5").format(doc))
    conn.execute(
        sql.SQL("UPDATE {} SET body = repeat('long words ', 100) WHERE id = 9").format(doc)
    )
    monkeypatch.delenv(API_KEY_VARIABLE, raising=False)  # a plan needs no key: nothing is sent
    with FakeOpenAIServer(api_key="k", dimensions=8) as server:
        config = priced_project(conn, schema, tmp_path, server.url)
        (entry,) = plan(conn, config, ["api"])
        assert server.requests == []

        monkeypatch.setenv(API_KEY_VARIABLE, "k")
        with open_qdrant(QdrantLocation(path=qdrant_path)) as qdrant:
            result = sync_model(config, conn, qdrant, "api")

    assert (entry.pending, entry.rows_read, entry.no_text) == (150, 150, 5)
    assert entry.exact and entry.tokenizer == "cl100k_base"
    # The server counts with OpenAI's tokenizer and reports usage; the sync adds it up. Row 9
    # is over the 40-token input limit: both count the chunks it is split into.
    assert (result.truncated, result.chunked) == (0, 1)
    assert entry.tokens == result.tokens
    assert entry.cost == pytest.approx(result.tokens * PRICE / 1_000_000)
    (after,) = plan(conn, config, ["api"])
    assert (after.pending, after.tokens, after.cost) == (0, 0, 0.0)


def test_a_sample_is_scaled_to_every_pending_row(conn, schema, tmp_path):
    create_doc_table(conn, schema, 400)
    config = priced_project(conn, schema, tmp_path)
    (full,) = plan(conn, config, ["api"])
    (sampled,) = plan(conn, config, ["api"], sample=100)
    assert (full.exact, sampled.exact, sampled.rows_read) == (True, False, 100)
    assert sampled.pending == full.pending == 400
    assert sampled.tokens == pytest.approx(full.tokens, rel=0.1)


def test_plan_command_prints_tokens_and_cost_without_an_api_key(
    conn, schema, tmp_path, database_url, monkeypatch
):
    create_doc_table(conn, schema, 60)
    config = priced_project(conn, schema, tmp_path)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.delenv(API_KEY_VARIABLE, raising=False)
    runner = CliRunner()
    base = ["--config-dir", str(config.config_dir), "plan"]

    shown = runner.invoke(main, [*base, "--model", "api", "--model", "det_a"])
    assert shown.exit_code == 0, shown.output
    (entry,) = plan(conn, config, ["api"])
    lines = shown.output.splitlines()
    assert lines[0].split() == ["table", "model", "pending", "tokens", "cost"]
    assert lines[1].split() == ["doc", "api", "60", f"{entry.tokens:,}", f"${entry.cost:,.4f}"]
    assert lines[2].split() == ["doc", "det_a", "60", lines[2].split()[3], "$0.0000"]
    assert "api: tokens counted with cl100k_base; $0.02 per 1M tokens" in shown.output

    as_json = runner.invoke(main, [*base, "--model", "api", "--json"])
    assert json.loads(as_json.output)[0]["tokens"] == entry.tokens

    unknown = runner.invoke(main, [*base, "--table", "nope"])
    assert unknown.exit_code != 0 and "unknown table 'nope'" in unknown.output


def test_the_plan_leaves_out_rows_whose_point_already_holds_their_text(
    conn, schema, tmp_path, qdrant_path, monkeypatch
):
    """After marks are lost (a restore, a voided store), the plan shows what the sync will
    really send: only the rows whose text changed."""
    create_doc_table(conn, schema, 40)
    monkeypatch.setenv(API_KEY_VARIABLE, "k")
    doc = sql.Identifier(schema, "doc")
    with FakeOpenAIServer(api_key="k", dimensions=8) as server:
        config = priced_project(conn, schema, tmp_path, server.url)
        with open_qdrant(QdrantLocation(path=qdrant_path)) as qdrant:
            assert sync_model(config, conn, qdrant, "api").embedded == 40
            conn.execute(sql.SQL("UPDATE {} SET embedded_in = '[]'").format(doc))
            conn.execute(sql.SQL("UPDATE {} SET body = 'rewritten' WHERE id <= 3").format(doc))
            (blind,) = plan(conn, config, ["api"])
            (entry,) = plan(conn, config, ["api"], qdrant=qdrant)
            sent_before = len(server.requests)
            result = sync_model(config, conn, qdrant, "api")
            sent = [text for request in server.requests[sent_before:] for text in request.inputs]

    assert (blind.pending, blind.already_current) == (40, None)
    assert (entry.pending, entry.already_current) == (40, 37)
    assert (result.embedded, result.adopted) == (3, 37)
    assert len(sent) == 3 and all("rewritten" in text for text in sent)
    assert entry.tokens == result.tokens < blind.tokens
