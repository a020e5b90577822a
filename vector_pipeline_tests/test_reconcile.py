"""Reconciliation against real PostgreSQL and Qdrant local mode: a clean sync checks out, and
each kind of breakage, made by hand with SQL or qdrant-client, is found and then repaired."""

from __future__ import annotations

import json
import textwrap
import uuid
from typing import Any

import psycopg
import pytest
from psycopg import sql
from qdrant_client import QdrantClient, models

from vector_pipeline.config import ProjectConfig, TableConfig, load_config
from vector_pipeline.database_setup import setup_database
from vector_pipeline.embedders import build_embedder
from vector_pipeline.points import content_hash, point_id
from vector_pipeline.reconcile import ReconcileReport, reconcile, repair
from vector_pipeline.sync import SyncResult, sync_table
from vector_pipeline_tests.conftest import write_config

pytestmark = pytest.mark.integration


def only_table(config: ProjectConfig) -> TableConfig:
    return config.tables.tables[0]


def run_sync(config: ProjectConfig, conn: psycopg.Connection, qdrant: Any) -> SyncResult:
    key, model = config.embeddings.model()
    return sync_table(
        conn=conn,
        qdrant=qdrant,
        embedder=build_embedder(key, model),
        table=only_table(config),
        schema=config.tables.schema_,
    )


def check(config: ProjectConfig, conn, qdrant: Any, name: str, **kwargs: Any) -> ReconcileReport:
    return reconcile(conn, qdrant, only_table(config), config.tables.schema_, name, **kwargs)


def pid(row_id: Any, name: str, data_type: str = "DOC") -> str:
    return point_id(data_type, row_id, name)


def execute(conn: psycopg.Connection, schema: str, statement: str, *params: Any) -> None:
    conn.execute(sql.SQL(statement).format(doc=sql.Identifier(schema, "doc")), params)


def markers(conn: psycopg.Connection, schema: str, row_id: int) -> list[str]:
    return conn.execute(
        sql.SQL("SELECT embedded_in FROM {} WHERE id = %s").format(sql.Identifier(schema, "doc")),
        (row_id,),
    ).fetchone()[0]


def force_embedded(conn: psycopg.Connection, schema: str, name: str, *row_ids: int) -> None:
    """Put the collection back into embedded_in after the trigger cleared it."""
    execute(
        conn,
        schema,
        "UPDATE {doc} SET embedded_in = embedded_in || %s::jsonb WHERE id = ANY(%s)",
        json.dumps([name]),
        list(row_ids),
    )


def zeros(report: ReconcileReport) -> tuple[int, int, int]:
    return report.missing_count, report.stale_count, report.orphan_count


@pytest.fixture
def synced(project: ProjectConfig, conn, qdrant) -> str:
    """The doc table (120 rows) synced once; the collection's name."""
    result = run_sync(project, conn, qdrant)
    assert result.embedded == 120
    return result.collection


def test_a_clean_sync_reconciles_to_zero(project, conn, qdrant, synced):
    report = check(project, conn, qdrant, synced)
    assert (report.rows, report.embedded, report.points) == (120, 120, 120)
    assert zeros(report) == (0, 0, 0)
    assert (report.missing, report.stale, report.orphans) == ([], [], [])
    assert report.ok and report.complete
    assert json.loads(json.dumps(report.to_dict()))["ok"] is True


def test_a_deleted_point_is_missing(project, conn, qdrant, synced):
    qdrant.delete(synced, points_selector=models.PointIdsList(points=[pid(17, synced)]))
    qdrant.delete(synced, points_selector=models.PointIdsList(points=[pid(5, synced)]))
    report = check(project, conn, qdrant, synced)
    assert report.missing == [5, 17]
    assert zeros(report) == (2, 0, 0)
    assert report.points == 118
    assert not report.ok


def test_a_deleted_row_and_a_foreign_point_are_orphans(project, conn, qdrant, synced, schema):
    execute(conn, schema, "DELETE FROM {doc} WHERE id = 9")
    # A point of this table under another data_type's id: no row will ever claim it.
    (point,) = qdrant.retrieve(synced, [pid(3, synced)], with_payload=True, with_vectors=True)
    qdrant.upsert(
        synced,
        [models.PointStruct(id=pid(3, synced, "OLD"), vector=point.vector, payload=point.payload)],
    )
    report = check(project, conn, qdrant, synced)
    assert sorted(report.orphans) == sorted([pid(9, synced), pid(3, synced, "OLD")])
    assert zeros(report) == (0, 0, 2)
    assert (report.rows, report.points) == (119, 121)


def test_points_of_other_tables_are_not_counted(project, conn, qdrant, synced):
    (point,) = qdrant.retrieve(synced, [pid(3, synced)], with_payload=True, with_vectors=True)
    payload = {**point.payload, "meta_data": {**point.payload["meta_data"], "table": "other"}}
    qdrant.upsert(
        synced,
        [models.PointStruct(id=pid(3, synced, "OTHER"), vector=point.vector, payload=payload)],
    )
    report = check(project, conn, qdrant, synced)
    assert report.points == 120
    assert report.ok


