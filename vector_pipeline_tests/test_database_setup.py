"""init-db is idempotent, never touches user data, and its trigger covers every writer."""

from __future__ import annotations

import pytest
from psycopg import sql

from vector_pipeline.config import load_config
from vector_pipeline.database_setup import SetupError, setup_database, table_columns
from vector_pipeline_tests.conftest import create_doc_table, write_config


def markers(conn, schema):
    return dict(
        conn.execute(
            sql.SQL("SELECT id, embedded_in FROM {} ORDER BY id").format(
                sql.Identifier(schema, "doc")
            )
        ).fetchall()
    )


def test_setup_adds_column_trigger_and_session_table_idempotently(conn, schema, tmp_path):
    create_doc_table(conn, schema, 5)
    config = load_config(write_config(tmp_path / "c", schema))
    before = conn.execute(
        sql.SQL("SELECT id, title, body FROM {} ORDER BY id").format(sql.Identifier(schema, "doc"))
    ).fetchall()

    first = setup_database(conn, config)
    assert f"added embedded_in to {schema}.doc" in first
    assert f"created {schema}.embedding_session" in first
    column = table_columns(conn, schema, "doc")["embedded_in"]
    assert (column.type, column.not_null) == ("jsonb", True)
    assert list(markers(conn, schema).values()) == [[]] * 5

    doc = sql.Identifier(schema, "doc")
    conn.execute(sql.SQL("""UPDATE {} SET embedded_in = '["c1"]'""").format(doc))
    second = setup_database(conn, config)
    assert not any(line.startswith("added") or line.startswith("created") for line in second)
    # Running setup again kept the markers and the data.
    assert all(m == ["c1"] for m in markers(conn, schema).values())
    after = conn.execute(
        sql.SQL("SELECT id, title, body FROM {} ORDER BY id").format(doc)
    ).fetchall()
    assert after == before

    session_columns = table_columns(conn, schema, "embedding_session")
    assert {
        "id",
        "status",
        "model",
        "tables",
        "total_items",
        "processed_items",
        "progress",
        "error_message",
        "created_at",
        "started_at",
        "finished_at",
        "run_id",
    } <= set(session_columns)


def test_trigger_resets_on_text_change_from_any_writer(conn, schema, tmp_path, database_url):
    import psycopg

    create_doc_table(conn, schema, 4)
    config = load_config(write_config(tmp_path / "c", schema))
    setup_database(conn, config)
    doc = sql.Identifier(schema, "doc")
    conn.execute(sql.SQL("""UPDATE {} SET embedded_in = '["c1", "c2"]'""").format(doc))

    # Another session, in an explicit transaction, as an ORM would write.
    with psycopg.connect(database_url) as orm, orm.transaction():
        orm.execute(sql.SQL("UPDATE {} SET title = %s WHERE id = %s").format(doc), ("New", 1))
    # Text set to NULL counts as a change; a no-op assignment and other columns do not.
    conn.execute(sql.SQL("UPDATE {} SET body = NULL WHERE id = 2").format(doc))
    conn.execute(sql.SQL("UPDATE {} SET body = body, category = 'z' WHERE id = 3").format(doc))
    # A statement that writes the text and embedded_in together still ends up pending.
    conn.execute(
        sql.SQL("""UPDATE {} SET title = 'x', embedded_in = '["c1"]' WHERE id = 4""").format(doc)
    )
    assert markers(conn, schema) == {1: [], 2: [], 3: ["c1", "c2"], 4: []}


def test_existing_embedded_in_of_another_type_is_not_rewritten(conn, schema, tmp_path):
    create_doc_table(conn, schema, 2)
    doc = sql.Identifier(schema, "doc")
    conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN embedded_in text DEFAULT 'keep'").format(doc))
    config = load_config(write_config(tmp_path / "c", schema))
    with pytest.raises(SetupError, match="embedded_in is text, not jsonb"):
        setup_database(conn, config)
    values = conn.execute(sql.SQL("SELECT embedded_in FROM {}").format(doc)).fetchall()
    assert values == [("keep",), ("keep",)]


def test_missing_table_and_column_are_clear_errors(conn, schema, tmp_path):
    config = load_config(write_config(tmp_path / "c", schema))
    with pytest.raises(SetupError, match=f"tables.doc: table {schema}.doc does not exist"):
        setup_database(conn, config)

    conn.execute(
        sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, title text)").format(
            sql.Identifier(schema, "doc")
        )
    )
    with pytest.raises(SetupError, match=r"tables.doc.text_template: .* has no column 'body'"):
        setup_database(conn, config)
