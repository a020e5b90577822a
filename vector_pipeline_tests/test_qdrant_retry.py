"""Qdrant writes are sent again after a passing failure (503, 429, a dropped connection, a
timeout), never after a refusal (400), and the client options come from the environment: all
through the real qdrant-client talking to a scripted server on loopback."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator

import grpc
import pytest
from qdrant_client import QdrantClient
from qdrant_client.http.exceptions import UnexpectedResponse

from vector_pipeline.locations import SettingError, qdrant_location
from vector_pipeline.qdrant_retry import ATTEMPTS_ENV, FIRST_WAIT_ENV
from vector_pipeline.sparse import SparseVector
from vector_pipeline.vector_store import (
    UPSERT_CHUNK_ENV,
    PointData,
    delete_points,
    open_qdrant,
    upsert_points,
)
from vector_pipeline_tests.qdrant_server import Reply, ScriptedQdrant

pytestmark = pytest.mark.integration  # tier: see pyproject markers

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


def test_bad_retry_settings_are_one_clear_line(server, client, monkeypatch):
    monkeypatch.setenv(ATTEMPTS_ENV, "many")
    with pytest.raises(SettingError) as bad:
        upsert_points(client, "docs", points())
    assert str(bad.value) == f"{ATTEMPTS_ENV} must be a whole number of at least 1, not 'many'"
    monkeypatch.setenv(ATTEMPTS_ENV, "0")
    with pytest.raises(SettingError, match=f"^{ATTEMPTS_ENV} must be a whole number"):
        upsert_points(client, "docs", points())
    monkeypatch.setenv(ATTEMPTS_ENV, "2")
    monkeypatch.setenv(FIRST_WAIT_ENV, "-1")
    with pytest.raises(SettingError) as bad:
        upsert_points(client, "docs", points())
    assert str(bad.value) == f"{FIRST_WAIT_ENV} must be a number of seconds, 0 or more, not '-1'"
    assert server.writes == []


# --- client options from the environment, as `vector-pipeline` and Dagster open the client ---


@pytest.fixture
def server_env(server, monkeypatch) -> ScriptedQdrant:
    monkeypatch.setenv("QDRANT_URL", server.url)
    monkeypatch.delenv("QDRANT_API_KEY", raising=False)
    for name in ("QDRANT_TIMEOUT", "QDRANT_PREFER_GRPC", "QDRANT_GRPC_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv(UPSERT_CHUNK_ENV, raising=False)
    return server


def test_upsert_chunk_size_from_the_environment(server_env, monkeypatch):
    monkeypatch.setenv(UPSERT_CHUNK_ENV, "1")
    with open_qdrant(qdrant_location()) as client:
        upsert_points(client, "docs", points())
    assert [[p["id"] for p in w.body["points"]] for w in server_env.writes] == [[i] for i in IDS]


def test_a_request_slower_than_qdrant_timeout_is_cut_and_sent_again(
    server_env, monkeypatch, caplog
):
    monkeypatch.setenv("QDRANT_TIMEOUT", "1")
    server_env.script(Reply(delay=3))
    with (
        caplog.at_level(logging.WARNING, logger="vector_pipeline.vector_store"),
        open_qdrant(qdrant_location()) as client,
    ):
        upsert_points(client, "docs", points())
    assert len(server_env.writes) == 2
    (warning,) = retry_warnings(caplog)
    assert "(attempt 1 of 5: timed out); waiting " in warning


def test_prefer_grpc_sends_points_over_grpc_and_its_unavailability_is_retried(
    server_env, monkeypatch, caplog
):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    monkeypatch.setenv("QDRANT_PREFER_GRPC", "true")
    monkeypatch.setenv("QDRANT_GRPC_PORT", str(free_port))
    monkeypatch.setenv(ATTEMPTS_ENV, "2")
    with (
        caplog.at_level(logging.WARNING, logger="vector_pipeline.vector_store"),
        open_qdrant(qdrant_location()) as client,
        pytest.raises(grpc.RpcError) as failed,
    ):
        upsert_points(client, "docs", points())
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert server_env.writes == []  # nothing went over REST
    (warning,) = retry_warnings(caplog)
    assert "(attempt 1 of 2: gRPC UNAVAILABLE: " in warning


def test_bad_client_options_are_named(server_env, monkeypatch):
    monkeypatch.setenv("QDRANT_PREFER_GRPC", "maybe")
    with pytest.raises(SettingError) as bad:
        qdrant_location()
    assert str(bad.value) == "QDRANT_PREFER_GRPC must be true or false, not 'maybe'"
    monkeypatch.setenv("QDRANT_PREFER_GRPC", "false")
    monkeypatch.setenv("QDRANT_TIMEOUT", "soon")
    with pytest.raises(SettingError) as bad:
        qdrant_location()
    assert str(bad.value) == "QDRANT_TIMEOUT must be a whole number of at least 1, not 'soon'"
    monkeypatch.setenv("QDRANT_TIMEOUT", "7")
    assert qdrant_location().timeout == 7
