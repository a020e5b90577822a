"""Qdrant writes are sent again after a passing failure (503, 429, a dropped connection), never
after a refusal (400), through the real qdrant-client talking HTTP to a scripted server."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from qdrant_client import QdrantClient
from qdrant_client.http.exceptions import UnexpectedResponse

from vector_pipeline.qdrant_retry import ATTEMPTS_ENV, FIRST_WAIT_ENV
from vector_pipeline.sparse import SparseVector
from vector_pipeline.vector_store import PointData, delete_points, upsert_points
from vector_pipeline_tests.qdrant_server import Reply, ScriptedQdrant

UPSERT = ("PUT", "/collections/docs/points?wait=true")
DELETE = ("POST", "/collections/docs/points/delete?wait=true")
IDS = ["00000000-0000-0000-0000-000000000001", "00000000-0000-0000-0000-000000000002"]


@pytest.fixture
def server(monkeypatch) -> Iterator[ScriptedQdrant]:
    monkeypatch.setenv(FIRST_WAIT_ENV, "0.01")  # the backoff's first wait, in seconds
    monkeypatch.delenv(ATTEMPTS_ENV, raising=False)
    with ScriptedQdrant() as scripted:
        yield scripted


@pytest.fixture
def client(server: ScriptedQdrant) -> Iterator[QdrantClient]:
    # No version check: it runs in a thread of its own and is not what is tested here.
    qdrant = QdrantClient(url=server.url, timeout=5, check_compatibility=False)
    yield qdrant
    qdrant.close()


def points() -> list[PointData]:
    return [
        PointData(id=i, dense=[0.1, 0.2], sparse=SparseVector([3], [1.0]), payload={"n": n})
        for n, i in enumerate(IDS)
    ]


def retry_warnings(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "vector_pipeline.vector_store" and r.levelno == logging.WARNING
    ]


def test_upsert_is_sent_again_after_503s_with_a_warning_per_wait(server, client, caplog):
    server.script(Reply(503), Reply(503))
    with caplog.at_level(logging.WARNING, logger="vector_pipeline.vector_store"):
        upsert_points(client, "docs", points())
    assert [(w.method, w.path) for w in server.writes] == [UPSERT] * 3
    bodies = [w.body for w in server.writes]
    assert bodies[0] == bodies[1] == bodies[2]  # the same points each time: a resend overwrites
    assert [p["id"] for p in bodies[0]["points"]] == IDS
    warnings = retry_warnings(caplog)
    assert len(warnings) == 2
    for attempt, message in enumerate(warnings, start=1):
        assert message.startswith(
            f"Qdrant upsert of 2 points into docs failed (attempt {attempt} of 5: "
            "Unexpected Response: 503 (Service Unavailable)); waiting "
        )
        assert message.endswith(" s for Qdrant to recover before sending it again")


def test_a_refused_write_is_not_sent_again(server, client, caplog):
    server.script(Reply(400))
    with caplog.at_level(logging.WARNING), pytest.raises(UnexpectedResponse) as refused:
        upsert_points(client, "docs", points())
    assert refused.value.status_code == 400
    assert len(server.writes) == 1
    assert retry_warnings(caplog) == []


def test_delete_waits_out_a_429_and_a_dropped_connection(server, client, caplog):
    server.script(Reply(429, headers=(("Retry-After", "0"),)), Reply(drop=True))
    with caplog.at_level(logging.WARNING, logger="vector_pipeline.vector_store"):
        delete_points(client, "docs", IDS)
    assert [(w.method, w.path) for w in server.writes] == [DELETE] * 3
    assert all(w.body == {"points": IDS} for w in server.writes)
    first, second = retry_warnings(caplog)
    assert first.startswith("Qdrant delete of 2 points from docs failed (attempt 1 of 5: ")
    assert "attempt 2 of 5: Server disconnected without sending a response." in second


def test_attempts_are_bounded_and_the_last_failure_is_raised(server, client, monkeypatch, caplog):
    monkeypatch.setenv(ATTEMPTS_ENV, "3")
    server.script(*[Reply(502)] * 10)
    with caplog.at_level(logging.WARNING), pytest.raises(UnexpectedResponse) as failed:
        upsert_points(client, "docs", points())
    assert failed.value.status_code == 502
    assert len(server.writes) == 3
    assert len(retry_warnings(caplog)) == 2


def test_a_bad_attempts_setting_is_one_clear_line(server, client, monkeypatch):
    monkeypatch.setenv(ATTEMPTS_ENV, "many")
    with pytest.raises(ValueError, match=f"^{ATTEMPTS_ENV} must be a number, not 'many'$"):
        upsert_points(client, "docs", points())
    monkeypatch.setenv(ATTEMPTS_ENV, "0")
    with pytest.raises(ValueError, match=f"^{ATTEMPTS_ENV} must be at least 1$"):
        upsert_points(client, "docs", points())
    assert server.writes == []
