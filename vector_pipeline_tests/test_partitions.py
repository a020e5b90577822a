"""Partitioned tables end to end: setup, edits, deletes and truncates on the table or on one
partition, rows moving between partitions, and partitions added after init-db."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from vector_pipeline.config import ProjectConfig
from vector_pipeline.database_setup import SetupError, pending_index_name, setup_database
from vector_pipeline.points import point_id
from vector_pipeline.reconcile import reconcile
from vector_pipeline_tests.conftest import doc_config, sync_model

pytestmark = pytest.mark.integration

COLLECTION = "test_det-a_hybrid"


@pytest.fixture
def partitioned(tmp_path, schema, conn) -> ProjectConfig:
    doc = sql.Identifier(schema, "doc")
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} (id bigint NOT NULL, created date NOT NULL, title text, body text, "
            "PRIMARY KEY (id, created)) PARTITION BY RANGE (created)"
        ).format(doc)
    )
    for year in (2023, 2024):
        conn.execute(
            sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                sql.Identifier(schema, f"doc_{year}"),
                doc,
                sql.Literal(f"{year}-01-01"),
                sql.Literal(f"{year + 1}-01-01"),
            )
        )
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (id, created, title, body) SELECT i, "
            "CASE WHEN i % 2 = 0 THEN date '2023-06-01' ELSE date '2024-06-01' END, "
            "'Title ' || i, 'Body ' || i FROM generate_series(1, 10) AS i"
        ).format(doc)
    )
    config = doc_config(tmp_path / "config", schema, "{title}: {body}", primary_key="[id, created]")
    setup_database(conn, config)
    return config


def _keys(conn: psycopg.Connection, schema: str) -> set[str]:
    rows = conn.execute(
        sql.SQL("SELECT id, created FROM {}").format(sql.Identifier(schema, "doc"))
    ).fetchall()
    return {f'["{i}", "{d.isoformat()}"]' for i, d in rows}


def _exact(config, conn, qdrant, schema) -> None:
    report = reconcile(conn, qdrant, config.tables.tables[0], schema, COLLECTION)
    assert (report.missing_count, report.stale_count, report.orphan_count) == (0, 0, 0)
    assert report.rows == report.embedded == report.points
    points, _ = qdrant.scroll(COLLECTION, limit=100)
    expected = {point_id("DOC", key, COLLECTION) for key in _keys(conn, schema)}
    assert {str(p.id) for p in points} == expected


def test_a_partitioned_table_is_set_up_and_indexed(partitioned, conn, schema):
    index = pending_index_name(partitioned.tables.tables[0], COLLECTION)
    (valid,) = conn.execute(
        "SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = %s::regclass",
        (sql.Identifier(schema, index).as_string(conn),),
    ).fetchone()
    assert valid  # every partition's index is built and attached


def test_every_change_through_the_table_or_a_partition_reaches_qdrant(
    partitioned, conn, qdrant, schema
):
    doc = sql.Identifier(schema, "doc")
    part_2023, part_2024 = sql.Identifier(schema, "doc_2023"), sql.Identifier(schema, "doc_2024")
    assert sync_model(partitioned, conn, qdrant).embedded == 10
    _exact(partitioned, conn, qdrant, schema)

    conn.execute(sql.SQL("UPDATE {} SET body = 'via the table' WHERE id = 1").format(doc))
    conn.execute(sql.SQL("UPDATE {} SET body = 'via a partition' WHERE id = 2").format(part_2023))
    assert sync_model(partitioned, conn, qdrant).embedded == 2
    _exact(partitioned, conn, qdrant, schema)

    conn.execute(sql.SQL("DELETE FROM {} WHERE id = 3").format(doc))
    conn.execute(sql.SQL("DELETE FROM {} WHERE id = 5").format(part_2024))
    # Moves row 4 from 2023 into 2024: a new key, so the old key's point must go.
    conn.execute(sql.SQL("UPDATE {} SET created = date '2024-03-03' WHERE id = 4").format(doc))
    result = sync_model(partitioned, conn, qdrant)
    assert (result.deleted, result.embedded) == (3, 1)
    _exact(partitioned, conn, qdrant, schema)

    conn.execute(sql.SQL("TRUNCATE {}").format(part_2023))
    sync_model(partitioned, conn, qdrant)
    _exact(partitioned, conn, qdrant, schema)
    assert qdrant.count(COLLECTION, exact=True).count == 4  # 2024's rows only: 1, 4, 7, 9


def test_a_partition_added_after_init_db_waits_for_init_db(partitioned, conn, qdrant, schema):
    sync_model(partitioned, conn, qdrant)
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')"
        ).format(sql.Identifier(schema, "doc_2025"), sql.Identifier(schema, "doc"))
    )
    with pytest.raises(SetupError) as refused:
        sync_model(partitioned, conn, qdrant)
    assert f"vector_pipeline_record_delete on partition {schema}.doc_2025 is missing" in str(
        refused.value
    )
    setup_database(conn, partitioned)
    conn.execute(
        sql.SQL("INSERT INTO {} VALUES (99, '2025-05-05', 'new', 'row')").format(
            sql.Identifier(schema, "doc")
        )
    )
    assert sync_model(partitioned, conn, qdrant).embedded == 1
    conn.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(schema, "doc_2025")))
    assert sync_model(partitioned, conn, qdrant).deleted == 1
    _exact(partitioned, conn, qdrant, schema)
