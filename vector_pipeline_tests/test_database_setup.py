"""init-db is idempotent, never touches user data, and its trigger covers every writer."""

from __future__ import annotations

import json

import psycopg
import pytest
from psycopg import sql

from vector_pipeline.config import collection_name_for, load_config
from vector_pipeline.database_setup import (
    SetupError,
    pending_condition,
    setup_database,
    table_columns,
)
from vector_pipeline_tests.conftest import create_doc_table, write_config

pytestmark = pytest.mark.integration


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


def pending_ids(conn, config):
    """Ids of `doc` pending for det_a's collection, checked against the product's own count."""
    from vector_pipeline.source import SourceTable

    table = config.tables.tables[0]
    collection = collection_name_for(table.collection_base, config.embeddings.models["det_a"].id)
    ids = [
        row_id
        for (row_id,) in conn.execute(
            sql.SQL("SELECT id FROM {} WHERE {} ORDER BY id").format(
                sql.Identifier(config.tables.schema_for(table), table.table),
                pending_condition(collection),
            )
        )
    ]
    assert SourceTable.for_config(conn, config, table).pending_count(collection) == len(ids)
    return ids


def test_django_json_field_gets_a_database_default(conn, schema, tmp_path):
    doc = sql.Identifier(schema, "doc")
    # What Django 5.2 creates for `embedded_in = models.JSONField(default=list)` (checked with
    # its schema editor): NOT NULL and no database default, since Django fills it in Python.
    conn.execute(
        sql.SQL(
            'CREATE TABLE {} ("id" bigint NOT NULL PRIMARY KEY GENERATED BY DEFAULT AS IDENTITY, '
            '"title" text NOT NULL, "body" text NOT NULL, "category" text NOT NULL, '
            '"embedded_in" jsonb NOT NULL)'
        ).format(doc)
    )
    config = load_config(write_config(tmp_path / "c", schema))
    collection = collection_name_for("test", "det-a")
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (title, body, category, embedded_in) VALUES ('Old', 'b', 'c', %s)"
        ).format(doc),
        (json.dumps([collection]),),
    )
    plain_insert = sql.SQL(
        "INSERT INTO {} (title, body, category) VALUES ('New', 'b', 'c') RETURNING id"
    ).format(doc)
    with pytest.raises(psycopg.errors.NotNullViolation):
        conn.execute(plain_insert)

    assert f"set the default of {schema}.doc.embedded_in to '[]'" in setup_database(conn, config)
    (new_id,) = conn.execute(plain_insert).fetchone()
    assert markers(conn, schema)[new_id] == []
    assert pending_ids(conn, config) == [new_id]  # the Django-written mark still counts

    # Idempotent: a second run changes nothing.
    assert not any("default" in line for line in setup_database(conn, config))
    assert table_columns(conn, schema, "doc")["embedded_in"].default == "'[]'::jsonb"


def test_an_existing_embedded_in_default_is_left_alone(conn, schema, tmp_path):
    create_doc_table(conn, schema, 2)
    doc = sql.Identifier(schema, "doc")
    conn.execute(
        sql.SQL("ALTER TABLE {} ADD COLUMN embedded_in jsonb DEFAULT jsonb_build_array()").format(
            doc
        )
    )
    config = load_config(write_config(tmp_path / "c", schema))
    assert not any("default" in line for line in setup_database(conn, config))
    assert table_columns(conn, schema, "doc")["embedded_in"].default == "jsonb_build_array()"


# Values an application may have left in a text `embedded_in`, and what they become.
TEXT_MARKERS = {
    1: ("[]", []),
    2: ('["x_hybrid"]', ["x_hybrid"]),
    3: ('[ "x_hybrid", "test_det-a_hybrid" ]', ["x_hybrid", "test_det-a_hybrid"]),
    4: ("", []),
    5: ("x_hybrid", []),
    6: ('{"x_hybrid": true}', []),
    7: ('["a\\\\b \\"q\\""]', ['a\\b "q"']),
    8: ('["unfinished"', []),
}
JSON_MARKERS = {1: ("[]", []), 2: ('["x_hybrid"]', ["x_hybrid"]), 3: ('"x_hybrid"', [])}


@pytest.mark.parametrize(
    ("column_type", "not_null", "values"),
    [
        ("text", True, TEXT_MARKERS),
        ("text", False, {**TEXT_MARKERS, 9: (None, [])}),
        ("character varying(200)", False, {**TEXT_MARKERS, 9: (None, [])}),
        ("json", True, JSON_MARKERS),
        ("json", False, {**JSON_MARKERS, 4: (None, [])}),
    ],
)
def test_printed_fix_for_a_textual_embedded_in_converts_it(
    conn, schema, tmp_path, database_url, monkeypatch, column_type, not_null, values
):
    from click.testing import CliRunner

    from vector_pipeline.cli import main

    create_doc_table(conn, schema, len(values))
    doc = sql.Identifier(schema, "doc")
    conn.execute(
        sql.SQL("ALTER TABLE {} ADD COLUMN embedded_in {} {} DEFAULT '[]'").format(
            doc, sql.SQL(column_type), sql.SQL("NOT NULL" if not_null else "")
        )
    )
    for row_id, (value, _) in values.items():
        conn.execute(
            sql.SQL("UPDATE {} SET embedded_in = %s WHERE id = %s").format(doc), (value, row_id)
        )
    config_dir = write_config(tmp_path / "c", schema)
    monkeypatch.setenv("DATABASE_URL", database_url)

    def init_db():
        return CliRunner().invoke(main, ["--config-dir", str(config_dir), "init-db"])

    refused = init_db()
    assert refused.exit_code == 1, refused.output
    assert f"embedded_in is {column_type}, not jsonb" in refused.output
    (fix,) = [line for line in refused.output.splitlines() if line.startswith("ALTER TABLE")]
    conn.execute(fix)

    done = init_db()
    assert done.exit_code == 0, done.output
    column = table_columns(conn, schema, "doc")["embedded_in"]
    assert (column.type, column.not_null, column.default) == ("jsonb", not_null, "'[]'::jsonb")
    assert markers(conn, schema) == {row_id: after for row_id, (_, after) in values.items()}
    conn.execute(sql.SQL("INSERT INTO {} (id, title) VALUES (100, 'new')").format(doc))
    config = load_config(config_dir)
    kept = [row_id for row_id, (_, after) in values.items() if "test_det-a_hybrid" in after]
    assert pending_ids(conn, config) == [*sorted(set(values) - set(kept)), 100]
