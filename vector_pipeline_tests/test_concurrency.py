"""Several embedding requests in flight, never more than configured, within rate limits."""

from __future__ import annotations

import pytest

from vector_pipeline.embedders import EmbeddingError
from vector_pipeline.embedders.rate_limit import RateLimiter, parse_reset
from vector_pipeline.locations import QdrantLocation
from vector_pipeline.reconcile import reconcile
from vector_pipeline.vector_store import open_qdrant
from vector_pipeline_tests.conftest import (
    API_KEY_VARIABLE,
    api_project,
    create_doc_table,
    marked_count,
    sync_model,
)
from vector_pipeline_tests.openai_server import FakeOpenAIServer, Fault

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("in_flight", [pytest.param(1, marks=pytest.mark.slow), 4])
def test_requests_in_flight_stay_within_the_limit_and_rows_land_once(
    conn, schema, tmp_path, qdrant_path, monkeypatch, in_flight
):
    monkeypatch.setenv(API_KEY_VARIABLE, "k")
    create_doc_table(conn, schema, 160)
    with FakeOpenAIServer(api_key="k", dimensions=8, latency=0.15) as server:
        config = api_project(conn, schema, tmp_path, server.url, max_concurrent_requests=in_flight)
        with open_qdrant(QdrantLocation(path=qdrant_path)) as qdrant:
            result = sync_model(config, conn, qdrant, batch_size=10)
            points = qdrant.count(result.collection, exact=True).count
        requests = len(server.requests)
        peak = server.max_in_flight

    assert (result.embedded, points, requests) == (160, 160, 16)
    assert peak == in_flight  # used, and never exceeded
    assert marked_count(conn, schema, result.collection, exactly=True) == 160


def test_a_persistent_fault_with_requests_in_flight_marks_only_written_rows(
    conn, schema, tmp_path, qdrant_path, monkeypatch
):
    monkeypatch.setenv(API_KEY_VARIABLE, "k")
    create_doc_table(conn, schema, 300)
    with FakeOpenAIServer(api_key="k", dimensions=8, latency=0.05) as server:
        server.fail_always(Fault.http_status(500), after=5)
        config = api_project(
            conn, schema, tmp_path, server.url, max_concurrent_requests=4, max_retries=1
        )
        table = config.tables.tables[0]
        with open_qdrant(QdrantLocation(path=qdrant_path)) as qdrant:
            with pytest.raises(EmbeddingError, match="HTTP 500"):
                sync_model(config, conn, qdrant, batch_size=10)
            report = reconcile(conn, qdrant, table, schema, "test_text-embedding-3-small_hybrid")
        requests = len(server.requests)

    # Every row marked done has its point with its current text; the rest are pending.
    assert (report.missing_count, report.stale_count, report.orphan_count) == (0, 0, 0)
    assert report.embedded <= 50
    # After the first failure, queued batches send nothing: 5 good requests, then at most
    # two attempts (max_retries: 1) by each of the 4 workers.
    assert requests <= 5 + 4 * 2


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_requests_per_minute_spaces_requests_once_the_minute_is_spent():
    clock = FakeClock()
    limiter = RateLimiter(requests_per_minute=60, clock=clock, sleep=clock.sleep)
    waits = [limiter.acquire(tokens=1) for _ in range(62)]
    assert waits[:60] == [0.0] * 60  # a minute's allowance goes at once
    assert waits[60:] == pytest.approx([1.0, 1.0])  # then one per second


def test_tokens_per_minute_waits_for_enough_tokens():
    clock = FakeClock()
    limiter = RateLimiter(tokens_per_minute=6000, clock=clock, sleep=clock.sleep)
    assert limiter.acquire(5000) == 0.0
    assert limiter.acquire(3000) == pytest.approx(20.0)  # 2000 missing at 100 tokens/s
    # A request bigger than a minute's allowance waits for a full bucket instead of forever.
    assert limiter.acquire(10_000) == pytest.approx(60.0)


def test_rate_limit_headers_pause_everyone_until_the_reset():
    clock = FakeClock()
    limiter = RateLimiter(clock=clock, sleep=clock.sleep)
    limiter.observe({"x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "9s"})
    assert limiter.acquire(1) == 0.0
    limiter.observe({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "1m30s"})
    assert limiter.acquire(1) == pytest.approx(90.0)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("2.5", 2.5), ("x", None)],
)
def test_reset_durations_parse(text, seconds):
    assert parse_reset(text) == (pytest.approx(seconds) if seconds is not None else None)
