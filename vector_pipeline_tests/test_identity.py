"""Exact identity: one current point per row, for every key type and every way a row changes.

Each key type runs the same life: insert, sync, text edit, key change, delete, re-insert
carrying marks from elsewhere, truncate, re-insert. After every sync, reconcile finds nothing
wrong and the collection holds exactly the points of the current rows, under the ids the
reference formula gives for the canonical key texts written out below (so the test also pins
what those texts are). Writers and the sync use different session time zones on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from vector_pipeline.config import ConfigError, ProjectConfig, load_config
from vector_pipeline.database_setup import SetupError, setup_database
from vector_pipeline.points import point_id
from vector_pipeline.reconcile import reconcile
from vector_pipeline.source import SourceTable
from vector_pipeline_tests.conftest import doc_config, sync_model, write_config

pytestmark = pytest.mark.integration

COLLECTION = "test_det-a_hybrid"


@dataclass(frozen=True)
class KeyCase:
    name: str
    columns: str  # the key columns' definitions
    key: str  # primary_key in tables.yaml
    values: tuple[tuple[Any, ...], ...]  # four keys: A (edited), B (re-keyed), C (deleted), D
    moved: tuple[Any, ...]  # B's new key
    texts: tuple[str, ...]  # the canonical key texts of A, B, C, D and of `moved`


CASES = [
    KeyCase(
        "integer", "id bigint", "id", ((1,), (2,), (3,), (4,)), (102,), ("1", "2", "3", "4", "102")
    ),
    KeyCase(
        "numeric",
        "id numeric(10,2)",
        "id",
        (("1.50",), ("2.00",), ("3.25",), ("-0.10",)),
        ("102.5",),
        ("1.50", "2.00", "3.25", "-0.10", "102.50"),
    ),
    KeyCase(
        "text",
        "id text",
        "id",
        (("it's a key",), ('with "quotes"',), ("  spaced  out ",), ("EU_1",)),
        ("moved key",),
        ("it's a key", 'with "quotes"', "  spaced  out ", "EU_1", "moved key"),
    ),
    KeyCase(
        "uuid",
        "id uuid",
        "id",
        (
            ("6F9619FF-8B86-D011-B42D-00C04FC964FF",),
            ("00000000-0000-0000-0000-000000000002",),
            ("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",),
            ("ffffffff-ffff-ffff-ffff-ffffffffffff",),
        ),
        ("11111111-2222-3333-4444-555555555555",),
        (
            "6f9619ff-8b86-d011-b42d-00c04fc964ff",
            "00000000-0000-0000-0000-000000000002",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
            "11111111-2222-3333-4444-555555555555",
        ),
    ),
    KeyCase(
        "date",
        "id date",
        "id",
        (("2024-02-29",), ("1999-12-31",), ("infinity",), ("0044-03-15 BC",)),
        ("2030-01-01",),
        ("2024-02-29", "1999-12-31", "infinity", "0044-03-15 BC", "2030-01-01"),
    ),
    KeyCase(
        "timestamp",
        "id timestamp",
        "id",
        (
            ("2024-01-01 10:00",),
            ("2024-01-01 10:00:00.123456",),
            ("-infinity",),
            ("2024-06-30 23:59:59",),
        ),
        ("2025-01-01 00:00",),
        (
            "2024-01-01 10:00:00",
            "2024-01-01 10:00:00.123456",
            "-infinity",
            "2024-06-30 23:59:59",
            "2025-01-01 00:00:00",
        ),
    ),
    KeyCase(
        "timestamptz",
        "id timestamptz",
        "id",
        # Written by a session in Asia/Tokyo; the key text is always UTC.
        (
            ("2024-01-01 19:00+09",),
            ("2024-01-01 10:00:00.5+00",),
            ("infinity",),
            ("2024-03-10 02:30-05",),
        ),
        ("2025-01-01 09:00+09",),
        (
            "2024-01-01 10:00:00+00",
            "2024-01-01 10:00:00.5+00",
            "infinity",
            "2024-03-10 07:30:00+00",
            "2025-01-01 00:00:00+00",
        ),
    ),
    KeyCase(
        "composite",
        "tenant text, id integer",
        "[tenant, id]",
        (("eu", 1), ("eu", 2), ("us", 1), ('a "quoted", tenant', 7)),
        ("us", 2),
        (
            '["eu", "1"]',
            '["eu", "2"]',
            '["us", "1"]',
            '["a \\"quoted\\", tenant", "7"]',
            '["us", "2"]',
        ),
    ),
]


def _project(tmp_path: Path, schema: str, conn: psycopg.Connection, case: KeyCase) -> ProjectConfig:
    columns = [c.split()[0] for c in case.columns.split(", ")]
    conn.execute(
        sql.SQL("CREATE TABLE {} ({}, title text, body text, PRIMARY KEY ({}))").format(
            sql.Identifier(schema, "doc"),
            sql.SQL(case.columns),
            sql.SQL(", ").join(map(sql.Identifier, columns)),
        )
    )
    config = doc_config(tmp_path / "config", schema, "{title}: {body}", primary_key=case.key)
    setup_database(conn, config)
    return config


class Life:
    """One table's life under one key type, written from a session in another time zone."""

    def __init__(self, case, project, conn, writer, qdrant, syncer, schema):
        self.case, self.project, self.conn, self.writer = case, project, conn, writer
        self.qdrant, self.syncer, self.schema = qdrant, syncer, schema
        self.columns = [c.split()[0] for c in case.columns.split(", ")]
        self.doc = sql.Identifier(schema, "doc")

    def where(self, key: tuple[Any, ...]) -> tuple[sql.Composable, tuple[Any, ...]]:
        return (
            sql.SQL(" AND ").join(
                sql.SQL("{} = %s").format(sql.Identifier(c)) for c in self.columns
            ),
            key,
        )

    def insert(self, key: tuple[Any, ...], title: str, marks: str = "[]") -> None:
        self.writer.execute(
            sql.SQL("INSERT INTO {} ({}, title, body, embedded_in) VALUES ({}, %s, %s, %s)").format(
                self.doc,
                sql.SQL(", ").join(map(sql.Identifier, self.columns)),
                sql.SQL(", ").join(sql.Placeholder() * len(self.columns)),
            ),
            (*key, title, f"body of {title}", marks),
        )

    def write(self, statement: str, key: tuple[Any, ...], *params: Any) -> None:
        where, values = self.where(key)
        self.writer.execute(
            sql.SQL(statement).format(doc=self.doc, where=where), (*params, *values)
        )

    def sync_and_check(self, key_texts: set[str]) -> None:
        sync_model(self.project, self.syncer, self.qdrant)
        report = reconcile(
            self.conn, self.qdrant, self.project.tables.tables[0], self.schema, COLLECTION
        )
        assert (report.missing_count, report.stale_count, report.orphan_count) == (0, 0, 0)
        points, _ = self.qdrant.scroll(COLLECTION, limit=100, with_payload=True)
        assert {str(p.id) for p in points} == {point_id("DOC", k, COLLECTION) for k in key_texts}
        assert report.rows == report.embedded == len(key_texts)  # one point per row
        # The payload leads back to the row by the same key text.
        assert {str(p.payload["meta_data"]["row_id"]) for p in points} == key_texts


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_every_key_type_keeps_one_current_point_per_row(
    case: KeyCase, tmp_path, schema, conn, database_url, qdrant
):
    project = _project(tmp_path, schema, conn, case)
    a, b, c, d, moved = case.texts
    with (
        psycopg.connect(database_url, autocommit=True, options="-c TimeZone=Asia/Tokyo") as writer,
        psycopg.connect(
            database_url,
            autocommit=True,
            options="-c TimeZone=America/Los_Angeles -c DateStyle=SQL,DMY",
        ) as syncer,
    ):
        life = Life(case, project, conn, writer, qdrant, syncer, schema)
        for index, key in enumerate(case.values):
            life.insert(key, f"row {index}")
        life.sync_and_check({a, b, c, d})
        if case.name in ("integer", "text", "uuid"):
            # The reference design hashed `str()` of the value: those ids do not move.
            values = conn.execute(sql.SQL("SELECT id FROM {}").format(life.doc)).fetchall()
            assert {point_id("DOC", str(v), COLLECTION) for (v,) in values} == {
                point_id("DOC", k, COLLECTION) for k in (a, b, c, d)
            }

        life.write("UPDATE {doc} SET title = %s WHERE {where}", case.values[0], "edited")
        life.sync_and_check({a, b, c, d})
        stored = qdrant.retrieve(COLLECTION, [point_id("DOC", a, COLLECTION)], with_payload=True)
        assert stored[0].payload["content"] == "edited: body of row 0"

        # A key change is a delete of the old key and a new pending row.
        assignments = sql.SQL(", ").join(
            sql.SQL("{} = %s").format(sql.Identifier(col)) for col in life.columns
        )
        life.write(
            "UPDATE {doc} SET " + assignments.as_string(conn) + " WHERE {where}",
            case.values[1],
            *case.moved,
        )
        life.sync_and_check({a, moved, c, d})

        life.write("DELETE FROM {doc} WHERE {where}", case.values[2])
        life.sync_and_check({a, moved, d})

        # Re-inserted from a copy elsewhere, carrying a mark no store of ours made.
        life.insert(case.values[2], "restored", marks=f'["{COLLECTION}"]')
        life.sync_and_check({a, moved, c, d})
        stored = qdrant.retrieve(COLLECTION, [point_id("DOC", c, COLLECTION)], with_payload=True)
        assert stored[0].payload["content"] == "restored: body of restored"

        writer.execute(sql.SQL("TRUNCATE {}").format(life.doc))
        life.sync_and_check(set())

        for index, key in enumerate(case.values):
            life.insert(key, f"again {index}")
        life.sync_and_check({a, b, c, d})


