"""Any value PostgreSQL can hold renders in its SQL text form or its row is skipped with a
reason; the rest of the table carries on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from qdrant_client import QdrantClient

from vector_pipeline.config import ProjectConfig, TableConfig
from vector_pipeline.database_setup import setup_database
from vector_pipeline.locations import QdrantLocation
from vector_pipeline.points import content_hash, point_id
from vector_pipeline.reconcile import reconcile
from vector_pipeline.source import SourceTable
from vector_pipeline.store_state import STORE_TABLE
from vector_pipeline.sync import NO_TEXT
from vector_pipeline.vector_store import open_qdrant
from vector_pipeline_tests.conftest import doc_config, sync_model

pytestmark = pytest.mark.integration

TABLE = TableConfig(
    name="doc", table="doc", data_type="DOC", collection_base="test", text_template="{a} {b}"
)


@pytest.mark.parametrize(
    "blank",
    [None, "", " \n\t", "\u200b", "\u200c\u200d", "\ufeff", "\u2060", " \u200b \u00a0\u200b "],
)
def test_invisible_only_text_counts_as_blank(blank):
    assert not TABLE.has_text({"a": blank, "b": blank})
    assert TABLE.has_text({"a": blank, "b": "x\u200b"})


COLLECTION = "test_det-a_hybrid"
UUID = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
HUGE = list(range(100_000))

# (SQL type, the value as an SQL literal, its text in the template, its payload value)
VALUES = {
    "numeric": ("numeric", "1.50", "1.50", 1.5),
    "numeric_integral": ("numeric(10,2)", "5", "5.00", 5.0),
    "boolean": ("boolean", "true", "true", True),
    "uuid": ("uuid", UUID, UUID, UUID),
    "date": ("date", "2024-05-01", "2024-05-01", "2024-05-01"),
    "time": ("time", "09:30:00", "09:30:00", "09:30:00"),
    "timetz": ("timetz", "09:30:00+02", "09:30:00+02", "09:30:00+02"),
    "timestamptz": (
        "timestamptz",
        "2024-05-01 18:30:00+09",
        "2024-05-01 09:30:00+00",
        "2024-05-01T09:30:00+00:00",
    ),
    "text_array": ("text[]", '{a,"b c"}', '{a,"b c"}', ["a", "b c"]),
    "jsonb": ("jsonb", '{"color": "red"}', '{"color": "red"}', {"color": "red"}),
    "json_nul_escape": ("json", '{"a":"x\\u0000y"}', '{"a":"x\\u0000y"}', {"a": "x\x00y"}),
    "bytea": ("bytea", "\\x0102ff", "\\x0102ff", "\\x0102ff"),
    "interval": ("interval", "1 day 2 hours", "1 day 02:00:00", "1 day 02:00:00"),
    "int4range": ("int4range", "[1,5)", "[1,5)", "[1,5)"),
    "tstzrange": (
        "tstzrange",
        "[2024-05-01 18:30+09,2024-05-02 09:00+09)",
        '["2024-05-01 09:30:00+00","2024-05-02 00:00:00+00")',
        '["2024-05-01 09:30:00+00","2024-05-02 00:00:00+00")',
    ),
    "timestamp_infinity": ("timestamp", "infinity", "infinity", "infinity"),
    "timestamptz_minus_infinity": ("timestamptz", "-infinity", "-infinity", "-infinity"),
    "date_infinity": ("date", "infinity", "infinity", "infinity"),
    "numeric_nan": ("numeric", "NaN", "NaN", "NaN"),
    "float_infinity": ("double precision", "-Infinity", "-Infinity", "-Infinity"),
    "huge_array": (
        "integer[]",
        "{" + ",".join(map(str, HUGE)) + "}",
        "{" + ",".join(map(str, HUGE)) + "}",
        HUGE,
    ),
}


def value_table(
    tmp_path: Path, schema: str, conn: psycopg.Connection, sql_type: str, *, template: str
) -> ProjectConfig:
    """A set-up `doc` table (id, label, v of `sql_type`) with `v` as its payload column."""
    conn.execute(
        sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, label text, v {})").format(
            sql.Identifier(schema, "doc"), sql.SQL(sql_type)
        )
    )
    config = doc_config(tmp_path / "config", schema, template, payload_columns="[v]")
    setup_database(conn, config)
    return config


def insert(conn: psycopg.Connection, schema: str, row_id: int, label: str, v: str | None) -> None:
    """A row whose `v` is the SQL literal `v`, cast by PostgreSQL to the column's type."""
    conn.execute(
        sql.SQL("INSERT INTO {} (id, label, v) VALUES (%s, %s, %s)").format(
            sql.Identifier(schema, "doc")
        ),
        (row_id, label, v),
    )


