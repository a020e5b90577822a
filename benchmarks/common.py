"""What every benchmark part shares: the throwaway schema, generated rows, config, stores, timing.

Rows are generated inside PostgreSQL (`INSERT ... SELECT generate_series`) from a pool of
English sentences and titles taken from the demo data generator, so a million rows take
seconds and every text is distinct (four sentences picked by co-prime strides, ~380 characters,
~70 words, ~90 MiniLM word pieces).

The engine is only ever driven through its public surface: `load_config` on YAML files written
here, `setup_database` (what `init-db` runs), `build_embedder`, `open_qdrant` and
`sync_configured_table`, so a benchmark measures whatever the engine does when it is run.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from psycopg import sql
from qdrant_client import QdrantClient, models

from vector_pipeline import points
from vector_pipeline.config import (
    OpenAIModel,
    ProjectConfig,
    TableConfig,
    collection_name_for,
    load_config,
)
from vector_pipeline.database_setup import setup_database
from vector_pipeline.locations import QdrantLocation
from vector_pipeline.source import connect
from vector_pipeline.store_state import vouch_for
from vector_pipeline.vector_store import ensure_collection, open_qdrant

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"
API_KEY_VARIABLE = "VECTOR_PIPELINE_BENCH_API_KEY"
API_KEY = "bench-key-not-a-secret"

SENTENCES = 1009  # primes, so the strides below give distinct combinations
TITLES = 211


def database_url() -> str:
    return (
        os.environ.get("BENCH_DATABASE_URL")
        or os.environ.get("TEST_DATABASE_URL")
        or DEFAULT_DATABASE_URL
    )


# -- results -----------------------------------------------------------------------------------


@dataclass
class Result:
    """One line of the results table."""

    part: str
    name: str
    setup: str
    target: str
    measured: str
    met: bool | None  # None: reported, no target
    miss: str = ""  # by how much a missed target was missed
    notes: list[str] = field(default_factory=list)


def fmt_rate(rows_per_second: float) -> str:
    if rows_per_second >= 100:
        return f"{rows_per_second:,.0f} rows/s"
    return f"{rows_per_second:,.1f} rows/s"


def point_payload(
    table: TableConfig, key: int | str, values: dict[str, Any], text: str
) -> dict[str, Any]:
    """The payload the engine writes for a row with a single integer key (points.py)."""
    return points.point_payload(
        table=table.name,
        data_type=table.data_type,
        row_id=int(key),
        key_text=str(key),
        name=values.get(table.name_column) if table.name_column else None,
        text=text,
        truncated=False,
        payload_values={column: values[column] for column in table.payload_columns},
    )


def fmt_seconds(seconds: float) -> str:
    if seconds < 0.01:
        return f"{seconds * 1000:.2f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:,.2f} s"


# -- the throwaway schema ----------------------------------------------------------------------


class Workspace:
    """A schema `bench_<hex>` in the benchmark database and a temp folder; both dropped at the end.

    Each part creates its own tables (and config) in it, so parts do not share indexes, triggers
    or collections.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.schema = f"bench_{uuid.uuid4().hex[:10]}"
        self.tmp = Path(tempfile.mkdtemp(prefix="vp_bench_"))
        self.conn = connect(url)
        self.conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.schema)))
        self._pools_ready = False

    def close(self) -> None:
        try:
            self.conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema))
            )
        finally:
            self.conn.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- rows ------------------------------------------------------------------------------

    def _ensure_pools(self) -> None:
        if self._pools_ready:
            return
        sentences, titles = text_pools()
        pools = {"bench_sentence": sentences, "bench_title": titles}
        for name, texts in pools.items():
            relation = sql.Identifier(self.schema, name)
            self.conn.execute(
                sql.SQL("CREATE TABLE {} (n integer PRIMARY KEY, s text NOT NULL)").format(relation)
            )
            with (
                self.conn.cursor() as cursor,
                cursor.copy(sql.SQL("COPY {} (n, s) FROM STDIN").format(relation)) as copy,
            ):
                for n, text in enumerate(texts):
                    copy.write_row((n, text))
        self._pools_ready = True

    def create_table(
        self,
        table: str,
        rows: int,
        *,
        embedded_in: Sequence[str] | None = None,
    ) -> float:
        """Create `table` with `rows` generated rows; return the seconds it took.

        With `embedded_in`, the table gets the `embedded_in` column already holding those
        collections for every row, as a table looks after a full sync.
        """
        self._ensure_pools()
        started = time.perf_counter()
        relation = sql.Identifier(self.schema, table)
        sentence = sql.Identifier(self.schema, "bench_sentence")
        title = sql.Identifier(self.schema, "bench_title")
        extra = sql.SQL("")
        extra_value = sql.SQL("")
        if embedded_in is not None:
            extra = sql.SQL(", embedded_in jsonb NOT NULL DEFAULT '[]'::jsonb")
            extra_value = sql.SQL(", {}::jsonb").format(sql.Literal(json.dumps(list(embedded_in))))
        self.conn.execute(
            sql.SQL(
                "CREATE TABLE {} (id bigint NOT NULL, title text, body text, category text, "
                "views integer NOT NULL DEFAULT 0{})"
            ).format(relation, extra)
        )
        self.conn.execute(
            sql.SQL(
                """
                INSERT INTO {relation} (id, title, body, category{embedded_col})
                SELECT g.i,
                       t.s || ' (' || g.i || ')',
                       s1.s || ' ' || s2.s || ' ' || s3.s || ' ' || s4.s,
                       'category ' || (g.i %% 7){embedded_value}
                FROM generate_series(1, %(rows)s::bigint) AS g(i)
                JOIN {title} t ON t.n = g.i %% {titles}
                JOIN {sentence} s1 ON s1.n = g.i %% {sentences}
                JOIN {sentence} s2 ON s2.n = (g.i / {sentences} + 7 * g.i + 3) %% {sentences}
                JOIN {sentence} s3 ON s3.n = (g.i / 101 + 31 * g.i + 11) %% {sentences}
                JOIN {sentence} s4 ON s4.n = (g.i / 13 + 97 * g.i + 5) %% {sentences}
                """
            ).format(
                relation=relation,
                embedded_col=sql.SQL(", embedded_in") if embedded_in is not None else sql.SQL(""),
                embedded_value=extra_value,
                title=title,
                sentence=sentence,
                titles=sql.Literal(TITLES),
                sentences=sql.Literal(SENTENCES),
            ),
            {"rows": rows},
        )
        self.conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (id)").format(relation))
        self.vacuum(table)
        return time.perf_counter() - started

    def vacuum(self, table: str) -> None:
        self.conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(self.schema, table)))

    def count(self, table: str, where: str = "true") -> int:
        return self.conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE " + where).format(
                sql.Identifier(self.schema, table)
            )
        ).fetchone()[0]

    # -- config ----------------------------------------------------------------------------

    def project(
        self,
        table: str,
        models: dict[str, dict[str, Any]],
        template: str = "TITLE: {title}\\nCONTENT: {body}",
    ) -> ProjectConfig:
        """Write a config folder for one table (asset `table`) and `models`, and load it
        (`template`: the text_template as written in YAML's double quotes).

        The table's collections are `{table}_{model id}_hybrid`; init-db is applied, which
        builds one partial index of pending rows per model.
        """
        directory = self.tmp / f"config_{table}"
        directory.mkdir(parents=True, exist_ok=True)
        default = next(iter(models))
        (directory / "embeddings.yaml").write_text(
            json.dumps({"embeddings": {"default": default, "models": models}}, indent=2)
        )
        (directory / "tables.yaml").write_text(
            textwrap.dedent(
                f"""\
                schema: {self.schema}
                collection_base: {table}
                tables:
                  {table}:
                    data_type: DOC
                    primary_key: id
                    text_template: "{template}"
                    payload_columns: [title, category]
                    name_column: title
                """
            )
        )
        config = load_config(directory)
        setup_database(self.conn, config)
        return config


