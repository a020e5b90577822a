"""Waits are bounded and explained: a command blocked behind another session's lock, or the local
Qdrant folder, says what it waits for; lock_timeout ends the wait with one line naming the table
and the holder; a connection killed mid-sync is one clear error and loses nothing."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from vector_pipeline.database import (
    CONNECT_TIMEOUT_ENV,
    LOCK_TIMEOUT_ENV,
    STATEMENT_TIMEOUT_ENV,
    connection_params,
)
from vector_pipeline.locations import QdrantLocation
from vector_pipeline.source import connect
from vector_pipeline.vector_store import open_qdrant

pytestmark = pytest.mark.integration

WAIT = 60  # seconds a test waits for an expected line before failing (never reached when green)


class Cli:
    """`vector-pipeline` in a process of its own, its stderr read line by line as it comes."""

    def __init__(self, config_dir: Path, env: dict[str, str], *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vector_pipeline.cli", "--config-dir", str(config_dir), *args],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            # tqdm redraws with carriage returns; each redraw is a line of its own here.
            for part in line.split("\r"):
                if part.strip():
                    self.lines.put(part.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, text: str) -> str:
        """The first stderr line holding `text` (fails if the process ends first)."""
        while True:
            line = self.lines.get(timeout=WAIT)
            if line is None:
                pytest.fail(f"ended without {text!r}; stderr: {self.seen}")
            self.seen.append(line)
            if text in line:
                return line

    def finish(self) -> tuple[int, str, list[str]]:
        """Exit code, stdout, and the stderr lines (with those already seen)."""
        assert self.process.stdout is not None
        stdout = self.process.stdout.read()  # stderr is the reader thread's
        self.process.wait(timeout=WAIT)
        while (line := self.lines.get(timeout=WAIT)) is not None:
            self.seen.append(line)
        return self.process.returncode, stdout, self.seen


@pytest.fixture
def cli_env(database_url: str, qdrant_path: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "QDRANT_PATH": qdrant_path,
        "QDRANT_URL": "",
        "PYTHONPATH": os.pathsep.join(sys.path),
    }


@contextmanager
def holding(database_url: str, statement: sql.Composable) -> Iterator[int]:
    """A second session that runs `statement` in a transaction and holds it; yields its pid."""
    with psycopg.connect(database_url) as other:
        other.execute(statement)
        yield other.info.backend_pid
        other.rollback()


def errors(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("Error:")]


def test_connections_get_timeouts_and_keepalives(database_url, monkeypatch):
    monkeypatch.setenv(LOCK_TIMEOUT_ENV, "7")
    monkeypatch.setenv(STATEMENT_TIMEOUT_ENV, "0")
    monkeypatch.setenv(CONNECT_TIMEOUT_ENV, "4")
    with connect(database_url) as conn:
        assert conn.execute("SHOW lock_timeout").fetchone()[0] == "7s"
        assert conn.execute("SHOW statement_timeout").fetchone()[0] == "0"
        assert conn.execute("SHOW application_name").fetchone()[0] == "vector_pipeline"
        params = conn.info.get_parameters()
        assert params["connect_timeout"] == "4"
        assert params["keepalives"] == "1"
    # What the URL says wins over the defaults.
    own = connection_params(
        database_url + "?connect_timeout=3&options=-c%20lock_timeout%3D5s&keepalives_idle=9"
    )
    assert own["connect_timeout"] == "3"
    assert own["keepalives_idle"] == "9"
    assert own["options"] == "-c lock_timeout=5s -c statement_timeout=0"


@pytest.mark.slow
def test_a_status_behind_a_lock_says_what_it_waits_for(project, conn, cli_env, database_url):
    schema = project.tables.schema_
    lock = sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(schema, "doc"))
    with holding(database_url, lock) as holder:
        cli = Cli(project.config_dir, cli_env, "status")
        line = cli.wait_for("waiting for")
        assert f"waiting for a lock on {schema}.doc held by pid {holder}" in line
    code, stdout, lines = cli.finish()
    assert code == 0, lines
    assert "doc" in stdout


@pytest.mark.slow
def test_lock_timeout_fails_in_one_line_naming_table_and_holder(
    project, conn, cli_env, database_url
):
    schema = project.tables.schema_
    lock = sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(schema, "doc"))
    with holding(database_url, lock) as holder:
        cli = Cli(project.config_dir, {**cli_env, LOCK_TIMEOUT_ENV: "2"}, "sync")
        code, stdout, lines = cli.finish()
    assert code == 1
    assert len(errors(lines)) == 1, lines
    (error,) = errors(lines)
    assert f"lock_timeout (2s) waiting for a lock on {schema}.doc held by pid {holder}" in error
    assert LOCK_TIMEOUT_ENV in error
    assert not any("Traceback" in line for line in lines)
    # Nothing was lost: the next sync embeds every row.
    cli = Cli(project.config_dir, cli_env, "sync")
    code, stdout, lines = cli.finish()
    assert code == 0, lines
    assert "embedded 120 " in stdout


@pytest.mark.slow
def test_waiting_for_the_local_qdrant_folder_says_so(project, cli_env, qdrant_path):
    with open_qdrant(QdrantLocation(path=qdrant_path)):
        cli = Cli(project.config_dir, cli_env, "sync")
        line = cli.wait_for("waiting")
        assert line.startswith(f"Qdrant: local storage {qdrant_path} is in use")
    code, stdout, lines = cli.finish()
    assert code == 0, lines
    assert "embedded 120 " in stdout


@pytest.mark.slow
def test_a_connection_killed_mid_sync_is_one_clear_error_and_loses_nothing(
    project, conn, cli_env, database_url, qdrant_path
):
    """The sync starts (collection lock, tombstones, counts), then waits behind a SHARE lock
    (a migration) for its first batch; the server ends its session there. The unlock in its
    `finally` must not hide why, and the next sync finishes the table."""
    schema = project.tables.schema_
    lock = sql.SQL("LOCK TABLE {} IN SHARE MODE").format(sql.Identifier(schema, "doc"))
    with holding(database_url, lock) as holder:
        cli = Cli(project.config_dir, cli_env, "sync", "--batch-size", "50")
        line = cli.wait_for("waiting for")
        assert f"{schema}.doc held by pid {holder}" in line
        # The sync's own session: blocked by our holder, on our table (other tests share
        # the server, and their CREATE INDEX CONCURRENTLY waits for our holder too).
        [(victim,)] = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'vector_pipeline' "
            "AND %s = ANY(pg_blocking_pids(pid)) AND strpos(query, %s) > 0 "
            "AND query NOT ILIKE '%%CREATE INDEX%%'",
            (holder, sql.Identifier(schema, "doc").as_string(conn)),
        ).fetchall()
        conn.execute("SELECT pg_terminate_backend(%s)", (victim,))
        code, stdout, lines = cli.finish()
    assert code == 1
    assert len(errors(lines)) == 1, lines
    (error,) = errors(lines)
    assert error.startswith("Error: PostgreSQL at ")
    assert "the connection was lost" in error
    assert "connection is closed" not in error
    assert not any("Traceback" in line for line in lines)

    cli = Cli(project.config_dir, cli_env, "sync")
    code, stdout, lines = cli.finish()
    assert code == 0, lines
    assert "still pending 0 of 120" in stdout
    marked = conn.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE embedded_in <> '[]'::jsonb").format(
            sql.Identifier(schema, "doc")
        )
    ).fetchone()[0]
    assert marked == 120
    with open_qdrant(QdrantLocation(path=qdrant_path)) as qdrant:
        assert qdrant.count("test_det-a_hybrid").count == 120