def stored(qdrant: QdrantClient, row_id: int) -> dict[str, Any]:
    (point,) = qdrant.retrieve(COLLECTION, [point_id("DOC", str(row_id), COLLECTION)])
    return point.payload


@pytest.mark.parametrize("case", VALUES, ids=list(VALUES))
def test_every_value_renders_in_its_sql_text_form_and_syncs(case, tmp_path, schema, conn, qdrant):
    """In the template: PostgreSQL's text for the value, under the pinned settings (not
    Python's repr); in the payload: its JSON form, infinities and NaN as strings. The sync of a
    table holding it completes, with the row beside it embedded too."""
    sql_type, literal, text, payload = VALUES[case]
    config = value_table(tmp_path, schema, conn, sql_type, template="{label}: {v}")
    insert(conn, schema, 1, "odd", literal)
    insert(conn, schema, 2, "plain", None)

    result = sync_model(config, conn, qdrant)
    assert (result.embedded, result.skipped, result.pending_after) == (2, 0, 0)
    odd = stored(qdrant, 1)
    assert odd["content"] == f"odd: {text}"
    assert odd["meta_data"]["v"] == payload
    assert type(odd["meta_data"]["v"]) is type(payload)
    assert stored(qdrant, 2)["content"] == "plain: "
    # What the sync rendered is what render_text makes of the row as read.
    table = config.tables.tables[0]
    row = SourceTable.for_config(conn, config, table).rows(["1"])["1"]
    assert table.render_text(row.values) == f"odd: {text}"


@pytest.mark.parametrize(
    ("literal", "why"),
    [
        ("[" * 5000 + "]" * 5000, "nesting"),
        ('"\\ud800"', "surrogate"),
    ],
    ids=["json_nested_5000_deep", "json_lone_surrogate"],
)
def test_a_payload_with_no_json_form_skips_its_row_with_a_reason(
    literal, why, tmp_path, schema, conn, qdrant
):
    """JSON PostgreSQL holds that Python cannot parse (too deep) or Qdrant cannot take (a lone
    surrogate): that row is skipped with the reason; the rest of its batch is embedded."""
    config = value_table(tmp_path, schema, conn, "json", template="{label}")
    insert(conn, schema, 1, "bad", literal)
    for row_id in range(2, 6):
        insert(conn, schema, row_id, f"good {row_id}", '{"ok": true}')

    result = sync_model(config, conn, qdrant)
    assert (result.embedded, result.skipped, result.pending_after) == (4, 1, 0)
    source = SourceTable.for_config(conn, config, config.tables.tables[0])
    ((collection, key, reason, _),) = source.skipped_rows()
    assert (collection, key) == (COLLECTION, "1")
    assert reason.startswith("payload column 'v' has no JSON form Qdrant takes (")
    assert stored(qdrant, 2)["meta_data"]["v"] == {"ok": True}
    # Skipped until its value changes; then it syncs.
    assert sync_model(config, conn, qdrant).batches == 0
    conn.execute(
        sql.SQL("UPDATE {} SET label = 'fixed', v = '[1]' WHERE id = 1").format(
            sql.Identifier(schema, "doc")
        )
    )
    fixed = sync_model(config, conn, qdrant)
    assert (fixed.embedded, fixed.skipped) == (1, 0)
    assert stored(qdrant, 1)["meta_data"]["v"] == [1]
    assert source.skipped_rows() == []


