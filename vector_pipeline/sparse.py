"""BM25 sparse vectors: fastembed's ``Qdrant/bm25``, bit for bit, plus Arabic and Persian.

Why this module exists: Qdrant scores BM25 from sparse vectors whose ids are token hashes and
whose values are the BM25 term-frequency part; the IDF part is applied by Qdrant itself
(the collection's sparse vector uses ``Modifier.IDF``). fastembed can produce those vectors,
but it downloads the model's stopword files from a hub at run time and pulls in numpy and
onnxruntime plumbing we do not need. This module reproduces fastembed 0.9.1's ``Bm25`` exactly
(tokenisation, stopwords, stemming, hashing, weights), needing only ``mmh3``,
``py-rust-stemmers`` and a stopword list shipped in ``vector_pipeline/data``.

Vectors made here and by ``fastembed.SparseTextEmbedding("Qdrant/bm25")`` are interchangeable,
so documents indexed by one can be queried with the other;
``vector_pipeline_tests/test_sparse.py`` checks that against fastembed itself.

Languages (``SparseSettings.languages``). fastembed's tokenizer splits on every non-word
character, and Arabic diacritics (harakat) and Persian's zero-width non-joiner are not word
characters: fully vowelled Arabic, the way hadith and Quranic text are published, falls apart
into single letters, and a query typed without diacritics matches nothing. When a language
written in Arabic script is configured, every text (document or query, identically) is first
normalised by `normalise_arabic_script`, and each token is then handled by the language of its
script: a token holding an Arabic-script letter gets that script's stopwords and stemmer
(Snowball "arabic"), any other token those of the first configured language. With
``languages=("english",)``, the default, nothing changes: the vectors are Qdrant/bm25's.
Text with no Arabic-script letter is encoded the same under every setting that starts with
english, so adding Arabic to a collection of English text changes no vector.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import mmh3
from py_rust_stemmers import SnowballStemmer

__all__ = [
    "LANGUAGES",
    "Bm25",
    "SparseSettings",
    "SparseVector",
    "load_stopwords",
    "normalise_arabic_script",
]

_DATA = Path(__file__).parent / "data"
_STOPWORDS_FILE = _DATA / "stopwords_english.txt"


@dataclass(frozen=True)
class Language:
    """How one language's tokens are filtered and stemmed.

    `stopwords` is a file in vector_pipeline/data (origins in STOPWORDS_NOTICE.md);
    `stemmer` a py-rust-stemmers Snowball language, or None for none (Persian has no
    Snowball stemmer; fastembed has no Persian either).
    """

    script: str  # "latin" or "arabic": which tokens it handles
    stemmer: str | None
    stopwords: str


LANGUAGES: dict[str, Language] = {
    # fastembed's default: NLTK's list and Snowball english, exactly as Qdrant/bm25.
    "english": Language("latin", "english", "stopwords_english.txt"),
    # fastembed's language="arabic": NLTK's Arabic list and Snowball arabic.
    "arabic": Language("arabic", "arabic", "stopwords_arabic.txt"),
    # The stop-words package's Persian list (BSD-3); no stemmer exists for Persian.
    "persian": Language("arabic", None, "stopwords_persian.txt"),
}

# Arabic-script letters: Arabic, Arabic Supplement, Arabic Extended-A and the presentation
# forms. A token holding one is handled by the configured Arabic-script language.
_ARABIC_SCRIPT = re.compile("[\u0600-\u06ff\u0750-\u077f\u08a0-\u08ff\ufb50-\ufdff\ufe70-\ufeff]")


def _arabic_script_table() -> dict[int, str | None]:
    """The character map of `normalise_arabic_script` (see there for what and why)."""
    table: dict[int, str | None] = {}
    # Diacritics (harakat, tanwin, shadda, sukun, superscript alef, hamza marks) and the
    # Quranic annotation signs: combining marks, so not word characters; removed.
    for start, end in (
        (0x0610, 0x061A),
        (0x064B, 0x065F),
        (0x06D6, 0x06DC),
        (0x06DF, 0x06E8),
        (0x06EA, 0x06ED),
    ):
        table.update((code, None) for code in range(start, end + 1))
    table[0x0670] = None  # superscript (dagger) alef
    table[0x0640] = None  # tatweel: stretches a word for layout, is not a letter
    # Letter variants people type interchangeably, folded as Lucene's ArabicNormalizer and
    # PersianNormalizer do: hamza seats and wasla on alef -> alef, alef maksura -> yeh,
    # teh marbuta -> heh; Persian yeh, keheh, heh with yeh and heh goal -> Arabic forms.
    table.update({ord(c): "\u0627" for c in "\u0622\u0623\u0625\u0671"})
    table.update({ord("\u0649"): "\u064a", ord("\u06cc"): "\u064a", ord("\u06d2"): "\u064a"})
    table[ord("\u0629")] = "\u0647"
    table[ord("\u06a9")] = "\u0643"
    table.update({ord("\u06c0"): "\u0647", ord("\u06c1"): "\u0647", ord("\u06d5"): "\u0647"})
    # Persian's zero-width non-joiner joins a stem to its affixes (کتاب‌ها, می‌روم); people
    # type it, a space or nothing. Lucene's PersianCharFilter makes it a space; so do we.
    table[0x200C] = " "
    # Arabic-Indic and Persian digits -> ASCII, so "٣" and "3" are one token.
    table.update({0x0660 + d: str(d) for d in range(10)})
    table.update({0x06F0 + d: str(d) for d in range(10)})
    return table


_ARABIC_SCRIPT_TABLE = _arabic_script_table()


# Arabic presentation forms (ligatures and positional shapes, as PDFs and old encodings
# produce): their compatibility decomposition is the plain letters people type.
_PRESENTATION_FORMS = re.compile("[\ufb50-\ufdff\ufe70-\ufefe]+")


def normalise_arabic_script(text: str) -> str:
    """Arabic and Persian text as people type it: presentation forms decomposed (NFKC, e.g.
    the ligature "ﻻ" is "لا"), diacritics and tatweel removed, letter variants folded, ZWNJ a
    space, Eastern digits ASCII. Other scripts pass unchanged.

    Applied to documents and queries alike before tokenising. E.g. "الْأَعْمَالُ" and
    "الاعمال" give the same token; "کتاب‌ها" gives "كتاب ها".
    """
    if _PRESENTATION_FORMS.search(text):
        text = _PRESENTATION_FORMS.sub(lambda m: unicodedata.normalize("NFKC", m.group()), text)
    return text.translate(_ARABIC_SCRIPT_TABLE)


# Bumped whenever normalise_arabic_script or the token routing changes what any text
# encodes to: collections record it, and points encoded under another are re-encoded.
NORMALISATION_VERSION = 1


@dataclass(frozen=True)
class SparseSettings:
    """A model's BM25 settings: what a reader needs to encode queries the same way.

    `languages`: names from `LANGUAGES`, at most one stemmer per script; the first handles
    tokens of scripts no configured language covers. `unstemmed`: languages whose tokens keep
    their (normalised) form instead of their Snowball stem; names not in `languages` are
    ignored. k, b and avg_len are BM25's (fastembed's defaults: 1.2, 0.75, 256).
    """

    languages: tuple[str, ...] = ("english",)
    unstemmed: tuple[str, ...] = ()
    k: float = 1.2
    b: float = 0.75
    avg_len: float = 256.0

    def __post_init__(self) -> None:
        if not self.languages:
            raise ValueError("sparse languages: name at least one, e.g. [english]")
        unknown = [name for name in self.languages if name not in LANGUAGES]
        if unknown:
            raise ValueError(
                f"sparse language {unknown[0]!r} is not supported; use one of "
                f"{', '.join(LANGUAGES)}"
            )
        if len(set(self.languages)) != len(self.languages):
            raise ValueError(f"sparse languages {list(self.languages)} names one twice")
        unknown = [name for name in self.unstemmed if name not in LANGUAGES]
        if unknown:
            raise ValueError(
                f"sparse unstemmed language {unknown[0]!r} is not supported; use some of "
                f"{', '.join(LANGUAGES)}"
            )

    def stemmer(self, name: str) -> str | None:
        """The Snowball stemmer language `name`'s tokens get (None: kept as they are)."""
        return None if name in self.unstemmed else LANGUAGES[name].stemmer

    @property
    def normalises(self) -> bool:
        """Whether texts are normalised: only when an Arabic-script language is configured,
        so `("english",)` stays exactly Qdrant/bm25 for every text."""
        return any(LANGUAGES[name].script == "arabic" for name in self.languages)

    def describe(self) -> dict[str, object]:
        """The settings as JSON, stored in each collection's metadata (key
        `vector_pipeline.sparse`) and compared to re-encode points written under others."""
        return {
            "encoder": "vector_pipeline.sparse.Bm25 (fastembed Qdrant/bm25 recipe)",
            "languages": list(self.languages),
            "normalisation": (
                f"normalise_arabic_script v{NORMALISATION_VERSION}" if self.normalises else None
            ),
            "stemmers": {name: self.stemmer(name) for name in self.languages},
            "stopwords": {name: LANGUAGES[name].stopwords for name in self.languages},
            "k": self.k,
            "b": self.b,
            "avg_len": self.avg_len,
            "token_max_length": _TOKEN_MAX_LENGTH,
            "token_id": "abs(mmh3.hash(stem, seed=0))",
            "query_weights": "1.0 per distinct token id; IDF applied by Qdrant",
        }