# --- keys that are not keys -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ddl", "key", "message"),
    [
        ("id bigint, title text, body text", "id", "allows NULL"),
        ("id bigint NOT NULL, title text, body text", "id", "is not a unique key"),
        (
            "tenant text, id bigint, title text, body text, PRIMARY KEY (tenant, id)",
            "id",
            "is not a unique key",
        ),
        ("id bigint UNIQUE, title text, body text", "id", "allows NULL"),
        (
            "id bigint NOT NULL, title text, body text, UNIQUE (id) INCLUDE (title)",
            "id",
            None,
        ),
    ],
    ids=["no-key", "not-unique", "part-of-composite", "nullable-unique", "unique-with-include"],
)
def test_keys_that_are_not_unique_and_not_null_are_refused(
    ddl, key, message, tmp_path, schema, conn
):
    conn.execute(
        sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier(schema, "doc"), sql.SQL(ddl))
    )
    config = doc_config(tmp_path / "config", schema, "{title}", primary_key=key)
    if message is None:
        setup_database(conn, config)
        SourceTable.for_config(conn, config, config.tables.tables[0])
        return
    with pytest.raises(SetupError) as refused:
        setup_database(conn, config)
    text = str(refused.value)
    assert "tables.yaml: tables.doc.primary_key" in text and message in text
    assert "\n" not in text