def test_json_too_deep_for_python_still_renders_as_template_text(tmp_path, schema, conn, qdrant):
    deep = "[" * 5000 + "]" * 5000
    conn.execute(
        sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, v json)").format(
            sql.Identifier(schema, "doc")
        )
    )
    config = doc_config(tmp_path / "config", schema, "{v}")
    setup_database(conn, config)
    conn.execute(
        sql.SQL("INSERT INTO {} VALUES (1, %s)").format(sql.Identifier(schema, "doc")), (deep,)
    )
    assert sync_model(config, conn, qdrant).embedded == 1
    assert stored(qdrant, 1)["content"] == deep


def test_invisible_only_rows_are_skipped_as_no_text(tmp_path, schema, conn, qdrant):
    config = value_table(tmp_path, schema, conn, "text", template="{label}")
    insert(conn, schema, 1, "\u200b\u200c\u200d\ufeff\u2060 \n", None)
    insert(conn, schema, 2, "visible\u200b", None)
    result = sync_model(config, conn, qdrant)
    assert (result.embedded, result.skipped) == (1, 1)
    source = SourceTable.for_config(conn, config, config.tables.tables[0])
    assert [(key, reason) for _, key, reason, _ in source.skipped_rows()] == [("1", NO_TEXT)]


def cli_run(config: ProjectConfig, database_url: str, qdrant_path: str, pgtz: str, *args: str):
    """The CLI in its own process, with PGTZ (libpq's default session time zone) set."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "QDRANT_PATH": qdrant_path,
        "VECTOR_PIPELINE_CONFIG_DIR": str(config.config_dir),
        "PGTZ": pgtz,
    }
    env.pop("QDRANT_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "vector_pipeline.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_timestamptz_renders_alike_whatever_the_client_time_zone(
    tmp_path, schema, conn, database_url, qdrant_path
):
    """A sync under PGTZ=Asia/Tokyo and checks under Tokyo and UTC agree: nothing is stale,
    so `repair` has nothing to flip back and forth."""
    config = value_table(tmp_path, schema, conn, "timestamptz", template="{label} at {v}")
    insert(conn, schema, 1, "meeting", "2024-05-01 18:30:00+09")
    insert(conn, schema, 2, "forever", "infinity")

    synced = cli_run(config, database_url, qdrant_path, "Asia/Tokyo", "sync")
    assert synced.returncode == 0, synced.stderr
    for pgtz in ("UTC", "Asia/Tokyo", "America/New_York", "UTC"):
        check = cli_run(config, database_url, qdrant_path, pgtz, "repair", "--dry-run")
        assert check.returncode == 0, check.stdout + check.stderr
        assert "missing 0, orphan 0, stale 0" in check.stdout
    with open_qdrant(QdrantLocation(path=qdrant_path)) as qdrant:
        meeting, forever = stored(qdrant, 1), stored(qdrant, 2)
    assert meeting["content"] == "meeting at 2024-05-01 09:30:00+00"
    assert meeting["meta_data"]["v"] == "2024-05-01T09:30:00+00:00"
    assert forever["content"] == "forever at infinity"
    assert forever["meta_data"]["v"] == "infinity"


def test_a_payload_that_turns_unreadable_does_not_stop_payload_refreshes(
    tmp_path, schema, conn, qdrant
):
    """A payload-only edit to a value with no JSON form: the refresh passes that row over (its
    point keeps the payload it had), refreshes the others, and reconcile still runs."""
    config = value_table(tmp_path, schema, conn, "json", template="{label}")
    insert(conn, schema, 1, "one", '{"n": 1}')
    insert(conn, schema, 2, "two", '{"n": 2}')
    assert sync_model(config, conn, qdrant).embedded == 2
    doc = sql.Identifier(schema, "doc")
    conn.execute(sql.SQL("""UPDATE {} SET v = '"\\ud800"' WHERE id = 1""").format(doc))
    conn.execute(sql.SQL("""UPDATE {} SET v = '{{"n": 22}}' WHERE id = 2""").format(doc))

    again = sync_model(config, conn, qdrant)
    assert (again.embedded, again.pending_after) == (0, 0)
    assert stored(qdrant, 1)["meta_data"]["v"] == {"n": 1}
    assert stored(qdrant, 2)["meta_data"]["v"] == {"n": 22}
    report = reconcile(conn, qdrant, config.tables.tables[0], schema, COLLECTION)
    assert (report.missing_count, report.stale_count, report.orphan_count) == (0, 0, 0)


def test_after_the_rendering_upgrade_only_rows_whose_text_changed_are_embedded(
    tmp_path, schema, conn, qdrant
):
    """Points written by a version that printed Python's forms (`True`): the first sync under
    the new rendering re-checks every mark once, marks rows whose text is unchanged again
    unpaid, and embeds only the rows that now render differently."""
    config = value_table(tmp_path, schema, conn, "boolean", template="{label}: {v}")
    insert(conn, schema, 1, "plain", None)
    insert(conn, schema, 2, "flag", "true")
    assert sync_model(config, conn, qdrant).embedded == 2
    # As the previous version left them: its rendering fingerprint, its text for row 2.
    conn.execute(
        sql.SQL("UPDATE {} SET rendering = 'before RENDERING_VERSION 3'").format(
            sql.Identifier(schema, STORE_TABLE)
        )
    )
    old = "flag: True"
    qdrant.set_payload(
        COLLECTION,
        {"content": old, "content_hash": content_hash(old)},
        points=[point_id("DOC", "2", COLLECTION)],
        wait=True,
    )

    upgraded = sync_model(config, conn, qdrant)
    assert (upgraded.adopted, upgraded.embedded, upgraded.pending_after) == (1, 1, 0)
    assert stored(qdrant, 2)["content"] == "flag: true"
    assert sync_model(config, conn, qdrant).batches == 0


def test_a_value_postgresql_cannot_convert_skips_only_its_row(tmp_path, schema, conn, qdrant):
    """A user type whose cast to json refuses some values fails the statement that reads a
    whole batch: the batch is read again converting each payload value on its own, so only
    those rows are skipped (with PostgreSQL's reason) and reconcile still runs."""
    mood = sql.Identifier(schema, "mood")
    cast = sql.Identifier(schema, "mood_json")
    conn.execute(sql.SQL("CREATE TYPE {} AS ENUM ('calm', 'cross')").format(mood))
    conn.execute(
        sql.SQL(
            "CREATE FUNCTION {}(m {}) RETURNS json LANGUAGE plpgsql AS $$ BEGIN "
            "IF m = 'cross' THEN RAISE EXCEPTION 'too cross' USING ERRCODE = '22023'; END IF; "
            "RETURN json_build_object('mood', m::text); END $$"
        ).format(cast, mood)
    )
    conn.execute(sql.SQL("CREATE CAST ({} AS json) WITH FUNCTION {}({})").format(mood, cast, mood))
    config = value_table(tmp_path, schema, conn, f'"{schema}".mood', template="{label}")
    for row_id, value in enumerate(["calm", "calm", "cross", "calm", "cross"], start=1):
        insert(conn, schema, row_id, f"row {row_id}", value)

    result = sync_model(config, conn, qdrant, batch_size=3)
    assert (result.embedded, result.skipped, result.pending_after) == (3, 2, 0)
    assert stored(qdrant, 4)["meta_data"]["v"] == {"mood": "calm"}
    source = SourceTable.for_config(conn, config, config.tables.tables[0])
    reason = "payload column 'v' cannot be converted to JSON (too cross)"
    assert {key: why for _, key, why, _ in source.skipped_rows()} == {"3": reason, "5": reason}
    # Read by key, too, and by reconcile.
    assert source.rows(["3", "1"])["3"].problem == reason
    report = reconcile(conn, qdrant, config.tables.tables[0], schema, COLLECTION)
    assert (report.missing_count, report.stale_count, report.orphan_count) == (0, 0, 0)
