"""Provider faults, end to end: the real sync engine (PostgreSQL, Qdrant local mode, BM25) with
the OpenAI embedder talking over loopback HTTP to a server that speaks OpenAI's embeddings
protocol and misbehaves on cue.

Transient faults must leave the sync complete with every row embedded exactly once; persistent
ones must fail with an error naming the model and the fault while keeping the batches that
succeeded and marking nothing without its point; a rejected key must fail on the first request.
The API key is a sentinel that must never show in any exception or log record.
"""

from __future__ import annotations

import logging
import math
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg import sql
from qdrant_client import QdrantClient

from vector_pipeline.chunks import Chunker
from vector_pipeline.config import ProjectConfig, collection_name_for, load_config
from vector_pipeline.database_setup import setup_database
from vector_pipeline.embedders import EmbeddingAuthError, EmbeddingError, build_embedder
from vector_pipeline.embedders.base import EmbeddingAnswerError
from vector_pipeline.embedders.http_limits import response_limit
from vector_pipeline.embedders.openai_api import _PROBE_TEXT as PROBE_TEXT
from vector_pipeline.embedders.openai_api import OpenAIEmbedder
from vector_pipeline.source import SourceTable
from vector_pipeline.sync import SyncResult, sync_table
from vector_pipeline_tests.conftest import all_points, create_doc_table, write_config
from vector_pipeline_tests.openai_server import FakeOpenAIServer, Fault, fake_vector

pytestmark = pytest.mark.integration

KEY_VAR = "VP_FAULTS_OPENAI_KEY"
KEY = "sk-sentinel-5b1e7c9d2a4f6083e1f9QZXW"
MODEL_KEY = "fake_openai"
MODEL_ID = "text-embedding-3-small"
WHO = f"openai model '{MODEL_KEY}' ({MODEL_ID})"
DIMENSIONS = 8
ROWS = 100
BATCH = 20  # ROWS / BATCH = 5 requests for a clean sync
FAST_BACKOFF = 0.02  # seconds: our backoff base after unusable answers (the SDK's stays 0.5 s)


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def key_never_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.DEBUG)  # the SDK's and httpx's debug logs included
    yield
    # (caplog.records would be the teardown's only.)
    records = caplog.get_records("setup") + caplog.get_records("call")
    leaks = [record.name for record in records if KEY in _logged(record)]
    assert not leaks, f"the API key was logged by {leaks}"


def _logged(record: logging.LogRecord) -> str:
    shown = [record.getMessage(), repr(record.args)]
    if record.exc_info:
        shown.append(logging.Formatter().formatException(record.exc_info))
    return "\n".join(shown)


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(api_key=KEY, dimensions=DIMENSIONS) as fake:
        yield fake


@pytest.fixture
def project(
    tmp_path: Path,
    schema: str,
    conn: psycopg.Connection,
    server: FakeOpenAIServer,
    monkeypatch: pytest.MonkeyPatch,
) -> ProjectConfig:
    """`doc` with ROWS rows, init-db applied, the default model an OpenAI one at `server`."""
    monkeypatch.setenv(KEY_VAR, KEY)
    create_doc_table(conn, schema, ROWS)
    config = load_config(
        write_config(
            tmp_path / "config",
            schema,
            default=MODEL_KEY,
            extra_models=f"""\
            {MODEL_KEY}:
              provider: openai
              id: {MODEL_ID}
              dimensions: {DIMENSIONS}
              api_key: ${{{KEY_VAR}}}
              base_url: {server.url}
              batch_size: {BATCH}
              max_retries: 2
              max_concurrent_requests: 1
              timeout_seconds: 5
            """,
        )
    )
    setup_database(conn, config)
    return config


# -- helpers --------------------------------------------------------------------------------