@dataclass(frozen=True)
class Target:
    """A project, its one table, and one model: what a sync needs."""

    project: ProjectConfig
    model_key: str

    @property
    def table(self) -> TableConfig:
        return self.project.tables.tables[0]

    @property
    def model(self) -> Any:
        return self.project.embeddings.models[self.model_key]

    @property
    def collection(self) -> str:
        return collection_name_for(self.table.collection_base, self.model.id)


def trust_generated_marks(conn: Any, qdrant: Any, target: Target) -> None:
    """Tables generated "as after a full sync" carry marks without points: record `qdrant` as
    the store those marks were made in (store_state.py), as that sync would have, so the engine
    trusts them instead of voiding them."""
    ensure_collection(qdrant, target.collection, target.model.dimensions)
    vouch_for(conn, qdrant, target.project.tables.schema_, target.table, target.collection)


def text_pools() -> tuple[list[str], list[str]]:
    """`SENTENCES` distinct English sentences and `TITLES` titles from the demo generator."""
    from vector_pipeline.demo_data import generate_articles

    sentences: dict[str, None] = {}
    titles: dict[str, None] = {}
    for article in generate_articles(600, seed=2024):
        titles.setdefault(article["title"], None)
        for piece in re.split(r"(?<=[.!?])\s+", article["content"].replace("\n", " ")):
            piece = piece.strip()
            if 40 <= len(piece) <= 200 and piece.isascii():
                sentences.setdefault(piece, None)
        if len(sentences) >= SENTENCES and len(titles) >= TITLES:
            break
    if len(sentences) < SENTENCES or len(titles) < TITLES:
        raise RuntimeError("the demo generator gave too few distinct sentences or titles")
    return list(sentences)[:SENTENCES], list(titles)[:TITLES]


# -- models ------------------------------------------------------------------------------------


def deterministic_model(dimensions: int = 384) -> dict[str, Any]:
    return {"provider": "deterministic", "id": f"det-{dimensions}", "dimensions": dimensions}


