"""A search replica fed by logical replication: the subscriber's apply worker fires no ordinary
trigger and no statement trigger, yet the edits, deletes and truncates it applies reach Qdrant.

The suite's PostgreSQL runs with wal_level=replica, so the publisher is a throwaway server of
the same installation started with wal_level=logical (as the postgres system user when the
tests run as root); the test's own schema on the suite's server subscribes to it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from vector_pipeline.database_setup import setup_database
from vector_pipeline.points import point_id
from vector_pipeline.reconcile import reconcile
from vector_pipeline_tests.conftest import doc_config, sync_model

pytestmark = pytest.mark.e2e

COLLECTION = "test_det-a_hybrid"
DOC_COLUMNS = "id bigint PRIMARY KEY, title text, body text"


def _run(*command: str) -> None:
    """Run a server command, as the postgres system user when we are root (initdb refuses
    root)."""
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run([*prefix, *command], check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def publisher() -> Iterator[str]:
    """The URL of a throwaway PostgreSQL with wal_level=logical."""
    bindirs = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not bindirs:  # a clear failure, never a skip
        pytest.fail("no PostgreSQL server binaries under /usr/lib/postgresql for the publisher")
    bindir = bindirs[-1].parent
    root = Path(tempfile.mkdtemp(prefix="vp_publisher_"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    _run(str(bindir / "initdb"), "-D", str(root / "data"), "-U", "postgres", "-A", "trust")
    options = f"-p {port} -k {root} -c wal_level=logical -c listen_addresses=127.0.0.1"
    _run(
        str(bindir / "pg_ctl"),
        "-D",
        str(root / "data"),
        "-o",
        options,
        "-w",
        "-l",
        str(root / "log"),
        "start",
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        _run(str(bindir / "pg_ctl"), "-D", str(root / "data"), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def _until(condition: Callable[[], bool], what: str, seconds: float = 60) -> None:
    """Wait for the subscriber to apply what the publisher did (replication is asynchronous),
    checking the condition itself, with a deadline that names what never happened."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"the subscriber did not apply {what} within {seconds:.0f} s")
        time.sleep(0.05)


def test_changes_applied_by_a_subscriber_reach_qdrant(publisher, conn, schema, tmp_path, qdrant):
    doc = sql.Identifier(schema, "doc")
    subscription = sql.Identifier(f"vp_{schema}")
    with psycopg.connect(publisher, autocommit=True) as source:
        source.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        source.execute(sql.SQL("CREATE TABLE {} ({})").format(doc, sql.SQL(DOC_COLUMNS)))
        source.execute(
            sql.SQL(
                "INSERT INTO {} SELECT i, 'Title ' || i, 'Body ' || i "
                "FROM generate_series(1, 20) AS i"
            ).format(doc)
        )
        source.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(subscription, doc))

        # The replica: the same table, set up for syncing, then subscribed.
        conn.execute(sql.SQL("CREATE TABLE {} ({})").format(doc, sql.SQL(DOC_COLUMNS)))
        config = doc_config(tmp_path / "config", schema, "{title}: {body}")
        setup_database(conn, config)
        port = publisher.rsplit(":", 1)[1].split("/")[0]
        conn.execute(
            sql.SQL("CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {}").format(
                subscription,
                sql.Literal(f"host=127.0.0.1 port={port} user=postgres dbname=postgres"),
                subscription,
            )
        )
        try:
            count = sql.SQL("SELECT count(*) FROM {}").format(doc)
            _until(lambda: conn.execute(count).fetchone()[0] == 20, "the initial copy")
            assert sync_model(config, conn, qdrant).embedded == 20

            source.execute(
                sql.SQL("UPDATE {} SET body = 'replicated edit' WHERE id = 3").format(doc)
            )
            source.execute(sql.SQL("DELETE FROM {} WHERE id = 4").format(doc))
            body = sql.SQL("SELECT body FROM {} WHERE id = 3").format(doc)
            _until(
                lambda: (
                    conn.execute(count).fetchone()[0] == 19
                    and conn.execute(body).fetchone()[0] == "replicated edit"
                ),
                "the edit and the delete",
            )
            result = sync_model(config, conn, qdrant)
            assert (result.embedded, result.deleted) == (1, 1)
            report = reconcile(conn, qdrant, config.tables.tables[0], schema, COLLECTION)
            assert (report.missing_count, report.stale_count, report.orphan_count) == (0, 0, 0)
            assert report.points == 19
            (point,) = qdrant.retrieve(
                COLLECTION, [point_id("DOC", "3", COLLECTION)], with_payload=True
            )
            assert point.payload["content"] == "Title 3: replicated edit"

            source.execute(sql.SQL("TRUNCATE {}").format(doc))
            _until(lambda: conn.execute(count).fetchone()[0] == 0, "the truncate")
            sync_model(config, conn, qdrant)
            assert qdrant.count(COLLECTION, exact=True).count == 0
        finally:
            conn.execute(sql.SQL("DROP SUBSCRIPTION {}").format(subscription))
