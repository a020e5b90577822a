"""`embedding_session` through `SessionStore` and its helpers, against the real database."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest
from psycopg import sql

from vector_pipeline.config import collection_name_for, load_config
from vector_pipeline.database_setup import SESSION_TABLE, pending_condition, pending_index_name
from vector_pipeline.sessions import (
    COMPLETED,
    FAILED,
    MESSAGE_LIMIT,
    PENDING,
    PROCESSING,
    SessionRequestError,
    SessionStore,
    pending_total,
    redact,
    resolve_request,
)
from vector_pipeline.source import SourceTable, connect
from vector_pipeline_tests.conftest import write_config

pytestmark = pytest.mark.integration


@pytest.fixture
def store(project, conn) -> SessionStore:
    return SessionStore(conn, project.tables.schema_)


def _mark_embedded(conn: psycopg.Connection, schema: str, collection: str, up_to_id: int) -> None:
    conn.execute(
        sql.SQL("UPDATE {} SET embedded_in = embedded_in || %s::jsonb WHERE id <= %s").format(
            sql.Identifier(schema, "doc")
        ),
        (f'["{collection}"]', up_to_id),
    )


# --- lifecycle ------------------------------------------------------------------------------


def test_create_is_pending_with_defaults_and_listed_oldest_first(store):
    first = store.create()
    second = store.create(model="det_b", tables=["doc"])
    third = store.create(tables=[])  # an empty list means every table, stored as NULL

    session = store.get(first)
    assert session.status == PENDING
    assert (session.model, session.tables) == (None, None)
    assert (session.total_items, session.processed_items, session.progress) == (0, 0, 0)
    assert session.error_message is None
    assert session.created_at is not None
    assert (session.started_at, session.finished_at, session.run_id) == (None, None, None)
    assert not session.finished
    assert (store.get(second).model, store.get(second).tables) == ("det_b", ["doc"])
    assert store.get(third).tables is None
    assert store.get(10_000_000) is None

    assert [s.id for s in store.pending()] == [first, second, third]
    assert [s.id for s in store.pending(after_id=first)] == [second, third]
    assert [s.id for s in store.pending(limit=2)] == [first, second]


def test_start_moves_pending_to_processing_exactly_once(store):
    session_id = store.create()
    other = store.create()

    assert store.start(session_id, "run-1", 120) is True
    assert store.start(session_id, "run-2", 7) is False

    session = store.get(session_id)
    assert session.status == PROCESSING
    assert session.run_id == "run-1"
    assert session.total_items == 120
    assert session.started_at is not None and session.started_at >= session.created_at
    assert session.finished_at is None
    # It left the PENDING list; the other one did not.
    assert [s.id for s in store.pending()] == [other]


def test_concurrent_progress_from_many_connections_loses_no_update(store, project, database_url):
    threads_count, increments, total = 8, 25, 210
    session_id = store.create()
    # Not started yet: progress is not counted for a PENDING session.
    store.add_progress(session_id, 5)
    assert store.get(session_id).processed_items == 0
    assert store.start(session_id, "run", total)

    barrier = threading.Barrier(threads_count)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with connect(database_url) as own:
                own_store = SessionStore(own, project.tables.schema_)
                barrier.wait(timeout=30)
                for _ in range(increments):
                    own_store.add_progress(session_id, 1)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    workers = [threading.Thread(target=work) for _ in range(threads_count)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert not errors
    assert not any(worker.is_alive() for worker in workers)

    session = store.get(session_id)
    processed = threads_count * increments
    assert session.processed_items == processed == 200
    assert session.progress == (100 * processed) // total == 95
    assert session.status == PROCESSING

    # Reaching (or passing) the total while still PROCESSING shows 99, never 100.
    store.add_progress(session_id, 10)
    assert (store.get(session_id).processed_items, store.get(session_id).progress) == (210, 99)
    store.add_progress(session_id, 50)
    assert (store.get(session_id).processed_items, store.get(session_id).progress) == (260, 99)


def test_progress_with_zero_total_does_not_divide_by_zero(store):
    session_id = store.create()
    assert store.start(session_id, "run", 0)
    store.add_progress(session_id, 3)
    session = store.get(session_id)
    assert (session.processed_items, session.progress) == (3, 99)


def test_progress_of_a_large_table_does_not_overflow(store):
    # processed * 100 is past the integer range from ~21.5 million rows on.
    session_id = store.create()
    assert store.start(session_id, "run", 30_000_000)
    store.add_progress(session_id, 22_000_000)
    session = store.get(session_id)
    assert (session.processed_items, session.progress) == (22_000_000, 73)


def test_complete_then_fail_changes_nothing(store):
    session_id = store.create()
    store.start(session_id, "run-1", 10)
    store.add_progress(session_id, 4)

    assert store.complete(session_id) is True
    done = store.get(session_id)
    assert done.status == COMPLETED
    assert done.progress == 100
    assert done.finished_at is not None and done.finished_at >= done.started_at
    assert done.error_message is None
    assert done.finished

    assert store.fail(session_id, "late failure", "run-2") is False
    assert store.complete(session_id) is False
    assert store.get(session_id) == done
    # A finished session takes no more progress either.
    store.add_progress(session_id, 3)
    assert store.get(session_id).processed_items == 4


def test_fail_on_pending_records_the_message_and_truncates_long_ones(store):
    short = store.create()
    assert store.fail(short, "model exploded", "run-9") is True
    session = store.get(short)
    assert session.status == FAILED
    assert session.error_message == "model exploded"
    assert session.run_id == "run-9"
    assert session.finished_at is not None
    assert session.finished
    # FAILED is final: neither complete nor a second fail moves it.
    assert store.complete(short) is False
    assert store.fail(short, "again") is False
    assert store.get(short).error_message == "model exploded"

    long = store.create()
    message = "x" * (MESSAGE_LIMIT - 1) + "yz" + "tail" * 100
    assert store.fail(long, message) is True
    stored = store.get(long).error_message
    assert len(stored) == MESSAGE_LIMIT
    assert stored == message[:MESSAGE_LIMIT]
    assert stored.endswith("xy")
    assert store.get(long).run_id is None  # no run id given: none invented


def test_fail_keeps_the_run_id_from_start_when_none_is_given(store):
    session_id = store.create()
    store.start(session_id, "run-from-start", 5)
    assert store.fail(session_id, "boom") is True
    assert store.get(session_id).run_id == "run-from-start"


# --- resolving a request --------------------------------------------------------------------


def test_resolve_request_defaults_and_named_values(store, project):
    (doc,) = project.tables.tables
    all_null = store.get(store.create())
    assert resolve_request(project, all_null) == ("det_a", [doc])

    named = store.get(store.create(model="det_b", tables=["doc", "doc"]))
    assert resolve_request(project, named) == ("det_b", [doc])


def test_resolve_request_names_an_unknown_model(store, project):
    session = store.get(store.create(model="gpt-nope"))
    with pytest.raises(SessionRequestError) as raised:
        resolve_request(project, session)
    message = str(raised.value)
    assert "'gpt-nope'" in message
    assert f"session {session.id}" in message
    assert "det_a" in message and "det_b" in message


def test_resolve_request_names_an_unknown_table(store, project):
    session = store.get(store.create(model="det_b", tables=["doc", "ghost"]))
    with pytest.raises(SessionRequestError) as raised:
        resolve_request(project, session)
    message = str(raised.value)
    assert "'ghost'" in message
    assert "'doc'" not in message.split("known tables")[0]
    assert "known tables: doc" in message


def test_pending_total_equals_the_pending_count(project, conn):
    schema = project.tables.schema_
    tables = list(project.tables.tables)
    collection_a = collection_name_for("test", "det-a")
    assert pending_total(conn, project, "det_a", tables) == 120
    _mark_embedded(conn, schema, collection_a, 30)

    (expected,) = conn.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE {}").format(
            sql.Identifier(schema, "doc"), pending_condition(collection_a)
        )
    ).fetchone()
    assert expected == 90
    assert pending_total(conn, project, "det_a", tables) == 90
    assert pending_total(conn, project, "det_b", tables) == 120
    assert pending_total(conn, project, "det_a", []) == 0


# --- redaction ------------------------------------------------------------------------------


def test_redact_replaces_every_known_secret(tmp_path, schema, monkeypatch):
    monkeypatch.setenv("VP_TEST_OPENAI_KEY", "sk-test-0123456789abcdef")
    monkeypatch.setenv("QDRANT_API_KEY", "qdrant-secret-key")
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:pg-pass-word@db.internal:5432/kb")
    monkeypatch.setenv("DAGSTER_PG_URL", "postgresql://dagster:dag-secret@db.internal/dagster")
    config = load_config(
        write_config(
            tmp_path / "redact",
            schema,
            extra_models="""\
            oa:
              provider: openai
              id: text-embedding-3-small
              dimensions: 1536
              api_key: ${VP_TEST_OPENAI_KEY}
            """,
        )
    )
    message = (
        "request with Bearer sk-test-0123456789abcdef failed; qdrant api-key qdrant-secret-key; "
        "connect postgresql://app:pg-pass-word@db.internal:5432/kb; dagster dag-secret"
    )
    redacted = redact(message, config)
    for secret in ("sk-test-0123456789abcdef", "qdrant-secret-key", "pg-pass-word", "dag-secret"):
        assert secret not in redacted
    assert redacted == (
        "request with Bearer *** failed; qdrant api-key ***; "
        "connect postgresql://app:***@db.internal:5432/kb; dagster ***"
    )
    # Without secrets the message is untouched, and long ones are cut to the column's limit.
    assert redact("nothing to hide", config) == "nothing to hide"
    assert len(redact("a" * (MESSAGE_LIMIT + 50), config)) == MESSAGE_LIMIT


def test_redact_leaves_short_values_and_unset_variables_alone(project, monkeypatch):
    monkeypatch.setenv("QDRANT_API_KEY", "abc")  # too short to replace safely
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("DAGSTER_PG_URL", raising=False)
    assert redact("abcdef was fine", project) == "abcdef was fine"


# --- indexes serve the hot queries ----------------------------------------------------------


class _RecordingCursor(psycopg.Cursor):
    """A cursor that remembers every statement it runs, with its parameters."""

    log: list[tuple[Any, Any]] = []

    def execute(self, query, params=None, **kwargs):  # type: ignore[override]
        self.log.append((query, params))
        return super().execute(query, params, **kwargs)


def _plan(conn: psycopg.Connection, query: Any, params: Any) -> str:
    if isinstance(query, str):
        query = sql.SQL(query)  # type: ignore[arg-type]
    rows = conn.execute(sql.SQL("EXPLAIN ") + query, params).fetchall()
    return "\n".join(row[0] for row in rows)


def _recorded(conn: psycopg.Connection, action) -> list[tuple[Any, Any]]:
    """The statements `action()` runs on `conn`, captured as the driver receives them."""
    log: list[tuple[Any, Any]] = []
    recording = type("Recording", (_RecordingCursor,), {"log": log})
    previous = conn.cursor_factory
    conn.cursor_factory = recording
    try:
        action()
    finally:
        conn.cursor_factory = previous
    return log


def _statement_text(conn: psycopg.Connection, query: Any) -> str:
    return query if isinstance(query, str) else query.as_string(conn)


def test_pending_sessions_query_uses_the_partial_index(store, conn):
    for _ in range(3):
        store.create()
    conn.execute("SET enable_seqscan = off")
    log = _recorded(conn, store.pending)
    (query, params), *_ = [(q, p) for q, p in log if SESSION_TABLE in _statement_text(conn, q)]
    assert "PENDING" in _statement_text(conn, query)
    plan = _plan(conn, query, params)
    assert f"{SESSION_TABLE}_pending_idx" in plan, plan


def test_pending_rows_queries_use_the_partial_index(project, conn):
    schema = project.tables.schema_
    (table,) = project.tables.tables
    collection = collection_name_for(table.collection_base, "det-a")
    index = pending_index_name(table, collection)
    _mark_embedded(conn, schema, collection, 100)  # 20 of 120 rows stay pending
    conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, "doc")))
    conn.execute("SET enable_seqscan = off")
    source = SourceTable(conn, schema, table)

    batches: list[Any] = []
    log = _recorded(conn, lambda: batches.append(next(source.pending_batches(collection, 8))))
    assert [row.key for row in batches[0]] == [str(i) for i in range(101, 109)]
    (first, first_params), *_ = [(q, p) for q, p in log if "ORDER BY" in _statement_text(conn, q)]
    assert 't."id" >' not in _statement_text(conn, first)  # the first page, not a keyset page
    plan = _plan(conn, first, first_params)
    assert index in plan, plan

    answers: list[bool] = []
    log = _recorded(conn, lambda: answers.append(source.has_pending(collection)))
    assert answers == [True]
    (exists, exists_params), *_ = [(q, p) for q, p in log if "EXISTS" in _statement_text(conn, q)]
    plan = _plan(conn, exists, exists_params)
    assert index in plan, plan

    # The other model's collection has its own index, and the plan names that one instead.
    other = collection_name_for(table.collection_base, "det-b")
    log = _recorded(conn, lambda: source.has_pending(other))
    (exists, exists_params), *_ = [(q, p) for q, p in log if "EXISTS" in _statement_text(conn, q)]
    plan = _plan(conn, exists, exists_params)
    assert pending_index_name(table, other) in plan, plan
    assert index not in plan, plan