def run_sync(
    config: ProjectConfig, conn: psycopg.Connection, qdrant: QdrantClient, **model_overrides: Any
) -> SyncResult:
    """One sync of `doc` through the real engine, the model's settings overridden as given."""
    key, model = config.embeddings.model()
    embedder = build_embedder(key, model.model_copy(update=model_overrides))
    assert isinstance(embedder, OpenAIEmbedder)
    embedder.retry_base_seconds = FAST_BACKOFF
    try:
        return sync_table(
            conn=conn,
            qdrant=qdrant,
            embedder=embedder,
            table=config.tables.tables[0],
            schema=config.tables.schema_,
            batch_size=BATCH,
        )
    finally:
        embedder.close()


def failing_sync(
    config: ProjectConfig, conn: psycopg.Connection, qdrant: QdrantClient, **model_overrides: Any
) -> EmbeddingError:
    with pytest.raises(EmbeddingError) as caught:
        run_sync(config, conn, qdrant, **model_overrides)
    assert_key_hidden(caught.value)
    return caught.value


def assert_key_hidden(error: BaseException) -> None:
    # No SDK exception may ride along as cause or context: its request object holds the
    # Authorization header, and error reporters (Dagster, Sentry) walk the chain.
    assert error.__cause__ is None and error.__context__ is None
    shown = [str(error), repr(error), repr(error.args), "".join(traceback.format_exception(error))]
    for text in shown:
        assert KEY not in text and KEY[-8:] not in text


@dataclass
class State:
    collection: str
    texts: dict[int, str]  # row id -> the text its current values render to
    marks: dict[int, int]  # row id -> how often `embedded_in` lists the collection
    points: dict[int, tuple[str, list[float]]]  # row id -> (payload content, dense vector)

    @property
    def marked(self) -> set[int]:
        return {row for row, count in self.marks.items() if count}

    @property
    def pending(self) -> set[int]:
        return set(self.texts) - self.marked


def state(config: ProjectConfig, conn: psycopg.Connection, qdrant: QdrantClient) -> State:
    table = config.tables.tables[0]
    collection = collection_name_for(table.collection_base, MODEL_ID)
    records = conn.execute(
        sql.SQL("SELECT id, title, body, embedded_in FROM {}").format(
            sql.Identifier(config.tables.schema_, table.table)
        )
    ).fetchall()
    texts = {
        row: table.render_text({"title": title, "body": body}) for row, title, body, _ in records
    }
    marks = {
        row: embedded.count(collection) if isinstance(embedded, list) else 0
        for row, _, _, embedded in records
    }
    points: dict[int, tuple[str, list[float]]] = {}
    for point in all_points(qdrant, collection, with_payload=True, with_vectors=True):
        row = point.payload["meta_data"]["row_id"]
        assert row not in points, f"two points for row {row}"
        points[row] = (point.payload["content"], point.vector["dense"])
    return State(collection=collection, texts=texts, marks=marks, points=points)


def assert_marked_rows_have_their_points(now: State) -> None:
    """No row is marked without a point holding its current text and that text's vector."""
    assert all(count <= 1 for count in now.marks.values()), "a collection listed twice"
    for row in now.marked:
        assert row in now.points, f"row {row} is marked but has no point"
        content, vector = now.points[row]
        assert content == now.texts[row]
        assert np.allclose(vector, fake_vector(content, DIMENSIONS), atol=1e-5), row


def assert_complete(now: State, server: FakeOpenAIServer) -> None:
    """Every row embedded exactly once: one mark, one point, one good answer for its text."""
    assert now.pending == set()
    assert set(now.marks.values()) == {1}
    assert set(now.points) == set(now.texts)
    assert_marked_rows_have_their_points(now)
    answered = Counter(
        text
        for request in server.requests
        if request.fault is None and request.status == 200
        for text in request.inputs
    )
    assert answered == Counter(now.texts.values())


def gaps(server: FakeOpenAIServer) -> list[float]:
    times = [request.received_at for request in server.requests]
    return [later - earlier for earlier, later in zip(times, times[1:], strict=False)]


# -- transient faults -----------------------------------------------------------------------

