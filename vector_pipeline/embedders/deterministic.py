"""Hash-derived vectors for tests and benchmarks: no model, no network, no cost, ~50k texts/s.

Each word is hashed to one dimension and a sign (feature hashing), so texts that share words get
somewhat similar vectors and a search over them behaves plausibly; a half-weight hash of the whole
text keeps texts with the same bag of words apart and makes the zero vector impossible. The same
text gives the same vector in every process and on every machine (blake2b, not Python's salted
`hash`), which is what lets tests compare a sync's points with expected ones.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from vector_pipeline.config import DeterministicModel
from vector_pipeline.embedders.base import DenseEmbeddings, l2_normalise

_WORD = re.compile(r"\w+")
# A fixed key makes these hashes our own: they cannot collide by design with any other use.
_KEY = b"vector_pipeline.deterministic"


@lru_cache(maxsize=1 << 16)
def _word_hash(word: str) -> int:
    # Cached because vocabularies are small and repeat; hashing dominates otherwise.
    return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8, key=_KEY).digest(), "big")


def _text_hash(text: str) -> int:
    digest = hashlib.blake2b(text.encode(), digest_size=8, key=_KEY, person=b"whole-text")
    return int.from_bytes(digest.digest(), "big")


class DeterministicEmbedder:
    def __init__(self, model_key: str, model: DeterministicModel) -> None:
        self.model_key = model_key
        self.model_id = model.id
        self.dimensions = model.dimensions
        self.max_concurrent_requests = model.max_concurrent_requests
        # Optional, for tests of long rows: a token is a word (what `tokens` counts).
        self.max_tokens_per_input = model.max_tokens_per_input

    def count_tokens(self, text: str) -> int:
        return len(_WORD.findall(text.lower()))

    def embed_documents(self, texts: Sequence[str]) -> DenseEmbeddings:
        dims = self.dimensions
        if not texts:
            return DenseEmbeddings(vectors=[], truncated=(), tokens=0)
        # Python only splits and hashes (cached); placing the values is one numpy pass.
        word_hashes: list[int] = []
        word_counts: list[int] = []
        for text in texts:
            words = _WORD.findall(text.lower())
            word_counts.append(len(words))
            word_hashes.extend(map(_word_hash, words))
        starts = np.arange(len(texts), dtype=np.int64) * dims
        hashes = np.array(word_hashes, dtype=np.uint64)
        text_hashes = np.array([_text_hash(text) for text in texts], dtype=np.uint64)
        cells = np.concatenate(
            [
                np.repeat(starts, word_counts) + (hashes % dims).astype(np.int64),
                starts + (text_hashes % dims).astype(np.int64),
            ]
        )
        # The top bit of each hash is its sign. The whole-text hash has half weight: word sums
        # are whole numbers, so its cell can never cancel to zero and no vector is all zeros.
        weights = np.concatenate(
            [
                np.where(hashes >> np.uint64(63), -1.0, 1.0),
                np.where(text_hashes >> np.uint64(63), -0.5, 0.5),
            ]
        )
        matrix = np.bincount(cells, weights=weights, minlength=len(texts) * dims)
        matrix = l2_normalise(matrix.reshape(len(texts), dims))
        return DenseEmbeddings(vectors=matrix.tolist(), truncated=(), tokens=sum(word_counts))

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text]).vectors[0]

    def close(self) -> None:
        pass