def test_a_wrong_hash_or_an_unsynced_edit_is_stale(project, conn, qdrant, synced, schema):
    qdrant.set_payload(synced, {"content_hash": content_hash("old text")}, points=[pid(11, synced)])
    # An edit whose marker was forced back: the point still holds the old text.
    execute(conn, schema, "UPDATE {doc} SET body = 'x' WHERE id = 12")
    force_embedded(conn, schema, synced, 12)
    report = check(project, conn, qdrant, synced)
    assert report.stale == [11, 12]
    assert zeros(report) == (0, 2, 0)


def test_an_embedded_row_without_text_must_have_no_point(project, conn, qdrant, synced, schema):
    execute(conn, schema, "UPDATE {doc} SET title = NULL, body = ' ' WHERE id IN (30, 31)")
    force_embedded(conn, schema, synced, 30, 31)
    qdrant.delete(synced, points_selector=models.PointIdsList(points=[pid(30, synced)]))
    report = check(project, conn, qdrant, synced)
    # 30 has no text and no point: as a sync leaves it. 31 still shows its old text.
    assert report.stale == [31]
    assert zeros(report) == (0, 1, 0)


def test_pending_rows_are_never_errors(project, conn, qdrant, synced, schema):
    # Edited rows: pending, one still holding its old point, one with no point at all.
    execute(conn, schema, "UPDATE {doc} SET body = 'new text' WHERE id IN (20, 21)")
    qdrant.delete(synced, points_selector=models.PointIdsList(points=[pid(21, synced)]))
    # A row marked only for another collection, whose point here has a wrong hash.
    execute(conn, schema, """UPDATE {doc} SET embedded_in = '["elsewhere"]' WHERE id = 22""")
    qdrant.set_payload(synced, {"content_hash": "0" * 32}, points=[pid(22, synced)])
    report = check(project, conn, qdrant, synced)
    assert (report.embedded, report.points) == (117, 119)
    assert zeros(report) == (0, 0, 0)


def test_a_missing_collection_makes_every_marked_row_missing(project, conn, qdrant, synced):
    qdrant.delete_collection(synced)
    report = check(project, conn, qdrant, synced, sample_limit=10)
    assert (report.missing_count, report.points) == (120, 0)
    assert report.missing == list(range(1, 11))
    assert not report.complete


class SyncsAfterScroll:
    """A Qdrant client that, once the points have been read, lets a user insert a row and a
    sync embed it, as could happen on a live system while a reconcile runs."""

    def __init__(self, inner: QdrantClient, act: Any) -> None:
        self.inner, self.act = inner, act

    def scroll(self, *args: Any, **kwargs: Any) -> Any:
        page, offset = self.inner.scroll(*args, **kwargs)
        if offset is None and self.act is not None:
            self.act()
            self.act = None
        return page, offset

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_row_synced_during_the_reconcile_is_not_missing(project, conn, qdrant, synced, schema):
    def insert_and_sync() -> None:
        execute(conn, schema, "INSERT INTO {doc} (id, title, body) VALUES (121, 'late', 'row')")
        execute(conn, schema, "UPDATE {doc} SET body = 'edited' WHERE id = 2")
        assert run_sync(project, conn, qdrant).embedded == 2

    report = check(project, conn, SyncsAfterScroll(qdrant, insert_and_sync), synced)
    assert (report.rows, report.embedded, report.points) == (121, 121, 120)
    assert zeros(report) == (0, 0, 0)


def test_repair_and_a_sync_restore_the_promise(project, conn, qdrant, synced, schema):
    execute(conn, schema, """UPDATE {doc} SET embedded_in = '["elsewhere"]' || embedded_in""")
    qdrant.delete(synced, points_selector=models.PointIdsList(points=[pid(5, synced)]))
    qdrant.set_payload(synced, {"content_hash": "0" * 32}, points=[pid(11, synced)])
    # The edit clears embedded_in (trigger); a second statement puts both markers back.
    execute(conn, schema, "UPDATE {doc} SET body = 'x' WHERE id = 12")
    execute(conn, schema, "UPDATE {doc} SET embedded_in = '[\"elsewhere\"]' WHERE id = 12")
    force_embedded(conn, schema, synced, 12)
    execute(conn, schema, "DELETE FROM {doc} WHERE id = 9")
    table, name = only_table(project), synced

    report = check(project, conn, qdrant, name)
    assert (report.missing, report.stale, report.orphans) == ([5], [11, 12], [pid(9, name)])
    result = repair(conn, qdrant, report, table, project.tables.schema_, name)
    assert (result.marked_pending, result.orphans_deleted, result.orphans_kept) == (3, 1, 0)
    assert not result.rescanned
    # Only this collection left the repaired rows' markers; the others' are untouched.
    for row_id in (5, 11, 12):
        assert markers(conn, schema, row_id) == ["elsewhere"]
    assert markers(conn, schema, 6) == ["elsewhere", name]
    assert qdrant.retrieve(name, [pid(9, name)]) == []

    reembedded = run_sync(project, conn, qdrant)
    assert (reembedded.embedded, reembedded.pending_after) == (3, 0)
    after = check(project, conn, qdrant, name)
    assert (after.rows, after.embedded, after.points) == (119, 119, 119)
    assert zeros(after) == (0, 0, 0)
    (point,) = qdrant.retrieve(name, [pid(12, name)], with_payload=True)
    assert point.payload["content"] == "TITLE: Title 12\nCONTENT: x"


