"""vector_pipeline.sparse.Bm25 must give the same vectors as fastembed's Qdrant/bm25.

fastembed (a dev dependency only) is built from an empty local directory with our stopword
list passed in, so it downloads nothing; a socket guard makes any attempt fail loudly.
"""

from __future__ import annotations

import random
import re
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mmh3
import pytest

from vector_pipeline.sparse import (
    _ARABIC_SCRIPT,
    Bm25,
    SparseSettings,
    SparseVector,
    load_stopwords,
    normalise_arabic_script,
)

pytestmark = pytest.mark.unit

DATA = Path(__file__).resolve().parent.parent / "vector_pipeline" / "data"

# Two real words that are their own English stems and whose signed murmur3 hashes are
# opposites, so abs() gives them one sparse id (found by brute force, asserted below).
COLLIDING_STEMS = ("valogababak", "tekukababak")
COLLIDING_ID = 1091821837


def _corpus() -> list[str]:
    """Deterministic, deliberately awkward texts covering every tokenizer branch."""
    prose = [
        "The quick brown fox jumps over the lazy dog.",
        "It was the best of times, it was the worst of times, it was the age of wisdom.",
        "Generously added ingredients were being cooked while the cooks were dying to taste.",
        "Running runners ran; the runner's runs are running out.",
        "News: skies are cloudy, flies fly, and the ladies' dresses are drying.",
        "Proceed, exceed, succeed: the agreement was agreed upon by the agreeable parties.",
        "Connection connections connective connected connecting.",
        "He'd said she'll go, but I'm sure you're wrong; they've left and we'd stayed.",
        "Don't, can't, won't, shouldn't, mightn't: contractions everywhere!",
        "THE AND OR NOT: stopwords in capitals, THE End.",
        "a an the of to in is it",
        "Relational databases replicate rows; vector databases index embeddings.",
    ]
    unicode_bits = [
        "café naïve résumé coöperate façade Ångström",
        "Straße STRASSE straße ß",
        "مرحبا بالعالم، هذا نص عربي للاختبار.",
        "ذَهَبَ الطَّالِبُ إِلَى المَدْرَسَةِ",
        "سلام دنیا، این یک متن فارسی است. کتاب‌ها را می‌خوانم.",
        "Emoji 😀🎉👍🏽 mixed with text 🚀rocket🚀 and ❤️ hearts",
        "👨‍👩‍👧‍👦 family zwj sequence",
        "İstanbul İSTANBUL istanbul DİYARBAKIR",
        "ΟΔΥΣΣΕΥΣ ΣΟΦΟΣ Σ. ΑΣ'Α ΑΣ.Α ΑΣ-Α ΑΣ Α σοφός ς",
        "ﬁnance ﬂow ﬀ Ｆｕｌｌｗｉｄｔｈ ＡＢＣ ａｂｃ",
        "x² H₂O ½ ⅓ Ⅻ ⑤ ٣٤٥ ९८७",
        "Ⓐ Ⓑ ⓒ circled letters",
        "हिन्दी भाषा தமிழ் மொழி",
        "中文文本没有空格 日本語のテキスト 한국어 텍스트",
        "zero\u200bwidth\u200cnon\u200djoiner soft\u00adhyphen",
        "combining e\u0301 versus \u00e9 and A\u030a",
        "tab\tseparated\nnew\nline\r\nwindows\x0bvertical\x0cfeed\x1cfile\x1dgroup\x85nel",
        "\u00a0non-breaking\u2003em\u3000ideographic space",
    ]
    code = [
        "def __init__(self, x_value: int = 42) -> None: self._cache = {}",
        "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; } // C loop",
        "SELECT id, name FROM users WHERE email LIKE '%@example.com' AND age >= 18;",
        "snake_case camelCase PascalCase kebab-case SCREAMING_SNAKE_CASE __dunder__ _ __ ___",
        "lambda x: x ** 2 if x > 0 else -x  # comment",
        '{"key": "value", "list": [1, 2.5, -3e10], "nested": {"a": null}}',
        "<div class='main'><p>Hello&nbsp;world</p></div>",
    ]
    urls = [
        "https://www.example.com/path/to/page?query=value&other=123#fragment",
        "Visit http://sub.domain.co.uk:8080/index.html or ftp://files.example.org/pub/",
        "mailto:someone@example.com and user.name+tag@mail-server.io",
        "file:///home/user/Documents/report_final_v2.pdf",
    ]
    hyphen_numbers = [
        "state-of-the-art well-known mother-in-law re-enter co-operate e-mail",
        "1234567890 3.14159 -42 +7 1,000,000 $19.99 €5 100% 2024-01-31 12:30:45",
        "Version v1.2.3-beta.4 build #5678 at 0x1F 0b1010 1e-9",
        "Phone +1 (555) 123-4567, ext. 89",
    ]
    edge = [
        "",
        " ",
        "   \t\n  ",
        "\n\n\n",
        "!!!???...,,,;;;:::",
        "--- *** ___ ~~~ ``` '''",
        "_",
        "a" * 40,
        "b" * 41,
        "x" * 40 + " " + "y" * 41 + " " + "z" * 39,
        "Pneumonoultramicroscopicsilicovolcanoconiosis is a long word",
        "supercalifragilisticexpialidociousantidisestablishmentarianism",
        "averyveryveryveryveryverylongtokenwithoutanyspacesthatgoesonandon",
        "I" * 45 + " short",
        "repeat " * 50,
        "word " * 300 + "other",
        "the " * 100,
        " ".join(COLLIDING_STEMS),
        f"{COLLIDING_STEMS[1]} {COLLIDING_STEMS[1]} {COLLIDING_STEMS[0]}",
        f"{COLLIDING_STEMS[0]} {COLLIDING_STEMS[1]} {COLLIDING_STEMS[1]}",
    ]
    fixed = prose + unicode_bits + code + urls + hyphen_numbers + edge

    # Mixed documents: random draws from the fixed pieces, with random case and punctuation
    # glued on, some long enough (> 256 stems) that the length normalisation matters.
    rng = random.Random(20240601)
    words = " ".join(prose + unicode_bits + code + urls + hyphen_numbers).split()
    glue = [" ", "  ", ", ", ". ", "-", "_", "/", "'", "\n", "\t", "...", "!", "(", ")"]
    mixed: list[str] = []
    for i in range(220):
        n_words = rng.choice([1, 2, 5, 20, 60, 150, 400])
        parts: list[str] = []
        for _ in range(n_words):
            word = rng.choice(words)
            case = rng.random()
            if case < 0.15:
                word = word.upper()
            elif case < 0.3:
                word = word.title()
            elif case < 0.4:
                word = "".join(c.upper() if rng.random() < 0.5 else c for c in word)
            parts.append(word)
            parts.append(rng.choice(glue))
        if i % 7 == 0:
            parts.append(rng.choice(fixed))
        mixed.append("".join(parts))
    return fixed + mixed