TRANSIENT = {
    "429 Retry-After": Fault.http_status(429, headers={"Retry-After": "1"}, message="Slow down"),
    "500": Fault.http_status(500, message="The server had an error"),
    "503": Fault.http_status(503, message="The engine is currently overloaded"),
    "timeout": Fault.sleep(3.0),
    "connection reset": Fault.reset(),
    "malformed JSON": Fault.malformed_json(),
    "one vector short": Fault.wrong_count(-1),
    "one vector too many": Fault.wrong_count(+1),
    "dimension too big": Fault.wrong_dimension(+1),
    "dimension too small": Fault.wrong_dimension(-3),
}


@pytest.mark.parametrize("fault", TRANSIENT.values(), ids=TRANSIENT.keys())
def test_a_transient_fault_is_retried_and_every_row_embedded_once(
    project: ProjectConfig,
    conn: psycopg.Connection,
    qdrant: QdrantClient,
    server: FakeOpenAIServer,
    fault: Fault,
) -> None:
    server.add_faults(None, None, fault)  # the third batch's first request
    timeout = 0.5 if fault.kind == "sleep" else 5.0
    result = run_sync(project, conn, qdrant, timeout_seconds=timeout)

    assert (result.embedded, result.pending_after, result.batches) == (ROWS, 0, ROWS // BATCH)
    requests = server.requests
    assert [request.fault for request in requests] == [None, None, fault.kind, None, None, None]
    assert requests[2].inputs == requests[3].inputs  # the same batch, sent again
    assert requests[3].status == 200
    if fault.kind == "status" and fault.headers:
        assert gaps(server)[2] >= 0.95  # Retry-After: 1 was honoured
    now = state(project, conn, qdrant)
    assert_complete(now, server)
    assert qdrant.count(now.collection, exact=True).count == ROWS


@pytest.mark.parametrize(
    "faults",
    [
        (Fault.http_status(503), Fault.wrong_count(-1)),
        (Fault.malformed_json(), Fault.reset()),
    ],
    ids=["503 then wrong count", "malformed JSON then reset"],
)
def test_mixed_faults_on_one_request_share_the_retry_budget(
    project: ProjectConfig,
    conn: psycopg.Connection,
    qdrant: QdrantClient,
    server: FakeOpenAIServer,
    faults: tuple[Fault, Fault],
) -> None:
    # max_retries: 2 covers an SDK retry and one of ours on the same batch...
    server.add_faults(None, *faults)
    run_sync(project, conn, qdrant)
    assert len(server.requests) == ROWS // BATCH + 2
    assert_complete(state(project, conn, qdrant), server)


@pytest.mark.parametrize(
    "faults",
    [
        (Fault.http_status(503), Fault.wrong_count(-1), Fault.http_status(503)),
        (Fault.wrong_count(-1), Fault.http_status(503), Fault.http_status(503)),
    ],
    ids=["503, wrong count, 503", "wrong count, 503, 503"],
)
def test_the_retry_budget_is_one_per_request_not_one_per_layer(
    project: ProjectConfig,
    conn: psycopg.Connection,
    qdrant: QdrantClient,
    server: FakeOpenAIServer,
    faults: tuple[Fault, ...],
) -> None:
    # ...but a third fault exhausts it: three attempts in all, never the SDK's budget again.
    server.add_faults(None, *faults)
    error = failing_sync(project, conn, qdrant)
    assert "HTTP 503" in str(error) and WHO in str(error)
    assert len(server.requests) == 1 + 3
    now = state(project, conn, qdrant)
    assert now.marked == set(range(1, BATCH + 1))
    assert_marked_rows_have_their_points(now)


# -- persistent faults ----------------------------------------------------------------------

PERSISTENT = {
    "HTTP 500": (Fault.http_status(500, message="Internal error"), EmbeddingError, "HTTP 500"),
    "connection reset": (Fault.reset(), EmbeddingError, "the connection to http://127.0.0.1"),
    "malformed JSON": (Fault.malformed_json(), EmbeddingAnswerError, "not valid JSON"),
    "wrong count": (Fault.wrong_count(-1), EmbeddingAnswerError, "returned 19 vectors for 20"),
    "wrong dimension": (
        Fault.wrong_dimension(+1),
        EmbeddingAnswerError,
        "a vector of 9 values for input 0, expected 8",
    ),
}


@pytest.mark.parametrize(("fault", "error_type", "says"), PERSISTENT.values(), ids=PERSISTENT)
def test_a_persistent_fault_fails_clearly_and_keeps_earlier_batches(
    project: ProjectConfig,
    conn: psycopg.Connection,
    qdrant: QdrantClient,
    server: FakeOpenAIServer,
    fault: Fault,
    error_type: type[EmbeddingError],
    says: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server.fail_always(fault, after=2)  # two batches get through, then nothing does
    with caplog.at_level(logging.WARNING, logger="vector_pipeline.sync"):
        error = failing_sync(project, conn, qdrant, max_retries=1)
    # The log names the rows the failure concerned, beside the error itself.
    assert f"batch of {BATCH} rows (ids 41..60) failed: {WHO}" in caplog.text

    assert type(error) is error_type
    message = str(error)
    assert message.startswith(WHO) and says in message
    if error_type is EmbeddingAnswerError:
        assert "gave up after 2 attempts (max_retries: 1" in message
    # The failing batch: one try and one retry; after unusable sizes, one probe (also unusable).
    probe = 1 if fault.kind == "wrong_dimension" else 0
    assert len(server.requests) == 2 + 2 + probe
    assert server.requests[2].inputs == server.requests[3].inputs

    now = state(project, conn, qdrant)
    kept = set(range(1, 2 * BATCH + 1))
    assert now.marked == kept
    assert set(now.points) == kept  # nothing of the failing batch was written, let alone marked
    assert set(server.requests[2].inputs) == {now.texts[row] for row in range(41, 61)}
    assert now.pending == set(now.texts) - kept
    assert_marked_rows_have_their_points(now)

    server.fail_always(None)  # the provider recovers; the next sync finishes the job
    result = run_sync(project, conn, qdrant, max_retries=1)
    assert (result.embedded, result.pending_after) == (ROWS - 2 * BATCH, 0)
    assert len(server.requests) == 4 + probe + 3
    assert_complete(state(project, conn, qdrant), server)


def test_unusable_answers_back_off_exponentially(
    project: ProjectConfig, server: FakeOpenAIServer
) -> None:
    server.fail_always(Fault.wrong_dimension(+1))
    key, model = project.embeddings.model()
    embedder = build_embedder(key, model.model_copy(update={"max_retries": 3}))
    assert isinstance(embedder, OpenAIEmbedder)
    embedder.retry_base_seconds = 0.1
    with pytest.raises(EmbeddingAnswerError, match="gave up after 4 attempts") as caught:
        embedder.embed_documents(["a", "b"])
    embedder.close()
    assert_key_hidden(caught.value)
    assert len(server.requests) == 4 + 1  # and a probe, which tells `dimensions:` is wrong
    assert server.requests[-1].inputs == [PROBE_TEXT]
    # 0.1 s * 2^n, less at most 25 % jitter: at least 0.075, 0.15 and 0.3 s apart.
    waited = gaps(server)
    assert all(gap >= low for gap, low in zip(waited, (0.075, 0.15, 0.3), strict=False)), waited


def test_backoff_matches_the_sdk_and_is_capped_and_jittered() -> None:
    from openai._constants import INITIAL_RETRY_DELAY, MAX_RETRY_DELAY

    assert OpenAIEmbedder.retry_base_seconds == INITIAL_RETRY_DELAY
    assert OpenAIEmbedder.retry_max_seconds == MAX_RETRY_DELAY
    embedder = OpenAIEmbedder.__new__(OpenAIEmbedder)  # retry_delay needs no client
    for retries in range(12):
        ceiling = min(0.5 * 2**retries, 8.0)
        delays = [embedder.retry_delay(retries) for _ in range(200)]
        assert all(0.75 * ceiling <= delay <= ceiling for delay in delays)
        assert max(delays) - min(delays) > 0.05 * ceiling  # jittered, not fixed
    assert embedder.retry_delay(10_000) <= 8.0


# -- inputs the provider will not embed ----------------------------------------------------

POISONED_ROW = 47  # the 7th of the third batch (41..60)
# How the server treats the row's text, and what its skip records after the model's name.
BAD_INPUTS = {
    "refused with HTTP 400": ("refuse 400", ": HTTP 400: Invalid 'input': flagged by moderation"),
    "refused with HTTP 422": ("refuse 422", ": HTTP 422: Invalid 'input': flagged by moderation"),
    "answered with NaN": ("nan", " returned NaN or infinite vector values for this text"),
    "answered with infinity": ("inf", " returned NaN or infinite vector values for this text"),
    "answered one value short": (
        "short",
        " returned a vector of 7 values for this text, expected 8",
    ),
}


@pytest.mark.parametrize(("how", "reason"), BAD_INPUTS.values(), ids=BAD_INPUTS)
def test_an_input_the_provider_never_embeds_is_skipped_and_the_rest_carry_on(
    project: ProjectConfig,
    conn: psycopg.Connection,
    qdrant: QdrantClient,
    server: FakeOpenAIServer,
    how: str,
    reason: str,
) -> None:
    table = project.tables.tables[0]
    source = SourceTable.for_config(conn, project, table)
    title, body = conn.execute(
        sql.SQL("SELECT title, body FROM {} WHERE id = %s").format(
            sql.Identifier(project.tables.schema_, table.table)
        ),
        (POISONED_ROW,),
    ).fetchone()
    poisoned = table.render_text({"title": title, "body": body})
    if how.startswith("refuse"):
        message = "Invalid 'input':\n flagged by moderation"  # one line in the skip table
        server.refuse_input(poisoned, status=int(how.split()[1]), message=message)
    else:
        server.poison_input(poisoned, how)  # type: ignore[arg-type]

    result = run_sync(project, conn, qdrant)

    assert (result.embedded, result.skipped, result.pending_after) == (ROWS - 1, 1, 0)
    assert result.skipped_ids == [POISONED_ROW]
    now = state(project, conn, qdrant)
    assert now.marked == set(now.points) == set(now.texts) - {POISONED_ROW}
    assert_marked_rows_have_their_points(now)
    ((collection, key, recorded, _when),) = source.skipped_rows()
    assert (collection, key) == (now.collection, str(POISONED_ROW))
    assert recorded == WHO + reason
    # Every other text was answered once; the bad one was sent alone before it was given up
    # (twice, if refused: a skip needs a persistent refusal).
    answered = Counter(
        text for request in server.requests if request.status == 200 for text in request.inputs
    )
    others = Counter(text for row, text in now.texts.items() if row != POISONED_ROW)
    assert answered - Counter({poisoned: 99, PROBE_TEXT: 99}) == others
    alone = sum(1 for request in server.requests if request.inputs == [poisoned])
    assert alone == 2 if how.startswith("refuse") else alone == 3  # max_retries: 2
    # Splitting costs a few requests more than the 5 batches, not one per input.
    assert len(server.requests) <= ROWS // BATCH + 2 * math.ceil(math.log2(BATCH)) + 3

    # The skip holds until the row's text changes: a rerun sends nothing at all ...
    sent = len(server.requests)
    again = run_sync(project, conn, qdrant)
    assert (again.batches, again.embedded, again.skipped) == (0, 0, 0)
    assert len(server.requests) == sent
    # ... and a new text is embedded, its skip forgotten.
    conn.execute(
        sql.SQL("UPDATE {} SET body = 'rewritten' WHERE id = %s").format(
            sql.Identifier(project.tables.schema_, table.table)
        ),
        (POISONED_ROW,),
    )
    fixed = run_sync(project, conn, qdrant)
    assert (fixed.embedded, fixed.skipped, fixed.pending_after) == (1, 0, 0)
    assert source.skipped_rows() == []
    assert_complete_marks(state(project, conn, qdrant))


def test_a_lone_pending_row_refused_is_skipped_and_its_old_point_goes(
    project: ProjectConfig,
    conn: psycopg.Connection,
    qdrant: QdrantClient,
    server: FakeOpenAIServer,
) -> None:
    run_sync(project, conn, qdrant)
    table = project.tables.tables[0]
    conn.execute(
        sql.SQL("UPDATE {} SET body = 'now refused' WHERE id = 47").format(
            sql.Identifier(project.tables.schema_, table.table)
        )
    )
    server.refuse_input(table.render_text({"title": "Title 47", "body": "now refused"}))
    server.clear_requests()

    result = run_sync(project, conn, qdrant)  # a batch of one row: nothing else to compare

    assert (result.embedded, result.skipped, result.pending_after) == (0, 1, 0)
    # Refused, a probe answered, refused again: the input is at fault, persistently.
    assert [r.inputs == [PROBE_TEXT] for r in server.requests] == [False, True, False]
    now = state(project, conn, qdrant)
    assert 47 not in now.points  # its old text is not findable any more
    assert now.marked == set(now.points) == set(now.texts) - {47}


def test_a_one_off_refusal_of_a_lone_input_is_sent_again_not_skipped(
    project: ProjectConfig, server: FakeOpenAIServer
) -> None:
    server.add_faults(Fault.http_status(400, message="Invalid 'input': hiccup"))
    key, model = project.embeddings.model()
    embedder = build_embedder(key, model)
    result = embedder.embed_documents(["a"])
    embedder.close()
    assert result.rejected == {}
    assert np.allclose(result.vectors[0], fake_vector("a", DIMENSIONS), atol=1e-6)
    assert [r.inputs for r in server.requests] == [["a"], [PROBE_TEXT], ["a"]]


def test_a_long_row_with_one_chunk_refused_is_skipped_whole(
    project: ProjectConfig,
    conn: psycopg.Connection,
    qdrant: QdrantClient,
    server: FakeOpenAIServer,
) -> None:
    table = project.tables.tables[0]
    doc = sql.Identifier(project.tables.schema_, table.table)
    long_body = " ".join(f"sentence {i} of a long body." for i in range(60))
    conn.execute(sql.SQL("UPDATE {} SET body = %s WHERE id = 47").format(doc), (long_body,))
    key, model = project.embeddings.model()
    embedder = build_embedder(key, model.model_copy(update={"max_tokens_per_input": 64}))
    chunks = Chunker.for_embedder(table, embedder).split({"title": "Title 47", "body": long_body})
    embedder.close()
    assert len(chunks) >= 3
    server.refuse_input(chunks[1], message="Invalid 'input': flagged")

    result = run_sync(project, conn, qdrant, max_tokens_per_input=64)

    assert (result.embedded, result.skipped, result.pending_after) == (ROWS - 1, 1, 0)
    ((_, row_key, reason, _),) = SourceTable.for_config(conn, project, table).skipped_rows()
    assert (row_key, reason) == ("47", f"{WHO}: HTTP 400: Invalid 'input': flagged")
    # None of its chunks was written, not even those the provider embedded.
    now = state(project, conn, qdrant)
    assert now.marked == set(now.points) == set(now.texts) - {47}
    answered = {t for r in server.requests if r.status == 200 for t in r.inputs}
    assert chunks[0] in answered


def assert_complete_marks(now: State) -> None:
    assert now.pending == set() and set(now.points) == set(now.texts)
    assert_marked_rows_have_their_points(now)


def test_a_request_refused_whatever_it_holds_fails_the_sync_and_skips_nothing(
    project: ProjectConfig,
    conn: psycopg.Connection,
    qdrant: QdrantClient,
    server: FakeOpenAIServer,
) -> None:
    # Not about any input (a model name the server does not know): splitting cannot help.
    server.fail_always(Fault.http_status(400, message="Invalid 'model': nope"), after=1)
    error = failing_sync(project, conn, qdrant)
    assert str(error).startswith(f"{WHO}: HTTP 400: Invalid 'model': nope")
    source = SourceTable.for_config(conn, project, project.tables.tables[0])
    assert source.skipped_rows() == []
    now = state(project, conn, qdrant)
    assert now.marked == set(range(1, BATCH + 1))
    # The second batch was refused, and so was a harmless probe text sent alone: the fault is
    # the request's, not its inputs'.
    assert [request.inputs for request in server.requests][2:] == [[PROBE_TEXT]]
    assert len(server.requests) == 3


# -- a deadline and a size cap per request --------------------------------------------------


def test_a_trickling_answer_is_cut_off_at_the_deadline(
    project: ProjectConfig, server: FakeOpenAIServer
) -> None:
    # One byte every 0.2 s keeps every read well inside a 1 s read timeout; the answer's
    # ~600 bytes would take two minutes. The deadline is for the whole attempt.
    server.add_faults(Fault.trickle(0.2))
    key, model = project.embeddings.model()
    embedder = build_embedder(
        key, model.model_copy(update={"max_retries": 0, "timeout_seconds": 1})
    )
    started = time.monotonic()
    with pytest.raises(EmbeddingError, match=r"no answer within 1 s") as caught:
        embedder.embed_documents(["a", "b"])
    elapsed = time.monotonic() - started
    embedder.close()
    assert_key_hidden(caught.value)
    assert 0.9 <= elapsed < 2.0
    assert len(server.requests) == 1


def test_a_trickled_attempt_is_retried_with_a_fresh_deadline(
    project: ProjectConfig,
    conn: psycopg.Connection,
    qdrant: QdrantClient,
    server: FakeOpenAIServer,
) -> None:
    server.add_faults(None, Fault.trickle(0.2))
    started = time.monotonic()
    result = run_sync(project, conn, qdrant, timeout_seconds=1)
    assert time.monotonic() - started < 10
    assert (result.embedded, result.pending_after) == (ROWS, 0)
    assert [request.fault for request in server.requests][:3] == [None, "trickle", None]
    assert_complete(state(project, conn, qdrant), server)


def test_an_answer_larger_than_the_batch_can_need_is_not_read(
    project: ProjectConfig, server: FakeOpenAIServer
) -> None:
    declared = 512 * 1024 * 1024
    server.add_faults(Fault.huge(declared))
    key, model = project.embeddings.model()
    embedder = build_embedder(key, model.model_copy(update={"max_retries": 3}))
    cap = response_limit(2, DIMENSIONS)
    started = time.monotonic()
    with pytest.raises(EmbeddingError, match=f"passed {cap:,} bytes") as caught:
        embedder.embed_documents(["a", "b"])
    assert time.monotonic() - started < 5
    assert_key_hidden(caught.value)
    assert "2 vectors of 8 floats" in str(caught.value)
    (request,) = server.requests  # not retried: the next answer would be as big
    # What the server got to write before the client hung up: the cap and the socket buffers.
    assert request.sent < cap + 16 * 1024 * 1024 < declared
    # The connection was dropped, not left half-read: the next request is answered.
    result = embedder.embed_documents(["a", "b"])
    embedder.close()
    assert np.allclose(result.vectors[1], fake_vector("b", DIMENSIONS), atol=1e-6)


def test_the_response_cap_leaves_room_for_a_full_float_answer() -> None:
    # 2,048 inputs of 3,072 floats, each as long as JSON makes it, fit under the cap.
    longest = "-1.2345678901234567e-05, "
    item = '{"object": "embedding", "index": 2047, "embedding": [' + longest * 3072 + "]}, "
    assert len(item) * 2048 < response_limit(2048, 3072)


# -- rejected keys --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("how", "good_batches"),
    [
        ("server refuses the key: 401", 0),
        ("leaky 401 echoing the key", 0),
        ("leaky 403 echoing the key", 0),
        ("401 after a good batch", 1),
    ],
)
def test_a_rejected_key_fails_at_once_naming_its_variable(
    project: ProjectConfig,
    conn: psycopg.Connection,
    qdrant: QdrantClient,
    server: FakeOpenAIServer,
    how: str,
    good_batches: int,
) -> None:
    if how.startswith("server refuses"):
        server.settings.api_key = "sk-some-other-key-0000"  # it echoes ours masked, like OpenAI
    elif "403" in how:
        server.add_faults(Fault.http_status(403, message=f"Key {KEY} may not use {MODEL_ID}"))
    else:
        leaky = Fault.http_status(401, message=f"Incorrect API key provided: {KEY}")
        server.add_faults(*[None] * good_batches, leaky)

    error = failing_sync(project, conn, qdrant, max_retries=6)

    assert type(error) is EmbeddingAuthError
    assert KEY_VAR in str(error) and WHO in str(error)
    statuses = [request.status for request in server.requests]
    assert statuses == [200] * good_batches + [403 if "403" in how else 401]  # no retry at all
    now = state(project, conn, qdrant)
    assert now.marked == set(now.points) == set(range(1, good_batches * BATCH + 1))
    assert_marked_rows_have_their_points(now)


def test_no_error_from_the_http_embedder_carries_the_key(
    project: ProjectConfig, server: FakeOpenAIServer
) -> None:
    # Every failure path of the embedder on its own, query side included.
    key, model = project.embeddings.model()
    cases: list[tuple[Fault, type[EmbeddingError], str]] = [
        (Fault.http_status(400, message=f"bad {KEY}"), EmbeddingError, "bad *** (not retried"),
        (Fault.http_status(404, message=f"no model for {KEY}"), EmbeddingError, "HTTP 404"),
        (
            Fault.http_status(429, headers={"Retry-After": "600"}, message=KEY),
            EmbeddingError,
            "not retried: the server asked for a 600 s wait",
        ),
        (Fault.http_status(500, message=KEY), EmbeddingError, "gave up within max_retries: 0"),
        (Fault.reset(), EmbeddingError, "the connection to http://127.0.0.1"),
        (Fault.sleep(3.0), EmbeddingError, "no answer within 0.3 s"),
        (Fault.malformed_json(), EmbeddingAnswerError, "not valid JSON"),
        (Fault.wrong_count(+1), EmbeddingAnswerError, "vectors for"),
        (Fault.wrong_dimension(+1), EmbeddingAnswerError, "a vector of 9 values"),
        (Fault.http_status(401, message=KEY), EmbeddingAuthError, KEY_VAR),
    ]
    for fault, error_type, says in cases:
        server.clear()
        server.fail_always(fault)
        embedder = build_embedder(
            key, model.model_copy(update={"max_retries": 0, "timeout_seconds": 0.3})
        )
        for document_side in (True, False):
            with pytest.raises(EmbeddingError) as caught:
                if document_side:
                    embedder.embed_documents(["a", "b"])
                else:
                    embedder.embed_query("a")
            assert type(caught.value) is error_type, (fault, caught.value)
            assert str(caught.value).startswith(WHO) and says in str(caught.value), caught.value
            assert_key_hidden(caught.value)
        assert KEY not in repr(embedder)
        embedder.close()
        # After a refusal about the inputs (400, 404) or vectors all of the wrong size, the
        # document side sends a probe text alone; when it fails too, the call's error is raised.
        about_inputs = fault.kind == "status" and fault.status in (400, 404)
        sent = 1 + 1 + 1 if about_inputs or fault.kind == "wrong_dimension" else 1 + 1
        assert [request.fault for request in server.requests] == [fault.kind] * sent