def test_a_sync_refuses_a_key_that_stopped_being_unique(project, conn, qdrant, schema):
    conn.execute(
        sql.SQL("ALTER TABLE {} DROP CONSTRAINT doc_pkey").format(sql.Identifier(schema, "doc"))
    )
    with pytest.raises(SetupError, match="is not a unique key"):
        sync_model(project, conn, qdrant)


def test_a_tombstone_without_a_key_never_blocks_the_drain(project, conn, qdrant, schema):
    assert sync_model(project, conn, qdrant).embedded == 120
    tombstones = sql.Identifier(schema, "vector_pipeline_tombstone")
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (table_name, row_key, key_text) VALUES ('doc', NULL, NULL), "
            "('doc', 'null'::jsonb, NULL)"
        ).format(tombstones)
    )
    conn.execute(sql.SQL("DELETE FROM {} WHERE id = 5").format(sql.Identifier(schema, "doc")))
    result = sync_model(project, conn, qdrant)
    assert result.deleted == 3
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(tombstones)).fetchone()[0] == 0
    assert qdrant.count(COLLECTION, exact=True).count == 119


# --- collisions -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("data_type: TICKET", "data_type: TICKET_EU"),
        ("data_type: DOC", "data_type: DOC"),
        # Different bases, same collection: a_b + det-a vs a + b_det-a... spelled by model ids.
        (
            "data_type: X\n    collection_base: shared_det-a",
            "data_type: X_Y\n    collection_base: shared",
        ),
    ],
    ids=["prefix", "equal", "same-collection-other-base"],
)
def test_tables_whose_point_ids_can_collide_are_refused(first, second, tmp_path, schema):
    tables = (
        f"schema: {schema}\ncollection_base: test\ntables:\n"
        f"  tickets:\n    {first}\n    text_template: '{{title}}'\n"
        f"  eu_tickets:\n    {second}\n    text_template: '{{title}}'\n"
    )
    extra = ""
    if "shared" in first:
        # A model whose id makes `shared` + `_det-a_det-a` equal `shared_det-a` + `_det-a`.
        extra = "det_aa:\n  provider: deterministic\n  id: det-a_det-a\n  dimensions: 16\n"
    directory = write_config(tmp_path / "config", schema, tables=tables, extra_models=extra)
    with pytest.raises(ConfigError) as refused:
        load_config(directory)
    text = str(refused.value)
    assert "tables.yaml: tables.eu_tickets.data_type" in text
    assert "point ids can collide" in text