def test_repair_of_a_sampled_report_fixes_every_row(project, conn, qdrant, synced, schema):
    gone = [pid(i, synced) for i in range(40, 47)]
    qdrant.delete(synced, points_selector=models.PointIdsList(points=gone))
    execute(conn, schema, "DELETE FROM {doc} WHERE id > 115")
    report = check(project, conn, qdrant, synced, sample_limit=2)
    assert (report.missing_count, len(report.missing), report.orphan_count) == (7, 2, 5)
    assert not report.complete

    result = repair(conn, qdrant, report, only_table(project), project.tables.schema_, synced)
    assert (result.marked_pending, result.orphans_deleted, result.rescanned) == (7, 5, True)
    assert run_sync(project, conn, qdrant).embedded == 7
    assert check(project, conn, qdrant, synced).ok


def test_repair_keeps_the_point_of_a_row_that_came_back(project, conn, qdrant, synced, schema):
    execute(conn, schema, "DELETE FROM {doc} WHERE id = 9")
    (point,) = qdrant.retrieve(synced, [pid(3, synced)], with_payload=True, with_vectors=True)
    foreign = pid(3, synced, "OLD")
    qdrant.upsert(
        synced, [models.PointStruct(id=foreign, vector=point.vector, payload=point.payload)]
    )
    report = check(project, conn, qdrant, synced)
    assert report.orphans == sorted([pid(9, synced), foreign])
    # Row 9 is re-inserted with the same key and synced before the repair runs.
    execute(conn, schema, "INSERT INTO {doc} (id, title, body) VALUES (9, 'back', 'again')")
    assert run_sync(project, conn, qdrant).embedded == 1

    result = repair(conn, qdrant, report, only_table(project), project.tables.schema_, synced)
    assert (result.orphans_deleted, result.orphans_kept) == (1, 1)
    assert qdrant.retrieve(synced, [foreign]) == []
    after = check(project, conn, qdrant, synced)
    assert (after.rows, after.points) == (120, 120)
    assert after.ok


def test_repair_refuses_a_report_for_another_collection(project, conn, qdrant, synced):
    report = check(project, conn, qdrant, synced)
    with pytest.raises(ValueError, match="not doc in elsewhere"):
        repair(conn, qdrant, report, only_table(project), project.tables.schema_, "elsewhere")


def test_uuid_keys_are_reported_as_text_and_repaired(conn, schema, tmp_path, qdrant):
    conn.execute(
        sql.SQL("CREATE TABLE {} (key uuid PRIMARY KEY, title text, body text)").format(
            sql.Identifier(schema, "note")
        )
    )
    keys = [uuid.UUID(int=i) for i in range(1, 6)]
    conn.cursor().executemany(
        sql.SQL("INSERT INTO {} VALUES (%s, %s, %s)").format(sql.Identifier(schema, "note")),
        [(key, f"Note {i}", f"about {i}") for i, key in enumerate(keys)],
    )
    tables = textwrap.dedent(
        f"""\
        schema: {schema}
        collection_base: test
        tables:
          note:
            data_type: NOTE
            primary_key: key
            text_template: "{{title}}: {{body}}"
        """
    )
    config = load_config(write_config(tmp_path / "uuid", schema, tables=tables))
    setup_database(conn, config)
    name = run_sync(config, conn, qdrant).collection
    qdrant.delete(name, points_selector=models.PointIdsList(points=[pid(keys[1], name, "NOTE")]))
    qdrant.set_payload(name, {"content_hash": "0" * 32}, points=[pid(keys[2], name, "NOTE")])
    conn.execute(
        sql.SQL("DELETE FROM {} WHERE key = %s").format(sql.Identifier(schema, "note")), (keys[4],)
    )

    report = check(config, conn, qdrant, name)
    assert (report.missing, report.stale) == ([str(keys[1])], [str(keys[2])])
    assert report.orphans == [pid(keys[4], name, "NOTE")]
    assert json.loads(json.dumps(report.to_dict()))["missing"] == [str(keys[1])]
    result = repair(conn, qdrant, report, only_table(config), config.tables.schema_, name)
    assert (result.marked_pending, result.orphans_deleted) == (2, 1)
    assert run_sync(config, conn, qdrant).embedded == 2
    assert check(config, conn, qdrant, name).ok
