"""Identifiers from config with quotes, spaces, mixed case and reserved words work end to end,
because every one goes through the driver's quoting; what cannot work is refused clearly."""

from __future__ import annotations

import pytest
from psycopg import sql

from vector_pipeline.config import ConfigError, load_config
from vector_pipeline.database_setup import SetupError, setup_database
from vector_pipeline.locations import QdrantLocation
from vector_pipeline.reconcile import reconcile
from vector_pipeline.vector_store import open_qdrant
from vector_pipeline_tests.conftest import sync_model, write_config

pytestmark = pytest.mark.integration

TABLE = 'Odd "Table" Name; DROP'


def tables_yaml(schema: str, **overrides: str) -> str:
    settings = {
        "table": f"'{TABLE}'",
        "data_type": "ODD",
        "primary_key": "Id",
        "text_template": "'{select} / {Order}'",
        "payload_columns": "['note text', 'user']",
        **overrides,
    }
    lines = "\n".join(f"    {key}: {value}" for key, value in settings.items())
    return f"schema: '{schema}'\ncollection_base: test\ntables:\n  odd:\n{lines}\n"


@pytest.fixture
def odd_schema(conn, schema):
    # The test schema itself gets a hostile name too.
    name = f'{schema} "Sch"'
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    conn.execute(
        sql.SQL(
            'CREATE TABLE {} ("Id" int PRIMARY KEY, "select" text, "Order" text, '
            '"note text" text, "user" text)'
        ).format(sql.Identifier(name, TABLE))
    )
    conn.execute(
        sql.SQL(
            'INSERT INTO {} ("Id", "select", "Order", "note text", "user") '
            "SELECT i, 'pick ' || i, 'order ' || i, 'note', 'u' FROM generate_series(1, 30) i"
        ).format(sql.Identifier(name, TABLE))
    )
    yield name
    conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


def test_quoted_mixed_case_and_reserved_identifiers_sync_end_to_end(
    conn, odd_schema, tmp_path, qdrant_path
):
    config = load_config(write_config(tmp_path / "c", odd_schema, tables=tables_yaml(odd_schema)))
    setup_database(conn, config)
    setup_database(conn, config)  # idempotent with these names too
    table = config.tables.table("odd")
    relation = sql.Identifier(odd_schema, TABLE)
    with open_qdrant(QdrantLocation(path=qdrant_path)) as qdrant:

        def sync():
            return sync_model(config, conn, qdrant, batch_size=7)

        assert sync().embedded == 30
        conn.execute(sql.SQL('UPDATE {} SET "Order" = \'changed\' WHERE "Id" = 2').format(relation))
        conn.execute(sql.SQL('UPDATE {} SET "user" = \'other\' WHERE "Id" = 3').format(relation))
        conn.execute(sql.SQL('DELETE FROM {} WHERE "Id" = 4').format(relation))
        second = sync()
        assert (second.embedded, second.deleted) == (1, 1)
        report = reconcile(conn, qdrant, table, odd_schema, "test_det-a_hybrid")
        assert report.ok and report.rows == 29 and report.points == 29
        points, _ = qdrant.scroll("test_det-a_hybrid", limit=1, with_payload=True)
        assert {"note text", "user"} <= set(points[0].payload["meta_data"])


def test_what_cannot_be_named_is_refused_clearly(conn, odd_schema, tmp_path):
    # A column with a space can be a payload column, not a template field.
    with pytest.raises(ConfigError, match="must be a plain column name"):
        load_config(
            write_config(
                tmp_path / "a",
                odd_schema,
                tables=tables_yaml(odd_schema, text_template="'{note text}'"),
            )
        )
    # A column that does not exist is named, with the table's real columns.
    config = load_config(
        write_config(tmp_path / "b", odd_schema, tables=tables_yaml(odd_schema, primary_key="id"))
    )
    with pytest.raises(SetupError, match=r"tables.odd.primary_key: .* has no column 'id'"):
        setup_database(conn, config)
