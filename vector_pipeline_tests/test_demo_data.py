"""The offline demo data: deterministic, realistic lengths and scripts, distinct topics, and a
`seed_demo` that is idempotent, resettable and round-trips every character through COPY."""

from __future__ import annotations

import os
import re
import statistics
import uuid
from collections.abc import Iterator
from datetime import date

import psycopg
import pytest
from psycopg import sql

from vector_pipeline.demo_data import (
    ARTICLE_COLUMNS,
    CATEGORIES,
    HADITH_COLUMNS,
    create_demo_tables,
    generate_articles,
    generate_hadiths,
    seed_demo,
)

pytestmark = pytest.mark.integration

DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")

ARABIC = re.compile("[\u0600-\u06ff]")
# Letters Persian has and Arabic lacks (پ چ ژ گ ک ی) and the zero-width non-joiner.
PERSIAN = re.compile("[\u067e\u0686\u0698\u06af\u06a9\u06cc\u200c]")
EMOJI = re.compile("[\u2600-\u27bf\U0001f300-\U0001faff]")


@pytest.fixture(scope="module")
def articles() -> list[dict]:
    return list(generate_articles())


@pytest.fixture(scope="module")
def hadiths() -> list[dict]:
    return list(generate_hadiths())


@pytest.fixture
def demo_db() -> Iterator[tuple[psycopg.Connection, str]]:
    """An autocommit connection (as the CLI uses) and a fresh schema, dropped afterwards.

    The mixed-case name checks that every identifier is quoted.
    """
    schema = f"test_Demo_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(DATABASE_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        try:
            yield conn, schema
        finally:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def count(conn: psycopg.Connection, schema: str, table: str) -> int:
    query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))
    row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


def share_over(lengths: list[int], limit: int) -> float:
    return sum(length > limit for length in lengths) / len(lengths)


# ---------------------------------------------------------------- generators (no database)


def test_generators_are_deterministic_and_seeded(articles: list[dict], hadiths: list[dict]):
    assert list(generate_articles()) == articles
    assert list(generate_hadiths()) == hadiths
    assert list(generate_articles(50, seed=8)) != articles[:50]
    assert list(generate_hadiths(50, seed=12)) != hadiths[:50]
    assert list(generate_articles(0)) == []


def test_rows_have_the_table_columns(articles: list[dict], hadiths: list[dict]):
    assert len(articles) == 600 and len(hadiths) == 400
    assert all(tuple(row) == ARTICLE_COLUMNS for row in articles)
    assert all(tuple(row) == HADITH_COLUMNS for row in hadiths)
    for row in articles:
        assert row["title"] and row["content"] and row["category"] in CATEGORIES
        assert row["published_at"] is None or isinstance(row["published_at"], date)
        assert isinstance(row["views"], int) and row["views"] >= 0
    for row in hadiths:
        assert row["collection"] and row["narrator"] and row["english_text"]
        assert isinstance(row["number"], int) and row["number"] > 0
    assert len({(row["collection"], row["number"]) for row in hadiths}) == len(hadiths)


def test_article_lengths_straddle_the_model_limit(articles: list[dict]):
    lengths = [len(row["content"]) for row in articles]
    assert 0.15 <= share_over(lengths, 1800) <= 0.25
    assert sum(length > 5000 for length in lengths) >= 10
    assert max(lengths) <= 21000
    assert sum(length < 300 for length in lengths) >= 10
    assert 600 <= statistics.median(lengths) <= 1600


def test_hadith_lengths_and_arabic_script(hadiths: list[dict]):
    arabic_lengths = [len(row["arabic_text"]) for row in hadiths]
    assert 0.15 <= share_over(arabic_lengths, 1800) <= 0.3
    assert sum(length > 5000 for length in arabic_lengths) >= 5
    assert sum(length < 200 for length in arabic_lengths) >= 20
    for row in hadiths:
        letters = [ch for ch in row["arabic_text"] if ch.isalpha()]
        arabic = sum(bool(ARABIC.match(ch)) for ch in letters)
        assert arabic == len(letters), row["arabic_text"][:80]  # Arabic script, not translit
        assert row["english_text"].isascii() or PERSIAN.search(row["english_text"])


def test_mixed_scripts_appear_in_a_handful_of_rows(articles: list[dict], hadiths: list[dict]):
    arabic_articles = [row for row in articles if ARABIC.search(row["title"])]
    assert 30 <= len(arabic_articles) <= 90
    assert {row["category"] for row in arabic_articles} == set(CATEGORIES)
    persian_articles = sum(bool(PERSIAN.search(row["content"])) for row in articles)
    persian_hadiths = sum(bool(PERSIAN.search(row["english_text"])) for row in hadiths)
    emoji_articles = sum(bool(EMOJI.search(row["title"] + row["content"])) for row in articles)
    assert 3 <= persian_articles <= 30
    assert 3 <= persian_hadiths <= 30
    assert 3 <= emoji_articles <= 30


