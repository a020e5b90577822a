"""Blue/green model switch: readers query `{base}_active`, which moves to the new default
model's collection only when that holds every row, in one atomic alias update."""

from __future__ import annotations

import fcntl
import json

import pytest
from click.testing import CliRunner
from psycopg import sql
from qdrant_client import models

from vector_pipeline.aliases import serving
from vector_pipeline.cli import main
from vector_pipeline.config import ConfigError, load_config
from vector_pipeline.sparse import Bm25
from vector_pipeline_tests.conftest import sync_model, write_config

pytestmark = pytest.mark.integration

ALIAS = "test_active"
OLD, NEW = "test_det-a_hybrid", "test_det-b_hybrid"
ROWS = 120  # the `project` fixture's doc table


def switched(project, schema):
    """The same project after `default:` in embeddings.yaml is changed to det_b."""
    return load_config(write_config(project.config_dir, schema, default="det_b"))


def read_through_alias(qdrant) -> str:
    """What a reader does: count and search the alias (BM25, which any model's collection
    answers). Every read must see the whole table. Returns the collection that served it."""
    assert qdrant.count(ALIAS, exact=True).count == ROWS
    sparse = Bm25().embed_query("document about topic 3")
    hits = qdrant.query_points(
        ALIAS,
        query=models.SparseVector(indices=sparse.indices, values=sparse.values),
        using="sparse",
        limit=10,
    ).points
    assert len(hits) == 10
    return serving(qdrant, ALIAS) or ""


def test_readers_see_full_results_throughout_a_model_switch(project, schema, conn, qdrant):
    first = sync_model(project, conn, qdrant)  # det_a, the default
    assert (first.alias, first.alias_serves) == (ALIAS, OLD)
    assert read_through_alias(qdrant) == OLD

    after_switch = switched(project, schema)
    served: list[str] = []
    result = sync_model(
        after_switch,
        conn,
        qdrant,
        batch_size=20,
        on_batch=lambda batch: served.append(read_through_alias(qdrant)),
    )
    # Six batches of the new collection filling up; readers stayed on the old one throughout.
    assert served == [OLD] * 6
    assert (result.alias, result.alias_serves) == (ALIAS, NEW)
    assert read_through_alias(qdrant) == NEW
    # The old collection is left as it was, for A/B comparisons.
    assert qdrant.count(OLD, exact=True).count == ROWS


def test_an_unfinished_switch_leaves_readers_on_the_old_collection(project, schema, conn, qdrant):
    sync_model(project, conn, qdrant)
    after_switch = switched(project, schema)

    def stop_after_two(batch):
        if len(stops) == 1:
            raise RuntimeError("the sync dies mid-way")
        stops.append(batch)

    stops: list[object] = []
    with pytest.raises(RuntimeError, match="mid-way"):
        sync_model(after_switch, conn, qdrant, batch_size=20, on_batch=stop_after_two)
    assert read_through_alias(qdrant) == OLD

    # Rows without text are skipped, not missing: they do not hold the switch back.
    doc = sql.Identifier(schema, "doc")
    conn.execute(sql.SQL("UPDATE {} SET title = NULL, body = NULL WHERE id = 1").format(doc))
    sync_model(after_switch, conn, qdrant)
    assert serving(qdrant, ALIAS) == NEW


def test_syncing_another_model_never_moves_the_alias(project, conn, qdrant):
    sync_model(project, conn, qdrant)
    other = sync_model(project, conn, qdrant, "det_b")  # complete, but not the default
    assert (other.alias, other.alias_serves) == (None, None)
    assert serving(qdrant, ALIAS) == OLD


def test_status_shows_which_collection_the_alias_serves(
    project, schema, conn, qdrant_path, database_url, monkeypatch
):
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("QDRANT_PATH", qdrant_path)
    monkeypatch.delenv("QDRANT_URL", raising=False)
    runner = CliRunner()
    base = ["--config-dir", str(project.config_dir)]
    assert runner.invoke(main, [*base, "sync"]).exit_code == 0

    shown = runner.invoke(main, [*base, "status"])
    assert shown.exit_code == 0, shown.output
    lines = [line.split() for line in shown.output.splitlines()]
    assert lines[0][-1] == "alias"
    assert lines[1][:3] == ["doc", "det_a", OLD] and lines[1][-1] == ALIAS
    assert lines[2][:3] == ["doc", "det_b", NEW] and lines[2][-1] != ALIAS
    as_json = json.loads(runner.invoke(main, [*base, "status", "--json"]).output)
    assert [(r["model"], r["alias"], r["alias_serves_this"]) for r in as_json] == [
        ("det_a", ALIAS, True),
        ("det_b", ALIAS, False),
    ]


@pytest.mark.parametrize(
    ("value", "match"),
    [("{base}_live", "may use only {collection_base}"), ("{collection_base}_hybrid", "_hybrid")],
)
def test_a_bad_alias_template_is_refused(tmp_path, schema, value, match):
    directory = write_config(tmp_path / "c", schema)
    tables = (directory / "tables.yaml").read_text()
    (directory / "tables.yaml").write_text(f'active_alias: "{value}"\n' + tables)
    with pytest.raises(ConfigError, match=f"tables.yaml: active_alias: .*{match}"):
        load_config(directory)


def test_status_does_not_wait_for_a_local_folder_a_sync_holds(
    project, conn, qdrant_path, database_url, monkeypatch
):
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("QDRANT_PATH", qdrant_path)
    monkeypatch.delenv("QDRANT_URL", raising=False)
    # What a running sync in another process holds: the lock file beside the folder.
    with open(qdrant_path + ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        shown = CliRunner().invoke(main, ["--config-dir", str(project.config_dir), "status"])
    assert shown.exit_code == 0, shown.output
    assert "aliases not shown: Qdrant local storage" in shown.output
    assert shown.output.splitlines()[1].split()[:4] == ["doc", "det_a", OLD, "120"]
