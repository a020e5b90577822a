"""BM25 sparse vectors, bit-for-bit compatible with fastembed's ``Qdrant/bm25`` model.

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
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mmh3
from py_rust_stemmers import SnowballStemmer

__all__ = ["Bm25", "SparseVector", "load_stopwords"]

_STOPWORDS_FILE = Path(__file__).parent / "data" / "stopwords_english.txt"

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

    def __init__(self, k: float = 1.2, b: float = 0.75, avg_len: float = 256.0) -> None:
        self.k = k
        self.b = b
        self.avg_len = avg_len
        self._stems_of = _StemCache(load_stopwords(), SnowballStemmer("english"))

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

    def __init__(self, stopwords: frozenset[str], stemmer: SnowballStemmer) -> None:
        super().__init__()
        self._stopwords = stopwords
        self._stem_word = stemmer.stem_word

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
        if token == "_" or token in self._stopwords or len(token) > _TOKEN_MAX_LENGTH:
            return ""
        # Tokens are already lower case and str.lower() is idempotent, so fastembed's second
        # token.lower() before stopword matching and stemming changes nothing.
        return self._stem_word(token)


def _token_id(stem: str) -> int:
    # fastembed: abs(mmh3.hash(token)), i.e. signed 32-bit MurmurHash3 of the UTF-8 bytes,
    # seed 0. abs() can yield 2**31, still within Qdrant's u32 sparse index range.
    return abs(mmh3.hash(stem))
