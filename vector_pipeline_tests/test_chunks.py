"""Long texts are split into chunks that fit the model, measured in its own tokens."""

from __future__ import annotations

import math
import random

import pytest

from vector_pipeline.chunks import REPEAT_MAX_CHARS, chunk_text
from vector_pipeline.config import LocalModel, TableConfig
from vector_pipeline.embedders import build_embedder

pytestmark = pytest.mark.unit

TEMPLATE = "TITLE: {title}\nCONTENT: {content}"
ARABIC = (
    "حَدَّثَنَا الْحُمَيْدِيُّ عَبْدُ اللَّهِ بْنُ الزُّبَيْرِ قَالَ حَدَّثَنَا سُفْيَانُ قَالَ "
    "سَمِعْتُ رَسُولَ اللَّهِ صَلَّى اللَّهُ عَلَيْهِ وَسَلَّمَ يَقُولُ إِنَّمَا الْأَعْمَالُ "
    "بِالنِّيَّاتِ وَإِنَّمَا لِكُلِّ امْرِئٍ مَا نَوَى"
)


def words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


def words_plus_two(text: str) -> int:
    """A toy tokenizer: one token per word, plus two special tokens."""
    return len(text.split()) + 2


def _body_words(chunks: list[str], header: str) -> list[list[str]]:
    assert all(chunk.startswith(header) for chunk in chunks)
    return [chunk[len(header) :].split() for chunk in chunks]


def test_a_text_that_fits_is_one_chunk_exactly_as_rendered() -> None:
    values = {"title": "Short", "content": "a few words", "unused": 1}
    assert chunk_text(TEMPLATE, values, words_plus_two, 50, overlap_tokens=5) == [
        "TITLE: Short\nCONTENT: a few words"
    ]
    none = {"title": None, "content": "text"}
    assert chunk_text(TEMPLATE, none, words_plus_two, 50, overlap_tokens=5) == [
        "TITLE: \nCONTENT: text"
    ]


def test_long_text_chunks_fit_repeat_the_title_overlap_and_cover_every_word() -> None:
    words = [f"w{i}" for i in range(1000)]
    values = {"title": "Gardening", "content": " ".join(words)}
    chunks = chunk_text(TEMPLATE, values, words_plus_two, 100, overlap_tokens=10)
    # 100 tokens less 2 specials, 2 of safety and the 2-word title leave 94 words a window;
    # windows advance by 94 - 10 overlap: "CONTENT:" plus 1,000 words make 12 chunks.
    assert len(chunks) == 1 + math.ceil((1001 - 94) / (94 - 10)) == 12
    assert all(words_plus_two(chunk) <= 100 for chunk in chunks)
    assert chunks[0].startswith("TITLE: Gardening\nCONTENT: w0 w1")
    bodies = _body_words(chunks, "TITLE: Gardening\n")
    # Each chunk after the first starts inside the previous one, at most 10 tokens back.
    for before, after in zip(bodies, bodies[1:], strict=False):
        shared = before[before.index(after[1]) - 1 :] if after[1] in before else []
        assert 1 <= len(shared) <= 10 and after[: len(shared)] == shared
    covered = [w for body in bodies for w in body if w != "CONTENT:"]
    assert list(dict.fromkeys(covered)) == words  # every word, in order, none lost
    again = chunk_text(TEMPLATE, values, words_plus_two, 100, overlap_tokens=10)
    assert again == chunks  # deterministic: the same row gives the same points


def test_long_fields_are_body_and_short_ones_are_repeated() -> None:
    template = "COLLECTION: {collection}\nARABIC: {arabic}\nENGLISH: {english}"
    values = {
        "collection": "bukhari",
        "arabic": " ".join(["عربي"] * 200),
        "english": " ".join(["english"] * 200),
    }
    chunks = chunk_text(template, values, words_plus_two, 120, overlap_tokens=8)
    assert all(chunk.startswith("COLLECTION: bukhari\n") for chunk in chunks)
    assert "ARABIC:" in chunks[0] and any("ENGLISH:" in chunk for chunk in chunks[1:])
    # An explicit repeat list wins over the length rule.
    chunks = chunk_text(
        template,
        {**values, "collection": "x" * (REPEAT_MAX_CHARS + 1)},
        words_plus_two,
        120,
        overlap_tokens=8,
        repeat=["collection"],
    )
    assert all(chunk.startswith("COLLECTION: " + "x" * (REPEAT_MAX_CHARS + 1)) for chunk in chunks)


def test_a_giant_word_is_cut_into_slices() -> None:
    def chars(text: str) -> int:  # one token per 4 characters, like a BPE on base64
        return len(text) // 4 + 2

    blob = "".join(random.Random(3).choice("abcdef0123456789") for _ in range(20_000))
    chunks = chunk_text("{body}", {"body": blob}, chars, 256, overlap_tokens=16)
    assert all(chars(chunk) <= 256 for chunk in chunks)
    assert "".join(chunks).replace(" ", "").find(blob[:1000]) == 0
    assert len(chunks) >= 20_000 // (254 * 4)


def test_no_room_for_text_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="leaves no room for text"):
        chunk_text("{body}", {"body": "x " * 100}, words_plus_two, 5, overlap_tokens=1)


@pytest.mark.parametrize(
    ("model_id", "limit"), [("all-MiniLM-L6-v2", 256), ("multilingual-e5-small", 512)]
)
def test_chunks_fit_the_real_models_by_their_own_count(model_id: str, limit: int) -> None:
    embedder = build_embedder(
        "m", LocalModel(provider="local", id=model_id, dimensions=384, max_tokens_per_input=limit)
    )
    count = embedder.count_tokens  # type: ignore[attr-defined]
    long_text = "\n\n".join([ARABIC, "The reward of deeds depends upon the intentions."] * 50)
    assert count(long_text) > 3 * limit
    chunks = chunk_text(
        TEMPLATE, {"title": "Bukhari 1", "content": long_text}, count, limit, overlap_tokens=32
    )
    assert len(chunks) >= 3
    assert all(count(chunk) <= limit for chunk in chunks)
    assert all(chunk.startswith("TITLE: Bukhari 1\n") for chunk in chunks)
    # The last words of the text are in the last chunk: nothing is cut off the end.
    assert chunks[-1].endswith("intentions.")


def test_chunks_render_as_render_text_does() -> None:
    """A chunked row's text is the rendered text: literal braces, NULL as `null_as`."""
    template = "TITLE: {title} {{not a field}} NOTE: {note}\nCONTENT: {content}"
    table = TableConfig(
        name="t",
        table="t",
        data_type="T",
        collection_base="t",
        text_template=template,
        null_as="None",
    )
    short = {"title": "Tee", "note": None, "content": "a few words"}
    rendered = table.render_text(short)
    assert rendered == "TITLE: Tee {not a field} NOTE: None\nCONTENT: a few words"
    assert chunk_text(template, short, words_plus_two, 50, overlap_tokens=5, null_as="None") == [
        rendered
    ]
    long = {**short, "content": words(200)}
    chunks = chunk_text(template, long, words_plus_two, 40, overlap_tokens=5, null_as="None")
    assert len(chunks) > 1
    assert all(c.startswith("TITLE: Tee NOTE: None\n") for c in chunks)
    assert "{not a field}" in chunks[0]
