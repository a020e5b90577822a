"""Shared fixtures: a throwaway PostgreSQL schema per test, a project config pointing at it, and
a local-mode Qdrant folder. Everything is real; only paid APIs are faked, over loopback HTTP."""

from __future__ import annotations

import hashlib
import json
import os
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from qdrant_client import QdrantClient, models

from vector_pipeline.config import ProjectConfig, load_config
from vector_pipeline.database_setup import setup_database
from vector_pipeline.embedders import build_embedder
from vector_pipeline.locations import QdrantLocation
from vector_pipeline.source import connect
from vector_pipeline.sync import SyncResult, sync_configured_table
from vector_pipeline.vector_store import open_qdrant

TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def database_url() -> str:
    try:
        with psycopg.connect(TEST_DATABASE_URL, connect_timeout=5):
            pass
    except psycopg.OperationalError as exc:  # a clear failure, never a skip
        pytest.fail(f"PostgreSQL for tests is not reachable at {TEST_DATABASE_URL}: {exc}")
    return TEST_DATABASE_URL


@pytest.fixture
def schema(database_url: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    yield name
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    with connect(database_url) as connection:
        yield connection


def write_config(
    directory: Path,
    schema: str,
    *,
    default: str = "det_a",
    extra_models: str = "",
    tables: str | None = None,
    extra_tables: str = "",
) -> Path:
    """A config folder with two deterministic models (16-d and 24-d) and one `doc` table;
    `extra_models` / `extra_tables` add entries, `tables` replaces the whole tables.yaml."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "embeddings.yaml").write_text(
        textwrap.dedent(
            f"""\
            embeddings:
              default: {default}
              models:
                det_a:
                  provider: deterministic
                  id: det-a
                  dimensions: 16
                det_b:
                  provider: deterministic
                  id: det-b
                  dimensions: 24
            """
        )
        + textwrap.indent(textwrap.dedent(extra_models), "    ")
    )
    (directory / "tables.yaml").write_text(
        tables
        or textwrap.dedent(
            f"""\
            schema: {schema}
            collection_base: test
            tables:
              doc:
                data_type: DOC
                primary_key: id
                text_template: "TITLE: {{title}}\\nCONTENT: {{body}}"
                payload_columns: [title, category]
            """
        )
        + textwrap.indent(textwrap.dedent(extra_tables), "  ")
    )
    return directory


def doc_config(directory: Path, schema: str, template: str, **settings: str) -> ProjectConfig:
    """Load a config folder whose tables.yaml has one table `doc` (data type DOC, collection
    base `test`, so det_a's collection is test_det-a_hybrid) with `template` and further
    `settings` written as YAML values (e.g. primary_key="[id, created]")."""
    lines = "".join(f"    {key}: {value}\n" for key, value in settings.items())
    tables = (
        f"schema: {schema}\ncollection_base: test\ntables:\n  doc:\n    data_type: DOC\n"
        f"    text_template: {json.dumps(template)}\n{lines}"
    )
    return load_config(write_config(directory, schema, tables=tables))


def create_doc_table(conn: psycopg.Connection, schema: str, rows: int) -> None:
    conn.execute(
        sql.SQL(
            """
            CREATE TABLE {} (
                id bigint PRIMARY KEY,
                title text,
                body text,
                category text,
                views integer NOT NULL DEFAULT 0
            )
            """
        ).format(sql.Identifier(schema, "doc"))
    )
    with conn.cursor() as cursor:
        cursor.executemany(
            sql.SQL("INSERT INTO {} (id, title, body, category) VALUES (%s, %s, %s, %s)").format(
                sql.Identifier(schema, "doc")
            ),
            [
                (i, f"Title {i}", f"Body of document {i} about topic {i % 7}", f"cat{i % 3}")
                for i in range(1, rows + 1)
            ],
        )


@pytest.fixture
def doc_rows() -> int:
    return 120


@pytest.fixture
def project(tmp_path: Path, schema: str, conn: psycopg.Connection, doc_rows: int) -> ProjectConfig:
    """A set-up project: `doc` table with `doc_rows` rows, init-db applied."""
    create_doc_table(conn, schema, doc_rows)
    config = load_config(write_config(tmp_path / "config", schema))
    setup_database(conn, config)
    return config


@pytest.fixture
def qdrant_path(tmp_path: Path) -> str:
    return str(tmp_path / "qdrant")


@pytest.fixture(scope="session")
def dagster_storage_url(database_url: str) -> Iterator[str]:
    """A throwaway database for a Dagster instance on PostgreSQL, as dagster.yaml configures."""
    from sqlalchemy.engine import make_url

    name = f"vp_dagster_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_url(database_url).set(drivername="postgresql+psycopg2", database=name)
    yield url.render_as_string(hide_password=False)
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def qdrant(qdrant_path: str) -> Iterator[QdrantClient]:
    """A local-mode client on the test's own folder."""
    with open_qdrant(QdrantLocation(path=qdrant_path)) as client:
        yield client


def sync_model(
    project: ProjectConfig,
    conn: psycopg.Connection,
    qdrant: QdrantClient,
    model: str | None = None,
    *,
    table: str | None = None,
    batch_size: int = 50,
    **kwargs: Any,
) -> SyncResult:
    """Sync one table (default: the first configured) into `model`'s collection (default:
    the default model's), through the same entry point the CLI and Dagster use."""
    key, model_config = project.embeddings.model(model)
    return sync_configured_table(
        conn=conn,
        qdrant=qdrant,
        embedder=build_embedder(key, model_config),
        project=project,
        table=project.tables.table(table) if table else project.tables.tables[0],
        batch_size=batch_size,
        **kwargs,
    )


# The environment variable the loopback-API models of `api_project` read their key from.
API_KEY_VARIABLE = "VP_TEST_API_KEY"


def api_project(
    conn: psycopg.Connection, schema: str, tmp_path: Path, url: str, **settings: object
) -> ProjectConfig:
    """A set-up project (the `doc` table's config) whose default model `api` is an OpenAI
    model (8-d) at `url`, the loopback server, with extra model `settings`."""
    extra = "".join(f"  {key}: {value}\n" for key, value in settings.items())
    config = load_config(
        write_config(
            tmp_path / "c",
            schema,
            default="api",
            extra_models=(
                "api:\n  provider: openai\n  id: text-embedding-3-small\n  dimensions: 8\n"
                f"  api_key: ${{{API_KEY_VARIABLE}}}\n  base_url: {url}\n{extra}"
            ),
        )
    )
    setup_database(conn, config)
    return config


# -- shared checks ---------------------------------------------------------------------------


def reference_point_id(data_type: str, row_id: object, collection: str) -> str:
    """The point id the reference design gives a row, written out here on its own (not through
    vector_pipeline.points) so that tests check the engine against it: the UUID form of
    md5("{data_type}_{row_id}_{collection}")."""
    digest = hashlib.md5(f"{data_type}_{row_id}_{collection}".encode()).hexdigest()
    return str(uuid.UUID(digest))


def _marked_where(table: sql.Identifier, exactly: bool) -> sql.Composed:
    # `@>`: the collection is listed; `=`: it is the only entry, listed once.
    test = "embedded_in = %s::jsonb" if exactly else "embedded_in @> %s::jsonb"
    return sql.SQL("FROM {} WHERE " + test).format(table)


def marked_count(
    conn: psycopg.Connection,
    schema: str,
    collection: str,
    *,
    table: str = "doc",
    exactly: bool = False,
) -> int:
    """How many rows of `schema.table` are marked embedded in `collection` (their
    `embedded_in` lists it; with `exactly`, lists it alone and once)."""
    query = sql.SQL("SELECT count(*) ") + _marked_where(sql.Identifier(schema, table), exactly)
    return conn.execute(query, (json.dumps([collection]),)).fetchone()[0]


def marked_ids(
    conn: psycopg.Connection, schema: str, collection: str, *, table: str = "doc"
) -> set[Any]:
    """The `id` of every row of `schema.table` whose `embedded_in` lists `collection`."""
    query = sql.SQL("SELECT id ") + _marked_where(sql.Identifier(schema, table), False)
    return {row_id for (row_id,) in conn.execute(query, (json.dumps([collection]),))}


def all_points(qdrant: QdrantClient, collection: str, **options: Any) -> list[models.Record]:
    """Every point of `collection`, scrolled page by page; `options` go to each scroll call
    (e.g. with_payload=True, with_vectors=True)."""
    points: list[models.Record] = []
    offset = None
    while True:
        page, offset = qdrant.scroll(collection, limit=500, offset=offset, **options)
        points.extend(page)
        if offset is None:
            return points