def test_every_category_is_present_and_evenly_spread(articles: list[dict]):
    per_category = {c: sum(row["category"] == c for row in articles) for c in CATEGORIES}
    assert len(CATEGORIES) >= 8
    assert all(n == 600 // len(CATEGORIES) for n in per_category.values())
    titles = [row["title"] for row in articles]
    assert len(set(titles)) >= 300  # natural titles, not one per category


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("how do I grow tomatoes in my garden soil", "gardening"),
        ("which telescope to see Jupiter and the stars", "astronomy"),
        ("knead dough oven recipe", "cooking"),
        ("slow query index in PostgreSQL", "databases"),
        ("striker scored a penalty goal", "football"),
        ("doctor symptoms blood pressure", "medicine"),
        ("passport visa trip hostel", "travel"),
        ("carbon dioxide emissions warming", "climate"),
        ("Newton Galileo algebra scientific discovery", "history of science"),
        ("savings pension budget debt", "personal finance"),
    ],
)
def test_topics_have_their_own_vocabulary(articles: list[dict], query: str, expected: str):
    """A crude keyword search already lands on the right topic; embeddings do better."""
    words = [w[:5] for w in re.findall(r"[a-z]+", query.lower()) if len(w) > 3]

    def score(category: str) -> float:
        texts = [
            (row["title"] + " " + row["content"]).lower()
            for row in articles
            if row["category"] == category and not ARABIC.search(row["title"])
        ]
        return sum(sum(w in text for text in texts) / len(texts) for w in words)

    scores = {category: score(category) for category in CATEGORIES}
    best = max(scores, key=scores.__getitem__)
    assert best == expected, scores
    runner_up = max(s for c, s in scores.items() if c != expected)
    assert scores[expected] > 2 * runner_up, scores


# ---------------------------------------------------------------- database


def test_tables_have_the_documented_shape(demo_db: tuple[psycopg.Connection, str]):
    conn, schema = demo_db
    create_demo_tables(conn, schema)
    create_demo_tables(conn, schema)  # idempotent
    rows = conn.execute(
        """
        SELECT table_name, column_name, data_type, is_nullable, is_identity
        FROM information_schema.columns WHERE table_schema = %s
        ORDER BY table_name, ordinal_position
        """,
        (schema,),
    ).fetchall()
    shape = {(t, c): (d, n, i) for t, c, d, n, i in rows}
    assert [c for t, c in shape if t == "article"] == ["id", *ARTICLE_COLUMNS]
    assert [c for t, c in shape if t == "hadith"] == ["id", *HADITH_COLUMNS]
    assert shape["article", "id"] == ("bigint", "NO", "YES")
    assert shape["hadith", "id"] == ("bigint", "NO", "YES")
    assert shape["article", "published_at"] == ("date", "YES", "NO")
    assert shape["article", "views"] == ("integer", "NO", "NO")
    assert shape["hadith", "number"] == ("integer", "NO", "NO")
    assert shape["hadith", "arabic_text"] == ("text", "NO", "NO")
    assert not any(c == "embedded_in" for _, c in shape)


def test_seed_demo_fills_both_tables_and_round_trips_every_character(
    demo_db: tuple[psycopg.Connection, str], articles: list[dict], hadiths: list[dict]
):
    conn, schema = demo_db
    assert seed_demo(conn, schema) == {"article": 600, "hadith": 400}
    for table, columns, expected in (
        ("article", ARTICLE_COLUMNS, articles),
        ("hadith", HADITH_COLUMNS, hadiths),
    ):
        query = sql.SQL("SELECT {} FROM {} ORDER BY id").format(
            sql.SQL(", ").join(map(sql.Identifier, columns)), sql.Identifier(schema, table)
        )
        stored = [dict(zip(columns, row, strict=True)) for row in conn.execute(query)]
        assert stored == expected
    # Committed: another connection sees the rows.
    with psycopg.connect(DATABASE_URL) as other:
        assert count(other, schema, "article") == 600
        assert count(other, schema, "hadith") == 400


def test_seed_demo_is_idempotent(demo_db: tuple[psycopg.Connection, str]):
    conn, schema = demo_db
    assert seed_demo(conn, schema, articles=30, hadiths=20) == {"article": 30, "hadith": 20}
    assert seed_demo(conn, schema, articles=30, hadiths=20) == {"article": 0, "hadith": 0}
    assert (count(conn, schema, "article"), count(conn, schema, "hadith")) == (30, 20)


def test_seed_demo_fills_only_the_empty_table(demo_db: tuple[psycopg.Connection, str]):
    conn, schema = demo_db
    assert seed_demo(conn, schema, articles=5, hadiths=0) == {"article": 5, "hadith": 0}
    assert seed_demo(conn, schema, articles=5, hadiths=7) == {"article": 0, "hadith": 7}
    assert (count(conn, schema, "article"), count(conn, schema, "hadith")) == (5, 7)


def test_reset_empties_and_restarts_ids(demo_db: tuple[psycopg.Connection, str]):
    conn, schema = demo_db
    seed_demo(conn, schema, articles=20, hadiths=10)
    inserted = seed_demo(conn, schema, articles=12, hadiths=4, reset=True)
    assert inserted == {"article": 12, "hadith": 4}
    for table, n in (("article", 12), ("hadith", 4)):
        query = sql.SQL("SELECT min(id), max(id), count(*) FROM {}").format(
            sql.Identifier(schema, table)
        )
        assert conn.execute(query).fetchone() == (1, n, n)


def test_seed_demo_works_on_a_transactional_connection_and_a_new_schema(
    demo_db: tuple[psycopg.Connection, str],
):
    _, schema = demo_db
    new_schema = f"{schema}_new"
    with psycopg.connect(DATABASE_URL) as conn:  # autocommit off
        try:
            assert seed_demo(conn, new_schema, articles=3, hadiths=2) == {
                "article": 3,
                "hadith": 2,
            }
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            assert count(conn, new_schema, "article") == 3
        finally:
            conn.rollback()
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(new_schema))
            )
            conn.commit()


def test_seed_demo_rejects_negative_counts(demo_db: tuple[psycopg.Connection, str]):
    conn, schema = demo_db
    with pytest.raises(ValueError):
        seed_demo(conn, schema, articles=-1)