# fastembed's remove_non_alphanumeric(): every char that is neither a word char nor whitespace
# becomes a space. It runs BEFORE lowercasing, which matters for one letter only: str.lower()
# maps a capital sigma to final or medial sigma depending on its neighbours, and punctuation
# such as an apostrophe is "case-ignorable" there. So it runs only when a capital sigma is in
# the text (see Bm25._stems); the "+" turns a run into one space, which splitting does not see.
_NOT_WORD_OR_SPACE = re.compile(r"[^\w\s]+")
# fastembed's SimpleTokenizer then lowercases, turns each non-word char into a space and
# splits on whitespace: the tokens are exactly the maximal runs of word chars, which findall
# gets in one pass. The non-word pass after lowering is not redundant in general ("İ" lowers
# to "i" plus a combining dot, U+0307, which is not a word char and splits the token there);
# findall splits there too.
_WORD_RUN = re.compile(r"\w+")
_CAPITAL_SIGMA = "\u03a3"

# fastembed's token_max_length default: longer tokens are dropped, not truncated.
_TOKEN_MAX_LENGTH = 40

# Bound on the per-instance token -> stem cache. A language's working vocabulary fits well
# inside it; text full of unique tokens (ids, hashes) refills it instead of growing memory.
# At 500k entries the cache alone added ~78 MiB to a 1M-row sync (BENCHMARKS.md, part d).
_STEM_CACHE_MAX = 100_000