def local_model() -> dict[str, Any]:
    return {"provider": "local", "id": "all-MiniLM-L6-v2", "dimensions": 384}


def engine_supports(field_name: str) -> bool:
    """Whether the engine's OpenAI model config has `field_name` (e.g. max_concurrent_requests)."""
    return field_name in OpenAIModel.model_fields


def openai_model(base_url: str, dimensions: int, **extra: Any) -> tuple[dict[str, Any], list[str]]:
    """An `openai` model against the loopback server; extra fields only if the engine has them.

    Returns the model's YAML mapping and notes on what could not be set. Rate limits the engine
    may have gained (`requests_per_minute`, `tokens_per_minute`) are lifted out of the way when
    their default is not unlimited, so they never cap a throughput measurement.
    """
    model: dict[str, Any] = {
        "provider": "openai",
        "id": "text-embedding-3-small",
        "dimensions": dimensions,
        "api_key": "${" + API_KEY_VARIABLE + "}",
        "base_url": base_url,
    }
    notes: list[str] = []
    for name, value in extra.items():
        if engine_supports(name):
            model[name] = value
        else:
            notes.append(f"the engine's model config has no `{name}`; it was left unset")
    for name in ("requests_per_minute", "tokens_per_minute"):
        field = OpenAIModel.model_fields.get(name)
        if field is not None and name not in model and field.default is not None:
            model[name] = 10**9
    return model, notes


# -- Qdrant ------------------------------------------------------------------------------------

QDRANT_LABELS = {
    "path": "Qdrant local mode (temp dir)",
    "memory": "Qdrant local mode (:memory:)",
    "discard": "discarding sink",
}


class DiscardingQdrant(QdrantClient):
    """An in-memory Qdrant client whose writes of points drop the points (and count them).

    Collections, payload indexes, deletes and counts work as usual (on an empty collection),
    so the engine runs unchanged; only the points a sync writes are never held, so they do not
    show up in the sync process's memory or time.
    """

    def __init__(self) -> None:
        super().__init__(location=":memory:")
        self._dropped_lock = threading.Lock()
        self.dropped = 0

    def _drop(self, count: int) -> models.UpdateResult:
        with self._dropped_lock:
            self.dropped += count
        return models.UpdateResult(operation_id=0, status=models.UpdateStatus.COMPLETED)

    def upsert(self, collection_name: str, points: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(points, models.Batch):
            return self._drop(len(points.ids))
        return self._drop(len(list(points)))

    def upload_points(self, collection_name: str, points: Any, *args: Any, **kwargs: Any) -> None:
        self._drop(sum(1 for _ in points))

    def upload_collection(
        self, collection_name: str, vectors: Any, *args: Any, **kwargs: Any
    ) -> None:
        ids = kwargs.get("ids")
        self._drop(len(list(ids)) if ids is not None else len(list(vectors)))


@contextmanager
def qdrant_store(mode: str, folder: Path) -> Iterator[QdrantClient]:
    """`path`: local mode in `folder` through `open_qdrant`; `memory`: `:memory:` local mode;
    `discard`: `DiscardingQdrant`."""
    if mode == "path":
        with open_qdrant(QdrantLocation(path=str(folder))) as client:
            yield client
    elif mode == "memory":
        client = QdrantClient(location=":memory:")
        try:
            yield client
        finally:
            client.close()
    elif mode == "discard":
        client = DiscardingQdrant()
        try:
            yield client
        finally:
            client.close()
    else:
        raise ValueError(f"unknown Qdrant mode {mode!r}")


# -- timing ------------------------------------------------------------------------------------


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = function()
    return time.perf_counter() - started, value


def max_rss_mib() -> float:
    """This process's peak resident set size so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def quiet_engine_logs() -> None:
    """The engine logs a line per batch at INFO; benchmarks keep only warnings."""
    import logging

    logging.getLogger("vector_pipeline").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpx2").setLevel(logging.WARNING)


# -- BENCHMARKS.md -----------------------------------------------------------------------------

# The sections other benchmarks own in BENCHMARKS.md, between these markers; `benchmarks.run`
# rewrites the rest of the file and keeps them.
SECTIONS = (
    ("<!-- retrieval benchmark: start -->", "<!-- retrieval benchmark: end -->"),
    ("<!-- adoption benchmark: start -->", "<!-- adoption benchmark: end -->"),
)


def write_section(section: str, path: Path, start: str, end: str) -> None:
    """Put `section` (which begins with `start` and ends with `end`) in place of the file's
    section between those markers, or append it."""
    text = path.read_text() if path.exists() else ""
    if start in text and end in text:
        before, _, rest = text.partition(start)
        _, _, after = rest.partition(end)
        text = before + section + after
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def kept_sections(previous: str) -> list[str]:
    """The marked sections of a BENCHMARKS.md's text, in `SECTIONS` order."""
    kept = []
    for start, end in SECTIONS:
        if start in previous and end in previous:
            kept.append(start + previous.split(start, 1)[1].split(end, 1)[0] + end)
    return kept
