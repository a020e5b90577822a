"""The `vector-pipeline` command line, run in-process against the real database and Qdrant."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from vector_pipeline.cli import main
from vector_pipeline_tests.conftest import write_config

pytestmark = pytest.mark.integration

SHIPPED_TABLES = Path(__file__).resolve().parents[1] / "config" / "tables.yaml"


@pytest.fixture
def demo_config(tmp_path: Path, schema: str) -> Path:
    """The shipped demo tables in a test schema, with the fast deterministic models."""
    tables = SHIPPED_TABLES.read_text().replace("schema: public", f"schema: {schema}")
    assert schema in tables
    return write_config(tmp_path / "config", schema, tables=tables)


@pytest.fixture
def cli(monkeypatch, database_url: str, qdrant_path: str):
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("QDRANT_PATH", qdrant_path)
    monkeypatch.delenv("QDRANT_URL", raising=False)
    runner = CliRunner()

    def invoke(config_dir: Path, *args: str):
        return runner.invoke(main, ["--config-dir", str(config_dir), *args])

    return invoke


def test_seed_sync_status_search(cli, demo_config):
    seeded = cli(demo_config, "seed-demo", "--articles", "40", "--hadiths", "30")
    assert seeded.exit_code == 0, seeded.output
    assert "article: inserted 40 rows" in seeded.output
    assert "hadith: inserted 30 rows" in seeded.output

    synced = cli(demo_config, "sync", "--batch-size", "16")
    assert synced.exit_code == 0, synced.output
    assert "article: embedded 40 into knowledge_det-a_hybrid" in synced.output
    assert "hadith: embedded 30 into knowledge_det-a_hybrid" in synced.output

    status = cli(demo_config, "status", "--json")
    assert status.exit_code == 0, status.output
    rows = {(row["table"], row["model"]): row for row in json.loads(status.output)}
    assert set(rows) == {(t, m) for t in ("article", "hadith") for m in ("det_a", "det_b")}
    assert rows["article", "det_a"] == {
        "table": "article",
        "model": "det_a",
        "collection": "knowledge_det-a_hybrid",
        "total": 40,
        "embedded": 40,
        "pending": 0,
        "skipped": 0,
        # Readers' alias serves the default model's collection, now complete.
        "alias": "knowledge_active",
        "alias_serves_this": True,
        # The collection is the store these rows were marked in.
        "verified": True,
        "trigger_problems": [],
    }
    assert (rows["hadith", "det_b"]["embedded"], rows["hadith", "det_b"]["pending"]) == (0, 30)
    assert rows["hadith", "det_b"]["verified"] is False  # never synced: nothing to vouch for

    again = cli(demo_config, "sync", "--table", "hadith")
    assert "hadith: embedded 0 into" in again.output
    assert "article" not in again.output

    found = cli(demo_config, "search", "grow tomatoes garden", "--limit", "3")
    assert found.exit_code == 0, found.output
    hits = [line for line in found.output.splitlines() if line.lstrip()[:2] in {"1.", "2.", "3."}]
    assert len(hits) == 3

    table = cli(demo_config, "status")
    assert table.output.splitlines()[0].split() == [
        "table",
        "model",
        "collection",
        "total",
        "embedded",
        "pending",
        "skipped",
        "alias",
    ]


def test_missing_api_key_fails_before_any_row_is_read(cli, tmp_path, schema, monkeypatch):
    monkeypatch.delenv("VP_UNSET_KEY", raising=False)
    config = write_config(
        tmp_path / "config",
        schema,
        extra_models="""\
        paid:
          provider: openai
          id: text-embedding-3-small
          dimensions: 8
          api_key: ${VP_UNSET_KEY}
        """,
    )
    # A database nobody listens on: reaching it would fail with a different error.
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:9/none?connect_timeout=1")
    result = cli(config, "sync", "--model", "paid")
    assert result.exit_code == 1
    assert "VP_UNSET_KEY" in result.output
    assert "connection" not in result.output.lower()
    assert "Traceback" not in result.output


def test_bad_config_is_one_clear_message(cli, tmp_path, schema):
    config = write_config(tmp_path / "config", schema)
    tables = config / "tables.yaml"
    tables.write_text(tables.read_text().replace("primary_key: id", "primary_column: id"))
    result = cli(config, "status")
    assert result.exit_code == 1
    assert f"{tables}: tables.doc.primary_column: unknown key" in result.output
    assert "Traceback" not in result.output


def test_unknown_table_and_model_are_named(cli, tmp_path, schema, conn):
    config = write_config(tmp_path / "config", schema)
    result = cli(config, "sync", "--table", "nope")
    assert result.exit_code == 1
    assert "unknown table 'nope'; tables.yaml defines: doc" in result.output
    result = cli(config, "sync", "--model", "nope")
    assert "unknown model 'nope'; embeddings.yaml defines: det_a, det_b" in result.output


def test_session_create_and_watch(cli, project, conn):
    from vector_pipeline.sessions import SessionStore

    created = cli(project.config_dir, "session", "create", "--model", "det_b", "--table", "doc")
    assert created.exit_code == 0, created.output
    session_id = int(created.output.strip())
    store = SessionStore(conn, project.tables.schema_)
    session = store.get(session_id)
    assert (session.status, session.model, session.tables) == ("PENDING", "det_b", ["doc"])

    store.start(session_id, "run-1", 10)
    store.add_progress(session_id, 10)
    store.complete(session_id)
    watched = cli(project.config_dir, "session", "watch", str(session_id))
    assert watched.exit_code == 0, watched.output
    assert f"session {session_id} COMPLETED: 10 of 10 rows processed (run run-1)" in watched.output

    failing = store.create()
    store.fail(failing, "doc: EmbeddingError: the provider said no")
    watched = cli(project.config_dir, "session", "watch", str(failing))
    assert watched.exit_code == 1
    assert "FAILED: doc: EmbeddingError: the provider said no" in watched.output

    unknown = cli(project.config_dir, "session", "create", "--table", "ghost")
    assert unknown.exit_code == 1
    assert "unknown table 'ghost'" in unknown.output