def test_distinct_data_types_sharing_a_collection_load(tmp_path, schema):
    tables = (
        f"schema: {schema}\ncollection_base: test\ntables:\n"
        "  tickets:\n    data_type: TICKET\n    text_template: '{title}'\n"
        "  articles:\n    data_type: ARTICLE\n    text_template: '{title}'\n"
    )
    assert len(load_config(write_config(tmp_path / "c", schema, tables=tables)).tables.tables) == 2


def test_sync_and_delete_agree_on_numeric_keys_in_the_issue(tmp_path, schema, conn, qdrant):
    """The issue's own example: numeric keys 1.50, 2.00, 3.25; DELETE 1.50, then TRUNCATE."""
    case = CASES[1]
    project = _project(tmp_path, schema, conn, case)
    doc = sql.Identifier(schema, "doc")
    conn.execute(
        sql.SQL("INSERT INTO {} (id, title) VALUES (1.50, 'a'), (2.00, 'b'), (3.25, 'c')").format(
            doc
        )
    )
    assert sync_model(project, conn, qdrant).embedded == 3
    conn.execute(sql.SQL("DELETE FROM {} WHERE id = 1.50").format(doc))
    assert sync_model(project, conn, qdrant).deleted == 1
    assert qdrant.count(COLLECTION, exact=True).count == 2
    conn.execute(sql.SQL("TRUNCATE {}").format(doc))
    sync_model(project, conn, qdrant)
    assert qdrant.count(COLLECTION, exact=True).count == 0


# --- keys that are equal but print differently ----------------------------------------------


def _one_key_project(tmp_path, schema, conn, column: str) -> ProjectConfig:
    conn.execute(
        sql.SQL("CREATE TABLE {} (id {} PRIMARY KEY, title text)").format(
            sql.Identifier(schema, "doc"), sql.SQL(column)
        )
    )
    config = doc_config(tmp_path / "config", schema, "{title}")
    setup_database(conn, config)
    return config


def _case_insensitive_collation(conn: psycopg.Connection, schema: str) -> str:
    """An ICU collation under which 'Alice' = 'ALICE'; returns its quoted name."""
    name = sql.Identifier(schema, "ci")
    conn.execute(
        sql.SQL(
            "CREATE COLLATION {} (provider = icu, locale = 'und-u-ks-level2', "
            "deterministic = false)"
        ).format(name)
    )
    return name.as_string(conn)


def _exact_points(project, conn, qdrant, schema, expected: set[str]) -> None:
    report = reconcile(conn, qdrant, project.tables.tables[0], schema, COLLECTION)
    assert (report.missing_count, report.stale_count, report.orphan_count) == (0, 0, 0)
    points, _ = qdrant.scroll(COLLECTION, limit=100)
    assert {str(p.id) for p in points} == {point_id("DOC", k, COLLECTION) for k in expected}


@pytest.mark.parametrize(
    ("column", "first", "second", "texts"),
    [
        ("numeric", "1.50", "1.5", ("1.50", "1.5")),
        ("double precision", "0", "-0", ("0", "-0")),
        ("text COLLATE {ci}", "Alice", "ALICE", ("Alice", "ALICE")),
    ],
    ids=["numeric-scale", "negative-zero", "case-insensitive-collation"],
)
def test_a_key_that_stays_equal_but_prints_differently_is_a_new_key(
    column, first, second, texts, tmp_path, schema, conn, qdrant
):
    """Point ids hash the key's text: `1.50` and `1.5` are equal numerics and two points."""
    if "{ci}" in column:
        column = column.replace("{ci}", _case_insensitive_collation(conn, schema))
    project = _one_key_project(tmp_path, schema, conn, column)
    doc = sql.Identifier(schema, "doc")
    conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, 'x'), ('7', 'y')").format(doc), (first,))
    sync_model(project, conn, qdrant)
    _exact_points(project, conn, qdrant, schema, {texts[0], "7"})

    conn.execute(sql.SQL("UPDATE {} SET id = %s WHERE id = %s").format(doc), (second, first))
    sync_model(project, conn, qdrant)
    _exact_points(project, conn, qdrant, schema, {texts[1], "7"})

    # Deleted and inserted again with the other spelling, between two syncs.
    conn.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(doc), (second,))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, 'x')").format(doc), (first,))
    sync_model(project, conn, qdrant)
    _exact_points(project, conn, qdrant, schema, {texts[0], "7"})