CORPUS = _corpus()


@pytest.fixture(scope="module", autouse=True)
def _offline() -> Iterator[None]:
    """Any network use by fastembed (or us) fails the test instead of downloading."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the BM25 parity tests must not touch the network")

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket, "create_connection", refuse)
        yield


def _fastembed_bm25(model_dir: Path, **params: float) -> Any:
    """fastembed's own Bm25, built from an empty local directory with our stopwords."""
    from fastembed.sparse.bm25 import Bm25 as FastembedBm25

    # specific_model_path makes download_model return that path without asking a hub, and
    # with stopwords= fastembed never reads english.txt from it, so the directory stays empty.
    return FastembedBm25(
        "Qdrant/bm25",
        cache_dir=str(model_dir),
        specific_model_path=str(model_dir),
        local_files_only=True,
        stopwords=set(load_stopwords()),
        **params,
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return _fastembed_bm25(tmp_path_factory.mktemp("fastembed-bm25"))


def _as_dict(vector: SparseVector) -> dict[int, float]:
    assert len(vector.indices) == len(vector.values)
    assert vector.indices == sorted(set(vector.indices)), "indices must be unique and sorted"
    return dict(zip(vector.indices, vector.values, strict=True))


def _reference_dict(embedding: Any) -> dict[int, float]:
    return {int(i): float(v) for i, v in zip(embedding.indices, embedding.values, strict=True)}


def _assert_same(ours: dict[int, float], theirs: dict[int, float], text: str) -> None:
    assert set(ours) == set(theirs), f"ids differ for {text[:80]!r}"
    for token_id, value in theirs.items():
        assert ours[token_id] == pytest.approx(value, abs=1e-6), f"weight differs: {text[:80]!r}"


def test_corpus_is_large_and_varied() -> None:
    assert len(CORPUS) >= 200
    assert "" in CORPUS and any(len(t.split()) > 256 for t in CORPUS)


def test_documents_match_fastembed(reference: Any) -> None:
    ours = Bm25().embed_documents(CORPUS)
    theirs = list(reference.embed(CORPUS, batch_size=64))
    assert len(ours) == len(theirs) == len(CORPUS)
    for text, mine, ref in zip(CORPUS, ours, theirs, strict=True):
        _assert_same(_as_dict(mine), _reference_dict(ref), text)


def test_queries_match_fastembed(reference: Any) -> None:
    bm25 = Bm25()
    for text in CORPUS:
        ref = next(iter(reference.query_embed(text)))
        mine = bm25.embed_query(text)
        _assert_same(_as_dict(mine), _reference_dict(ref), text)
        assert all(value == 1.0 for value in mine.values)


def test_custom_parameters_match_fastembed(tmp_path: Path) -> None:
    params = {"k": 1.5, "b": 0.3, "avg_len": 100.0}
    custom = _fastembed_bm25(tmp_path, **params)
    texts = CORPUS[:40] + CORPUS[-40:]
    ours = Bm25(**params).embed_documents(texts)
    for text, mine, ref in zip(texts, ours, custom.embed(texts), strict=True):
        _assert_same(_as_dict(mine), _reference_dict(ref), text)


def test_hash_collision_keeps_fastembed_behaviour(reference: Any) -> None:
    first, second = COLLIDING_STEMS
    assert mmh3.hash(first) == -mmh3.hash(second)
    assert abs(mmh3.hash(first)) == COLLIDING_ID
    for text in (f"{first} {second} {second}", f"{second} {second} {first}"):
        mine = _as_dict(Bm25().embed_documents([text])[0])
        assert set(mine) == {COLLIDING_ID}
        _assert_same(mine, _reference_dict(next(iter(reference.embed([text])))), text)


def test_output_is_deterministic_and_empty_text_is_empty() -> None:
    bm25 = Bm25()
    text = "Qdrant stores sparse vectors; sparse vectors store Qdrant."
    assert bm25.embed_documents([text]) == Bm25().embed_documents([text])
    assert bm25.embed_documents(["", "   ", "the and of"]) == [SparseVector([], [])] * 3
    assert bm25.embed_query("") == SparseVector([], [])


def test_stopword_list_loads_with_expected_count() -> None:
    stopwords = load_stopwords()
    # NLTK's English list as of 2017-2025 (179 words), which Qdrant/bm25's english.txt holds;
    # see vector_pipeline/data/STOPWORDS_NOTICE.md.
    assert len(stopwords) == 179
    assert {"the", "and", "ain", "wouldn", "wouldn't", "should've"} <= stopwords
    assert all(word and word == word.strip().lower() for word in stopwords)


def test_only_underscore_is_both_punctuation_and_word_char() -> None:
    # sparse.py drops a lone "_" instead of consulting fastembed's punctuation set; valid
    # because tokens hold only word chars and this is the only punctuation char among them.
    from fastembed.common.utils import get_all_punctuation

    word_char = re.compile(r"\w")
    assert {c for c in get_all_punctuation() if word_char.fullmatch(c)} == {"_"}


def test_lowercasing_never_turns_a_non_word_char_into_a_word_char() -> None:
    # sparse.py skips fastembed's pre-lowercasing punctuation pass unless a capital sigma is
    # present; that is exact only while this holds for the running Python's Unicode tables.
    word_or_space = re.compile(r"[\w\s]")
    has_word_char = re.compile(r"\w")
    offenders = [
        hex(code)
        for code in range(sys.maxunicode + 1)
        if (lowered := chr(code).lower()) != chr(code)
        and not word_or_space.fullmatch(chr(code))
        and has_word_char.search(lowered)
    ]
    assert offenders == []
    # And tokens are lower case already, so lowering them again (as fastembed does) is a no-op.
    not_idempotent = [
        hex(code)
        for code in range(sys.maxunicode + 1)
        if chr(code).lower().lower() != chr(code).lower()
    ]
    assert not_idempotent == []


# -- Arabic and Persian (SparseSettings.languages) ----------------------------------------------

MULTILINGUAL = SparseSettings(languages=("english", "arabic", "persian"))
# The opening of Sahih al-Bukhari's first hadith, as published (fully vowelled) and as typed.
VOWELLED = "إِنَّمَا الْأَعْمَالُ بِالنِّيَّاتِ، وَإِنَّمَا لِكُلِّ امْرِئٍ مَا نَوَى"
TYPED = "انما الاعمال بالنيات، وانما لكل امرئ ما نوى"


def test_normalisation_folds_what_people_type_differently() -> None:
    # Diacritics and tatweel vanish; hamza seats, alef maksura, teh marbuta fold.
    assert normalise_arabic_script(VOWELLED) == normalise_arabic_script(TYPED)
    assert normalise_arabic_script("كتـــاب") == "كتاب"
    assert normalise_arabic_script("أحمد إبراهيم آمن ٱلله") == "احمد ابراهيم امن الله"
    assert normalise_arabic_script("مدرسة على") == normalise_arabic_script("مدرسه علي")
    # Persian yeh and keheh are Arabic yeh and kaf; ZWNJ splits; Eastern digits are ASCII.
    assert normalise_arabic_script("یک کتاب") == normalise_arabic_script("يك كتاب")
    assert normalise_arabic_script("کتاب\u200cها") == "كتاب ها"
    assert normalise_arabic_script("حديث ٣٤٥ و ۱۲") == "حديث 345 و 12"
    # Presentation forms (PDF ligatures and shapes) are the letters people type.
    assert normalise_arabic_script("ﻻ إله إلا ﷲ") == normalise_arabic_script("لا اله الا الله")
    # Nothing outside Arabic script changes, accents included.
    latin = "café naïve Ångström ΣΟΦΟΣ x² 😀 e\u0301"
    assert normalise_arabic_script(latin) == latin


def test_typed_and_vowelled_arabic_encode_alike_for_documents_and_queries() -> None:
    bm25 = Bm25(settings=MULTILINGUAL)
    assert bm25.embed_documents([VOWELLED]) == bm25.embed_documents([TYPED])
    assert bm25.embed_query(VOWELLED) == bm25.embed_query(TYPED)
    # Each word is one token, not one per letter: at most one id per word.
    assert 0 < len(bm25.embed_query(TYPED).indices) <= len(TYPED.split())
    # The plain recipe splits vowelled words into letters, so nothing typed matches.
    plain = Bm25()
    assert not set(plain.embed_query(TYPED).indices) & set(plain.embed_query(VOWELLED).indices)


def test_persian_variants_meet() -> None:
    bm25 = Bm25(settings=MULTILINGUAL)
    with_zwnj = bm25.embed_query("کتاب\u200cها را می\u200cخوانم")
    with_space = bm25.embed_query("كتاب ها را مي خوانم")  # Arabic yeh and kaf, spaces
    assert with_zwnj == with_space
    # The stopword lists apply per script: "the" is an English stopword, "را" a Persian one.
    assert bm25.embed_query("the را") == SparseVector([], [])


def test_multilingual_settings_leave_text_without_arabic_script_as_fastembed(
    reference: Any,
) -> None:
    bm25 = Bm25(settings=MULTILINGUAL)
    texts = [text for text in CORPUS if not _ARABIC_SCRIPT.search(text)]
    assert len(texts) > 100
    for text, mine, ref in zip(
        texts, bm25.embed_documents(texts), reference.embed(texts), strict=True
    ):
        _assert_same(_as_dict(mine), _reference_dict(ref), text)
    for text in texts[:60]:
        _assert_same(
            _as_dict(bm25.embed_query(text)),
            _reference_dict(next(iter(reference.query_embed(text)))),
            text,
        )


def test_arabic_settings_are_fastembeds_arabic_bm25_on_normalised_text(tmp_path: Path) -> None:
    """What a reader with fastembed reproduces: Bm25(language="arabic") with the shipped
    stopword list (normalised) on normalise_arabic_script(text), stemmed or (the default for
    Arabic, `unstemmed`) with disable_stemmer=True."""
    from fastembed.sparse.bm25 import Bm25 as FastembedBm25

    stopwords = {
        normalise_arabic_script(word) for word in load_stopwords(DATA / "stopwords_arabic.txt")
    }

    def arabic(**options: bool) -> Any:
        return FastembedBm25(
            "Qdrant/bm25",
            cache_dir=str(tmp_path),
            specific_model_path=str(tmp_path),
            local_files_only=True,
            language="arabic",
            stopwords=stopwords,
            **options,
        )

    theirs, unstemmed = arabic(), arabic(disable_stemmer=True)
    texts = [VOWELLED, TYPED, "قَالَ رَسُولُ اللَّهِ صَلَّى اللَّهُ عَلَيْهِ وَسَلَّمَ إِذَا"]
    for settings, reference in (
        (SparseSettings(languages=("arabic",)), theirs),
        (SparseSettings(languages=("arabic",), unstemmed=("arabic",)), unstemmed),
    ):
        ours = Bm25(settings=settings)
        for text, mine in zip(texts, ours.embed_documents(texts), strict=True):
            ref = next(iter(reference.embed([normalise_arabic_script(text)])))
            _assert_same(_as_dict(mine), _reference_dict(ref), text)
            assert mine.indices and len(mine.indices) < len(text.split())  # إذا etc. dropped


def test_settings_reject_unknown_or_repeated_languages() -> None:
    with pytest.raises(ValueError, match="'klingon' is not supported; use one of english"):
        SparseSettings(languages=("english", "klingon"))
    with pytest.raises(ValueError, match="names one twice"):
        SparseSettings(languages=("arabic", "arabic"))
    described = MULTILINGUAL.describe()
    assert described["languages"] == ["english", "arabic", "persian"]
    assert described["normalisation"] == "normalise_arabic_script v1"
    assert SparseSettings().describe()["normalisation"] is None
    with pytest.raises(ValueError, match="unstemmed language 'latin' is not supported"):
        SparseSettings(unstemmed=("latin",))
    # Unstemmed Arabic keeps word forms apart that Snowball merges.
    stemmed = Bm25(settings=MULTILINGUAL)
    exact = Bm25(settings=SparseSettings(("english", "arabic"), unstemmed=("arabic",)))
    assert stemmed.embed_query("الاعمال") == stemmed.embed_query("اعمال")
    assert exact.embed_query("الاعمال") != exact.embed_query("اعمال")


def test_default_settings_keep_arabic_content_words() -> None:
    """Arabic words that the broad Persian stopword list holds (خير, عمل, زمان) stay
    searchable under the default languages; `persian` opts into that list."""
    default = Bm25(settings=SparseSettings(("english", "arabic"), unstemmed=("arabic",)))
    for word in ("خير", "عمل", "زمان"):
        assert default.embed_query(word).indices, word
    assert Bm25(settings=MULTILINGUAL).embed_query("خير") == SparseVector([], [])