def load_stopwords(path: Path = _STOPWORDS_FILE) -> frozenset[str]:
    """Read a stopword list, one word per line, the way fastembed reads ``english.txt``."""
    # fastembed does f.read().splitlines() and lowercases nothing; matching is against the
    # lowercased token, so an upper-case entry could never match there either.
    return frozenset(path.read_text(encoding="utf-8").splitlines())


def _script_stopwords(languages: Sequence[str], script: str) -> frozenset[str]:
    """The stopwords of the configured languages of one script, as tokens: Arabic-script
    lists are normalised like the text they are matched against (NLTK's list spells إذا and
    أن with hamza, which normalised text never holds), and entries of several words dropped."""
    words: set[str] = set()
    for name in languages:
        language = LANGUAGES[name]
        if language.script != script:
            continue
        entries = load_stopwords(_DATA / language.stopwords)
        if script == "arabic":
            entries = frozenset(normalise_arabic_script(word).lower() for word in entries)
        words.update(word for word in entries if _WORD_RUN.fullmatch(word))
    return frozenset(words)


@dataclass(frozen=True)
class SparseVector:
    """A sparse vector as Qdrant takes it: parallel ``indices`` and ``values``."""

    indices: list[int]
    values: list[float]


class Bm25:
    """BM25 document and query vectors identical to fastembed's ``Qdrant/bm25``.

    Documents get ``tf * (k + 1) / (tf + k * (1 - b + b * len / avg_len))`` per distinct
    stem, where ``len`` counts the stems kept after stopword and length filtering. Queries get
    1.0 per distinct stem. Indices are ``abs(murmur3_32(stem, seed=0))`` and come out sorted
    ascending, so equal input gives equal output.

    Cheap to keep: build one per process and reuse it, so its stem cache warms up. Sharing
    one across threads is safe (the cache only ever maps a token to its one stem).
    """

    def __init__(
        self,
        k: float = 1.2,
        b: float = 0.75,
        avg_len: float = 256.0,
        *,
        settings: SparseSettings | None = None,
    ) -> None:
        settings = settings or SparseSettings(k=k, b=b, avg_len=avg_len)
        self.settings = settings
        self.k, self.b, self.avg_len = settings.k, settings.b, settings.avg_len
        self._normalises = settings.normalises
        self._stems_of = _StemCache(settings)

    def embed_documents(self, texts: Sequence[str]) -> list[SparseVector]:
        """BM25 term-frequency vectors, one per text, for upserting into Qdrant."""
        return [self._embed_document(text) for text in texts]

    def embed_query(self, text: str) -> SparseVector:
        """Query vector: weight 1.0 for every distinct stem, as fastembed's ``query_embed``."""
        ids = sorted({_token_id(stem) for stem in self._stems(text)})
        return SparseVector(indices=ids, values=[1.0] * len(ids))

    def _embed_document(self, text: str) -> SparseVector:
        stems = self._stems(text)
        k = self.k
        k_plus_1 = k + 1
        # Same operations in the same order as fastembed, so the floats are bit-identical.
        length_norm = k * (1 - self.b + self.b * len(stems) / self.avg_len)
        # Counter keeps first-seen order, like fastembed's defaultdict. When two stems hash to
        # one id, fastembed 0.9.1 keeps the weight of the later stem (plain assignment), so
        # this comprehension does too; newer fastembed may sum them instead.
        weights = {
            _token_id(stem): count * k_plus_1 / (count + length_norm)
            for stem, count in Counter(stems).items()
        }
        ids = sorted(weights)
        return SparseVector(indices=ids, values=[weights[i] for i in ids])

    def _stems(self, text: str) -> list[str]:
        """fastembed's remove_non_alphanumeric + SimpleTokenizer + Bm25._stem, in that order."""
        if self._normalises:
            text = normalise_arabic_script(text)
        if _CAPITAL_SIGMA in text:
            text = _NOT_WORD_OR_SPACE.sub(" ", text)
        # Without a capital sigma, lowering is per character, and no non-word char lowers to
        # a word char (test_sparse checks this over all of Unicode), so replacing non-word
        # chars by spaces first would give the same word runs; skipping it halves tokenising.
        tokens = _WORD_RUN.findall(text.lower())
        # map() over the cache's __getitem__ keeps the common (cached) case in C.
        return [stem for stem in map(self._stems_of.__getitem__, tokens) if stem]