def test_a_text_change_only_a_collation_calls_equal_is_seen(tmp_path, schema, conn, qdrant):
    conn.execute(
        sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, title text COLLATE {})").format(
            sql.Identifier(schema, "doc"), sql.SQL(_case_insensitive_collation(conn, schema))
        )
    )
    project = doc_config(tmp_path / "config", schema, "{title}")
    setup_database(conn, project)
    doc = sql.Identifier(schema, "doc")
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 'hadith of intention')").format(doc))
    sync_model(project, conn, qdrant)
    conn.execute(sql.SQL("UPDATE {} SET title = 'HADITH OF INTENTION'").format(doc))
    assert sync_model(project, conn, qdrant).embedded == 1
    (point,) = qdrant.retrieve(COLLECTION, [point_id("DOC", "1", COLLECTION)], with_payload=True)
    assert point.payload["content"] == "HADITH OF INTENTION"


def test_a_key_longer_than_a_btree_entry_neither_blocks_nor_sticks(tmp_path, schema, conn, qdrant):
    """A text key of 2,640 bytes fits the table's own index but not an index entry that adds
    the table and collection names: it is claimed, skipped, deleted and drained like any other."""
    project = _one_key_project(tmp_path, schema, conn, "text")
    doc = sql.Identifier(schema, "doc")
    long_key = "".join(f"{i:04x}" for i in range(660))  # 2,640 characters
    conn.execute(
        sql.SQL("INSERT INTO {} VALUES (%s, 'long'), ('short', 's')").format(doc), (long_key,)
    )
    assert sync_model(project, conn, qdrant).embedded == 2
    _exact_points(project, conn, qdrant, schema, {long_key, "short"})
    conn.execute(sql.SQL("UPDATE {} SET title = NULL WHERE id = %s").format(doc), (long_key,))
    assert sync_model(project, conn, qdrant).skipped == 1  # the skip table holds it too
    conn.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(doc), (long_key,))
    assert sync_model(project, conn, qdrant).deleted == 1
    _exact_points(project, conn, qdrant, schema, {"short"})


def test_a_unique_index_left_invalid_is_no_key(tmp_path, schema, conn):
    conn.execute(
        sql.SQL("CREATE TABLE {} (id int NOT NULL, title text)").format(
            sql.Identifier(schema, "doc")
        )
    )
    conn.execute(
        sql.SQL("INSERT INTO {} VALUES (1, 'a'), (1, 'b')").format(sql.Identifier(schema, "doc"))
    )
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute(
            sql.SQL("CREATE UNIQUE INDEX CONCURRENTLY doc_id ON {} (id)").format(
                sql.Identifier(schema, "doc")
            )
        )
    config = doc_config(tmp_path / "config", schema, "{title}")
    with pytest.raises(SetupError, match="is not a unique key"):
        setup_database(conn, config)


def test_a_view_is_named_as_a_view(tmp_path, schema, conn):
    conn.execute(
        sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, title text)").format(
            sql.Identifier(schema, "base")
        )
    )
    conn.execute(
        sql.SQL("CREATE VIEW {} AS SELECT * FROM {}").format(
            sql.Identifier(schema, "doc"), sql.Identifier(schema, "base")
        )
    )
    config = doc_config(tmp_path / "config", schema, "{title}")
    with pytest.raises(SetupError) as refused:
        setup_database(conn, config)
    assert f"tables.doc.table: {schema}.doc is a view" in str(refused.value)


def test_two_bases_sharing_one_alias_are_refused(tmp_path, schema):
    tables = (
        f"schema: {schema}\ncollection_base: test\nactive_alias: readers\ntables:\n"
        "  one:\n    data_type: ONE\n    collection_base: one\n    text_template: '{title}'\n"
        "  two:\n    data_type: TWO\n    collection_base: two\n    text_template: '{title}'\n"
    )
    with pytest.raises(ConfigError) as refused:
        load_config(write_config(tmp_path / "c", schema, tables=tables))
    assert "tables.yaml: active_alias" in str(refused.value)
    assert "would share the alias 'readers'" in str(refused.value)
