"""The triggers a table's marks rely on: a sync refuses to run without them, init-db restores
them without locking a table that is already right, and a text_template change re-embeds
exactly the rows whose text changed."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from vector_pipeline.config import ProjectConfig
from vector_pipeline.database_setup import SetupError, setup_database
from vector_pipeline.plan import plan
from vector_pipeline.status import sync_status
from vector_pipeline_tests.conftest import doc_config, marked_count, sync_model

pytestmark = pytest.mark.integration

COLLECTION = "test_det-a_hybrid"


def _config(tmp_path: Path, schema: str, template: str, name: str = "config") -> ProjectConfig:
    return doc_config(tmp_path / name, schema, template, payload_columns="[title, category]")


def _marked(conn: psycopg.Connection, schema: str) -> int:
    return marked_count(conn, schema, COLLECTION)


def test_a_trigger_dropped_with_a_column_stops_every_sync_until_init_db(
    project, conn, qdrant, schema, tmp_path
):
    doc = sql.Identifier(schema, "doc")
    conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN extra text").format(doc))
    with_extra = _config(tmp_path, schema, "{title} {body} {extra}", "with_extra")
    setup_database(conn, with_extra)
    assert sync_model(with_extra, conn, qdrant).embedded == 120

    # The column leaves the template and the table; CASCADE takes the reset trigger with it.
    conn.execute(sql.SQL("ALTER TABLE {} DROP COLUMN extra CASCADE").format(doc))
    without = _config(tmp_path, schema, "{title} {body}", "without")
    with pytest.raises(SetupError) as refused:
        sync_model(without, conn, qdrant)
    message = str(refused.value)
    assert "trigger vector_pipeline_reset_embedded_in is missing" in message
    assert "run `vector-pipeline init-db`" in message and "\n" not in message
    (status,) = sync_status(conn, without, ["det_a"])
    assert status.trigger_problems == ["trigger vector_pipeline_reset_embedded_in is missing"]

    setup_database(conn, without)
    assert sync_status(conn, without, ["det_a"])[0].trigger_problems == []
    sync_model(without, conn, qdrant)
    conn.execute(sql.SQL("UPDATE {} SET body = 'edited' WHERE id = 3").format(doc))
    assert _marked(conn, schema) == 119  # the edit is seen again


def test_a_disabled_trigger_stops_every_sync(project, conn, qdrant, schema):
    conn.execute(
        sql.SQL("ALTER TABLE {} DISABLE TRIGGER vector_pipeline_record_delete").format(
            sql.Identifier(schema, "doc")
        )
    )
    with pytest.raises(SetupError, match="trigger vector_pipeline_record_delete is disabled"):
        sync_model(project, conn, qdrant)


def test_init_db_again_takes_no_lock_on_a_table_that_is_right(project, conn, schema, database_url):
    """A re-run while the application holds a row lock must not queue behind it (and make
    every later writer queue behind init-db)."""
    doc = sql.Identifier(schema, "doc")
    with psycopg.connect(database_url) as app:  # a transaction left open, holding a row lock
        app.execute(sql.SQL("UPDATE {} SET views = views + 1 WHERE id = 1").format(doc))
        conn.execute("SET lock_timeout = '500ms'")
        try:
            done = setup_database(conn, project)
        finally:
            conn.execute("RESET lock_timeout")
        app.rollback()
    assert not any(line.startswith("triggers on") for line in done), done


def test_a_template_change_re_embeds_exactly_the_rows_whose_text_changed(
    project, conn, qdrant, schema, tmp_path
):
    doc = sql.Identifier(schema, "doc")
    conn.execute(sql.SQL("UPDATE {} SET category = NULL WHERE id > 10").format(doc))
    before = _config(tmp_path, schema, "{title}: {body}", "before")
    setup_database(conn, before)
    sync_model(before, conn, qdrant)
    assert _marked(conn, schema) == 120

    # The new template renders differently only where category is set (rows 1-10).
    after = _config(tmp_path, schema, "{title}: {body}{category}", "after")
    with pytest.raises(SetupError, match="does not match config/tables.yaml"):
        sync_model(after, conn, qdrant)  # init-db first: the trigger watches the old columns
    setup_database(conn, after)
    (estimate,) = plan(conn, after, ["det_a"], qdrant=qdrant)
    assert (estimate.pending, estimate.already_current) == (120, 110)

    result = sync_model(after, conn, qdrant)
    assert (result.marks_voided, result.embedded, result.adopted) == (120, 10, 110)
    (point,) = qdrant.retrieve(COLLECTION, [result_point(1)], with_payload=True)
    assert point.payload["content"] == "Title 1: Body of document 1 about topic 1cat1"
    again = sync_model(after, conn, qdrant)
    assert (again.marks_voided, again.embedded, again.adopted) == (0, 0, 0)


def result_point(row_id: int) -> str:
    from vector_pipeline.points import point_id

    return point_id("DOC", str(row_id), COLLECTION)


# --- writers the reset trigger does not see by column name ----------------------------------


def _search_text_project(tmp_path, schema, conn) -> ProjectConfig:
    return _config(tmp_path, schema, "{search_text}", "search_text")


def _content(qdrant, row_id: int) -> str:
    (point,) = qdrant.retrieve(COLLECTION, [result_point(row_id)], with_payload=True)
    return point.payload["content"]


def test_a_template_column_set_by_the_applications_own_trigger(
    project, conn, qdrant, schema, tmp_path
):
    doc = sql.Identifier(schema, "doc")
    conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN search_text text").format(doc))
    conn.execute(
        sql.SQL(
            """
            CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                NEW.search_text := NEW.title || ' | ' || NEW.body;
                RETURN NEW;
            END $$;
            CREATE TRIGGER set_search_text BEFORE INSERT OR UPDATE ON {doc}
            FOR EACH ROW EXECUTE FUNCTION {function}();
            UPDATE {doc} SET title = title;
            """
        ).format(function=sql.Identifier(schema, "set_search_text"), doc=doc)
    )
    config = _search_text_project(tmp_path, schema, conn)
    setup_database(conn, config)
    sync_model(config, conn, qdrant)
    assert _content(qdrant, 4) == "Title 4 | Body of document 4 about topic 4"

    # The statement names only `body`; the application's trigger rewrites `search_text`.
    conn.execute(sql.SQL("UPDATE {} SET body = 'rewritten' WHERE id = 4").format(doc))
    assert sync_model(config, conn, qdrant).embedded == 1
    assert _content(qdrant, 4) == "Title 4 | rewritten"


def test_an_application_trigger_added_later_or_running_after_ours_stops_the_sync(
    project, conn, qdrant, schema
):
    doc = sql.Identifier(schema, "doc")
    sync_model(project, conn, qdrant)
    conn.execute(
        sql.SQL(
            """
            CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RETURN NEW; END $$;
            CREATE TRIGGER zz_touch BEFORE UPDATE ON {doc}
            FOR EACH ROW EXECUTE FUNCTION {function}();
            """
        ).format(function=sql.Identifier(schema, "touch"), doc=doc)
    )
    with pytest.raises(SetupError) as refused:
        sync_model(project, conn, qdrant)
    message = str(refused.value)
    # The reset trigger must now watch every UPDATE, and zz_touch runs after it.
    assert "vector_pipeline_reset_embedded_in does not match" in message
    assert "trigger zz_touch runs after vector_pipeline_reset_embedded_in" in message
    conn.execute(sql.SQL("ALTER TRIGGER zz_touch ON {} RENAME TO aa_touch").format(doc))
    setup_database(conn, project)
    assert sync_model(project, conn, qdrant).embedded == 0


def test_a_stored_generated_column_in_the_template(project, conn, qdrant, schema, tmp_path):
    doc = sql.Identifier(schema, "doc")
    conn.execute(
        sql.SQL(
            "ALTER TABLE {} ADD COLUMN search_text text "
            "GENERATED ALWAYS AS (title || ' | ' || body) STORED"
        ).format(doc)
    )
    config = _search_text_project(tmp_path, schema, conn)
    setup_database(conn, config)  # used to fail: a WHEN cannot read NEW of a generated column
    sync_model(config, conn, qdrant)
    conn.execute(sql.SQL("UPDATE {} SET body = 'regenerated' WHERE id = 6").format(doc))
    assert sync_model(config, conn, qdrant).embedded == 1
    assert _content(qdrant, 6) == "Title 6 | regenerated"


def test_init_db_waits_briefly_says_for_whom_and_retries(
    project, conn, schema, database_url, tmp_path
):
    """A trigger that must change needs a table lock: init-db asks for it with a short lock
    timeout, names the transaction in the way, and tries again, so the application's writers
    are never stuck behind it for long; it succeeds once the transaction ends."""
    doc = sql.Identifier(schema, "doc")
    changed = _config(tmp_path, schema, "{title} {category}", "changed")
    waits: list[str] = []
    with psycopg.connect(database_url, application_name="long-report") as app:
        app.execute(sql.SQL("UPDATE {} SET views = views + 1 WHERE id = 1").format(doc))

        def end_the_transaction_on_second_wait(message: str) -> None:
            waits.append(message)
            if len(waits) == 2:
                app.rollback()

        done = setup_database(
            conn, changed, on_wait=end_the_transaction_on_second_wait, lock_timeout=0.1
        )
    assert len(waits) == 2
    assert waits[0].startswith(f"waiting for a lock on {schema}.doc held by pid ")
    assert "long-report" in waits[0] and "idle in transaction" in waits[0]
    assert any("installed vector_pipeline_reset_embedded_in" in line for line in done)


def test_init_db_gives_up_with_the_holder_named(project, conn, schema, database_url, tmp_path):
    doc = sql.Identifier(schema, "doc")
    changed = _config(tmp_path, schema, "{title} {category}", "changed")
    with psycopg.connect(database_url, application_name="never-ends") as app:
        app.execute(sql.SQL("UPDATE {} SET views = views + 1 WHERE id = 1").format(doc))
        with pytest.raises(SetupError) as refused:
            setup_database(conn, changed, lock_timeout=0.05, max_wait=0.2)
        app.rollback()
    message = str(refused.value)
    assert f"gave up after 0 s waiting for a lock on {schema}.doc held by pid" in message
    assert "never-ends" in message and "\n" not in message
