"""Where things live: the embedded PostgreSQL the demo uses when DATABASE_URL is unset, and the
Qdrant location from the environment."""

from __future__ import annotations

import psycopg
import pytest

from vector_pipeline import locations


def test_embedded_postgres_starts_is_reused_and_stops(tmp_path, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv(locations.STATE_DIR_ENV, str(tmp_path / "state"))
    url = locations.database_url()
    try:
        assert str(tmp_path / "state" / "postgres") in url
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT 40 + 2").fetchone() == (42,)
        assert locations.database_url() == url  # the running server is reused
    finally:
        assert locations.stop_embedded_database() is True
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)
    assert locations.stop_embedded_database() is False


def test_qdrant_location_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("QDRANT_URL", raising=False)
    monkeypatch.delenv("QDRANT_PATH", raising=False)
    monkeypatch.setenv(locations.STATE_DIR_ENV, str(tmp_path))
    assert locations.qdrant_location() == locations.QdrantLocation(path=str(tmp_path / "qdrant"))
    monkeypatch.setenv("QDRANT_PATH", str(tmp_path / "elsewhere"))
    assert locations.qdrant_location().path == str(tmp_path / "elsewhere")
    monkeypatch.setenv("QDRANT_URL", "http://qdrant.internal:6333")
    monkeypatch.setenv("QDRANT_API_KEY", "secret-qdrant-key")
    remote = locations.qdrant_location()
    assert (remote.url, remote.api_key, remote.path) == (
        "http://qdrant.internal:6333",
        "secret-qdrant-key",
        None,
    )
    assert "secret-qdrant-key" not in repr(remote) + remote.describe()
