"""Bad rows: each one either syncs or is recorded as skipped with its reason; the rest carry on."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from psycopg import sql

from vector_pipeline.cli import main
from vector_pipeline.source import SourceTable
from vector_pipeline.sync import NO_TEXT, SyncResult
from vector_pipeline_tests.conftest import sync_model

pytestmark = pytest.mark.integration

COLLECTION = "test_det-a_hybrid"
HOSTILE_TEXTS = {
    10: ("control", "bell\x07 tab\t vertical\x0b escape\x1b[31m form\x0c end"),
    11: ("arabic", "الصدق يهدي إلى البر، والبر يهدي إلى الجنة"),
    12: ("persian", "دانش توانایی است؛ نیم‌فاصله و «گیومه»"),
    13: ("emoji", "family 👨‍👩‍👧‍👦 flags 🇮🇷🇸🇦 skin 👋🏽 ❤️"),
    14: ("mixed", "Mixed العربية فارسی English 😀 and 中文"),
    15: ("huge", "word " * 200_000),
    16: ("sql", "'); DROP TABLE doc; -- \\ $$ $1 %s {title}"),
}


def sync(project, conn, qdrant) -> SyncResult:
    return sync_model(project, conn, qdrant, batch_size=32)


def test_bad_rows_sync_or_are_skipped_with_a_reason(project, conn, qdrant, schema):
    doc = sql.Identifier(schema, "doc")
    conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN embedded_in DROP NOT NULL").format(doc))
    for row_id, (title, body) in HOSTILE_TEXTS.items():
        conn.execute(
            sql.SQL("UPDATE {} SET title = %s, body = %s WHERE id = %s").format(doc),
            (title, body, row_id),
        )
    # No text at all: NULL, empty and whitespace-only in every text column.
    conn.execute(sql.SQL("UPDATE {} SET title = NULL, body = NULL WHERE id = 20").format(doc))
    conn.execute(sql.SQL("UPDATE {} SET title = '', body = '' WHERE id = 21").format(doc))
    conn.execute(sql.SQL("UPDATE {} SET title = ' ', body = E'\\n\\t ' WHERE id = 22").format(doc))
    # Broken markers: NULL, a string, an object.
    conn.execute(sql.SQL("UPDATE {} SET embedded_in = NULL WHERE id = 30").format(doc))
    conn.execute(sql.SQL("""UPDATE {} SET embedded_in = '"oops"' WHERE id = 31""").format(doc))
    conn.execute(sql.SQL("""UPDATE {} SET embedded_in = '{{"a": 1}}' WHERE id = 32""").format(doc))

    result = sync(project, conn, qdrant)
    assert result.embedded == 117
    assert result.skipped == 3
    assert result.pending_after == 0
    assert qdrant.count(COLLECTION, exact=True).count == 117

    source = SourceTable.for_config(conn, project, project.tables.tables[0])
    skipped = source.skipped_rows()
    assert [(where, key, reason) for where, key, reason, _ in skipped] == [
        (COLLECTION, "20", NO_TEXT),
        (COLLECTION, "21", NO_TEXT),
        (COLLECTION, "22", NO_TEXT),
    ]
    counts = source.counts(COLLECTION)
    assert (counts.total, counts.embedded, counts.skipped, counts.pending) == (120, 117, 3, 0)

    # The hostile texts went in verbatim (nothing in a row can alter the SQL) and came out so.
    for row_id, (title, body) in HOSTILE_TEXTS.items():
        stored = conn.execute(
            sql.SQL("SELECT title, body, embedded_in FROM {} WHERE id = %s").format(doc),
            (row_id,),
        ).fetchone()
        assert stored == (title, body, [COLLECTION])
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(doc)).fetchone()[0] == 120

    # A skipped row is not read again on the next sync ...
    again = sync(project, conn, qdrant)
    assert (again.batches, again.skipped, again.embedded) == (0, 0, 0)

    # ... until its text changes; then it syncs and its skip record goes.
    conn.execute(sql.SQL("UPDATE {} SET body = 'now with text' WHERE id = 21").format(doc))
    counts = source.counts(COLLECTION)  # its skip no longer matches its text: pending again
    assert (counts.total, counts.embedded, counts.skipped, counts.pending) == (120, 117, 2, 1)
    assert source.pending_count(COLLECTION) == 1
    fixed = sync(project, conn, qdrant)
    assert (fixed.embedded, fixed.skipped) == (1, 0)
    assert [key for _, key, _, _ in source.skipped_rows()] == ["20", "22"]


def test_skipped_rows_are_listed_per_table_by_the_cli(project, conn, qdrant, schema, monkeypatch):
    doc = sql.Identifier(schema, "doc")
    conn.execute(sql.SQL("UPDATE {} SET title = NULL, body = NULL WHERE id = 7").format(doc))
    sync(project, conn, qdrant)
    monkeypatch.setenv("DATABASE_URL", conn.info.dsn)
    result = CliRunner().invoke(
        main, ["--config-dir", str(project.config_dir), "skipped", "--table", "doc"]
    )
    assert result.exit_code == 0, result.output
    (line,) = result.output.splitlines()
    table, key, collection, _when, reason = line.split("\t")
    assert (table, key, collection, reason) == ("doc", "7", COLLECTION, NO_TEXT)