class _StemCache(dict[str, str]):
    """token -> stem, or "" for a token fastembed's Bm25._stem drops; filled on first use.

    Stemming dominates the cost otherwise, and word frequencies are skewed, so nearly every
    lookup hits. Measured on 2,000 texts of 300 words: no cache 5.9k texts/s, lru_cache
    10.4k, this dict 11.3k. It is cleared when full, which bounds memory on pathological
    input (hashes, random ids) at no cost to correctness.
    """

    def __init__(self, settings: SparseSettings) -> None:
        super().__init__()
        languages = settings.languages
        handlers = {}
        for script in ("latin", "arabic"):
            names = [name for name in languages if LANGUAGES[name].script == script]
            if names:
                stemmer = next((s for s in map(settings.stemmer, names) if s), None)
                handlers[script] = _Handler(_script_stopwords(names, script), stemmer)
        first = handlers[LANGUAGES[languages[0]].script]
        # Tokens holding an Arabic-script letter go to the Arabic-script languages, all
        # others to the Latin-script one; a script with none configured, to the first.
        self._arabic = handlers.get("arabic", first)
        self._other = handlers.get("latin", first)

    def __missing__(self, token: str) -> str:
        stem = self._stem(token)
        if len(self) >= _STEM_CACHE_MAX:
            self.clear()
        self[token] = stem
        return stem

    def _stem(self, token: str) -> str:
        # fastembed drops tokens in its punctuation set (Unicode category P*). A token here
        # holds only word chars, and the only P* char that is a word char is "_" (connector
        # punctuation; test_sparse checks this), so a lone "_" is all that check removes.
        if token == "_" or len(token) > _TOKEN_MAX_LENGTH:
            return ""
        handler = self._arabic if _ARABIC_SCRIPT.search(token) else self._other
        if token in handler.stopwords:
            return ""
        # Tokens are already lower case and str.lower() is idempotent, so fastembed's second
        # token.lower() before stopword matching and stemming changes nothing.
        return handler.stem(token)


class _Handler:
    """One script's stopwords and stemmer."""

    def __init__(self, stopwords: frozenset[str], stemmer: str | None) -> None:
        self.stopwords = stopwords
        self.stem: Callable[[str], str] = (
            SnowballStemmer(stemmer).stem_word if stemmer else _unchanged
        )


def _unchanged(token: str) -> str:
    return token


def _token_id(stem: str) -> int:
    # fastembed: abs(mmh3.hash(token)), i.e. signed 32-bit MurmurHash3 of the UTF-8 bytes,
    # seed 0. abs() can yield 2**31, still within Qdrant's u32 sparse index range.
    return abs(mmh3.hash(stem))
